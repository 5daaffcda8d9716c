"""Ask the update service whether this device has an update (source 3, device query).

Prints the offer, or that the device is up to date; exit code 0 either way.
"""

from __future__ import annotations

import argparse

from otaflash.cli._device import add_device_arguments, make_client, offer_text
from otaflash.cli.output import Output

NAME = "check"
HELP = "ask the update service for an update (from=3)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)


def run(args: argparse.Namespace, out: Output) -> int:
    client = make_client(args)
    try:
        offer = client.query_update()
    finally:
        client.close()
    if offer is None:
        out.result(f"up to date ({client.version})", {"update": None, "current": client.version})
    else:
        out.result(offer_text(offer), {"update": offer.to_json(), "current": client.version})
    return 0
