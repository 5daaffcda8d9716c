"""`otaflash demo` end to end, split by stage.

One round each, as a user runs it (`python -m otaflash demo --json`, a fresh
process: interpreter start and imports included), with the 1 MiB default
image: over the delta, and with --full to compare. The stage split (firmware
generation, provisioning, server start, publish incl. the diff, check,
download, apply/flash, verify, report, reboot/confirm) lands in the
benchmark JSON's ``extra_info``; ``benches/report.py`` prints it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest


def demo(*args: str) -> dict[str, Any]:
    result = subprocess.run(
        [sys.executable, "-m", "otaflash", "demo", "--json", *args],
        capture_output=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    record: dict[str, Any] = json.loads(result.stdout)
    return record


@pytest.mark.parametrize("mode", ["delta", "full"])
def test_demo_end_to_end_by_stage(mode: str, benchmark: Any) -> None:
    args = ("--full",) if mode == "full" else ()
    record = benchmark.pedantic(lambda: demo(*args), rounds=1, iterations=1)
    seconds = record["seconds"]
    benchmark.extra_info.update(
        case="demo",
        impl=mode,
        image_size=record["imageSize"],
        transferred=record["transferred"],
        ratio=record["ratio"],
        **{f"s_{stage}": value for stage, value in seconds.items()},
    )
    print(f"\ndemo {mode}: {record['transferred']} bytes ({record['ratio']:.1%}); {seconds}")
    assert record["delta"] is (mode == "delta")
    assert record["steps"][-1] == 100
