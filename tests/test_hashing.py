"""The hashlib-compatible API: semantics, buffers, threads, and properties."""

from __future__ import annotations

import array
import hashlib
import mmap
import pickle
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from otaflash import hashing
from otaflash.errors import InputError, UnknownAlgorithmError, VerifyError

HASHLIB_ALGORITHMS = ["md5", "sha1", "sha256"]
ALL_ALGORITHMS = [*HASHLIB_ALGORITHMS, "crc32"]


def reference_hex(algorithm: str, data: bytes) -> str:
    if algorithm == "crc32":
        return format(zlib.crc32(data), "08x")
    return hashlib.new(algorithm, data).hexdigest()


@pytest.mark.parametrize("algorithm", HASHLIB_ALGORITHMS)
def test_attributes_match_hashlib(algorithm: str) -> None:
    ours, theirs = hashing.new(algorithm), hashlib.new(algorithm)
    assert (ours.name, ours.digest_size, ours.block_size) == (
        theirs.name,
        theirs.digest_size,
        theirs.block_size,
    )


def test_crc32_attributes_and_constructors() -> None:
    h = hashing.crc32(b"123456789")
    assert (h.name, h.digest_size, h.hexdigest()) == ("crc32", 4, "cbf43926")
    assert h.digest() == bytes.fromhex("cbf43926")
    assert hashing.md5().name == "md5"
    assert hashing.sha1().name == "sha1"
    assert hashing.sha256().name == "sha256"
    assert hashing.algorithms_available == {"md5", "sha1", "sha256", "crc32"}


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_empty_input(algorithm: str) -> None:
    assert hashing.new(algorithm).hexdigest() == reference_hex(algorithm, b"")
    assert hashing.new(algorithm, b"").digest() == bytes.fromhex(reference_hex(algorithm, b""))


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_digest_is_repeatable_and_hashing_goes_on(algorithm: str) -> None:
    h = hashing.new(algorithm, b"firmware")
    first = h.digest()
    assert h.digest() == first
    assert h.hexdigest() == first.hex()
    h.update(b" v2")
    assert h.hexdigest() == reference_hex(algorithm, b"firmware v2")


@pytest.mark.parametrize("algorithm", ALL_ALGORITHMS)
def test_copy_is_independent(algorithm: str) -> None:
    h = hashing.new(algorithm, b"common prefix ")
    c = h.copy()
    h.update(b"one")
    c.update(b"two")
    assert h.hexdigest() == reference_hex(algorithm, b"common prefix one")
    assert c.hexdigest() == reference_hex(algorithm, b"common prefix two")
    assert c is not h
    assert c.name == algorithm


def test_names_are_case_insensitive_and_accept_manifest_spellings() -> None:
    assert hashing.new("SHA256", b"x").hexdigest() == hashlib.sha256(b"x").hexdigest()
    assert hashing.new("SHA-256", b"x").hexdigest() == hashlib.sha256(b"x").hexdigest()
    assert hashing.new("Md5", b"x").hexdigest() == hashlib.md5(b"x").hexdigest()


def test_unknown_algorithm_names_the_choices() -> None:
    with pytest.raises(UnknownAlgorithmError, match=r"sha512.*md5, sha1, sha256, crc32"):
        hashing.new("sha512")
    assert issubclass(UnknownAlgorithmError, ValueError)


def test_every_buffer_kind_is_accepted(tmp_path: Path) -> None:
    data = bytes(range(256)) * 64
    expected = hashlib.sha256(data).hexdigest()
    path = tmp_path / "blob"
    path.write_bytes(data)
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
        assert hashing.sha256(mapped).hexdigest() == expected
    for buffer in (data, bytearray(data), memoryview(data), array.array("B", data)):
        assert hashing.sha256(buffer).hexdigest() == expected
    # Multi-byte items are hashed as raw bytes, as hashlib does.
    words = array.array("I", range(1000))
    assert hashing.md5(words).hexdigest() == hashlib.md5(words).hexdigest()
    # A slice of a memoryview is hashed in place.
    view = memoryview(data)[100:3000]
    assert hashing.md5(view).hexdigest() == hashlib.md5(data[100:3000]).hexdigest()


def test_non_contiguous_and_text_inputs_are_refused() -> None:
    with pytest.raises(BufferError):
        hashing.md5(memoryview(b"abcdef")[::2])
    with pytest.raises(TypeError, match="encoded"):
        hashing.md5("text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        hashing.md5(12345)  # type: ignore[arg-type]


def test_large_buffers_are_not_copied(tmp_path: Path) -> None:
    """Hashing a 256 MiB bytearray through a memoryview adds no 256 MiB copy (peak RSS)."""
    script = """
import resource, sys
from otaflash import hashing
data = bytearray(256 << 20)
data[::4096] = b"\\x01" * len(data[::4096])   # touch every page
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for name in ("md5", "sha256", "crc32"):
    hashing.new(name, memoryview(data)).hexdigest()
    hashing.new(name).update(data)
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(grown)
"""
    grown_kib = int(subprocess.check_output([sys.executable, "-c", script], timeout=120))
    assert grown_kib < 16 * 1024, f"peak RSS grew by {grown_kib} KiB while hashing 256 MiB"


def test_update_releases_the_gil() -> None:
    """While one thread hashes 512 MiB, another Python thread keeps running."""
    data = bytearray(512 << 20)
    done = threading.Event()

    def work() -> None:
        hashing.md5(data)
        done.set()

    gaps = []
    worker = threading.Thread(target=work)
    last = time.perf_counter()
    worker.start()
    while not done.is_set():
        now = time.perf_counter()
        gaps.append(now - last)
        last = now
        time.sleep(0.001)
    worker.join()
    assert len(gaps) > 20, "the main thread barely ran while hashing"
    assert max(gaps) < 0.25, f"main thread stalled {max(gaps):.2f}s: GIL held during update"


def test_concurrent_updates_of_one_hasher_are_serialised() -> None:
    """Two threads feeding one hasher: the result is one of the two orders, never garbage."""
    a, b = b"A" * (8 << 20), b"B" * (8 << 20)
    for _ in range(5):
        h = hashing.sha256()
        threads = [threading.Thread(target=h.update, args=(part,)) for part in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert h.hexdigest() in {
            hashlib.sha256(a + b).hexdigest(),
            hashlib.sha256(b + a).hexdigest(),
        }


@given(
    algorithm=st.sampled_from(ALL_ALGORITHMS),
    data=st.binary(max_size=5000),
    cuts=st.lists(st.integers(min_value=0, max_value=5000), max_size=12),
)
def test_any_chunking_gives_the_reference_answer(
    algorithm: str, data: bytes, cuts: list[int]
) -> None:
    h = hashing.new(algorithm)
    start = 0
    for cut in sorted(min(c, len(data)) for c in cuts):
        h.update(data[start:cut])
        start = cut
    h.update(memoryview(data)[start:])
    assert h.hexdigest() == reference_hex(algorithm, data)


@given(
    data=st.binary(min_size=2048, max_size=20000),
    chunk=st.integers(min_value=1, max_value=9000),
)
def test_detached_and_attached_paths_agree(data: bytes, chunk: int) -> None:
    # Updates of >= 2 KiB run with the GIL released, smaller ones do not.
    h = hashing.md5()
    for start in range(0, len(data), chunk):
        h.update(bytearray(data[start : start + chunk]))
    assert h.hexdigest() == hashlib.md5(data).hexdigest()


def test_verify_file(tmp_path: Path) -> None:
    path = tmp_path / "fw.bin"
    path.write_bytes(b"image" * 1000)
    good = {"md5": hashlib.md5(path.read_bytes()).hexdigest()}
    assert hashing.verify_file(path, good, size=5000)["md5"] == good["md5"]
    assert hashing.verify_file(path, {"SHA-256": hashlib.sha256(b"image" * 1000).hexdigest()})
    with pytest.raises(VerifyError, match="md5 mismatch") as info:
        hashing.verify_file(path, {"md5": "0" * 32})
    assert (info.value.expected, info.value.actual) == ("0" * 32, good["md5"])
    with pytest.raises(VerifyError, match="size mismatch, expected 4999 bytes, got 5000"):
        hashing.verify_file(path, good, size=4999)
    with pytest.raises(InputError):
        hashing.verify_file(path, {})


def test_hasher_repr_and_pickling_refusal() -> None:
    h = hashing.md5()
    assert "md5" in repr(h)
    with pytest.raises(TypeError):
        pickle.dumps(h)
