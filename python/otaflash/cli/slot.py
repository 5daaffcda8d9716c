"""Run the update-slot hook: what a restarted device does.

boot     read the state record and act on it: finish an interrupted update
         (with --image, the image it was writing, or --patch, the in-place
         patch it was applying), start the trial of a new A/B slot, or roll
         back a trial that was never confirmed; prints the slot to boot. An
         interrupted A/B install without --image boots the intact slot.
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
    given = parser.add_mutually_exclusive_group()
    given.add_argument(
        "--image", metavar="IMAGE", help="the image of an interrupted update, to finish it"
    )
    given.add_argument(
        "--patch", metavar="PATCH", help="the in-place patch of an interrupted update, to finish it"
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash import flash

    for given in (args.image, args.patch):
        if given is not None and not os.path.isfile(given):
            raise InputError(f"{given}: no such file")
    with flash.open_target(args.target) as target:
        if args.action == "confirm":
            slot = target.confirm()
            text = f"confirmed slot {'AB'[slot]}" if slot is not None else "nothing to confirm"
            out.result(text, {"target": args.target, "confirmed": slot})
            return 0
        finished_in_place = False
        if args.patch is not None:
            state = target.info().slots
            if state is not None and state.phase == "updating":
                target.apply_in_place(args.patch)
                finished_in_place = True
        result = target.boot(args.image)
    if finished_in_place:
        done = "finished the interrupted in-place update"
    elif result.action == "resume" and not result.resumed:
        done = "an install was interrupted; the intact slot boots (update again to finish it)"
    else:
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
            "resumed": result.resumed or finished_in_place,
            "boot_slot": result.boot_slot,
            "image": result.image,
        },
    )
    return 0
