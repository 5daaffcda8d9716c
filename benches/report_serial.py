"""The serial part of the benchmark report: one table from the serial cases
of a pytest-benchmark JSON file, and the checks against the targets."""

from __future__ import annotations

from typing import Any

#: esptool's published figure: 1,851,472 B (1,063,799 B compressed) in 17.6 s
#: at 921600 baud (esptool #919).
ESPTOOL_KBIT_S = 842


def serial_report(benches: list[dict[str, Any]]) -> int:
    """Prints the table; returns how many targets were missed."""
    runs = [b["extra_info"] for b in benches if b["extra_info"].get("serial")]
    if not runs:
        return 0
    failures = 0
    header = (
        f"{'scenario':<15} {'case':<16} {'image':<19} {'baud':>7} {'bytes':>8} "
        f"{'seconds':>8} {'kbit/s':>7} {'of line':>8}  target"
    )
    print("\nserial, 2 ms latency each way, emulated line (effective = image bytes / wall time)")
    print(header)
    print("-" * len(header))
    key = lambda r: (r["scenario"], r.get("pair", ""), r["baud"], r["case"])  # noqa: E731
    for r in sorted(runs, key=key):
        target = ""
        if r["scenario"] == "incompressible" and r["case"] == "otaflash":
            ok = r["of_line_rate"] >= 0.95
            failures += not ok
            target = f">= 95 % {'ok' if ok else 'MISSED'}"
        if r["scenario"] == "firmware" and r["case"] == "otaflash" and r["baud"] == 921_600:
            target = f"esptool ~{ESPTOOL_KBIT_S} kbit/s"
        print(
            f"{r['scenario']:<15} {r['case']:<16} {r.get('pair', '-'):<19} {r['baud']:>7} "
            f"{r['size']:>8} {r['seconds']:>8.2f} {r['effective_kbit_s']:>7.0f} "
            f"{r['of_line_rate'] * 100:>7.1f}%  {target}"
        )
    failures += _delta_ratios(runs)
    return failures


def _delta_ratios(runs: list[dict[str, Any]]) -> int:
    deltas = [r for r in runs if r["scenario"] == "delta"]
    if not deltas:
        return 0
    failures = 0
    print("\ndelta through the agent vs stm32flash writing the full new image (same line)")
    for d in sorted(deltas, key=lambda r: (r["pair"], r["baud"])):
        full = next(
            (
                r
                for r in runs
                if r["scenario"] == "firmware"
                and r["case"] == "stm32flash"
                and r.get("pair") == d["pair"]
                and r["baud"] == d["baud"]
            ),
            None,
        )
        line = (
            f"  {d['pair']:<19} {d['baud']:>7}: patch {d.get('patch_size', '?'):>7} B, "
            f"{d['seconds']:6.2f} s"
        )
        if full is None:
            print(line + "  (no stm32flash run to compare)")
            continue
        ratio = full["seconds"] / d["seconds"]
        line += f" vs {full['seconds']:6.2f} s: {ratio:5.1f}x faster"
        if d["pair"].startswith("nrf52"):
            ok = ratio >= 10
            failures += not ok
            line += f"  (target >= 10x: {'ok' if ok else 'MISSED'})"
        print(line)
    return failures
