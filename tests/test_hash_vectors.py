"""Published vectors: RFC 1321 (MD5), FIPS 180-4 (SHA-256, SHA-1), CRC-32 check value.

The vectors live in tests/vectors/hashes.tsv, shared with the Rust tests.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from otaflash import hashing

from .conftest import VECTORS


def load_vectors() -> list[tuple[str, bytes, str]]:
    vectors = []
    for line in (VECTORS / "hashes.tsv").read_text().splitlines():
        if not line or line.startswith("#"):
            continue
        algorithm, repeat, message, digest = line.split("\t")
        vectors.append((algorithm, (message * int(repeat)).encode("ascii"), digest))
    return vectors


VECTORS_LIST = load_vectors()


def vector_id(vector: tuple[str, bytes, str]) -> str:
    algorithm, message, _ = vector
    return f"{algorithm}-{len(message)}B"


def test_the_published_suites_are_all_there() -> None:
    counts = {name: sum(v[0] == name for v in VECTORS_LIST) for name in ("md5", "sha256")}
    assert counts["md5"] == 7  # the whole RFC 1321 A.5 suite
    assert counts["sha256"] >= 3
    assert ("sha256", b"a" * 1_000_000) in {(a, m) for a, m, _ in VECTORS_LIST}
    assert ("crc32", b"123456789", "cbf43926") in VECTORS_LIST


@pytest.mark.parametrize("vector", VECTORS_LIST, ids=vector_id)
def test_one_shot(vector: tuple[str, bytes, str]) -> None:
    algorithm, message, digest = vector
    assert hashing.new(algorithm, message).hexdigest() == digest
    assert hashing.new(algorithm, message).digest() == bytes.fromhex(digest)


@pytest.mark.parametrize("vector", VECTORS_LIST, ids=vector_id)
@pytest.mark.parametrize("chunk", [1, 55, 64, 4096])
def test_chunked(vector: tuple[str, bytes, str], chunk: int) -> None:
    algorithm, message, digest = vector
    if chunk == 1 and len(message) > 10_000:
        message_view = memoryview(message)
        hasher = hashing.new(algorithm)
        for start in range(0, len(message), 997):
            hasher.update(message_view[start : start + 997])
    else:
        hasher = hashing.new(algorithm)
        for start in range(0, len(message), chunk):
            hasher.update(message[start : start + chunk])
    assert hasher.hexdigest() == digest


@pytest.mark.parametrize("vector", VECTORS_LIST, ids=vector_id)
def test_hash_file(vector: tuple[str, bytes, str], tmp_path: Path) -> None:
    algorithm, message, digest = vector
    path = tmp_path / "message"
    path.write_bytes(message)
    result = hashing.hash_file(path, [algorithm, "md5"])
    assert result[algorithm] == digest
    assert result.size == len(message)
