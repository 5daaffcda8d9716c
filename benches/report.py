"""Prints the benchmark ratios against the targets from a pytest-benchmark JSON file.

Usage: python benches/report.py target/bench.json
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable

from report_serial import serial_report

MIB = 1 << 20
HASH_BYTES = 256 * MIB


def main(path: str) -> int:
    with open(path) as f:
        benches = json.load(f)["benchmarks"]
    median: dict[tuple[str, ...], float] = {}
    for bench in benches:
        info = bench["extra_info"]
        key = tuple(str(info.get(k, "")) for k in ("case", "algo", "impl", "threads"))
        median[key] = bench["stats"]["median"]
    rows: list[tuple[str, str, str, bool]] = []
    failures = 0

    def check(
        label: str, value: float, target: str, ok: Callable[[float], bool], note: str
    ) -> None:
        nonlocal failures
        passed = ok(value)
        failures += not passed
        rows.append((label, f"{value:.3f}", f"{target}  {note}", passed))

    for case in ("buffer", "file"):
        for algo in ("md5", "sha256", "sha1", "crc32"):
            ours = median.get((case, algo, "otaflash", ""))
            peer = median.get((case, algo, "peer", ""))
            if ours is None or peer is None:
                continue
            peer_name = "zlib" if algo == "crc32" else "hashlib"
            check(
                f"{case} {algo}: throughput vs {peer_name}",
                peer / ours,
                ">= 0.97",
                lambda r: r >= 0.97,
                f"({HASH_BYTES / ours / 1e6:.0f} vs {HASH_BYTES / peer / 1e6:.0f} MB/s)",
            )
    both = median.get(("file", "md5+sha256", "otaflash", ""))
    md5 = median.get(("file", "md5", "otaflash", ""))
    sha = median.get(("file", "sha256", "otaflash", ""))
    if both and md5 and sha:
        check(
            "file md5+sha256 / slower alone",
            both / max(md5, sha),
            "<= 1.10",
            lambda r: r <= 1.10,
            f"({both * 1e3:.0f} ms vs {max(md5, sha) * 1e3:.0f} ms)",
        )
    peer_both = median.get(("file", "md5+sha256", "peer", ""))
    if both and peer_both:
        rows.append(
            (
                "file md5+sha256: hashlib two-hasher loop / ours",
                f"{peer_both / both:.3f}",
                "info",
                True,
            )
        )
    one, two = median.get(("threads", "", "", "1")), median.get(("threads", "", "", "2"))
    if one and two:
        check(
            "two threads / one thread (2 x 128 MiB sha256)",
            two / one,
            "<= 0.60",
            lambda r: r <= 0.60,
            f"({two * 1e3:.0f} ms vs {one * 1e3:.0f} ms)",
        )
    for bench in benches:
        info = bench["extra_info"]
        if info.get("case") != "demo":
            continue
        stages = ", ".join(
            f"{key[2:]} {value:.2f}"
            for key, value in info.items()
            if key.startswith("s_") and key != "s_total"
        )
        rows.append(
            (
                f"demo {info['impl']}: bytes sent / full image",
                f"{info['ratio']:.3f}",
                f"info  (end to end {bench['stats']['median']:.2f} s; in-process "
                f"{info['s_total']:.2f} s: {stages})",
                True,
            )
        )
    if rows:
        width = max(len(r[0]) for r in rows)
        print(f"{'measure':<{width}}  ratio   target")
        for label, value, target, passed in rows:
            print(f"{label:<{width}}  {value:>6}  {target}  {'ok' if passed else 'MISSED'}")
    failures += serial_report(benches)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
