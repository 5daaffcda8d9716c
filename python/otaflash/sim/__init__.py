"""Simulated devices, for tests, benchmarks and dry runs.

- :mod:`otaflash.sim.dfu`: a DfuSe-style STM32 DFU bootloader (or a plain
  DFU 1.1 device) whose flash is an otaflash flash target (``sim:``);
- :mod:`otaflash.sim.usb_backend`: serves it to pyusb in-process, so the
  product's own pyusb code talks to it unmodified;
- :mod:`otaflash.sim.usbip`: serves it to a Linux kernel as a real USB
  device over USB/IP (``vhci_hcd``), for dfu-util and libusb.
"""
