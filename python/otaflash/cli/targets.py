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


def human(size: int) -> str:
    for unit, factor in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= factor and size % (factor // 1024 or 1) == 0:
            return f"{size / factor:g} {unit}"
    return f"{size} B"
