"""Hashing throughput against hashlib (OpenSSL) and zlib, in one run.

Targets (issue: foundation), checked by benches/report.py:
- each algorithm >= 0.97x the peer's throughput, on a 256 MiB buffer and file;
- hash_file md5+sha256 in one call <= 1.1x the slower algorithm alone;
- two threads on two buffers <= 0.6x the time of one thread doing both.
"""

from __future__ import annotations

import hashlib
import threading
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from otaflash import hashing

ROUNDS = {"rounds": 5, "iterations": 1, "warmup_rounds": 1}


def measure(benchmark: Any, group: str, fn: Callable[[], object], **info: str) -> None:
    benchmark.group = group
    benchmark.extra_info.update(info, group=group)
    benchmark.pedantic(fn, **ROUNDS)


@pytest.mark.parametrize("impl", ["otaflash", "peer"])
@pytest.mark.parametrize("algo", ["md5", "sha256", "sha1", "crc32"])
def test_buffer(benchmark: Any, big_buffer: bytes, algo: str, impl: str) -> None:
    if impl == "otaflash":
        fn: Callable[[], object] = lambda: hashing.new(algo, big_buffer).digest()  # noqa: E731
    elif algo == "crc32":
        fn = lambda: zlib.crc32(big_buffer)  # noqa: E731
    else:
        fn = lambda: hashlib.new(algo, big_buffer).digest()  # noqa: E731
    measure(benchmark, f"buffer-{algo}", fn, algo=algo, impl=impl, case="buffer")


def _peer_file_digest(path: Path, algos: list[str]) -> object:
    """What a Python program does without otaflash: hashlib (or zlib) over 1 MiB reads."""
    if algos == ["crc32"]:
        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                crc = zlib.crc32(chunk, crc)
        return crc
    if len(algos) == 1:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, algos[0]).digest()
    hashers = [hashlib.new(a) for a in algos]
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            for h in hashers:
                h.update(chunk)
    return [h.digest() for h in hashers]


@pytest.mark.parametrize("impl", ["otaflash", "peer"])
@pytest.mark.parametrize("algo", ["md5", "sha256", "sha1", "crc32", "md5+sha256"])
def test_file(benchmark: Any, big_file: Path, algo: str, impl: str) -> None:
    algos = algo.split("+")
    if impl == "otaflash":
        fn: Callable[[], object] = lambda: hashing.hash_file(big_file, algos)  # noqa: E731
    else:
        fn = lambda: _peer_file_digest(big_file, algos)  # noqa: E731
    measure(benchmark, f"file-{algo}", fn, algo=algo, impl=impl, case="file")


@pytest.mark.parametrize("threads", [1, 2])
def test_two_buffers(benchmark: Any, big_buffer: bytes, threads: int) -> None:
    """Two 128 MiB buffers hashed with SHA-256: one after the other, or on two threads."""
    half = len(big_buffer) // 2
    parts = [memoryview(big_buffer)[:half], memoryview(big_buffer)[half:]]

    def one_thread() -> None:
        for part in parts:
            hashing.sha256(part).digest()

    def two_threads() -> None:
        workers = [threading.Thread(target=hashing.sha256, args=(part,)) for part in parts]
        for w in workers:
            w.start()
        for w in workers:
            w.join()

    fn = one_thread if threads == 1 else two_threads
    measure(benchmark, "threads", fn, case="threads", threads=str(threads))
