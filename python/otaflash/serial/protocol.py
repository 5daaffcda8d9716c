"""The otaflash serial protocol: the host side (:func:`send`,
:func:`send_delta`) and the device side (:func:`serve_agent`).

Frames are COBS-framed with a CRC-32 each; the host keeps a window of frames
in flight, compresses blocks with deflate when that helps, resumes an
interrupted transfer from the last offset the agent proves by reading it
back, and reports success only after the agent has read the whole image
back from its target and its SHA-256 matches. ``docs/serial-protocol.md``
is the specification.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import serial

from otaflash import _core, delta
from otaflash.errors import InputError
from otaflash.serial.ports import describe_port, is_url, opened
from otaflash.serial.result import FlashResult

if TYPE_CHECKING:
    from otaflash.progress import ProgressCallback

__all__ = ["check_target", "patch_target", "send", "send_delta", "serve_agent"]

#: The rate ``otaflash agent`` listens at unless told otherwise.
AGENT_BAUD = 115200


def _line_rate(port: str | serial.SerialBase, baud: int) -> int | None:
    """The line rate behind ``port`` when there is one to size the window by."""
    name = describe_port(port)
    if is_url(name) and not name.startswith("rfc2217://"):
        return None
    return baud


def _result(port: str | serial.SerialBase, report: dict[str, Any]) -> FlashResult:
    details = {
        k: report[k]
        for k in (
            "target",
            "delta",
            "stream_size",
            "resumed_from",
            "wire_bytes",
            "payload_bytes",
            "frames",
            "retransmitted_frames",
            "naks",
            "timeouts",
        )
    }
    return FlashResult(
        protocol="otaflash",
        port=describe_port(port),
        size=report["size"],
        seconds=report["seconds"],
        verified=True,
        sha256=report["sha256"],
        baud=report["baud"],
        details=details,
    )


def send(
    port: str | serial.SerialBase,
    image: str | os.PathLike[str],
    *,
    baud: int = AGENT_BAUD,
    agent_baud: int = AGENT_BAUD,
    compress: bool = True,
    block_size: int = 64 * 1024,
    window: int | None = None,
    connect_timeout: float = 10.0,
    timeout: float = 10.0,
    resume: bool = True,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> FlashResult:
    """Sends ``image`` to ``otaflash agent`` on ``port`` and returns once it is verified.

    The port is opened at ``agent_baud`` (the rate the agent listens at) and
    both ends switch to ``baud`` when it differs. Raises
    :class:`~otaflash.errors.TransportError` (link trouble; run again to
    resume), :class:`~otaflash.errors.VerifyError` (the read-back did not
    match; nothing was committed) or :class:`~otaflash.errors.DeviceError`.
    """
    with opened(port, agent_baud) as handle:
        report = _core.serial_flash(
            handle,
            os.fspath(image),
            line_rate=_line_rate(port, agent_baud),
            switch_baud=baud if baud != agent_baud else None,
            compress=compress,
            block_size=block_size,
            window=window,
            connect_timeout=connect_timeout,
            timeout=timeout,
            resume=resume,
            progress=progress,
            stop=stop,
        )
    result = _result(port, report)
    result.baud = report["baud"] or agent_baud
    return result


def patch_target(patch: str | os.PathLike[str]) -> tuple[int, str]:
    """The size and SHA-256 of the image ``patch`` produces, from its header.

    Only sequential otaflash patches (``otaflash diff``) name both, and only
    they apply on the agent (it writes the new image beside the old one).
    """
    info = delta.patch_info(patch)
    name = os.fspath(patch)
    problem = None
    if info.format != "otaflash":
        problem = InputError(
            f"{name} is a {info.format} patch, which does not name the SHA-256 of the image "
            "it makes, so the agent's read-back could not be checked"
        )
        problem.hint = "make an otaflash patch with `otaflash diff OLD NEW -o PATCH`"
    elif info.fields.get("kind") != "sequential":
        problem = InputError(
            f"{name} is an {info.fields.get('kind')} patch; the agent applies sequential ones "
            "(it writes the new image beside the old one)"
        )
        problem.hint = "make the patch without --in-place"
    if problem is not None:
        raise problem
    # otaflash patches always state both.
    return int(info.fields["new_size"]), str(info.fields["new_sha256"])


def send_delta(
    port: str | serial.SerialBase,
    patch: str | os.PathLike[str],
    *,
    new_size: int | None = None,
    new_sha256: str | None = None,
    baud: int = AGENT_BAUD,
    agent_baud: int = AGENT_BAUD,
    connect_timeout: float = 10.0,
    timeout: float = 10.0,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> FlashResult:
    """Sends ``patch`` for the agent to apply to the image it runs now.

    ``new_size``/``new_sha256`` describe the image the patch produces (read
    from the patch header when not given); the agent's read-back must match
    them before anything is reported as done.
    """
    if new_size is None or new_sha256 is None:
        new_size, new_sha256 = patch_target(patch)
    with opened(port, agent_baud) as handle:
        report = _core.serial_flash(
            handle,
            os.fspath(patch),
            delta=True,
            image_size=new_size,
            image_sha256=new_sha256,
            line_rate=_line_rate(port, agent_baud),
            switch_baud=baud if baud != agent_baud else None,
            connect_timeout=connect_timeout,
            timeout=timeout,
            progress=progress,
            stop=stop,
        )
    result = _result(port, report)
    result.baud = report["baud"] or agent_baud
    return result


def check_target(target: str) -> str:
    """Checks a target URI (before any port is opened); returns its description."""
    return _core.agent_target(target)


def serve_agent(
    port: str | serial.SerialBase,
    target: str,
    *,
    baud: int = AGENT_BAUD,
    max_baud: int = 4_000_000,
    window: int = 16 * 1024,
    checkpoint_every: int = 64 * 1024,
    once: bool = False,
    on_transfer: Callable[[dict[str, Any]], object] | None = None,
    progress: ProgressCallback | None = None,
    stop: threading.Event | None = None,
) -> None:
    """Runs the device end on ``port``, writing images to ``target``.

    ``target`` is ``file:PATH`` (replaced once a new image is verified) or a
    flash target (``sim:...``, ``mtd:...``) with the A/B layout, where a
    verified image becomes a trial boot of the inactive slot.

    Serves hosts until ``stop`` is set or Ctrl-C (or after one transfer with
    ``once``); ``on_transfer(record)`` hears each transfer that reached its
    end, with ``verified`` telling whether the image was committed.
    """
    check_target(target)  # a bad target fails before the port is touched
    with opened(port, baud) as handle:
        _core.serial_agent(
            handle,
            target,
            baud=baud,
            max_baud=max_baud,
            window=window,
            checkpoint_every=checkpoint_every,
            once=once,
            progress=progress,
            on_transfer=on_transfer,
            stop=stop,
        )
