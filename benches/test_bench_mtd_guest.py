"""In the qemu guest (real kernel MTD drivers, software-emulated CPU): our
writer against flashcp on mtdram and against nandwrite on nandsim, same
image, same erased starting state. Times are taken inside the guest.

Reported: the peer's command, our CLI (Python start-up included, which
dominates under TCG) and our writer alone (the in-process API call), each
with skips on (the default: blank blocks are not erased) and off (every
block erased, programmed and verified, as the peers do).
"""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from qemu_guest import QemuGuest, missing_tools

SCRIPT = r"""
set -eu
PY={python}
now() {{ date +%s.%N; }}
timed() {{
    local name=$1 s
    shift
    s=$(now)
    "$@" > /dev/null
    awk -v n="$name" -v s="$s" -v e="$(now)" 'BEGIN {{ print n, e - s }}' >> times.txt
}}
: > times.txt
cat > api.py <<'EOF'
import sys, time
from otaflash import flash
target = flash.open_target(sys.argv[1])
skip = sys.argv[3] == "skip"
start = time.perf_counter()
target.write(sys.argv[2], skip_blank=skip, skip_unchanged=skip)
print(sys.argv[4], time.perf_counter() - start)
EOF
# mtdram: 1 MiB image
flash_erase -q /dev/mtd0 0 0
timed flashcp flashcp ram.bin /dev/mtd0
flash_erase -q /dev/mtd0 0 0
timed otaflash_cli_ram {otaflash} flash --target mtd:/dev/mtd0 ram.bin
flash_erase -q /dev/mtd0 0 0
$PY api.py mtd:/dev/mtd0 ram.bin skip otaflash_api_ram >> times.txt
flash_erase -q /dev/mtd0 0 0
$PY api.py mtd:/dev/mtd0 ram.bin noskip otaflash_api_ram_noskip >> times.txt
# nandsim: 3 MB image over bad blocks 3 and 7
flash_erase -q /dev/mtd1 0 64
timed nandwrite nandwrite -q -p /dev/mtd1 nand.bin
flash_erase -q /dev/mtd1 0 64
timed otaflash_cli_nand {otaflash} flash --target mtd:/dev/mtd1 nand.bin
flash_erase -q /dev/mtd1 0 64
$PY api.py mtd:/dev/mtd1 nand.bin skip otaflash_api_nand >> times.txt
flash_erase -q /dev/mtd1 0 64
$PY api.py mtd:/dev/mtd1 nand.bin noskip otaflash_api_nand_noskip >> times.txt
{otaflash} verify --target mtd:/dev/mtd1 nand.bin
"""


@pytest.mark.slow
def test_bench_writer_vs_flashcp_and_nandwrite_in_guest(benchmark: Any, tmp_path: Path) -> None:
    assert not missing_tools(), "run `make system-deps`"
    rng = random.Random(11)
    (tmp_path / "ram.bin").write_bytes(rng.randbytes(1 << 20))
    (tmp_path / "nand.bin").write_bytes(rng.randbytes(3_000_000))
    script = SCRIPT.format(
        python=Path(sys.executable).parent / "python",
        otaflash=Path(sys.executable).parent / "otaflash",
    )

    def run() -> dict[str, float]:
        result = QemuGuest().run(
            script,
            workdir=tmp_path,
            modprobe=[
                "mtdram total_size=4096 erase_size=64",
                "nandsim id_bytes=0xec,0xa1,0x00,0x15 badblocks=3,7",
            ],
            timeout=540,
        )
        assert result.returncode == 0, f"{result.output}\n{result.console[-2000:]}"
        times = {}
        for line in (tmp_path / "times.txt").read_text().splitlines():
            name, seconds = line.split()
            times[name] = float(seconds)
        return times

    times = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.extra_info.update(times)
    for peer, ours in (("flashcp", "ram"), ("nandwrite", "nand")):
        print(
            f"\n{peer}: {times[peer]:.2f} s | otaflash CLI {times[f'otaflash_cli_{ours}']:.2f} s"
            f" | writer {times[f'otaflash_api_{ours}']:.2f} s"
            f" (skips off {times[f'otaflash_api_{ours}_noskip']:.2f} s)"
            f" | writer/{peer} {times[f'otaflash_api_{ours}'] / times[peer]:.2f}x"
        )
    assert set(times) >= {"flashcp", "nandwrite", "otaflash_api_ram", "otaflash_api_nand"}
