"""Resumable verified downloads against a real socket server that cuts connections."""

from __future__ import annotations

import hashlib
import random
import threading
from pathlib import Path

import pytest

from otaflash.download import Expected, download
from otaflash.errors import Cancelled, DownloadError, VerifyError

from .servicekit import CuttingServer, image

SIZE = 256 * 1024
CHUNK = 16 * 1024
DATA = image(SIZE, 7)
EXPECTED = Expected(
    SIZE, md5=hashlib.md5(DATA).hexdigest(), sha256=hashlib.sha256(DATA).hexdigest()
)


@pytest.fixture(name="http")
def http_fixture() -> CuttingServer:
    server = CuttingServer(DATA)
    yield server
    server.close()


def fetch(url: str, **options: object) -> tuple[bytes, object]:
    received = bytearray()
    result = download(url, received.extend, EXPECTED, chunk_size=CHUNK, backoff=0, **options)
    return bytes(received), result


def check_resumes(server: CuttingServer, cuts: list[int]) -> None:
    """Every resume starts at or before its cut, at most one chunk before it."""
    resumed = server.starts[1:]
    assert len(resumed) == len(cuts)
    for cut, start in zip(sorted(cuts), resumed, strict=True):
        assert start <= cut, f"resumed at {start}, past the cut at {cut}: bytes were skipped"
        assert cut - start <= CHUNK, f"cut at {cut}, resumed at {start}: more than one chunk"


def test_cut_at_1000_random_offsets_gives_the_exact_image_every_time(http: CuttingServer) -> None:
    rng = random.Random(1000)
    offsets = [rng.randrange(1, SIZE) for _ in range(1000)]
    for cut in offsets:
        http.cuts, http.starts = [cut], []
        data, result = fetch(http.url)
        assert data == DATA, f"wrong image after a cut at {cut}"
        check_resumes(http, [cut])
        assert result.requests == 2  # type: ignore[attr-defined]


def test_many_cuts_in_one_download(http: CuttingServer) -> None:
    rng = random.Random(5)
    cuts = sorted(rng.sample(range(1, SIZE), 200))
    http.cuts = list(cuts)
    data, result = fetch(http.url)
    assert data == DATA
    check_resumes(http, cuts)
    assert result.requests == 201  # type: ignore[attr-defined]


def test_tampered_bytes_are_rejected(http: CuttingServer) -> None:
    http.tamper_at = SIZE // 3
    with pytest.raises(VerifyError, match="SHA-256 mismatch"):
        fetch(http.url)


def test_no_progress_fails_after_bounded_retries(http: CuttingServer) -> None:
    # The link drops after two chunks; from then on the server only answers 503.
    http.cuts = [2 * CHUNK]
    data = bytearray()

    def sink(chunk: memoryview) -> None:
        data.extend(chunk)
        if len(data) >= 2 * CHUNK:
            http.status = 503

    with pytest.raises(DownloadError, match="4 attempts in a row"):
        download(http.url, sink, EXPECTED, chunk_size=CHUNK, backoff=0, retries=3)
    assert len(http.starts) == 1 + 4
    assert bytes(data) == DATA[: 2 * CHUNK]


def test_not_found_is_not_retried(http: CuttingServer) -> None:
    http.status = 404
    with pytest.raises(DownloadError, match="HTTP 404"):
        fetch(http.url)
    assert len(http.starts) == 1


def test_content_length_is_required(http: CuttingServer) -> None:
    http.chunked = True
    with pytest.raises(DownloadError, match="no Content-Length"):
        fetch(http.url)


def test_wrong_size_on_the_server_is_a_verify_error(tmp_path: Path) -> None:
    server = CuttingServer(DATA[:-1])
    try:
        with pytest.raises(VerifyError, match="262143 bytes"):
            fetch(server.url)
    finally:
        server.close()


def test_a_server_without_range_support_still_gives_the_exact_image(http: CuttingServer) -> None:
    http.ignore_range = True
    http.cuts = [SIZE // 2]
    data, result = fetch(http.url)
    assert data == DATA
    assert result.refetched >= SIZE // 2 - CHUNK  # type: ignore[attr-defined]


def test_cancel_stops_between_chunks(http: CuttingServer) -> None:
    cancel = threading.Event()
    got = bytearray()

    def sink(chunk: memoryview) -> None:
        got.extend(chunk)
        if len(got) >= 4 * CHUNK:
            cancel.set()

    with pytest.raises(Cancelled):
        download(http.url, sink, EXPECTED, chunk_size=CHUNK, cancel=cancel)
    assert len(got) == 4 * CHUNK


def test_cache_dir_resumes_after_a_crash_and_reuses_a_finished_file(
    http: CuttingServer, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"

    def crash_at(limit: int):  # type: ignore[no-untyped-def]
        got = bytearray()

        def sink(chunk: memoryview) -> None:
            if len(got) + len(chunk) > limit:
                raise KeyboardInterrupt  # the process dies mid-download
            got.extend(chunk)

        return sink

    with pytest.raises(KeyboardInterrupt):
        download(http.url, crash_at(100_000), EXPECTED, chunk_size=CHUNK, cache_dir=cache)
    part = cache / f"{EXPECTED.sha256}.part"
    assert 0 < part.stat().st_size <= 100_000
    http.starts = []
    data, result = fetch(http.url, cache_dir=cache)
    assert data == DATA
    assert http.starts == [part_size := result.from_cache]  # type: ignore[attr-defined]
    assert part_size > 0
    assert (cache / EXPECTED.sha256).read_bytes() == DATA
    http.starts = []
    data, result = fetch(http.url, cache_dir=cache)
    assert data == DATA
    assert http.starts == []  # served from the cache, no request at all
    assert result.from_cache == SIZE  # type: ignore[attr-defined]


def test_a_corrupt_cache_is_rejected_and_removed(http: CuttingServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    bad = bytearray(DATA)
    bad[10] ^= 1
    (cache / str(EXPECTED.sha256)).write_bytes(bad)
    with pytest.raises(VerifyError):
        fetch(http.url, cache_dir=cache)
    assert not (cache / str(EXPECTED.sha256)).exists()
    data, _ = fetch(http.url, cache_dir=cache)
    assert data == DATA


def test_a_sink_error_is_not_retried(http: CuttingServer) -> None:
    def sink(_chunk: memoryview) -> None:
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        download(http.url, sink, EXPECTED, chunk_size=CHUNK, backoff=0)
    assert len(http.starts) == 1
