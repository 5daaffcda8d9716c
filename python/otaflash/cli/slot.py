"""Run the update-slot hook: what a restarted device does.

boot     read the state record and act on it: finish an interrupted update
         (with --image, the image it was writing), start the trial of a
         new A/B slot, or roll back a trial that was never confirmed;
         prints the slot to boot
confirm  the running A/B image is good: its trial becomes the active slot
"""

from __future__ import annotations

import argparse
import os

from otaflash.cli.output import Output
from otaflash.cli.targets import add_target
from otaflash.errors import InputError

NAME = "slot"
HELP = "boot hook for update layouts: resume, trial, roll back, confirm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=("boot", "confirm"), help="what to do")
    add_target(parser)
    parser.add_argument(
        "--image", metavar="IMAGE", help="the image of an interrupted update, to finish it"
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash import flash

    if args.image is not None and not os.path.isfile(args.image):
        raise InputError(f"{args.image}: no such image file")
    with flash.open_target(args.target) as target:
        if args.action == "confirm":
            slot = target.confirm()
            text = f"confirmed slot {'AB'[slot]}" if slot is not None else "nothing to confirm"
            out.result(text, {"target": args.target, "confirmed": slot})
            return 0
        result = target.boot(args.image)
    done = {
        "boot": "nothing pending",
        "trial": "trial boot of the new slot (confirm it once it runs)",
        "rollback": "the trial was never confirmed: rolled back",
        "resume": "finished the interrupted update",
    }[result.action]
    out.result(
        f"boot slot {'AB'[result.boot_slot]}: {done}",
        {
            "target": args.target,
            "action": result.action,
            "resumed": result.resumed,
            "boot_slot": result.boot_slot,
            "image": result.image,
        },
    )
    return 0
