"""Shared fixtures and settings for the otaflash test suite."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

# `make test` runs the thorough profile; HYPOTHESIS_PROFILE=quick for fast local loops.
settings.register_profile(
    "thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile("quick", max_examples=25, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "thorough"))

ROOT = Path(__file__).resolve().parent.parent
VECTORS = ROOT / "tests" / "vectors"


def run_otaflash(
    args: Sequence[str], *, input: bytes | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[bytes]:
    """Runs the real command line (`python -m otaflash`) as a separate process."""
    return subprocess.run(
        [sys.executable, "-m", "otaflash", *args],
        input=input,
        capture_output=True,
        cwd=cwd,
        timeout=300,
        check=False,
    )


@pytest.fixture
def otaflash_cli() -> Callable[..., subprocess.CompletedProcess[bytes]]:
    return run_otaflash


def make_sparse_file(path: Path, size: int, islands: dict[int, bytes]) -> Path:
    """A sparse file of `size` bytes: zeros except the given byte islands."""
    with open(path, "wb") as f:
        f.truncate(size)
        for offset, data in islands.items():
            f.seek(offset)
            f.write(data)
    return path
