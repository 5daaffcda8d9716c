"""Flashing over an emulated serial line: ours against the peers, one run.

Every case runs the real programs on both ends through the link emulator at
115200 and 921600 baud with 2 ms latency each way. Targets (issue: UART),
printed by benches/report.py:

- incompressible image: the otaflash protocol delivers >= 95 % of the raw
  line rate (baud/10 bytes/s), next to lrzsz `sb -k` and stm32flash `-w -v`
  (and our own STM32 host on the same emulated bootloader);
- compressible firmware (corpus MCU images): effective rate against the line
  rate (esptool's anchor: ~842 kbit/s effective at 921600 with compression);
- delta through the agent (corpus nrf52 and greatfet pairs, the patch made
  by `otaflash diff`, applied by the agent to its old image in the active
  slot of a simulated NOR flash) against stm32flash writing the full new
  image to the STM32 emulator: >= 10x faster on nrf52.

With --benchmark-disable (the default test run) every case runs once on small
inputs, so the rig stays tested without the minutes a real run takes.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import serial_rig

BAUDS = (115_200, 921_600)
PAIRS = ("nrf52-connectivity", "greatfet-fw")

#: Image sizes for a real run: big enough that fixed costs do not dominate,
#: small enough that stop-and-wait peers finish in a minute or so.
STREAM_SIZE = {115_200: 256 * 1024, 921_600: 1024 * 1024}
STM32_SIZE = {115_200: 64 * 1024, 921_600: 128 * 1024}
#: Sizes in a test run (--benchmark-disable): the rig runs, briefly.
TEST_SIZE = {"stream": 8 * 1024, "stm32": 4 * 1024}
STAND_IN_SIZE = 6000


def _timed(benchmark: Any, run: Callable[[], serial_rig.Run], baud: int, **info: str) -> None:
    """Runs once (each run takes seconds to minutes); records the run's figures."""
    holder: list[serial_rig.Run] = []
    benchmark.group = f"serial-{info['scenario']}-{baud}"
    benchmark.pedantic(lambda: holder.append(run()), rounds=1, iterations=1)
    benchmark.extra_info.update(info, serial=True, **holder[0].record(baud))


@pytest.fixture(scope="session")
def random_images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("serial-images")
    rng = random.Random(1)
    images = {}
    for size in {*STREAM_SIZE.values(), *STM32_SIZE.values(), *TEST_SIZE.values()}:
        path = directory / f"random-{size}.bin"
        path.write_bytes(rng.randbytes(size))
        images[str(size)] = path
    return images


@pytest.fixture(scope="session")
def firmware(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The corpus pairs in a real run; a small stand-in pair in a test run."""
    options = request.config.option
    if options.benchmark_disable and not options.benchmark_enable:
        directory = tmp_path_factory.mktemp("stand-in-corpus")
        rng = random.Random(2)
        for pair in PAIRS:
            old = bytearray()
            while len(old) < STAND_IN_SIZE:
                old += rng.randbytes(rng.randrange(1, 40)) + b"\xff" * rng.randrange(0, 300)
            new = bytearray(old[:STAND_IN_SIZE])
            new[3000:3100] = rng.randbytes(100)
            (directory / pair).mkdir()
            (directory / pair / "old").write_bytes(bytes(old[:STAND_IN_SIZE]))
            (directory / pair / "new").write_bytes(bytes(new))
        return directory
    return serial_rig.corpus(serial_rig.ROOT / "target" / "corpus")


def _size(benchmark: Any, sizes: dict[int, int], baud: int) -> int:
    if not benchmark.enabled:
        return TEST_SIZE["stream" if sizes is STREAM_SIZE else "stm32"]
    return sizes[baud]


@pytest.mark.parametrize("tool", ["otaflash", "lrzsz"])
@pytest.mark.parametrize("baud", BAUDS)
def test_incompressible_stream(
    benchmark: Any, random_images: dict[str, Path], baud: int, tool: str
) -> None:
    image = random_images[str(_size(benchmark, STREAM_SIZE, baud))]
    run = (lambda: serial_rig.ours(image, baud)) if tool == "otaflash" else (
        lambda: serial_rig.lrzsz(image, baud)
    )  # fmt: skip
    _timed(benchmark, run, baud, scenario="incompressible", case=tool)


@pytest.mark.parametrize("tool", ["stm32flash", "otaflash-stm32"])
@pytest.mark.parametrize("baud", BAUDS)
def test_incompressible_stm32(
    benchmark: Any, random_images: dict[str, Path], baud: int, tool: str
) -> None:
    image = random_images[str(_size(benchmark, STM32_SIZE, baud))]
    kind = "stm32flash" if tool == "stm32flash" else "otaflash"
    _timed(
        benchmark,
        lambda: serial_rig.stm32(image, baud, tool=kind),
        baud,
        scenario="incompressible",
        case=tool,
    )


@pytest.mark.parametrize("tool", ["otaflash", "lrzsz", "stm32flash"])
@pytest.mark.parametrize("baud", BAUDS)
@pytest.mark.parametrize("pair", PAIRS)
def test_firmware(benchmark: Any, firmware: Path, pair: str, baud: int, tool: str) -> None:
    image = firmware / pair / "new"
    if tool == "otaflash":
        run: Callable[[], serial_rig.Run] = lambda: serial_rig.ours(image, baud)  # noqa: E731
    elif tool == "lrzsz":
        run = lambda: serial_rig.lrzsz(image, baud)  # noqa: E731
    else:
        run = lambda: serial_rig.stm32(image, baud, tool="stm32flash")  # noqa: E731
    _timed(benchmark, run, baud, scenario="firmware", case=tool, pair=pair)


def _make_patch(old: Path, new: Path, patch: Path) -> None:
    """The patch as a user makes it: `otaflash diff OLD NEW -o PATCH`."""
    done = subprocess.run(
        [sys.executable, "-m", "otaflash", "diff", str(old), str(new), "-o", str(patch)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("baud", BAUDS)
@pytest.mark.parametrize("pair", PAIRS)
def test_delta_through_the_agent(
    benchmark: Any, firmware: Path, tmp_path: Path, pair: str, baud: int
) -> None:
    old, new = firmware / pair / "old", firmware / pair / "new"
    patch = tmp_path / f"{pair}.patch"
    _make_patch(old, new, patch)
    _timed(
        benchmark,
        lambda: serial_rig.ours_delta(patch, new, old, baud),
        baud,
        scenario="delta",
        case="otaflash-delta",
        pair=pair,
    )
    benchmark.extra_info["patch_size"] = os.path.getsize(patch)
