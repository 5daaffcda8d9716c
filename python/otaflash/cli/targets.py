"""What the flash verbs share: target options, number parsing, result text."""

from __future__ import annotations

import argparse
from typing import Any

from otaflash.errors import InputError

TARGET_HELP = (
    "the flash: mtd:/dev/mtdN, sim:PATH?kind=nor|nand&size=BYTES&erase=BYTES&page=BYTES"
    "[&bad=3,7], or file:PATH"
)


def add_target(parser: argparse.ArgumentParser | Any, *, required: bool = True) -> None:
    parser.add_argument("--target", "-t", required=required, metavar="TARGET", help=TARGET_HELP)


def parse_number(text: str) -> int:
    """``4096``, ``0x1000``, ``64k``, ``1M``: for offsets and sizes."""
    value = text.strip().lower()
    scale = 1
    for suffix, factor in (("kib", 1 << 10), ("mib", 1 << 20), ("k", 1 << 10), ("m", 1 << 20)):
        if value.endswith(suffix):
            value, scale = value[: -len(suffix)], factor
            break
    try:
        number = int(value, 0) * scale
    except ValueError:
        raise InputError(f"{text!r} is not a number (use 4096, 0x1000, 64k or 1M)") from None
    if number < 0:
        raise InputError(f"{text!r} is negative")
    return number


def parse_address(text: str | None) -> tuple[int | None, bool, bool]:
    """``--address ADDR[:leave][:mass-erase]`` (dfu-util's ``-s``) as
    ``(address or None, leave, mass_erase)``."""
    if text is None:
        return None, False, False
    head, *modifiers = text.split(":")
    known = {"leave", "mass-erase"}
    for modifier in modifiers:
        if modifier not in known:
            raise InputError(
                f"--address {text!r}: unknown modifier {modifier!r} (use :leave or :mass-erase)"
            )
    address = None
    if head:
        try:
            address = int(head, 0)
        except ValueError:
            raise InputError(f"--address {text!r}: {head!r} is not a number") from None
        if not 0 <= address < 1 << 32:
            raise InputError(f"--address {text!r} does not fit 32 bits")
    return address, "leave" in modifiers, "mass-erase" in modifiers


def human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % (factor // 1024 or 1) == 0:
            return f"{size / factor:g} {unit}"
    return f"{size} B"
