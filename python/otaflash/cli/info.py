"""Show a device's geometry, bad blocks and update-slot state."""

from __future__ import annotations

import argparse
from typing import Any

from otaflash.cli.output import Output
from otaflash.cli.targets import add_target, human

NAME = "info"
HELP = "show a device's geometry, bad blocks and slot state"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_target(parser)


def run(args: argparse.Namespace, out: Output) -> int:
    from dataclasses import asdict

    from otaflash import flash

    with flash.open_target(args.target) as target:
        info = target.info()
    g = info.geometry
    record: dict[str, Any] = {
        "target": args.target,
        "name": info.name,
        "geometry": asdict(g),
        "bad_blocks": info.bad_blocks,
        "slots": info.slots.raw if info.slots is not None else None,
    }
    lines = [
        f"{info.name}: {g.kind}, {g.size} bytes ({human(g.size)})",
        f"  erase block {g.erase_size}, write unit {g.write_size}, page {g.page_size}, "
        f"oob {g.oob_size}",
        "  bad blocks: "
        + (", ".join(f"{b:#x}" for b in info.bad_blocks) if info.bad_blocks else "none"),
    ]
    if info.slots is None:
        lines.append("  update layout: none")
    else:
        s = info.slots
        lines.append(f"  update layout: {s.layout}, {s.phase}, active slot {'AB'[s.active]}")
        for index, slot in enumerate(s.slots):
            image = slot["image"]
            held = f"{image['size']} bytes, sha256 {image['sha256']}" if image else "empty"
            lines.append(f"    slot {'AB'[index]}: {slot['offset']:#x}+{slot['size']:#x}: {held}")
        lines.append(f"  next boot: {_describe_next(s.next)}")
    out.result("\n".join(lines), record)
    return 0


def _describe_next(next_: dict[str, Any]) -> str:
    action = next_["action"]
    slot = "AB"[next_.get("slot", 0)]
    if action == "boot":
        return f"boot slot {slot}"
    if action == "trial":
        return f"trial boot of slot {slot} ({next_['tries']} tries left), then confirm"
    if action == "rollback":
        return f"roll back to slot {slot} (the trial was not confirmed)"
    image = next_["image"]
    return (
        f"resume the interrupted update to {image['size']} bytes, sha256 {image['sha256']} "
        "(`otaflash slot boot --image IMAGE`)"
    )
