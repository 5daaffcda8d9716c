"""Smoke test of the delta benchmark harness on a small generated pair: the
real peers it can find on a test machine (bsdiff, xdelta3, zstd) and our own
CLIs run side by side, outputs are checked, the goal table is produced.
The full run is `make bench-delta`."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import delta_bench  # noqa: E402


@pytest.fixture(scope="module")
def ours() -> str:
    # The debug build is the one `make test` just made; a release one may be stale.
    for profile in ("debug", "release"):
        binary = ROOT / "target" / profile / "otaflash-delta"
        if binary.exists():
            return str(binary)
    subprocess.run(["cargo", "build", "-p", "otaflash-delta-cli"], cwd=ROOT, check=True)
    return str(ROOT / "target" / "debug" / "otaflash-delta")


def test_harness_runs_ours_and_peers_side_by_side(tmp_path: Path, ours: str) -> None:
    rng = random.Random(1)
    old = bytes(rng.randrange(0, 64) for _ in range(60_000))
    new = bytearray(old)
    new[20_000:20_000] = rng.randbytes(500)
    for i in range(0, len(new), 1000):
        new[i] ^= 4
    pair = tmp_path / "corpus" / "small"
    pair.mkdir(parents=True)
    (pair / "old").write_bytes(old)
    (pair / "new").write_bytes(bytes(new))
    out_json = tmp_path / "r.json"
    code = delta_bench.main(
        [
            str(tmp_path / "corpus"),
            str(tmp_path / "work"),
            "--ours",
            ours,
            "--tools",
            "otaflash,bsdiff 4.3,xdelta3,zstd -19",
            "--runs",
            "1",
            "--json",
            str(out_json),
            "--markdown",
            str(tmp_path / "r.md"),
        ]
    )
    assert code == 0
    rows = json.loads(out_json.read_text())["small"]["rows"]
    names = set(rows)
    assert {
        "bsdiff 4.3 (BSDIFF40, bzip2)",
        "zstd -19 --long=27 --patch-from",
        "otaflash applying that BSDIFF40 patch",
        "otaflash applying that VCDIFF patch",
    } <= names
    for row in rows.values():
        assert "error" not in row, row
        assert row["identical"], row["tool"]
    for name in ("otaflash (zstd, 2 MiB window)", "otaflash (lzma2, 2 MiB dictionary)"):
        assert rows[name]["working_set"] > 0
        assert rows[name]["in_process_s"] > 0
    table = (tmp_path / "r.md").read_text()
    assert "Geometric mean of size / best peer, otaflash zstd" in table
    assert "Geometric mean of size / best peer, otaflash lzma2" in table
