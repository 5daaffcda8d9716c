"""The update flow: check → confirm → download (delta if offered) → apply → verify
→ report, with Alibaba step codes.

Steps reported to the service (``/ota/device/progress`` or the HTTP API):

=========  ================================================================
1..90      downloading (and writing: the bytes stream into the target)
91..99     written; reading the new image back and verifying it
100        verified and activated — sent exactly once, and only then
-1         failed for another reason (cancelled, bad patch, ...)
-2         download failed
-3         verification failed (digest of the download or of the read-back)
-4         writing or activating the image failed
=========  ================================================================

Steps only go up, and are sent at most every 5 % or 10 s (Alibaba's console and
the fleet database need no more). After 100 the new version is reported
(inform), which is what marks the update successful on Alibaba's side.
Nothing is activated before verification: the target's ``commit`` runs only
after ``verify`` passed, so a truncated or tampered download leaves the
running image as it was.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from otaflash import targets
from otaflash.client import FROM_DEVICE_QUERY, Offer, OtaClient
from otaflash.download import CancelFlag, DownloadResult, download
from otaflash.errors import (
    Cancelled,
    DownloadError,
    FlashError,
    OtaflashError,
    RuleError,
    VerifyError,
)
from otaflash.progress import ProgressCallback

__all__ = ["StepReporter", "UpdateResult", "failure_step", "run_update"]

log = logging.getLogger(__name__)

STEP_FAILED, STEP_DOWNLOAD_FAILED, STEP_VERIFY_FAILED, STEP_FLASH_FAILED = -1, -2, -3, -4
DOWNLOAD_LAST_STEP = 90
VERIFY_STEP = 95


def failure_step(error: BaseException) -> int:
    """The Alibaba step code for an error that stopped an update."""
    if isinstance(error, VerifyError):
        return STEP_VERIFY_FAILED
    if isinstance(error, DownloadError):
        return STEP_DOWNLOAD_FAILED
    if isinstance(error, FlashError | OSError):
        return STEP_FLASH_FAILED
    return STEP_FAILED


class StepReporter:
    """Sends steps to the service: rising, rate-limited, 100 at most once.

    ``on_step(step, desc)`` sees every step sent (the CLI prints them as JSON)."""

    def __init__(
        self,
        client: OtaClient,
        *,
        on_step: Callable[[int, str], object] | None = None,
        min_delta: int = 5,
        min_interval: float = 10.0,
    ) -> None:
        self.client = client
        self.on_step = on_step
        self.min_delta = min_delta
        self.min_interval = min_interval
        self.sent: list[int] = []
        self._last_time = 0.0

    def step(self, value: int, desc: str = "", *, force: bool = False) -> None:
        if not 1 <= value <= 100:
            raise ValueError(f"progress step {value} is not 1..100")
        last = self.sent[-1] if self.sent else 0
        if last == 100 or value <= last:
            return
        if value == 100:
            force = True
        now = time.monotonic()
        if (
            not force
            and value - last < self.min_delta
            and now - self._last_time < self.min_interval
        ):
            return
        self._last_time = now
        self._send(value, desc)

    def fail(self, value: int, desc: str) -> None:
        if value >= 0:
            raise ValueError(f"failure step {value} is not negative")
        if 100 in self.sent:
            return  # the update succeeded; a later problem is not its failure
        self._send(value, desc)

    def _send(self, value: int, desc: str) -> None:
        self.sent.append(value)
        if self.on_step is not None:
            self.on_step(value, desc)
        try:
            self.client.report_progress(value, desc)
        except RuleError as error:
            # Progress is advisory: the update goes on, the loss is logged.
            log.warning("progress step %d was not delivered: %s", value, error)


@dataclass
class UpdateResult:
    #: "updated", "up-to-date" or "declined".
    status: str
    from_version: str
    to_version: str | None = None
    offer: Offer | None = None
    download: DownloadResult | None = None
    #: SHA-256 of the image as read back from the target, after it was written.
    verified_sha256: str | None = None
    steps: list[int] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {
            "status": self.status,
            "fromVersion": self.from_version,
            "toVersion": self.to_version,
            "steps": self.steps,
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }
        if self.offer is not None:
            record["offer"] = self.offer.to_json()
        if self.download is not None:
            record["transferred"] = self.download.size
            record["requests"] = self.download.requests
            record["sha256"] = self.download.sha256
        if self.verified_sha256 is not None:
            record["verifiedSha256"] = self.verified_sha256
        return record


def run_update(
    client: OtaClient,
    target: targets.Target,
    *,
    offer: Offer | None = None,
    confirm: Callable[[Offer], bool] | None = None,
    progress: ProgressCallback | None = None,
    on_step: Callable[[int, str], object] | None = None,
    cancel: CancelFlag | None = None,
    cache_dir: Path | str | None = None,
    download_options: dict[str, Any] | None = None,
) -> UpdateResult:
    """Checks for an update (unless ``offer`` is given) and installs it on ``target``.

    An optional update is installed only if ``confirm(offer)`` says yes (no
    ``confirm``: yes); a forced one always. Raises the error that stopped it
    (after reporting its step code): :class:`DownloadError`,
    :class:`VerifyError`, :class:`FlashError`, :class:`Cancelled`, ...
    """
    timings: dict[str, float] = {}
    started = time.monotonic()
    from_version = client.version
    if offer is None:
        client.accept_delta = client.accept_delta and targets.delta_available()
        offer = client.query_update(FROM_DEVICE_QUERY)
    timings["check"] = time.monotonic() - started
    if offer is None:
        return UpdateResult("up-to-date", from_version, seconds=timings)
    if not offer.forced and confirm is not None and not confirm(offer):
        return UpdateResult("declined", from_version, offer=offer, seconds=timings)
    reporter = StepReporter(client, on_step=on_step)
    result = UpdateResult("updated", from_version, offer.version, offer, steps=reporter.sent)
    try:
        _install(
            offer,
            target,
            reporter,
            result,
            timings,
            progress=progress,
            cancel=cancel,
            cache_dir=cache_dir,
            download_options=download_options or {},
        )
    except BaseException as error:
        if isinstance(error, OtaflashError | OSError):
            reporter.fail(failure_step(error), _describe(error))
        elif isinstance(error, KeyboardInterrupt):
            reporter.fail(STEP_FAILED, "interrupted")
        raise
    mark = time.monotonic()
    client.inform(offer.version)
    timings["report"] = time.monotonic() - mark
    timings["total"] = time.monotonic() - started
    result.seconds = timings
    return result


def _install(
    offer: Offer,
    target: targets.Target,
    reporter: StepReporter,
    result: UpdateResult,
    timings: dict[str, float],
    *,
    progress: ProgressCallback | None,
    cancel: CancelFlag | None,
    cache_dir: Path | str | None,
    download_options: dict[str, Any],
) -> None:
    """Download → write → verify → commit; the target is untouched unless all pass."""
    reporter.step(1, f"downloading {offer.version}", force=True)
    image_size = offer.image_size if offer.image_size is not None else offer.size
    image_sha256 = offer.image_sha256 or offer.sha256
    if offer.is_diff and (offer.image_size is None or offer.image_sha256 is None):
        raise RuleError("the delta offer does not say what the new image must be")
    if image_sha256 is None:
        raise RuleError("the offer has no SHA-256 to verify the written image against")

    def on_download(operation: str, done: int, total: int | None) -> None:
        if progress is not None:
            progress(operation, done, total)
        if total:
            reporter.step(1 + (DOWNLOAD_LAST_STEP - 1) * done // total, "downloading")

    writer = target.begin(image_size)
    old_image: targets.ImageReader | None = None
    try:
        sink: targets.PatchSink | targets.ImageWriter = writer
        if offer.is_diff:
            old_image = target.current_image()
            if old_image is None:
                raise FlashError(f"{target.uri} has no current image for the delta to apply to")
            sink = targets.delta_applier()(old_image, writer)
        mark = time.monotonic()
        result.download = download(
            offer.url,
            sink.write,
            offer.expected(),
            cancel=cancel,
            progress=on_download,
            cache_dir=cache_dir,
            **download_options,
        )
        sink.finish()
        writer.finish()
        timings["download"] = time.monotonic() - mark
        reporter.step(VERIFY_STEP, "verifying", force=True)
        mark = time.monotonic()
        writer.verify(image_size, image_sha256)
        result.verified_sha256 = image_sha256.lower()
        if progress is not None:
            progress("verify", image_size, image_size)
        timings["verify"] = time.monotonic() - mark
        writer.commit()
    except BaseException:
        writer.abort()
        raise
    finally:
        if old_image is not None:
            old_image.close()
    reporter.step(100, f"updated to {offer.version}")


def _describe(error: BaseException) -> str:
    text = str(error) or type(error).__name__
    if isinstance(error, Cancelled):
        return f"cancelled: {text}"
    return text[:1000]
