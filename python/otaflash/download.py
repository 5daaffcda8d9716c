"""Resumable, verified HTTP downloads into a sink: no temp copy needed.

:func:`download` streams a URL chunk by chunk into ``sink(chunk)`` — a
callable such as the delta applier's or the flash writer's ``write`` — while
MD5 and SHA-256 run over the same bytes (Rust hashers, GIL released). Every
byte reaches the sink exactly once and in order:

* the server must send ``Content-Length`` (a chunked answer is refused, as
  Alibaba's Link SDK does) and it must match the expected size;
* a cut connection, a timeout or a 5xx resumes with ``Range: bytes=N-`` from
  the first byte the sink has not had (``If-Range`` with the ETag, so a file
  that changed on the server is never spliced onto the old one); at most the
  one chunk being read when the link dropped is fetched again;
* retries are bounded: ``retries`` in a row without one new byte, with
  jittered exponential backoff; a 4xx (other than 408/429) stops at once;
* ``cancel`` (anything with ``is_set()``, e.g. :class:`threading.Event`) is
  checked between chunks and during backoff;
* when the last byte is in, the digests must match or :class:`VerifyError`
  is raised; the caller must not commit what the sink received before then.

With a ``cache_dir`` the bytes are also kept in ``<cache>/<sha256>.part``: a
process that dies mid-download resumes from there next time (the cached prefix
is replayed into the new sink, and the hashers), and a complete, verified
file is reused without a network round trip.
"""

from __future__ import annotations

import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import urllib3
from urllib3.exceptions import HTTPError as Urllib3Error

from otaflash import hashing
from otaflash.errors import Cancelled, DownloadError, InputError, VerifyError
from otaflash.progress import ProgressCallback

__all__ = ["CancelFlag", "DownloadResult", "Expected", "download", "network_reason"]

DEFAULT_CHUNK = 64 * 1024
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})
Sink = Callable[[memoryview], object]


class CancelFlag(Protocol):
    def is_set(self) -> bool: ...


@dataclass(frozen=True)
class Expected:
    """What the bytes must be: size, and the digests known (hex, any case)."""

    size: int
    md5: str | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        if self.size < 0:
            raise InputError(f"invalid expected size {self.size}")
        if self.md5 is None and self.sha256 is None:
            raise InputError("a download needs an expected MD5 or SHA-256 to verify against")


@dataclass(frozen=True)
class DownloadResult:
    size: int
    md5: str
    sha256: str
    #: Requests made (1 when nothing went wrong).
    requests: int
    #: Bytes received more than once (after cuts), and bytes taken from the cache.
    refetched: int
    from_cache: int


_pool: urllib3.PoolManager | None = None


def _pool_manager() -> urllib3.PoolManager:
    global _pool  # noqa: PLW0603 - one connection pool per process, made on first use
    if _pool is None:
        _pool = urllib3.PoolManager(num_pools=8, maxsize=4, retries=False)
    return _pool


def download(
    url: str,
    sink: Sink,
    expected: Expected,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    retries: int = 6,
    backoff: float = 0.5,
    backoff_max: float = 30.0,
    timeout: float = 30.0,
    cancel: CancelFlag | None = None,
    progress: ProgressCallback | None = None,
    cache_dir: Path | str | None = None,
) -> DownloadResult:
    """Streams ``url`` into ``sink`` and verifies it; see the module description.

    Raises :class:`DownloadError` (the link or the server failed for good),
    :class:`VerifyError` (the bytes are not the expected ones) or
    :class:`Cancelled`.
    """
    job = _Download(
        url,
        sink,
        expected,
        chunk_size=chunk_size,
        timeout=timeout,
        cancel=cancel,
        progress=progress,
    )
    cache = _Cache(Path(cache_dir), expected) if cache_dir is not None and expected.sha256 else None
    try:
        return _run(job, cache, retries, backoff, backoff_max)
    finally:
        if cache is not None:
            cache.close()


def _run(
    job: _Download, cache: _Cache | None, retries: int, backoff: float, backoff_max: float
) -> DownloadResult:
    expected, url = job.expected, job.url
    if cache is not None:
        job.replay(cache)
    failures = 0
    while job.done < expected.size:
        job.check_cancel()
        before = job.done
        try:
            job.fetch()
        except _Retryable as error:
            failures = 0 if job.done > before else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"download of {url} failed after {retries + 1} attempts in a row without "
                    f"progress ({job.done} of {expected.size} bytes): {error}"
                ) from None
            delay = min(backoff_max, backoff * (2 ** max(failures - 1, 0)))
            job.sleep(delay * random.uniform(0.5, 1.0))
    if expected.size == 0 and job.requests == 0:
        job.fetch()  # even an empty file must exist on the server
    return job.finish(cache)


class _Retryable(Exception):
    pass


class _Cache:
    def __init__(self, directory: Path, expected: Expected) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        assert expected.sha256 is not None
        self.final = directory / expected.sha256.lower()
        self.part = directory / f"{expected.sha256.lower()}.part"
        self.file: Any = None

    def open_for_append(self, offset: int) -> None:
        self.file = open(self.part, "r+b" if self.part.exists() else "wb")  # noqa: SIM115
        self.file.truncate(offset)
        self.file.seek(offset)

    def write(self, chunk: memoryview) -> None:
        self.file.write(chunk)

    def complete(self) -> None:
        if self.file is not None:
            self.file.flush()
            os.fsync(self.file.fileno())
            self.close()
            os.replace(self.part, self.final)

    def close(self) -> None:
        if self.file is not None and not self.file.closed:
            self.file.close()

    def discard(self) -> None:
        self.close()
        self.part.unlink(missing_ok=True)
        self.final.unlink(missing_ok=True)


class _Download:
    def __init__(
        self,
        url: str,
        sink: Sink,
        expected: Expected,
        *,
        chunk_size: int,
        timeout: float,
        cancel: CancelFlag | None,
        progress: ProgressCallback | None,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"cannot download {url!r}: only http:// and https:// URLs")
        self.url = url
        self.sink = sink
        self.expected = expected
        self.chunk_size = max(4096, chunk_size)
        self.timeout = urllib3.Timeout(connect=min(timeout, 20.0), read=timeout)
        self.cancel = cancel
        self.progress = progress
        self.md5 = hashing.md5()
        self.sha256 = hashing.sha256()
        self.done = 0
        self.requests = 0
        self.refetched = 0
        self.from_cache = 0
        self.etag: str | None = None
        self.cache: _Cache | None = None
        self._last_report = 0.0

    def check_cancel(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled(f"download of {self.url} cancelled at {self.done} bytes")

    def sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self.check_cancel()
            time.sleep(min(left, 0.1))

    def deliver(self, chunk: memoryview) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)
        self.sink(chunk)
        if self.cache is not None:
            self.cache.write(chunk)
        self.done += len(chunk)
        self.report()

    def report(self, final: bool = False) -> None:
        if self.progress is None:
            return
        now = time.monotonic()
        if final or now - self._last_report >= 0.1:
            self._last_report = now
            self.progress("download", self.done, self.expected.size)

    def replay(self, cache: _Cache) -> None:
        """Feeds what the cache holds (a finished file or a .part) to the sink first."""
        source = cache.final if cache.final.exists() else cache.part
        if source.exists():
            with open(source, "rb") as file:
                while self.done < self.expected.size and (block := file.read(1 << 20)):
                    block = block[: self.expected.size - self.done]
                    self.deliver(memoryview(block))
            self.from_cache = self.done
        if source == cache.final and self.done == self.expected.size:
            return  # nothing to append; verification in finish() decides
        cache.open_for_append(self.done)
        self.cache = cache

    def fetch(self) -> None:
        """One request from ``done`` on; raises _Retryable when it is worth another."""
        headers = {"Accept": "application/octet-stream", "Accept-Encoding": "identity"}
        if self.done:
            headers["Range"] = f"bytes={self.done}-"
            if self.etag:
                headers["If-Range"] = self.etag
        self.requests += 1
        try:
            response = _pool_manager().request(
                "GET",
                self.url,
                headers=headers,
                preload_content=False,
                decode_content=False,
                redirect=True,
                timeout=self.timeout,
            )
        except Urllib3Error as error:
            raise _Retryable(_reason(error)) from None
        try:
            self._read_body(response)
        finally:
            if not response.closed and response.length_remaining:
                response.close()  # never hand a half-read connection back to the pool
            response.release_conn()

    def _read_body(self, response: Any) -> None:
        skip = self._check_headers(response)
        self.etag = response.headers.get("ETag") or self.etag
        while True:
            self.check_cancel()
            # Only the network read is retried: an error from the sink (the flash
            # writer, the patcher) ends the download as it is.
            try:
                chunk = response.read(self.chunk_size)
            except Urllib3Error as error:
                raise _Retryable(_reason(error)) from None
            except OSError as error:
                raise _Retryable(str(error)) from None
            if not chunk:
                break
            view = memoryview(chunk)
            if skip:
                dropped = min(skip, len(view))
                view = view[dropped:]
                skip -= dropped
            if view:
                self._deliver_checked(view)
        if self.done < self.expected.size:
            raise _Retryable(f"connection closed at byte {self.done}")

    def _deliver_checked(self, view: memoryview) -> None:
        if self.done + len(view) > self.expected.size:
            raise VerifyError(
                f"{self.url}: the server sent more than the expected {self.expected.size} bytes",
                self.url,
            )
        self.deliver(view)

    def _check_headers(self, response: Any) -> int:
        """Checks status and headers; returns how many leading body bytes to drop."""
        status = response.status
        if status in RETRYABLE_STATUS:
            raise _Retryable(f"server answered HTTP {status}")
        if status not in (200, 206):
            raise DownloadError(
                f"download of {self.url} refused: HTTP {status} {response.reason or ''}".rstrip()
            )
        length_header = response.headers.get("Content-Length")
        if length_header is None or not length_header.isdigit():
            raise DownloadError(
                f"{self.url}: the server sent no Content-Length, so a cut transfer could not be "
                "told from a complete one"
            )
        length = int(length_header)
        skip = 0
        if status == 206:
            start, total = _content_range(response.headers.get("Content-Range"), self.url)
            if start != self.done or total != self.expected.size or length != total - start:
                raise DownloadError(
                    f"{self.url}: the server resumed at byte {start} of {total}, but "
                    f"{self.done} of {self.expected.size} were asked for"
                )
        else:  # 200: the whole file, from byte 0
            if self.done and self.etag and response.headers.get("ETag") != self.etag:
                raise DownloadError(
                    f"{self.url} changed on the server during the download (new ETag); "
                    "start the update again"
                )
            if length != self.expected.size:
                raise VerifyError(
                    f"{self.url}: the server's file is {length} bytes, the update says "
                    f"{self.expected.size}",
                    self.url,
                    str(self.expected.size),
                    str(length),
                )
            skip = self.done  # no Range support: drop what the sink already has
            self.refetched += skip
        return skip

    def finish(self, cache: _Cache | None) -> DownloadResult:
        self.report(final=True)
        md5, sha256 = self.md5.hexdigest(), self.sha256.hexdigest()
        try:
            if self.done != self.expected.size:
                raise VerifyError(
                    f"{self.url}: got {self.done} bytes, expected {self.expected.size}",
                    self.url,
                    str(self.expected.size),
                    str(self.done),
                )
            for name, want, got in (
                ("SHA-256", self.expected.sha256, sha256),
                ("MD5", self.expected.md5, md5),
            ):
                if want is not None and want.lower() != got:
                    raise VerifyError(
                        f"{self.url}: {name} mismatch, the update says {want.lower()}, the "
                        f"downloaded bytes have {got}",
                        self.url,
                        want.lower(),
                        got,
                    )
        except VerifyError:
            if cache is not None:
                cache.discard()
            raise
        if self.cache is not None:
            self.cache.complete()
        return DownloadResult(
            self.done, md5, sha256, self.requests, self.refetched, self.from_cache
        )


def _content_range(value: str | None, url: str) -> tuple[int, int]:
    # "bytes START-END/TOTAL"
    try:
        assert value is not None
        unit, _, spec = value.partition(" ")
        span, _, total = spec.partition("/")
        start, _, _end = span.partition("-")
        if unit != "bytes":
            raise ValueError(unit)
        return int(start), int(total)
    except (AssertionError, ValueError):
        raise DownloadError(f"{url}: the server's Content-Range {value!r} cannot be read") from None


def network_reason(error: Exception) -> str:
    """The cause of a urllib3 error in a few words ("[Errno 111] Connection refused")."""
    text = str(getattr(error, "reason", None) or error)
    found = re.search(r"\[Errno -?\d+\] [^'\")(]+", text)
    return found.group(0).strip() if found else text


_reason = network_reason
