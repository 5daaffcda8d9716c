"""Simulated devices, links and firmware, for the demo, tests, benchmarks and
dry runs.

- :mod:`otaflash.sim.firmware`: deterministic firmware images that look like
  a real microcontroller build, and releases of it that differ as real
  releases do (so deltas behave as they would on real firmware);
- :mod:`otaflash.sim.dfu`: a DfuSe-style STM32 DFU bootloader (or a plain
  DFU 1.1 device) whose flash is an otaflash flash target (``sim:``);
- :mod:`otaflash.sim.usb_backend`: serves it to pyusb in-process, so the
  product's own pyusb code talks to it unmodified;
- :mod:`otaflash.sim.usbip`: serves it to a Linux kernel as a real USB
  device over USB/IP (``vhci_hcd``), for dfu-util and libusb;
- :mod:`otaflash.sim.stm32`: an STM32 system bootloader (AN3155) that real
  tools (stm32flash, stm32loader) and otaflash flash like a chip;
- :mod:`otaflash.sim.link`: a serial line between two programs with a line
  rate, latency and faults;
- :mod:`otaflash.sim.pty`: ptys as stand-in serial ports.

The simulated flash itself is the Rust core's ``sim:`` target
(:mod:`otaflash.flash`).
"""
