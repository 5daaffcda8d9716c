"""Hashing: hashlib-compatible objects and single-pass multi-digest files.

MD5, SHA-1, SHA-256 and CRC-32 run in the Rust core. Objects follow hashlib:
``digest()`` may be called repeatedly and hashing can go on afterwards.
Updates of 2 KiB or more release the GIL, so threads hash in parallel.

>>> from otaflash import hashing
>>> hashing.new("sha256", b"abc").hexdigest()[:16]
'ba7816bf8f01cfea'
>>> hashing.crc32(b"123456789").hexdigest()
'cbf43926'
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from otaflash import _core
from otaflash.errors import InputError, VerifyError

if TYPE_CHECKING:
    from typing_extensions import Buffer

    from otaflash.progress import ProgressCallback

__all__ = [
    "DEFAULT_FILE_ALGORITHMS",
    "FileDigests",
    "Hasher",
    "algorithms_available",
    "crc32",
    "hash_file",
    "md5",
    "new",
    "sha1",
    "sha256",
    "verify_file",
]

Hasher = _core.Hasher

#: Names accepted by :func:`new` (case-insensitive; ``SHA-256`` style too).
algorithms_available: frozenset[str] = frozenset({"md5", "sha1", "sha256", "crc32"})

#: What update manifests carry, and what :func:`hash_file` computes by default.
DEFAULT_FILE_ALGORITHMS: tuple[str, ...] = ("md5", "sha256")


def new(name: str, data: Buffer = b"") -> Hasher:
    """A new hasher for ``name``, like :func:`hashlib.new`."""
    return Hasher(name, data)


def md5(data: Buffer = b"") -> Hasher:
    return Hasher("md5", data)


def sha1(data: Buffer = b"") -> Hasher:
    return Hasher("sha1", data)


def sha256(data: Buffer = b"") -> Hasher:
    return Hasher("sha256", data)


def crc32(data: Buffer = b"") -> Hasher:
    """CRC-32 (zlib's); its digest is big-endian, its hex ``format(zlib.crc32(d), "08x")``."""
    return Hasher("crc32", data)


class FileDigests(dict[str, str]):
    """``{name: hexdigest}`` in the order asked for, plus ``size``: the bytes hashed."""

    def __init__(self, size: int, digests: Iterable[tuple[str, str]]) -> None:
        super().__init__(digests)
        self.size = size

    def __repr__(self) -> str:
        return f"FileDigests(size={self.size}, {dict.__repr__(self)})"


def hash_file(
    path: str | os.PathLike[str],
    algorithms: Iterable[str] = DEFAULT_FILE_ALGORITHMS,
    *,
    progress: ProgressCallback | None = None,
) -> FileDigests:
    """Hex digests of the file at ``path``, all computed in one read pass.

    Returns :class:`FileDigests`: ``{name: hexdigest}`` and ``.size``. The algorithms run
    concurrently, so MD5 and SHA-256 together take about as long as MD5 alone.
    ``progress("hash", done, total)`` is called as :mod:`otaflash.progress`
    describes. Ctrl-C interrupts it. Raises :class:`~otaflash.errors.MissingFileError`,
    :class:`~otaflash.errors.FileAccessError`,
    :class:`~otaflash.errors.NotAFileError` (all :class:`OSError` too) or
    :class:`~otaflash.errors.UnknownAlgorithmError`.
    """
    names = _algorithm_list(algorithms)
    size, digests = _core.hash_file(os.fspath(path), names, progress)
    return FileDigests(size, digests)


def verify_file(
    path: str | os.PathLike[str],
    expected: Mapping[str, str],
    *,
    size: int | None = None,
) -> FileDigests:
    """Checks the file against expected hex digests (and size); returns the digests.

    Raises :class:`~otaflash.errors.VerifyError` naming the first mismatch.
    """
    if not expected:
        raise InputError("no expected digest given to verify against")
    wanted = {
        name.lower().replace("-", ""): value.strip().lower() for name, value in expected.items()
    }
    digests = hash_file(path, wanted)
    if size is not None and digests.size != size:
        raise VerifyError(
            f"{os.fspath(path)}: size mismatch, expected {size} bytes, got {digests.size}",
            os.fspath(path),
            str(size),
            str(digests.size),
        )
    for name, value in wanted.items():
        if digests[name] != value:
            raise VerifyError(
                f"{os.fspath(path)}: {name} mismatch, expected {value}, got {digests[name]}",
                os.fspath(path),
                value,
                digests[name],
            )
    return digests


def _algorithm_list(algorithms: Iterable[str]) -> list[str]:
    if isinstance(algorithms, str):
        algorithms = algorithms.split(",")
    names = [name.strip() for name in algorithms if name.strip()]
    if not names:
        raise InputError("no hash algorithm given; choose from md5, sha1, sha256, crc32")
    return names
