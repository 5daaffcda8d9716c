"""The otaflash serial protocol between real processes over an emulated line.

The host and the agent talk through ptys joined by the link emulator
(line rate, latency per direction, faults). Every injected fault must end
in a verified image on the device or a clear failure, never a false
success; a run after a failure resumes from what the agent proved it holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import serial
from serial.tools.list_ports_common import ListPortInfo

from otaflash import errors
from otaflash.serial import protocol
from otaflash.serial.ports import find_port, list_ports, parse_port_filter
from otaflash.sim.link import Faults, LinkEmulator
from otaflash.sim.pty import PtyPort
from tests.conftest import run_otaflash
from tests.serial_helpers import Background, Thread, otaflash_argv


def firmware(size: int, seed: int = 0) -> bytes:
    """Firmware-like bytes: code-ish noise with runs of 0xFF and repeats."""
    rng = __import__("random").Random(seed)
    out = bytearray()
    while len(out) < size:
        kind = rng.randrange(4)
        if kind == 0:
            out += b"\xff" * rng.randrange(1, 400)
        elif kind == 1 and len(out) > 64:
            start = rng.randrange(len(out) - 32)
            out += out[start : start + rng.randrange(8, 200)]
        else:
            out += rng.randbytes(rng.randrange(1, 48))
    return bytes(out[:size])


@pytest.fixture
def image(tmp_path: Path) -> Path:
    path = tmp_path / "fw.bin"
    path.write_bytes(firmware(150_000, 1))
    return path


@pytest.fixture
def target(tmp_path: Path) -> Path:
    path = tmp_path / "device.img"
    path.write_bytes(b"the old image, still bootable")
    return path


def agent_thread(port: str, target: Path, **kwargs: Any) -> tuple[Thread, list[dict[str, Any]]]:
    transfers: list[dict[str, Any]] = []
    kwargs.setdefault("on_transfer", transfers.append)

    def run(stop: threading.Event) -> None:
        protocol.serve_agent(port, f"file:{target}", stop=stop, **kwargs)

    return Thread(run), transfers


@pytest.fixture
def link() -> Iterator[LinkEmulator]:
    with LinkEmulator(921_600, latency=0.002, seed=7) as emulator:
        yield emulator


def test_an_image_arrives_verified_and_replaces_the_old_one_only_then(
    link: LinkEmulator, image: Path, target: Path
) -> None:
    agent, transfers = agent_thread(link.device_port, target, baud=921_600)
    try:
        result = protocol.send(link.host_port, image, baud=921_600, agent_baud=921_600)
    finally:
        assert agent.stop() is None
    assert target.read_bytes() == image.read_bytes()
    assert result.verified
    assert result.sha256 == hashlib.sha256(image.read_bytes()).hexdigest()
    assert result.details["resumed_from"] == 0
    assert result.details["payload_bytes"] < image.stat().st_size, "firmware compresses"
    assert [t["verified"] for t in transfers] == [True]
    assert link.stats.corrupted == 0
    assert not list(target.parent.glob("*.otaflash-*")), "no leftovers after a commit"


def test_cli_flash_and_agent_speak_json_and_exit_codes(
    link: LinkEmulator, image: Path, target: Path
) -> None:
    agent = Background(
        otaflash_argv(
            "agent", "--port", link.device_port, "--target", f"file:{target}",
            "--baud", "921600", "--once", "--json",
        )
    )  # fmt: skip
    try:
        done = run_otaflash(
            ["flash", "--port", link.host_port, "--baud", "921600", "--agent-baud", "921600",
             "--json", str(image)]
        )  # fmt: skip
        code, out, err = agent.wait(30)
    finally:
        agent.stop()
    assert done.returncode == 0, done.stderr.decode()
    record = json.loads(done.stdout)
    assert record["protocol"] == "otaflash"
    assert record["verified"] is True
    assert record["size"] == image.stat().st_size
    assert record["target"] == f"file:{target}"
    assert code == 0, err
    device_record = json.loads(out)
    assert device_record["verified"] is True
    assert device_record["sha256"] == record["sha256"]
    assert target.read_bytes() == image.read_bytes()


def test_the_baud_rate_is_negotiated_on_the_line(image: Path, target: Path) -> None:
    # The emulated line carries each side's own rate: a mismatch would garble.
    with LinkEmulator(115_200, latency=0.002) as link:
        agent, _ = agent_thread(link.device_port, target, baud=115_200, max_baud=921_600)
        try:
            result = protocol.send(link.host_port, image, baud=921_600)
            assert result.baud == 921_600
            assert target.read_bytes() == image.read_bytes()
            assert link.stats.garbled_by_rate_mismatch == 0
            # The next host knows nothing of that: it calls at the listening
            # rate, and the agent, hearing only garbage, goes back to it.
            again = protocol.send(link.host_port, image, resume=False)
            assert again.baud == 115_200
            assert link.stats.garbled_by_rate_mismatch > 0
            # Above what the agent allows: refused, clearly.
            with pytest.raises(errors.UnsupportedError, match="up to 921600"):
                protocol.send(link.host_port, image, baud=2_000_000)
        finally:
            assert agent.stop() is None


@pytest.mark.parametrize(
    ("faults", "what"),
    [
        (Faults(ber=2e-5), "bit errors both ways"),
        (Faults(ber=1e-4, direction="to_device"), "a noisy line to the device"),
        (Faults(drop_rate=2e-4), "dropped bytes"),
        (Faults(stall_after_bytes=8_000, stall_seconds=1.5), "a 1.5 s stall"),
    ],
)
def test_line_faults_cost_time_never_correctness(
    faults: Faults, what: str, image: Path, target: Path
) -> None:
    with LinkEmulator(921_600, latency=0.002, faults=faults, seed=3) as link:
        agent, transfers = agent_thread(link.device_port, target, baud=921_600)
        try:
            result = protocol.send(link.host_port, image, baud=921_600, agent_baud=921_600)
        finally:
            assert agent.stop() is None
        damage = link.stats.corrupted + link.stats.dropped + link.stats.stalls
    assert damage > 0, f"{what}: the fault never happened"
    assert target.read_bytes() == image.read_bytes(), what
    assert result.verified
    recovered = result.details["retransmitted_frames"] + result.details["timeouts"]
    assert recovered > 0 or faults.direction == "both", what
    assert [t["verified"] for t in transfers] == [True]


@pytest.mark.parametrize("cut_at_frame", [1, 2, 5, 20, 45])
def test_a_cut_line_fails_clearly_and_the_next_run_resumes(
    cut_at_frame: int, tmp_path: Path, target: Path
) -> None:
    image = tmp_path / "small.bin"
    image.write_bytes(firmware(60_000, 2))
    old = target.read_bytes()
    faults = Faults(disconnect_at_frame=cut_at_frame)
    with LinkEmulator(921_600, latency=0.002, faults=faults) as link:
        agent, transfers = agent_thread(
            link.device_port, target, baud=921_600, checkpoint_every=8 * 1024
        )
        try:
            with pytest.raises(errors.TransportError) as failure:
                protocol.send(
                    link.host_port, image, baud=921_600, agent_baud=921_600, timeout=1.5,
                    connect_timeout=1.5, compress=False,
                )  # fmt: skip
            assert failure.value.exit_code == 5
            assert target.read_bytes() == old, "nothing unverified replaced the old image"
            link.reconnect()
            result = protocol.send(
                link.host_port, image, baud=921_600, agent_baud=921_600, compress=False
            )
        finally:
            assert agent.stop() is None
    assert target.read_bytes() == image.read_bytes()
    resumed = result.details["resumed_from"]
    assert resumed <= image.stat().st_size
    if cut_at_frame >= 20:
        assert resumed >= 8 * 1024, "a cut after a checkpoint must resume, not restart"
    assert [t["verified"] for t in transfers] == [True]


def test_a_pulled_adapter_is_a_transport_error_and_a_new_port_resumes(
    image: Path, target: Path
) -> None:
    faults = Faults(disconnect_at_frame=60, hangup=True)
    with LinkEmulator(921_600, latency=0.002, faults=faults) as link:
        agent, _ = agent_thread(link.device_port, target, baud=921_600, checkpoint_every=16384)
        try:
            with pytest.raises(errors.TransportError):
                protocol.send(
                    link.host_port, image, baud=921_600, agent_baud=921_600, compress=False
                )
            link.reconnect()  # plugged back in: a new port
            result = protocol.send(
                link.host_port, image, baud=921_600, agent_baud=921_600, compress=False
            )
        finally:
            assert agent.stop() is None
    assert result.details["resumed_from"] >= 16384
    assert target.read_bytes() == image.read_bytes()


def test_a_silent_port_names_the_agent_and_the_baud_rate(tmp_path: Path, image: Path) -> None:
    with PtyPort() as lonely:
        done = run_otaflash(
            ["flash", "--port", lonely.path, "--connect-timeout", "0.5", str(image)]
        )
    assert done.returncode == 5
    message = done.stderr.decode()
    assert "otaflash agent" in message, message
    assert "baud" in message, message
    assert "Traceback" not in message


def test_bad_command_lines_fail_before_touching_a_port(tmp_path: Path, image: Path) -> None:
    missing = run_otaflash(["flash", "--port", "/dev/ttyNOPE0", str(image)])
    assert missing.returncode == 5
    assert b"no such port" in missing.stderr
    assert b"otaflash list" in missing.stderr
    no_image = run_otaflash(["flash", "--port", "/dev/null", str(tmp_path / "nope.bin")])
    assert no_image.returncode == 3
    bad_target = run_otaflash(["agent", "--port", "/dev/null", "--target", "mtd0"])
    assert bad_target.returncode == 3
    assert b"file:PATH" in bad_target.stderr
    delta_over_stm32 = run_otaflash(
        ["flash", "--port", "x", "--protocol", "stm32", "--delta", str(image)]
    )
    assert delta_over_stm32.returncode == 3
    no_port = run_otaflash(["flash", str(image)])
    assert no_port.returncode == 3
    assert b"--port" in no_port.stderr


def next_version(old: bytes, seed: int) -> bytes:
    """The next firmware: the old one with a few regions rewritten and a tail added."""
    rng = __import__("random").Random(seed)
    new = bytearray(old)
    for _ in range(32):
        at = rng.randrange(len(new) - 600)
        new[at : at + 500] = rng.randbytes(500)
    return bytes(new) + firmware(4000, seed)


def make_patch(old: Path, new: Path, patch: Path) -> None:
    done = run_otaflash(["diff", str(old), str(new), "-o", str(patch), "--level", "3"])
    assert done.returncode == 0, done.stderr.decode()


@pytest.fixture
def versions(tmp_path: Path) -> tuple[Path, Path, Path]:
    """OLD and NEW firmware and the patch `otaflash diff` makes between them."""
    old, new, patch = tmp_path / "v1.bin", tmp_path / "v2.bin", tmp_path / "v1-v2.patch"
    old.write_bytes(firmware(200_000, 11))
    new.write_bytes(next_version(old.read_bytes(), 12))
    make_patch(old, new, patch)
    return old, new, patch


def test_a_delta_is_rebuilt_on_the_device_from_its_own_image(
    link: LinkEmulator, target: Path, versions: tuple[Path, Path, Path]
) -> None:
    old, new, patch = versions
    target.write_bytes(old.read_bytes())
    agent = Background(
        otaflash_argv(
            "agent", "--port", link.device_port, "--target", f"file:{target}",
            "--baud", "921600", "--once", "--json",
        )
    )  # fmt: skip
    try:
        done = run_otaflash(
            ["flash", "--port", link.host_port, "--baud", "921600", "--agent-baud", "921600",
             "--delta", str(patch), "--json"]
        )  # fmt: skip
        code, out, err = agent.wait(30)
    finally:
        agent.stop()
    assert done.returncode == 0, done.stderr.decode()
    record = json.loads(done.stdout)
    assert record["verified"] is True
    assert record["delta"] is True
    assert record["size"] == new.stat().st_size
    assert record["sha256"] == hashlib.sha256(new.read_bytes()).hexdigest()
    assert record["stream_size"] == patch.stat().st_size < new.stat().st_size // 10
    assert record["wire_bytes"] < new.stat().st_size // 8, "only the patch crossed the line"
    assert code == 0, err
    assert json.loads(out)["verified"] is True
    assert target.read_bytes() == new.read_bytes()
    assert not list(target.parent.glob("*.otaflash-*"))


def test_a_patch_for_another_image_is_refused_before_anything_is_written(
    link: LinkEmulator, target: Path, versions: tuple[Path, Path, Path]
) -> None:
    _, _, patch = versions
    running = firmware(200_000, 99)  # not the image the patch was made for
    target.write_bytes(running)
    agent, transfers = agent_thread(link.device_port, target, baud=921_600)
    try:
        done = run_otaflash(
            ["flash", "--port", link.host_port, "--baud", "921600", "--agent-baud", "921600",
             "--delta", str(patch)]
        )  # fmt: skip
    finally:
        assert agent.stop() is None
    assert done.returncode == 7, done.stderr.decode()
    message = done.stderr.decode()
    assert "old image" in message, message
    assert "Traceback" not in message
    assert target.read_bytes() == running
    assert not list(target.parent.glob("*.otaflash-*")), "nothing was written"
    assert transfers == []


@pytest.mark.parametrize("damage", ["a flipped byte in the body", "truncated"])
def test_a_corrupt_patch_is_a_clear_error_and_the_old_image_stays(
    damage: str, link: LinkEmulator, target: Path, versions: tuple[Path, Path, Path]
) -> None:
    old, _, patch = versions
    target.write_bytes(old.read_bytes())
    data = bytearray(patch.read_bytes())
    if damage == "truncated":
        del data[len(data) * 2 // 3 :]
    else:
        data[len(data) - 100] ^= 0x24
    patch.write_bytes(bytes(data))
    agent, _ = agent_thread(link.device_port, target, baud=921_600)
    try:
        with pytest.raises(errors.PatchError) as failure:
            protocol.send_delta(link.host_port, patch, baud=921_600, agent_baud=921_600)
    finally:
        assert agent.stop() is None
    assert failure.value.exit_code == 7
    message = str(failure.value)
    assert "patch" in message, message
    assert "corrupt" in message or "truncated" in message, message
    assert target.read_bytes() == old.read_bytes(), damage
    assert not list(target.parent.glob("*.otaflash-*"))


@pytest.mark.parametrize("cut_at_frame", [2, 6, 12])
def test_a_cut_mid_delta_fails_clearly_and_the_rerun_starts_the_patch_over(
    cut_at_frame: int, target: Path, versions: tuple[Path, Path, Path]
) -> None:
    old, new, patch = versions
    assert patch.stat().st_size > 14 * 1024, "the patch spans more frames than the cut"
    target.write_bytes(old.read_bytes())
    with LinkEmulator(921_600, latency=0.002, faults=Faults(disconnect_at_frame=cut_at_frame)) as (
        link
    ):
        agent, transfers = agent_thread(link.device_port, target, baud=921_600)
        try:
            with pytest.raises(errors.TransportError):
                protocol.send_delta(
                    link.host_port, patch, baud=921_600, agent_baud=921_600, timeout=1.5
                )
            assert target.read_bytes() == old.read_bytes()
            link.reconnect()
            result = protocol.send_delta(link.host_port, patch, baud=921_600, agent_baud=921_600)
        finally:
            assert agent.stop() is None
    # Deltas restart from their first byte: the agent keeps no partial patch.
    assert result.details["resumed_from"] == 0
    assert target.read_bytes() == new.read_bytes()
    assert [t["verified"] for t in transfers] == [True]


def test_patches_the_agent_cannot_check_are_refused_before_a_port_is_opened(
    tmp_path: Path, versions: tuple[Path, Path, Path]
) -> None:
    old, new, _ = versions
    in_place = tmp_path / "in-place.patch"
    done = run_otaflash(["diff", str(old), str(new), "-o", str(in_place), "--in-place"])
    assert done.returncode == 0, done.stderr
    refused = run_otaflash(["flash", "--port", "/dev/null", "--delta", str(in_place)])
    assert refused.returncode == 3
    assert b"sequential" in refused.stderr
    not_a_patch = run_otaflash(["flash", "--port", "/dev/null", "--delta", str(old)])
    assert not_a_patch.returncode == 7
    assert b"otaflash diff" in not_a_patch.stderr


def _free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_socket_urls_work_through_a_real_tcp_serial_server(
    tmp_path: Path, image: Path, target: Path
) -> None:
    # socat as the ser2net-style server: TCP on one side, a pty on the other.
    tcp_port = _free_tcp_port()
    device = tmp_path / "ttyDEVICE"
    server = Background(
        ["socat", f"PTY,link={device},raw,echo=0",
         f"TCP-LISTEN:{tcp_port},bind=127.0.0.1,reuseaddr"]
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 10
        while not device.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        agent, _ = agent_thread(str(device), target)
        try:
            result = protocol.send(f"socket://127.0.0.1:{tcp_port}", image)
        finally:
            assert agent.stop() is None
    finally:
        server.stop()
    assert result.verified
    assert target.read_bytes() == image.read_bytes()


class _PtySerial(serial.Serial):
    """A pty has no modem lines, and the RFC 2217 server sets them anyway."""

    def _update_dtr_state(self) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True


class _SocketWriter:
    """What pyserial's PortManager writes Telnet answers to."""

    def __init__(self, conn: socket.socket) -> None:
        self.conn = conn

    def write(self, data: bytes) -> None:
        self.conn.sendall(data)


# pyserial 3.5's rfc2217 client still calls Thread.setDaemon and setName.
@pytest.mark.filterwarnings("ignore:set(Daemon|Name)\\(\\) is deprecated:DeprecationWarning")
def test_rfc2217_urls_work_through_pyserials_own_server(
    tmp_path: Path, image: Path, target: Path
) -> None:
    from serial import rfc2217

    # A null-modem cable (socat joins two ptys): the agent on one end, the
    # RFC 2217 server's port on the other.
    near, far = tmp_path / "ttyA", tmp_path / "ttyB"
    cable = Background(["socat", f"PTY,link={near},raw,echo=0", f"PTY,link={far},raw,echo=0"])
    deadline = time.monotonic() + 10
    while not (near.exists() and far.exists()) and time.monotonic() < deadline:
        time.sleep(0.05)
    agent, _ = agent_thread(str(near), target)
    tcp = socket.create_server(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    stop = threading.Event()
    baud_changes: list[int] = []

    def rfc2217_server() -> None:
        # pyserial's RFC 2217 port manager, as in its rfc2217_server example.
        conn, _ = tcp.accept()
        backend = _PtySerial(str(far), 115200, timeout=0.02)
        manager = rfc2217.PortManager(backend, _SocketWriter(conn))
        conn.settimeout(0.02)
        while not stop.is_set():
            try:
                data = conn.recv(4096)
                if not data:
                    break
                backend.write(b"".join(manager.filter(data)))
                baud_changes.append(backend.baudrate)
            except TimeoutError:
                pass
            out = backend.read(backend.in_waiting or 1)
            if out:
                conn.sendall(b"".join(manager.escape(out)))
        backend.close()
        conn.close()

    server = threading.Thread(target=rfc2217_server, daemon=True)
    server.start()
    try:
        result = protocol.send(f"rfc2217://127.0.0.1:{port}", image)
    finally:
        stop.set()
        server.join(5)
        tcp.close()
        assert agent.stop() is None
        cable.stop()
    assert result.verified
    assert target.read_bytes() == image.read_bytes()
    assert 115200 in baud_changes, "the client's port settings reached the server"


def test_the_object_path_reports_a_silent_loop_as_a_timeout(image: Path) -> None:
    # loop:// echoes our HELLO back; an echo is not an agent.
    with pytest.raises(errors.LinkTimeoutError, match="otaflash agent"):
        protocol.send("loop://", image, connect_timeout=0.6)


def _port(device: str, vid: int | None, pid: int | None, serial_number: str | None) -> ListPortInfo:
    info = ListPortInfo(device, skip_link_detection=True)
    info.vid, info.pid, info.serial_number = vid, pid, serial_number
    info.description = "USB serial" if vid else "n/a"
    return info


def test_ports_are_found_by_usb_id_and_serial_number() -> None:
    ports = [
        _port("/dev/ttyACM0", 0x0483, 0x5740, "STM-1"),
        _port("/dev/ttyUSB0", 0x0403, 0x6001, "FT-A"),
        _port("/dev/ttyUSB1", 0x0403, 0x6001, "FT-B"),
        _port("/dev/ttyS0", None, None, None),
    ]
    assert find_port(parse_port_filter("0483:5740"), ports=ports) == "/dev/ttyACM0"
    filters = parse_port_filter("vid=0x0403") + parse_port_filter("serial=ft-b")
    assert find_port(filters, ports=ports) == "/dev/ttyUSB1"
    assert find_port(parse_port_filter("vid=0403,serial=FT-A"), ports=ports) == "/dev/ttyUSB0"
    with pytest.raises(errors.InputError, match="2 serial ports match"):
        find_port(parse_port_filter("vid=0403"), ports=ports)
    with pytest.raises(errors.TransportError, match="no serial port matches"):
        find_port(parse_port_filter("pid=1234"), ports=ports)
    with pytest.raises(errors.InputError, match="bad port filter"):
        parse_port_filter("colour=blue")
    listed = list_ports(parse_port_filter("name=ttyUSB"), ports=ports)
    assert [p.device for p in listed] == ["/dev/ttyUSB0", "/dev/ttyUSB1"]
    assert listed[0].usb_id == "0403:6001"
    assert listed[0].as_record()["serial_number"] == "FT-A"


def test_list_prints_this_machines_ports() -> None:
    done = run_otaflash(["list", "--json", "--port-filter", "name=tty"])
    assert done.returncode == 0
    for line in done.stdout.decode().splitlines():
        record = json.loads(line)
        assert record["kind"] == "serial"
        assert os.path.exists(record["device"])
    bad = run_otaflash(["list", "--port-filter", "vid=zz"])
    assert bad.returncode == 3


def test_ctrl_c_stops_a_waiting_flash_at_once(image: Path) -> None:
    import signal
    import subprocess

    with PtyPort() as lonely:
        flash = Background(
            otaflash_argv("flash", "--port", lonely.path, "--connect-timeout", "60", str(image))
        )
        time.sleep(1.5)  # well inside the native wait for the agent
        started = time.monotonic()
        flash.proc.send_signal(signal.SIGINT)
        try:
            code, _, err = flash.wait(10)
        except subprocess.TimeoutExpired:
            flash.stop()
            raise
    assert code == 130, err
    assert time.monotonic() - started < 2
    assert "interrupted" in err
