"""The main job end to end on one machine: what ``otaflash demo`` runs.

An embedded update server (in this process, on 127.0.0.1) and a simulated
device (a SimFlash NOR chip with A/B slots) play both sides:

1. firmware 1.0.0 and 2.0.0 are generated (:mod:`otaflash.sim.firmware`);
2. the device is provisioned with 1.0.0 (in both slots, as factories do),
   booted and confirmed, slot A active;
3. the server starts; 1.0.0 is published, then 2.0.0 with a delta from
   1.0.0 made by the delta engine on publish (formal rule, optional update);
4. the device checks, is offered the delta (or the full image with
   ``full=True``), downloads it straight into the patch applier, which
   writes the new image from the active slot into the inactive one; the
   slot is read back and verified, then marked for a trial boot; progress
   goes to the server as step codes, 100 exactly once;
5. the device reboots (the boot hook starts the trial), the new image is
   checked in flash against 2.0.0, confirmed, and reported to the server;
6. a second device, reachable only over a serial line (an emulated
   921600-baud line between two ptys, 2 ms latency each way), runs
   ``otaflash agent`` on its own simulated flash: the technician's laptop
   asks the server on its behalf, downloads the delta and sends it to the
   agent, which applies it from its active slot into the other, reads it
   back and verifies it; the reboot confirms it and the laptop reports
   2.0.0 for it (skipped with ``serial=False``).

Every claim in the result is checked; :func:`run_demo` raises an
:mod:`otaflash.errors` class at the first one that does not hold.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otaflash import flash, hashing, targets
from otaflash.admin import AdminClient
from otaflash.client import HttpChannel, Offer, OtaClient
from otaflash.download import DownloadResult, download
from otaflash.errors import FlashError, RuleError, VerifyError
from otaflash.progress import ProgressCallback
from otaflash.serial import protocol
from otaflash.server import EmbeddedServer
from otaflash.sim import firmware
from otaflash.sim.link import LinkEmulator
from otaflash.update import run_update

__all__ = [
    "DEVICE",
    "PRODUCT",
    "SERIAL_DEVICE",
    "DemoResult",
    "SerialLeg",
    "device_uri",
    "run_demo",
]

PRODUCT = "demo"
DEVICE = "SN-DEMO-0001"
#: The device on a serial line, updated through its agent.
SERIAL_DEVICE = "SN-DEMO-0002"
SERIAL_BAUD = 921_600
SERIAL_LATENCY = 0.002
ERASE_SIZE = 64 << 10
OLD_RELEASE, NEW_RELEASE = 1, 2

#: Stages, in order, as ``seconds`` keys and how the summary names them.
STAGES = {
    "firmware": "generate firmware",
    "provision": "provision",
    "server": "server start",
    "publish": "publish (incl. diff)",
    "check": "check",
    "download": "download",
    "flash": "apply/flash",
    "verify": "verify",
    "report": "report",
    "reboot": "reboot/confirm",
    "serial": "serial device",
}


def device_uri(directory: Path, image_size: int, name: str = "device.sim") -> str:
    """The simulated device: NOR flash (64 KiB erase blocks), the next power of
    two that holds two slots of ``image_size`` and the state record."""
    slot = -(-image_size // ERASE_SIZE) * ERASE_SIZE
    size = 1 << (2 * slot + 2 * ERASE_SIZE - 1).bit_length()
    return f"sim:{directory / name}?kind=nor&size={size}&erase={ERASE_SIZE}"


@dataclass
class SerialLeg:
    """The device on the serial line: what went over the line and what it runs."""

    device: str
    target: str
    baud: int
    #: Bytes of the delta sent to the agent, bytes on the wire (frames,
    #: deflate), and how long the host took from connecting to the agent's
    #: verified result.
    sent: int
    wire_bytes: int
    seconds: float
    verified_sha256: str
    boot_slot: int
    slot_sha256: str
    device_version: str

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "target": self.target,
            "baud": self.baud,
            "sent": self.sent,
            "wireBytes": self.wire_bytes,
            "seconds": round(self.seconds, 3),
            "verifiedSha256": self.verified_sha256,
            "bootSlot": "AB"[self.boot_slot],
            "slotSha256": self.slot_sha256,
            "deviceVersion": self.device_version,
        }


@dataclass
class DemoResult:
    product: str
    device: str
    target: str
    server: str
    from_version: str
    to_version: str
    image_size: int
    #: The delta the server made on publish (bytes).
    delta_size: int
    is_delta: bool
    transferred: int
    image_sha256: str
    verified_sha256: str
    #: The new slot as the rebooted device boots it, and its SHA-256 read from flash.
    boot_slot: int
    slot_sha256: str
    steps: list[int]
    device_version: str
    seconds: dict[str, float] = field(default_factory=dict)
    serial: SerialLeg | None = None

    @property
    def ratio(self) -> float:
        """Bytes transferred per byte of the full image."""
        return self.transferred / self.image_size

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": True,
            "product": self.product,
            "device": self.device,
            "target": self.target,
            "server": self.server,
            "fromVersion": self.from_version,
            "toVersion": self.to_version,
            "delta": self.is_delta,
            "imageSize": self.image_size,
            "deltaSize": self.delta_size,
            "transferred": self.transferred,
            "ratio": round(self.ratio, 5),
            "sha256": self.image_sha256,
            "verifiedSha256": self.verified_sha256,
            "bootSlot": "AB"[self.boot_slot],
            "slotSha256": self.slot_sha256,
            "steps": self.steps,
            "deviceVersion": self.device_version,
            "seconds": {name: round(value, 3) for name, value in self.seconds.items()},
            "serial": None if self.serial is None else self.serial.to_json(),
        }


class _Stopwatch:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._mark = time.monotonic()

    def lap(self, stage: str) -> None:
        """The time since the last lap (or skip) was ``stage``."""
        now = time.monotonic()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self._mark
        self._mark = now

    def skip(self) -> None:
        """The time since the last lap is accounted for elsewhere."""
        self._mark = time.monotonic()


class _TimedTarget:
    """A target that measures the time spent writing into it.

    The download streams into the writer, so the download's own time is the
    time between writes: ``streaming`` (in ``write`` and ``finish``: the patch
    apply, flash programming and read-back) separates the two. ``setup`` is
    the rest of the writer's time (opening the install, activating it)."""

    def __init__(self, target: targets.Target) -> None:
        self.target = target
        self.uri = target.uri
        self.accepts_delta = target.accepts_delta
        self.streaming = 0.0
        self.setup = 0.0

    def begin(
        self,
        size: int,
        sha256: str,
        *,
        patch: bool = False,
        progress: ProgressCallback | None = None,
    ) -> targets.ImageWriter:
        started = time.monotonic()
        writer = self.target.begin(size, sha256, patch=patch, progress=progress)
        self.setup += time.monotonic() - started
        return _TimedWriter(writer, self)


class _TimedWriter:
    def __init__(self, writer: targets.ImageWriter, owner: _TimedTarget) -> None:
        self.writer = writer
        self.owner = owner

    def write(self, data: memoryview | bytes) -> None:
        started = time.monotonic()
        try:
            self.writer.write(data)
        finally:
            self.owner.streaming += time.monotonic() - started

    def finish(self) -> None:
        started = time.monotonic()
        try:
            self.writer.finish()
        finally:
            self.owner.streaming += time.monotonic() - started

    def verify(self, size: int, sha256: str) -> None:
        self.writer.verify(size, sha256)

    def commit(self) -> None:
        started = time.monotonic()
        try:
            self.writer.commit()
        finally:
            self.owner.setup += time.monotonic() - started

    def abort(self) -> None:
        self.writer.abort()


def run_demo(
    workdir: Path,
    *,
    image_size: int = 1 << 20,
    full: bool = False,
    serial: bool = True,
    progress: ProgressCallback | None = None,
    on_stage: Callable[[str], object] | None = None,
) -> DemoResult:
    """Runs the demo in ``workdir`` (server data, device, firmware, downloads;
    left there). ``full`` makes the device ask for the full image instead of
    the delta; ``serial`` adds the device on a serial line; ``on_stage(text)``
    hears what starts next."""
    return _Run(workdir, image_size, full, serial, progress, on_stage).run()


@dataclass
class _Run:
    workdir: Path
    image_size: int
    full: bool
    serial: bool
    progress: ProgressCallback | None
    on_stage: Callable[[str], object] | None
    watch: _Stopwatch = field(default_factory=_Stopwatch)

    def stage(self, text: str) -> None:
        if self.on_stage is not None:
            self.on_stage(text)

    def run(self) -> DemoResult:
        started = time.monotonic()
        old_version = firmware.version_of(OLD_RELEASE)
        self.stage(f"generating firmware 1.0.0 and 2.0.0 ({self.image_size:,} bytes each)")
        old_image, new_image = self.make_firmware()
        new_sha256 = hashing.hash_file(new_image, ("sha256",))["sha256"]
        self.watch.lap("firmware")

        uri = device_uri(self.workdir, self.image_size)
        self.stage("provisioning the simulated device with 1.0.0")
        _provision(uri, old_image, self.progress)
        self.watch.lap("provision")

        self.stage("starting the update server")
        with EmbeddedServer(self.workdir / "server") as server:
            self.watch.lap("server")
            self.stage("publishing 1.0.0, and 2.0.0 with a delta from 1.0.0 (the diff runs now)")
            delta_size = self.publish(
                AdminClient(server.url, server.admin_token), old_image, new_image
            )
            self.watch.lap("publish")

            client = OtaClient(
                HttpChannel(server.url, PRODUCT, DEVICE),
                version=old_version,
                accept_delta=not self.full,
            )
            try:
                client.inform()  # the running device reports its version, as after every boot
                self.stage(f"updating {DEVICE}: check, download, apply, verify")
                result = self.update(client, uri)
                self.stage("rebooting the device: trial boot of the new slot, check, confirm")
                boot_slot, slot_sha256 = _reboot(uri, new_image, new_sha256)
                client.inform(result.offer.version)  # the new image runs: it reports itself
            finally:
                client.close()
            self.watch.lap("reboot")
            device_version = server.service.store.device_version(PRODUCT, DEVICE, "default")
            serial_leg = None
            if self.serial:
                self.stage(
                    f"{SERIAL_DEVICE} on a {SERIAL_BAUD}-baud serial line: fetch its delta, "
                    "send it to the device's agent"
                )
                serial_leg = self.serial_update(server, old_image, new_image, new_sha256)
                self.watch.lap("serial")

        demo = DemoResult(
            product=PRODUCT,
            device=DEVICE,
            target=uri,
            server=server.url,
            from_version=old_version,
            to_version=result.offer.version,
            image_size=self.image_size,
            delta_size=delta_size,
            is_delta=result.offer.is_diff,
            transferred=result.download.size,
            image_sha256=new_sha256,
            verified_sha256=result.verified_sha256 or "",
            boot_slot=boot_slot,
            slot_sha256=slot_sha256,
            steps=list(result.steps),
            device_version=device_version or "",
            seconds=self.watch.seconds,
            serial=serial_leg,
        )
        demo.seconds["total"] = time.monotonic() - started
        _check(demo, full=self.full)
        return demo

    def serial_update(
        self, server: EmbeddedServer, old_image: Path, new_image: Path, new_sha256: str
    ) -> SerialLeg:
        """A field technician's laptop updating a device it reaches by cable."""
        uri = device_uri(self.workdir, self.image_size, "serial-device.sim")
        _provision(uri, old_image, None)
        old_version = firmware.version_of(OLD_RELEASE)
        client = OtaClient(HttpChannel(server.url, PRODUCT, SERIAL_DEVICE), version=old_version)
        try:
            client.inform()
            offer = client.query_update()
            if offer is None or not offer.is_diff:
                raise RuleError(f"{SERIAL_DEVICE} was not offered a delta from {old_version}")
            patch = self.workdir / "downloads" / f"{SERIAL_DEVICE}.patch"
            patch.parent.mkdir(parents=True, exist_ok=True)
            with patch.open("wb") as sink:
                download(offer.url, sink.write, offer.expected(), progress=self.progress)
            with LinkEmulator(SERIAL_BAUD, latency=SERIAL_LATENCY) as link:
                agent = _Agent(link.device_port, uri)
                try:
                    sent = protocol.send_delta(
                        link.host_port,
                        patch,
                        baud=SERIAL_BAUD,
                        agent_baud=SERIAL_BAUD,
                        progress=self.progress,
                    )
                finally:
                    agent.stop()
            client.report_progress(100, "verified by the agent's read-back")
            boot_slot, slot_sha256 = _reboot(uri, new_image, new_sha256)
            client.inform(offer.version)
        finally:
            client.close()
        version = server.service.store.device_version(PRODUCT, SERIAL_DEVICE, "default")
        return SerialLeg(
            device=SERIAL_DEVICE,
            target=uri,
            baud=SERIAL_BAUD,
            sent=int(sent.details["stream_size"]),
            wire_bytes=int(sent.details["wire_bytes"]),
            seconds=sent.seconds,
            verified_sha256=sent.sha256 or "",
            boot_slot=boot_slot,
            slot_sha256=slot_sha256,
            device_version=version or "",
        )

    def make_firmware(self) -> tuple[Path, Path]:
        series = firmware.FirmwareSeries(self.image_size)
        images = self.workdir / "firmware"
        images.mkdir(parents=True, exist_ok=True)
        paths = []
        for release in (OLD_RELEASE, NEW_RELEASE):
            path = images / f"{PRODUCT}-{firmware.version_of(release)}.bin"
            path.write_bytes(series.image(release))
            paths.append(path)
        return paths[0], paths[1]

    def publish(self, admin: AdminClient, old_image: Path, new_image: Path) -> int:
        """Publishes both versions (formal, optional); returns the delta's size."""
        old_version = firmware.version_of(OLD_RELEASE)
        new_version = firmware.version_of(NEW_RELEASE)
        admin.publish(
            PRODUCT,
            old_version,
            old_image,
            title=f"{PRODUCT} {old_version}",
            description="The factory image.",
        )
        package = admin.publish(
            PRODUCT,
            new_version,
            new_image,
            make_deltas_from=[old_version],
            title=f"{PRODUCT} {new_version}",
            description="New sensor driver; fixes in the shell and the scheduler.",
        )
        return int(package["deltas"][0]["size"])

    def update(self, client: OtaClient, uri: str) -> _Updated:
        target = _TimedTarget(targets.open_target(uri, layout="ab"))
        result = run_update(
            client,
            target,
            progress=self.progress,
            cache_dir=self.workdir / "downloads",
        )
        if result.status != "updated" or result.offer is None or result.download is None:
            raise RuleError(f"the device was not updated: {result.status}")
        seconds = self.watch.seconds
        seconds["check"] = result.seconds["check"]
        seconds["download"] = result.seconds["download"] - target.streaming
        seconds["flash"] = target.streaming + target.setup
        seconds["verify"] = result.seconds["verify"]
        seconds["report"] = result.seconds["report"]
        self.watch.skip()
        return _Updated(result.offer, result.download, result.verified_sha256, result.steps)


@dataclass
class _Updated:
    """An update that happened (the parts of UpdateResult that are then set)."""

    offer: Offer
    download: DownloadResult
    verified_sha256: str | None
    steps: list[int]


class _Agent:
    """``otaflash agent`` for one transfer, on a thread (the device's side)."""

    def __init__(self, port: str, target: str) -> None:
        self._stop = threading.Event()
        self.error: BaseException | None = None

        def serve() -> None:
            try:
                protocol.serve_agent(port, target, baud=SERIAL_BAUD, once=True, stop=self._stop)
            except BaseException as error:  # handed to the main thread
                self.error = error

        self._thread = threading.Thread(target=serve, name="otaflash-agent", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)
        if self.error is not None:
            raise self.error


def _provision(uri: str, image: Path, progress: ProgressCallback | None) -> None:
    """The device as it leaves the factory: 1.0.0 in both slots (either can
    boot), slot A active and confirmed.

    A new A/B layout starts with slot A active and empty, and an install
    always goes to the inactive slot: the first lands in B, the second in A."""
    with flash.open_target(uri) as device:
        for _slot in "BA":
            device.write(image, layout="ab", progress=progress)
            device.boot()
            device.confirm()
        state = device.info().slots
        if state is None or state.active != 0 or state.phase != "idle":
            raise FlashError(f"{uri}: provisioning did not leave 1.0.0 active in slot A")


def _reboot(uri: str, new_image: Path, new_sha256: str) -> tuple[int, str]:
    """What the restarted device does: the boot hook starts the trial of the new
    slot; the new image checks itself in flash, then confirms."""
    with flash.open_target(uri) as device:
        booted = device.boot()
        if booted.action != "trial":
            raise FlashError(
                f"{uri}: after the update the boot hook did {booted.action!r}, not a trial "
                "boot of the new slot"
            )
        state = device.info().slots
        if state is None:
            raise FlashError(f"{uri}: the device lost its A/B layout")
        offset = state.slots[booted.boot_slot]["offset"]
        # Reads the slot back and compares it with 2.0.0 byte for byte.
        slot_sha256 = device.verify(new_image, offset)
        if slot_sha256 != new_sha256:
            raise VerifyError(
                f"{uri}: slot {'AB'[booted.boot_slot]} reads back with SHA-256 {slot_sha256}, "
                f"not 2.0.0's {new_sha256}",
                uri,
                new_sha256,
                slot_sha256,
            )
        if device.confirm() != booted.boot_slot:
            raise FlashError(f"{uri}: confirming slot {'AB'[booted.boot_slot]} did not take")
        state = device.info().slots
        if state is None or state.active != booted.boot_slot or state.phase != "idle":
            raise FlashError(f"{uri}: after the confirmation the new slot is not the active one")
    return booted.boot_slot, slot_sha256


def _check(demo: DemoResult, *, full: bool) -> None:
    """Every claim of the summary, checked."""
    if demo.verified_sha256 != demo.image_sha256:
        raise VerifyError(
            f"the update verified SHA-256 {demo.verified_sha256}, not 2.0.0's {demo.image_sha256}",
            "update",
            demo.image_sha256,
            demo.verified_sha256,
        )
    if demo.is_delta == full:
        asked = "the full image" if full else "a delta"
        raise RuleError(f"the device asked for {asked} but was sent the other")
    expected = demo.image_size if full else demo.delta_size
    if demo.transferred != expected:
        raise RuleError(f"{demo.transferred} bytes were transferred, expected {expected}")
    if demo.steps.count(100) != 1 or demo.steps[-1] != 100:
        raise RuleError(f"progress steps {demo.steps} do not end in exactly one 100")
    if demo.device_version != demo.to_version:
        raise RuleError(
            f"the server has the device at {demo.device_version or 'no version'}, "
            f"not {demo.to_version}"
        )
    leg = demo.serial
    if leg is not None:
        if leg.verified_sha256 != demo.image_sha256 or leg.slot_sha256 != demo.image_sha256:
            raise VerifyError(
                f"{leg.device}: the agent verified {leg.verified_sha256} and its slot reads back "
                f"{leg.slot_sha256}, not 2.0.0's {demo.image_sha256}",
                leg.target,
                demo.image_sha256,
                leg.slot_sha256,
            )
        if leg.sent != demo.delta_size:
            raise RuleError(f"{leg.device}: {leg.sent} bytes went over the line, not the delta")
        if leg.device_version != demo.to_version:
            raise RuleError(f"the server has {leg.device} at {leg.device_version or 'no version'}")
