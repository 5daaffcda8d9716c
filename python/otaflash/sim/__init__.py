"""Simulated devices and what runs on them, for the demo, tests and benchmarks.

:mod:`otaflash.sim.firmware` makes deterministic firmware images that look
like a real microcontroller build, and releases of it that differ as real
releases do (so deltas behave as they would on real firmware). The simulated
flash itself is the Rust core's ``sim:`` target (:mod:`otaflash.flash`).
"""
