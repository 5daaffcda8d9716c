"""Simulated devices and links, for tests, benchmarks and dry runs.

- :mod:`otaflash.sim.stm32`: an STM32 system bootloader (AN3155) that real
  tools (stm32flash, stm32loader) and otaflash flash like a chip;
- :mod:`otaflash.sim.link`: a serial line between two programs with a line
  rate, latency and faults;
- :mod:`otaflash.sim.pty`: ptys as stand-in serial ports.
"""
