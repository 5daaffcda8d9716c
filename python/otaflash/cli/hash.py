"""Print file digests, several algorithms in one read pass.

With one algorithm the lines are exactly those of md5sum / sha256sum /
sha1sum ("HEX  FILE"); with several, BSD-tag lines as `md5sum --tag` prints
them ("MD5 (FILE) = HEX"). Both are accepted by `md5sum -c`-style checkers.
A FILE of "-" reads standard input.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

from otaflash import hashing
from otaflash.cli.output import Output
from otaflash.errors import OtaflashError, UnknownAlgorithmError
from otaflash.progress import ProgressBars

NAME = "hash"
HELP = "print MD5/SHA-256/SHA-1/CRC-32 digests of files"

#: Files this large get a progress bar when stderr is a terminal.
PROGRESS_MIN_SIZE = 256 << 20
STDIN_CHUNK = 1 << 20
TAGS = {"md5": "MD5", "sha1": "SHA1", "sha256": "SHA256", "crc32": "CRC32"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", metavar="FILE", help="files to hash (- for stdin)")
    parser.add_argument(
        "--algo",
        "-a",
        default=",".join(hashing.DEFAULT_FILE_ALGORITHMS),
        metavar="LIST",
        help="comma-separated algorithms: md5, sha256, sha1, crc32 (default: %(default)s)",
    )


def run(args: argparse.Namespace, out: Output) -> int:
    algorithms = _parse_algorithms(args.algo)
    exit_code = 0
    for path in args.files:
        try:
            digests = _hash_stdin(algorithms) if path == "-" else _hash_path(path, algorithms, out)
        except OtaflashError as error:
            out.error(error, {"path": path})
            exit_code = exit_code or error.exit_code
            continue
        record: dict[str, Any] = {"path": path, "size": digests.size, **digests}
        out.result(_format_lines(path, digests), record)
    return exit_code


def _parse_algorithms(spec: str) -> list[str]:
    names = [name.strip().lower().replace("-", "") for name in spec.split(",") if name.strip()]
    for name in names or [spec]:
        if name not in hashing.algorithms_available:
            raise UnknownAlgorithmError(
                f"unknown hash algorithm {name!r}; choose from md5, sha256, sha1, crc32"
            )
    return list(dict.fromkeys(names))


def _hash_path(path: str, algorithms: list[str], out: Output) -> hashing.FileDigests:
    size = os.stat(path).st_size if os.path.isfile(path) else 0
    if not (out.wants_progress() and size >= PROGRESS_MIN_SIZE):
        return hashing.hash_file(path, algorithms)
    with ProgressBars(label=os.path.basename(path)) as bars:
        return hashing.hash_file(path, algorithms, progress=bars)


def _hash_stdin(algorithms: list[str]) -> hashing.FileDigests:
    hashers = [hashing.new(name) for name in algorithms]
    size = 0
    while chunk := sys.stdin.buffer.read(STDIN_CHUNK):
        size += len(chunk)
        for hasher in hashers:
            hasher.update(chunk)
    return hashing.FileDigests(size, ((h.name, h.hexdigest()) for h in hashers))


def _format_lines(path: str, digests: hashing.FileDigests) -> str:
    # coreutils marks names holding a backslash or newline with a leading "\"
    # and escapes them, so every line stays one line.
    escaped = "\\" in path or "\n" in path
    name = path.replace("\\", "\\\\").replace("\n", "\\n") if escaped else path
    prefix = "\\" if escaped else ""
    if len(digests) == 1:
        ((_, hexdigest),) = digests.items()
        return f"{prefix}{hexdigest}  {name}"
    return "\n".join(
        f"{prefix}{TAGS[algorithm]} ({name}) = {hexdigest}"
        for algorithm, hexdigest in digests.items()
    )
