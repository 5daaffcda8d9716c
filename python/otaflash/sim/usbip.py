"""Serve an emulated device to the Linux kernel as a real USB device, over
USB/IP into ``vhci_hcd``.

The kernel's virtual host controller takes a connected stream socket
(written to ``/sys/devices/platform/vhci_hcd.0/attach``) and from then on
sends every URB for the device over it as ``USBIP_CMD_SUBMIT`` and expects
``USBIP_RET_SUBMIT`` back (the USB/IP protocol, big-endian, 48-byte
headers). Here one end of a ``socketpair`` goes to the kernel and the other
to :func:`serve`, which answers ep0 setups with
:meth:`~otaflash.sim.dfu.EmulatedDfuDevice.control`. usbcore enumerates the
device, usbfs exposes it in ``/dev/bus/usb``, and libusb programs (dfu-util,
pyusb) use it like any other: the whole host side is the real stack.

Why USB/IP and not a gadget: Debian 12's kernel (6.1) FunctionFS refuses the
DFU functional descriptor, so a configfs gadget would enumerate without
it; here every descriptor byte is ours. And re-enumeration (DETACH, leave)
and unplugging mid-transfer are real: the port is detached and attached
again, and the kernel sees the device go.

Needs root (to write the sysfs files) and the ``vhci_hcd`` module.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import time
from pathlib import Path

from otaflash.sim.dfu import EmulatedDfuDevice, Gone, Stall

__all__ = ["VHCI", "attach", "detach", "free_port", "serve", "serve_vhci"]

VHCI = Path("/sys/devices/platform/vhci_hcd.0")
CMD_SUBMIT, CMD_UNLINK, RET_SUBMIT, RET_UNLINK = 1, 2, 3, 4
DIR_IN = 1
HEADER = 48
USB_SPEED_HIGH = 3
EPIPE, ENODEV = 32, 19
#: vhci's "port is free" state (VDEV_ST_NULL).
_FREE = 4


def free_port(vhci: Path = VHCI) -> int:
    """A free high-speed port of the virtual host controller."""
    for line in (vhci / "status").read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[0] == "hs" and int(fields[2]) == _FREE:
            return int(fields[1])
    raise RuntimeError(f"{vhci}: no free high-speed port")


def attach(port: int, fd: int, devid: int, vhci: Path = VHCI) -> None:
    (vhci / "attach").write_text(f"{port} {fd} {devid} {USB_SPEED_HIGH}")


def detach(port: int, vhci: Path = VHCI) -> None:
    with contextlib.suppress(OSError):  # already gone
        (vhci / "detach").write_text(str(port))


def _recv_exact(sock: socket.socket, size: int) -> bytes | None:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            return None
        data += chunk
    return bytes(data)


def _ret_submit(seqnum: int, status: int, data: bytes, actual: int) -> bytes:
    return struct.pack(">IIIIIiiiii8x", RET_SUBMIT, seqnum, 0, 0, 0, status, actual, 0, 0, 0) + data


def serve(  # noqa: PLR0912 (one branch per USB/IP case)
    sock: socket.socket, device: EmulatedDfuDevice, on_configured: object = None
) -> str:
    """Answers URBs until the kernel closes the link (returns "closed") or
    the device asks to re-enumerate or unplug (returns its request)."""
    while True:
        header = _recv_exact(sock, HEADER)
        if header is None:
            return "closed"
        command, seqnum, _devid, direction, ep = struct.unpack_from(">IIIII", header)
        if command == CMD_UNLINK:
            # URBs are answered as they come, so there is never one to cancel.
            sock.sendall(struct.pack(">IIIIIi24x", RET_UNLINK, seqnum, 0, 0, 0, 0))
            continue
        if command != CMD_SUBMIT:
            return "closed"
        _flags, length, _frame, packets, _interval = struct.unpack_from(">Iiiii", header, 20)
        setup = header[40:48]
        out = b""
        if direction != DIR_IN and length > 0:
            out = _recv_exact(sock, length) or b""
        if 0 < packets < 0xFFFF:
            _recv_exact(sock, 16 * packets)  # iso descriptors: none expected on ep0
        if ep != 0:
            sock.sendall(_ret_submit(seqnum, -EPIPE, b"", 0))
            continue
        request_type, request, value, index, w_length = struct.unpack("<BBHHH", setup)
        try:
            if request_type & 0x80:
                answer = device.control(request_type, request, value, index, w_length)
                reply = _ret_submit(seqnum, 0, answer, len(answer))
            else:
                device.control(request_type, request, value, index, out[:w_length])
                reply = _ret_submit(seqnum, 0, b"", len(out))
        except Stall:
            reply = _ret_submit(seqnum, -EPIPE, b"", 0)
        except Gone:
            device.reconnect = device.reconnect or "unplug"
            return "unplug"
        sock.sendall(reply)
        if request_type == 0x00 and request == 9 and value and callable(on_configured):
            on_configured()
        if device.reconnect is not None:
            action, device.reconnect = device.reconnect, None
            return action


#: Finding a free port and attaching to it is one step for the devices of
#: one process.
_PORTS = threading.Lock()


def _plug(fd: int, devid: int, vhci: Path) -> int:
    """Attaches ``fd`` to a free port (retrying while a detached one is
    still being released); returns the port."""
    deadline = time.monotonic() + 10
    while True:
        with _PORTS:
            try:
                port = free_port(vhci)
                attach(port, fd, devid, vhci)
                return port
            except (OSError, RuntimeError):
                if time.monotonic() > deadline:
                    raise
        time.sleep(0.1)


def serve_vhci(
    device: EmulatedDfuDevice, *, ready_file: str | None = None, vhci: Path = VHCI
) -> None:
    """Plugs ``device`` into this machine's vhci_hcd and serves it until it
    unplugs itself (a fault) or the kernel drops it; re-enumerates it
    (detach, attach again) when it asks to."""
    devid = (1 << 16) | 2

    def configured() -> None:
        if ready_file is not None:
            Path(ready_file).write_text(f"{device.mode}\n")

    while True:
        ours, kernels = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        with ours:
            try:
                port = _plug(kernels.fileno(), devid, vhci)
            finally:
                kernels.close()  # the kernel holds its own reference now
            action = serve(ours, device, configured)
            detach(port, vhci)
        if action != "reenumerate":
            if ready_file is not None:
                with contextlib.suppress(OSError):
                    os.unlink(ready_file)
            return
        device.configuration = 0
        device.alt = 0
        time.sleep(0.2)  # let usbcore finish the disconnect before the new device
