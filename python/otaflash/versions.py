"""Firmware versions and the names used in update rules.

Two version styles meet here: Tencent Xiaowei's integer ``productVersion``
("update if target > current") and Alibaba IoT's version strings (``1.0.1``,
``[A-Za-z0-9._-]``, 1..64 characters). Both compare with one rule:

* a version splits into runs of digits and runs of letters (``.``, ``-`` and
  ``_`` only separate): ``"2.10.0-rc1"`` → ``2, 10, 0, rc, 1``;
* runs compare left to right, digits numerically (``10 > 9``), letters as
  text, and a number ranks above text (``1.0.1 > 1.0.rc``);
* missing trailing runs count as zero (``1.2 == 1.2.0``), and a leading
  ``v`` is ignored (``v1.2 == 1.2``).

So the integers ``9 < 10`` and the dotted strings ``1.9.0 < 1.10.0`` both
compare as people expect.

>>> compare("10", "9") > 0, compare("1.10.0", "1.9.9") > 0, compare("1.2", "1.2.0")
(True, True, 0)
"""

from __future__ import annotations

import re
from functools import total_ordering

from otaflash.errors import InputError

__all__ = [
    "Version",
    "compare",
    "validate_module",
    "validate_product_key",
    "validate_serial",
    "validate_version",
]

_VERSION_RE = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
# Product keys, device names and modules end up in MQTT topics and URLs: no
# '/', '+', '#', '..' or whitespace, ever.
_NAME_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
_RUN_RE = re.compile(r"\d+|[A-Za-z]+")


def _check_name(kind: str, value: str, pattern: re.Pattern[str], allowed: str) -> str:
    if not isinstance(value, str) or not pattern.match(value) or value in {".", ".."}:
        raise InputError(f"invalid {kind} {value!r}: use 1..64 characters from {allowed}")
    return value


def validate_version(value: str) -> str:
    return _check_name("version", value, _VERSION_RE, "A-Z a-z 0-9 . _ -")


def validate_product_key(value: str) -> str:
    return _check_name("product key", value, _NAME_RE, "A-Z a-z 0-9 _ . : @ -")


def validate_module(value: str) -> str:
    return _check_name("module", value, _NAME_RE, "A-Z a-z 0-9 _ . : @ -")


def validate_serial(value: str) -> str:
    return _check_name("serial number", value, _NAME_RE, "A-Z a-z 0-9 _ . : @ -")


def _key(version: str) -> tuple[tuple[int, int, str], ...]:
    text = version[1:] if version[:1] in {"v", "V"} and version[1:2].isdigit() else version
    runs: list[tuple[int, int, str]] = [
        (1, int(run), "") if run.isdigit() else (0, 0, run) for run in _RUN_RE.findall(text)
    ]
    while runs and runs[-1] == (1, 0, ""):  # 1.2.0 == 1.2
        runs.pop()
    return tuple(runs)


def compare(a: str | int, b: str | int) -> int:
    """-1, 0 or 1 as ``a`` is older than, the same as, or newer than ``b``."""
    ka, kb = _key(str(a)), _key(str(b))
    # A missing run counts as 0 (a number), so pad with (1, 0, "").
    width = max(len(ka), len(kb))
    ka += ((1, 0, ""),) * (width - len(ka))
    kb += ((1, 0, ""),) * (width - len(kb))
    return (ka > kb) - (ka < kb)


@total_ordering
class Version:
    """A version that sorts by :func:`compare`; ``str()`` gives it back unchanged."""

    __slots__ = ("text",)

    def __init__(self, text: str | int) -> None:
        self.text = str(text)

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Version({self.text!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Version):
            return NotImplemented
        return compare(self.text, other.text) == 0

    def __lt__(self, other: Version) -> bool:
        return compare(self.text, other.text) < 0

    def __hash__(self) -> int:
        return hash(_key(self.text))
