"""Check for an update and install it: download (a delta when offered and
supported), write to --target, verify, then report the new version.

Progress goes to the update service as Alibaba step codes (1..100; -1 failed,
-2 download failed, -3 verify failed, -4 flash failed), 100 exactly once and
only after verification. An optional update asks for confirmation (--yes for
scripts); a forced one installs without asking. Exit codes: 0 updated, up to
date or declined (see "status"); 8 download failed; 4 verification failed;
6 writing failed; 9 the service refused; 10 cancelled.
"""

from __future__ import annotations

import argparse
import sys

from otaflash.cli._device import add_device_arguments, make_client, offer_text
from otaflash.cli.output import Output

NAME = "update"
HELP = "check, download, apply, verify and report an update"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument(
        "--target",
        required=True,
        metavar="URI",
        help="where the image goes: file:PATH (this build); sim:, mtd: come with the flash layer",
    )
    parser.add_argument(
        "--yes", "-y", action="store_true", help="install an optional update without asking"
    )
    parser.add_argument(
        "--cache-dir",
        metavar="DIR",
        help="keep downloads here: resume after a restart, reuse for the next device",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=6,
        metavar="N",
        help="download attempts in a row without progress before giving up (default: 6)",
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash import targets
    from otaflash.client import Offer
    from otaflash.progress import ProgressBars
    from otaflash.update import run_update

    target = targets.open_target(args.target)
    client = make_client(args)

    def confirm(offer: Offer) -> bool:
        if args.yes:
            return True
        if not sys.stdin.isatty():
            out.message(
                f"otaflash: {offer_text(offer)} is optional: not installed (add --yes to install)"
            )
            return False
        # The question goes to stderr: stdout carries only results (and JSON lines).
        sys.stderr.write(f"{offer_text(offer)}\ninstall it now? [y/N] ")
        sys.stderr.flush()
        return sys.stdin.readline().strip().lower() in {"y", "yes"}

    def on_step(step: int, desc: str) -> None:
        if out.json_mode:
            out.result("", {"event": "progress", "step": step, "desc": desc})

    bars = ProgressBars(label=args.device) if out.wants_progress() else None
    try:
        result = run_update(
            client,
            target,
            confirm=confirm,
            progress=bars,
            on_step=on_step,
            cache_dir=args.cache_dir,
            download_options={"retries": args.retries},
        )
    finally:
        if bars is not None:
            bars.close()
        client.close()
    record = {"event": "result", **result.to_json()}
    if result.status == "updated" and result.offer and result.download:
        text = (
            f"updated {result.from_version} -> {result.to_version} on {target.uri} "
            f"({'delta' if result.offer.is_diff else 'full image'}, "
            f"{result.download.size} bytes, sha256 {result.download.sha256})"
        )
    elif result.status == "up-to-date":
        text = f"up to date ({result.from_version})"
    else:
        text = f"not installed: {offer_text(result.offer)}" if result.offer else "not installed"
    out.result(text, record)
    return 0
