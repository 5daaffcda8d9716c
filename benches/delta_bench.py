#!/usr/bin/env python3
"""Delta engine benchmark: otaflash against its peers, side by side, one run.

Every tool runs as a whole process under GNU time (wall time from a monotonic
clock around start-to-exit, peak RSS from ``%M``), every output is compared
with the real new image, and the medians go to a JSON file and a Markdown
table. Applies repeat for about RUN_BUDGET_S seconds each (3 to 31 runs).
otaflash runs as ``otaflash-delta`` (the engine's small Rust CLI; no
Python start-up, like the peers' C programs), plus one ``python -m otaflash
patch`` row so the product's own CLI is on the table too. In-process
throughput comes from ``otaflash-delta apply --stats``.

Peers (as in ../shared/reference/delta-anchors.md): bsdiff/bspatch, xdelta3,
zstd --patch-from (Debian), detools and the hdiffpatch wrapper (PyPI), and
HDiffPatch's own hdiffz/hpatchz (built by ../shared/bench/build_hdiffz.sh).
A peer that is not installed is reported as missing, not skipped silently.

    python benches/delta_bench.py CORPUS WORK --ours target/release/otaflash-delta \\
        [--peer-python .venv-bench/bin/python] [--hdiffz-dir DIR] [--pairs a,b] \\
        [--runs 3] [--json out.json] [--markdown out.md]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

BIG = 8 << 20
PAIR_ORDER = ["greatfet-fw", "nrf52-connectivity", "libcrypto3", "shellcheck", "ruff"]

HDIFFPATCH_CLI = """
import sys, hdiffpatch
cmd, *a = sys.argv[1:]
rd = lambda p: open(p, 'rb').read()
if cmd == 'diff':
    old, new, out = a
    open(out, 'wb').write(hdiffpatch.diff(rd(old), rd(new), 'lzma', validate=False))
else:
    old, patch, out = a
    open(out, 'wb').write(hdiffpatch.apply(rd(old), rd(patch)))
"""


def run_timed(cmd: list[str], timeout: float) -> tuple[float, int, str]:
    """Wall seconds, peak RSS KiB (GNU time's, which counts only the command)
    and stderr of one whole-process run.

    A blocking wait ends the clock the moment the process exits
    (subprocess's wait with a timeout polls, rounding short runs up to its
    50 ms sleeps); a timer kills a run that takes too long.
    """
    with tempfile.NamedTemporaryFile("r") as rss, tempfile.TemporaryFile() as err:
        full = ["/usr/bin/time", "-o", rss.name, "-f", "%M", *cmd]
        t0 = time.perf_counter()
        proc = subprocess.Popen(full, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        # The whole group: GNU time and the command under it.
        killer = threading.Timer(timeout, os.killpg, (proc.pid, signal.SIGKILL))
        killer.start()
        try:
            returncode = proc.wait()
        finally:
            killer.cancel()
        wall = time.perf_counter() - t0
        err.seek(0)
        stderr = err.read().decode(errors="replace")
        if returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({returncode}): {stderr[-500:]}")
        return wall, int(rss.read().strip().splitlines()[-1]), stderr


# Quick runs are repeated until about this many seconds (at most
# MAX_RUNS): on a shared 2-core machine one run of a 0.1 s apply varies by
# +-10 %, so three runs' median would decide a ratio near 1.0 by chance.
RUN_BUDGET_S = 3.0
MAX_RUNS = 31


class Series:
    """Repeated whole-process runs of one command: `warmup` unrecorded, then
    `runs`; with a `budget`, quick commands get more runs, as many as fit it
    (timed by the last warmup run), up to MAX_RUNS."""

    def __init__(
        self, cmd: list[str], runs: int, warmup: int, timeout: float, *, budget: float = 0.0
    ) -> None:
        self.cmd, self.warmup, self.timeout, self.budget = cmd, warmup, timeout, budget
        self.total = warmup + runs
        self.done = 0
        self.walls: list[float] = []
        self.rsss: list[int] = []
        self.stderrs: list[str] = []

    def pending(self) -> bool:
        return self.done < self.total

    def run_once(self) -> None:
        wall, rss, stderr = run_timed(self.cmd, self.timeout)
        if self.done < self.warmup:
            if self.budget and self.done == self.warmup - 1:
                runs = self.total - self.warmup
                more = min(MAX_RUNS, max(runs, int(self.budget / max(wall, 1e-3))))
                self.total = self.warmup + more
        else:
            self.walls.append(wall)
            self.rsss.append(rss)
            self.stderrs.append(stderr)
        self.done += 1

    def result(self) -> dict[str, Any]:
        return {
            "cmd": self.cmd,
            "wall": statistics.median(self.walls),
            "wall_min": min(self.walls),
            "wall_max": max(self.walls),
            "runs": len(self.walls),
            "rss_mib": statistics.median(self.rsss) / 1024,
            "stderr": self.stderrs,
        }


def interleave(series: list[Series]) -> None:
    """Runs every series to its end in rounds, one run of each per round:
    on a shared machine the load drifts over seconds, and tools timed one
    after another met different loads (ruff's hpatchz 0.091 s in one run,
    0.107 s in another, while ours stayed at 0.112 s)."""
    while any(s.pending() for s in series):
        for s in series:
            if s.pending():
                s.run_once()


class Tool:
    """One row: how to make a patch (None: reuse the previous row's) and apply it."""

    def __init__(
        self,
        name: str,
        create: Callable[[str, str, str], list[str]] | None,
        apply: Callable[[str, str, str], list[str]],
        ext: str,
        needs: list[str],
        *,
        ours: bool = False,
    ) -> None:
        self.name, self.create, self.apply, self.ext = name, create, apply, ext
        self.needs, self.ours = needs, ours


def tools(ours: str, peer_python: str | None, hdz: str | None, py: str) -> list[Tool]:
    hdiffz = os.path.join(hdz, "hdiffz") if hdz else "hdiffz"
    hpatchz = os.path.join(hdz, "hpatchz") if hdz else "hpatchz"
    detools = [peer_python, "-m", "detools"] if peer_python else ["detools"]
    hdp = [peer_python or sys.executable, "-c", HDIFFPATCH_CLI]

    def applying(fmt: str, ext: str) -> Tool:
        """Ours applying the previous row's foreign patch."""
        return Tool(
            f"otaflash applying that {fmt} patch",
            None,
            lambda o, p, out: [ours, "apply", o, p, out, "--stats"],
            ext,
            [ours],
            ours=True,
        )

    return [
        Tool(
            "otaflash (zstd, 2 MiB window)",
            lambda o, n, p: [ours, "diff", o, n, p],
            lambda o, p, out: [ours, "apply", o, p, out, "--stats"],
            "otp",
            [ours],
            ours=True,
        ),
        Tool(
            "otaflash (lzma2, 2 MiB dictionary)",
            lambda o, n, p: [ours, "diff", o, n, p, "--compression", "lzma2"],
            lambda o, p, out: [ours, "apply", o, p, out, "--stats"],
            "otl",
            [ours],
            ours=True,
        ),
        Tool(
            "otaflash via `python -m otaflash patch`",
            None,
            lambda o, p, out: [py, "-m", "otaflash", "patch", o, p, "-o", out],
            "otp",
            [py],
            ours=True,
        ),
        Tool(
            "bsdiff 4.3 (BSDIFF40, bzip2)",
            lambda o, n, p: ["bsdiff", o, n, p],
            lambda o, p, out: ["bspatch", o, out, p],
            "bsdiff",
            ["bsdiff", "bspatch"],
        ),
        applying("BSDIFF40", "bsdiff"),
        Tool(
            "xdelta3 -9 (VCDIFF, lzma 2nd)",
            lambda o, n, p: ["xdelta3", "-e", "-9", "-f", "-s", o, n, p],
            lambda o, p, out: ["xdelta3", "-d", "-f", "-s", o, p, out],
            "vcdiff",
            ["xdelta3"],
        ),
        applying("VCDIFF", "vcdiff"),
        Tool(
            "zstd -19 --long=27 --patch-from",
            lambda o, n, p: [
                "zstd",
                "-q",
                "-f",
                "-19",
                "--long=27",
                f"--patch-from={o}",
                n,
                "-o",
                p,
            ],
            lambda o, p, out: [
                "zstd",
                "-q",
                "-d",
                "-f",
                "--long=27",
                f"--patch-from={o}",
                p,
                "-o",
                out,
            ],
            "zst",
            ["zstd"],
        ),
        Tool(
            "detools sequential/bsdiff/lzma (default)",
            lambda o, n, p: [*detools, "create_patch", o, n, p],
            lambda o, p, out: [*detools, "apply_patch", o, p, out],
            "detools",
            [detools[0]],
        ),
        Tool(
            "detools hdiffpatch/hdiffpatch/lzma",
            lambda o, n, p: [
                *detools,
                "create_patch",
                "-t",
                "hdiffpatch",
                "-a",
                "hdiffpatch",
                o,
                n,
                p,
            ],
            lambda o, p, out: [*detools, "apply_patch", o, p, out],
            "detools-hdp",
            [detools[0]],
        ),
        Tool(
            "hdiffpatch wrapper diff -m, lzma 7/8m",
            lambda o, n, p: [*hdp, "diff", o, n, p],
            lambda o, p, out: [*hdp, "apply", o, p, out],
            "hdp-lzma",
            [hdp[0]],
        ),
        Tool(
            "hdiffz -m-6 -SD -c-zstd-21-24; hpatchz -s-8m",
            lambda o, n, p: [hdiffz, "-m-6", "-SD", "-d", "-f", "-p-1", "-c-zstd-21-24", o, n, p],
            lambda o, p, out: [hpatchz, "-f", o, p, out],
            "hdz-zstd",
            [hdiffz, hpatchz],
        ),
        Tool(
            "hdiffz -m-6 -SD -c-lzma2-9-16m; hpatchz -s-8m",
            lambda o, n, p: [hdiffz, "-m-6", "-SD", "-d", "-f", "-p-1", "-c-lzma2-9-16m", o, n, p],
            lambda o, p, out: [hpatchz, "-f", o, p, out],
            "hdz-lzma2",
            [hdiffz, hpatchz],
        ),
    ]


def available(tool: Tool, peer_python: str | None) -> bool:
    if tool.needs and tool.needs[0] == peer_python:
        return True
    return all(shutil.which(n) or os.access(n, os.X_OK) for n in tool.needs)


def bench_pair(  # noqa: PLR0917
    name: str,
    old: str,
    new: str,
    work: Path,
    rows: list[Tool],
    runs: int,
    timeout: float,
    peer_python: str | None,
    only: list[str],
) -> dict[str, Any]:
    new_bytes = Path(new).read_bytes()
    size = len(new_bytes)
    big = size > BIG
    out_rows: dict[str, Any] = {}
    patch = ""
    # First every patch is made (a large pair's creates run once: they take
    # seconds), then every apply (and a small pair's further creates) runs
    # interleaved with the others, so all meet the same machine load.
    planned: list[tuple[Tool, str, str, Series | None, Series]] = []
    for index, tool in enumerate(rows):
        if only and not any(s in tool.name for s in only):
            patch = ""
            continue
        if not available(tool, peer_python):
            out_rows[tool.name] = {"tool": tool.name, "error": "not installed"}
            continue
        print(f"[{name}] {tool.name} ...", file=sys.stderr, flush=True)
        try:
            creates = None
            if tool.create is not None:
                patch = str(work / f"{name}.{tool.ext}")
                creates = Series(tool.create(old, new, patch), 1 if big else runs, 0, timeout)
                creates.run_once()
            if not patch or not os.path.exists(patch):
                continue
            # One output per row: rows that share a patch run interleaved.
            out = str(work / f"{name}.{index}.out")
            applies = Series(tool.apply(old, patch, out), runs, 1, timeout, budget=RUN_BUDGET_S)
            applies.run_once()
        except (RuntimeError, subprocess.TimeoutExpired) as e:
            out_rows[tool.name] = {"tool": tool.name, "error": str(e)[:300]}
            continue
        planned.append((tool, patch, out, creates, applies))
    try:
        interleave([s for *_, c, a in planned for s in (c, a) if s is not None])
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        for tool, *_ in planned:
            out_rows[tool.name] = {"tool": tool.name, "error": str(e)[:300]}
        return {"old_bytes": os.path.getsize(old), "new_bytes": size, "rows": out_rows}
    for tool, patch, out, create_series, apply_series in planned:
        create = create_series.result() if create_series else None
        apply = apply_series.result()
        identical = Path(out).read_bytes() == new_bytes
        os.unlink(out)
        row: dict[str, Any] = {
            "tool": tool.name,
            "ours": tool.ours,
            "patch_bytes": os.path.getsize(patch),
            "create": create,
            "apply": apply,
            "identical": identical,
        }
        stats = [
            json.loads(line)
            for s in apply["stderr"]
            for line in s.splitlines()
            if line.startswith("{")
        ]
        if stats:
            row["in_process_s"] = statistics.median(s["apply_seconds"] for s in stats)
            row["working_set"] = stats[0]["working_set"]
        out_rows[tool.name] = row
        print(
            f"[{name}] {tool.name}: {row['patch_bytes']} B, "
            f"create {create['wall'] if create else 0:.3f}s, "
            f"apply {apply['wall']:.4f}s {apply['rss_mib']:.1f} MiB, identical={identical}",
            file=sys.stderr,
            flush=True,
        )
    return {"old_bytes": os.path.getsize(old), "new_bytes": size, "rows": out_rows}


def fmt_s(s: float) -> str:
    return f"{s:.4f}" if s < 0.1 else f"{s:.3f}" if s < 10 else f"{s:.2f}"


def markdown(results: dict[str, Any]) -> str:
    lines: list[str] = []
    order = [p for p in PAIR_ORDER if p in results] + sorted(set(results) - set(PAIR_ORDER))
    for pair in order:
        r = results[pair]
        new = r["new_bytes"]
        lines += [
            f"#### {pair} (old {r['old_bytes']:,} B, new {new:,} B)",
            "",
            "| tool | patch bytes | % of new | create s | create MiB | apply s | apply MiB"
            " | in-process MB/s | identical |",
            "|---|---:|---:|---:|---:|---:|---:|---:|:---:|",
        ]
        rows = sorted(r["rows"].values(), key=lambda x: x.get("patch_bytes", 1 << 62))
        for x in rows:
            if "error" in x:
                lines.append(f"| {x['tool']} | {x['error']} | | | | | | | |")
                continue
            c, a = x["create"], x["apply"]
            tput = f"{new / x['in_process_s'] / 1e6:.0f}" if x.get("in_process_s") else ""
            create_s = fmt_s(c["wall"]) if c else "(same patch)"
            create_mib = f"{c['rss_mib']:.1f}" if c else ""
            lines.append(
                f"| {x['tool']} | {x['patch_bytes']:,} | {100 * x['patch_bytes'] / new:.2f}% | "
                f"{create_s} | {create_mib} | {fmt_s(a['wall'])} | "
                f"{a['rss_mib']:.1f} | {tput} | {'yes' if x['identical'] else '**NO**'} |"
            )
        lines.append("")
    lines.append(goals(results))
    return "\n".join(lines)


def goals(results: dict[str, Any]) -> str:
    """The issue's four goals, per pair and per otaflash codec, from this run."""
    lines = [
        "#### Goals (ours / peer, from this run)",
        "",
        "| pair | otaflash | size / best peer (best) | apply time / hpatchz zstd"
        " | apply time / hpatchz lzma2 | apply time / zstd"
        " | apply MiB (ours, hpatchz) | working set KiB | diff time / bsdiff |",
        "|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    ratios: dict[str, list[float]] = {}
    order = [p for p in PAIR_ORDER if p in results] + sorted(set(results) - set(PAIR_ORDER))
    for pair in order:
        rows = [x for x in results[pair]["rows"].values() if "error" not in x and x["identical"]]
        peers = [x for x in rows if not x.get("ours")]
        if not peers:
            continue
        best = min(peers, key=lambda x: x["patch_bytes"])
        hp = next((x for x in rows if x["tool"].startswith("hdiffz -m-6 -SD -c-zstd")), None)
        bs = next((x for x in rows if x["tool"].startswith("bsdiff")), None)
        hp_mib = hp["apply"]["rss_mib"] if hp else float("nan")
        for ours in (x for x in rows if x.get("ours") and x["create"]):
            codec = ours["tool"].split("(")[1].split(",")[0]
            size_ratio = ours["patch_bytes"] / best["patch_bytes"]
            ratios.setdefault(codec, []).append(size_ratio)

            def ratio(name: str, *, ours: dict[str, Any] = ours, rows: list[Any] = rows) -> str:
                peer = next((x for x in rows if x["tool"].startswith(name)), None)
                return f"{ours['apply']['wall'] / peer['apply']['wall']:.2f}" if peer else "n/a"

            diff_ratio = ours["create"]["wall"] / bs["create"]["wall"] if bs else float("nan")
            lines.append(
                f"| {pair} | {codec} | {size_ratio:.3f} ({best['tool']}, "
                f"{best['patch_bytes']:,} B) | {ratio('hdiffz -m-6 -SD -c-zstd')} | "
                f"{ratio('hdiffz -m-6 -SD -c-lzma2')} | {ratio('zstd -19')} | "
                f"{ours['apply']['rss_mib']:.1f}, {hp_mib:.1f} | "
                f"{ours.get('working_set', 0) // 1024} | {diff_ratio:.2f} |"
            )
    for codec, rs in ratios.items():
        geo = math.exp(sum(math.log(r) for r in rs) / len(rs))
        lines += ["", f"Geometric mean of size / best peer, otaflash {codec}: {geo:.3f}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("corpus")
    ap.add_argument("work")
    ap.add_argument("--ours", required=True, help="the otaflash-delta binary")
    ap.add_argument("--python", default=sys.executable, help="python with otaflash installed")
    ap.add_argument("--peer-python", default=None, help="python with detools and hdiffpatch")
    ap.add_argument("--hdiffz-dir", default=None)
    ap.add_argument("--pairs", default="")
    ap.add_argument("--tools", default="", help="comma-separated substrings of tool names")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--json", default=None)
    ap.add_argument("--markdown", default=None)
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    pairs = (
        a.pairs.split(",")
        if a.pairs
        else sorted(
            d for d in os.listdir(a.corpus) if os.path.isfile(os.path.join(a.corpus, d, "new"))
        )
    )
    rows = tools(a.ours, a.peer_python, a.hdiffz_dir, a.python)
    only = [s for s in a.tools.split(",") if s]
    results: dict[str, Any] = {}
    for pair in pairs:
        old, new = (os.path.join(a.corpus, pair, side) for side in ("old", "new"))
        results[pair] = bench_pair(
            pair, old, new, work, rows, a.runs, a.timeout, a.peer_python, only
        )
        if a.json:
            Path(a.json).write_text(json.dumps(results, indent=1))
    text = markdown(results)
    if a.markdown:
        Path(a.markdown).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
