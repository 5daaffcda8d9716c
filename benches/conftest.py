"""Shared inputs for the benchmarks: large, in memory and in the page cache."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

MIB = 1 << 20
#: The size the hashing targets are stated for.
HASH_SIZE = 256 * MIB


@pytest.fixture(scope="session")
def big_buffer() -> bytes:
    return os.urandom(HASH_SIZE)


@pytest.fixture(scope="session")
def big_file(tmp_path_factory: pytest.TempPathFactory, big_buffer: bytes) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("bench") / "firmware.bin"
    path.write_bytes(big_buffer)
    yield path
    path.unlink()
