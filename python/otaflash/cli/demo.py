"""Run the main job end to end on this machine: an embedded update server and
a simulated device (SimFlash NOR, A/B slots) in this process.

Firmware 1.0.0 and 2.0.0 are generated (a synthetic Cortex-M build and a
release of it); the device is provisioned with 1.0.0; the server publishes
1.0.0 and 2.0.0 with a delta from 1.0.0. The device then checks, downloads
the delta straight into the patch applier, which writes 2.0.0 from the
active slot into the inactive one; the slot is verified and boots on trial;
the simulated reboot confirms it and the device reports 2.0.0. Prints what
was transferred against the full image, the verified SHA-256, the progress
steps and the time of each stage.

Exit codes: 0 when every check passed; otherwise the failing check's code
(4 verification, 6 flash, 9 update service, ...).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from otaflash.cli.output import Output
from otaflash.cli.targets import human, parse_number
from otaflash.errors import InputError

if TYPE_CHECKING:
    from otaflash.demo import DemoResult

NAME = "demo"
HELP = "run a server and a simulated device: publish v1 -> v2 and update over a delta"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep",
        metavar="DIR",
        help="work in DIR (new or empty) and keep it: server data, device, firmware, downloads",
    )
    parser.add_argument(
        "--size",
        default="1M",
        metavar="BYTES",
        help="firmware image size (default 1M; k/M suffixes, 64k..64M)",
    )
    parser.add_argument(
        "--full",
        action="store_true",
        help="update with the full image instead of the delta (to compare)",
    )
    parser.add_argument(
        "--no-serial",
        action="store_true",
        help="leave out the second device, the one updated through its agent on a serial line",
    )
    parser.add_argument(
        "--quiet", "-q", action="store_true", help="no progress bars; print the last line only"
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.demo import run_demo
    from otaflash.progress import ProgressBars
    from otaflash.sim import firmware

    size = parse_number(args.size)
    if not firmware.MIN_SIZE <= size <= firmware.MAX_SIZE:
        failure = InputError(f"--size {args.size} is outside 64k..64M")
        failure.hint = "give a firmware size such as 256k or 1M"
        raise failure
    bars = (
        ProgressBars(label="demo")
        if out.wants_progress() and not (out.json_mode or args.quiet)
        else None
    )
    try:
        options = {
            "image_size": size,
            "full": args.full,
            "serial": not args.no_serial,
            "progress": bars,
            "on_stage": (lambda text: out.message(f"demo: {text}")) if bars else None,
        }
        kept = _kept_directory(Path(args.keep)) if args.keep is not None else None
        if kept is not None:
            result = run_demo(kept, **options)
        else:
            with tempfile.TemporaryDirectory(prefix="otaflash-demo-") as temporary:
                result = run_demo(Path(temporary), **options)
    finally:
        if bars is not None:
            bars.close()
    record = {**result.to_json(), "kept": str(kept) if kept is not None else None}
    how = "a delta" if result.is_delta else "the full image"
    last = (
        f"ok: {result.device} updated {result.from_version} -> {result.to_version} with {how}: "
        f"{result.transferred:,} bytes sent, {result.ratio:.1%} of the full image"
    )
    if result.serial is not None:
        last += f"; {result.serial.device} too, through its agent on a serial line"
    out.result(last if args.quiet else "\n".join([*_summary(result, args.keep), last]), record)
    return 0


def _kept_directory(path: Path) -> Path:
    if path.exists() and not path.is_dir():
        raise InputError(f"--keep {path}: not a directory")
    if path.is_dir() and any(path.iterdir()):
        failure = InputError(f"--keep {path}: the directory is not empty")
        failure.hint = "give a new or empty directory: a second run would find the first's data"
        raise failure
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"--keep {path}: {error.strerror or error}") from None
    return path.resolve()


def _summary(r: DemoResult, keep: str | None) -> list[str]:
    from otaflash.demo import STAGES

    slot = "AB"[r.boot_slot]
    old_slot = "AB"[1 - r.boot_slot]
    what = f"delta from {r.from_version}" if r.is_delta else "full image"
    seconds = r.seconds
    split = ", ".join(
        f"{label} {seconds[key]:.2f}" for key, label in STAGES.items() if key in seconds
    )
    lines = [
        f"update server  {r.server} (embedded, SQLite), product {r.product!r}",
        f"device         {r.device}: {r.target.partition('?')[0]} "
        f"(SimFlash NOR, A/B slots), running {r.from_version} from slot {old_slot}",
        f"published      {r.from_version} (full image, {r.image_size:,} bytes); {r.to_version} "
        f"(full image, and a {r.delta_size:,}-byte delta from {r.from_version} made on publish)",
        f"transferred    {r.transferred:,} bytes ({what}) = {r.ratio:.1%} of the "
        f"{r.image_size:,}-byte full image ({human(r.image_size)})",
        f"applied        into slot {slot} from slot {old_slot}, read back and verified",
        f"verified       sha256 {r.verified_sha256}",
        f"progress       steps {' '.join(str(s) for s in r.steps)} (100 once, after verifying)",
        f"rebooted       trial boot of slot {slot}: flash holds {r.to_version} "
        f"(sha256 matches), confirmed; the server has the device at {r.device_version}",
        f"time           {seconds['total']:.2f} s: {split}",
    ]
    if r.serial is not None:
        leg = r.serial
        line_seconds = r.image_size * 10 / leg.baud
        lines[-1:-1] = [
            f"serial device  {leg.device}: {leg.target.partition('?')[0]} behind an emulated "
            f"{leg.baud:,}-baud line (ptys, 2 ms latency), running `otaflash agent`",
            f"serial update  the laptop fetched its {leg.sent:,}-byte delta and sent it in "
            f"{leg.seconds:.2f} s (the full image needs {line_seconds:.1f} s of line time); "
            f"the agent applied it from slot {'AB'[1 - leg.boot_slot]} into "
            f"{'AB'[leg.boot_slot]}, read back and verified; rebooted, confirmed, server has "
            f"it at {leg.device_version}",
        ]
    if keep is not None:
        lines.append(
            f"kept           {keep}: server/ (otaflash serve --data-dir), device.sim, "
            "firmware/, downloads/"
        )
    return lines
