"""Check for updates on a schedule (source 0) and, with --mqtt, listen for app
triggers (source 1) and server pushes (source 2).

Prints one line per offer (a JSON object with --json) until interrupted, or
until --count offers have been seen.
"""

from __future__ import annotations

import argparse
import threading

from otaflash.cli._device import add_device_arguments, make_client, offer_text
from otaflash.cli.output import Output
from otaflash.errors import InputError

NAME = "watch"
HELP = "check every --interval seconds (from=0); with --mqtt also hear pushes (from=1, 2)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_device_arguments(parser)
    parser.add_argument(
        "--interval",
        type=float,
        default=3600.0,
        metavar="SECONDS",
        help="seconds between scheduled checks (default: %(default)s)",
    )
    parser.add_argument(
        "--count", type=int, default=0, metavar="N", help="stop after N offers (0: never)"
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.client import Offer

    if args.interval <= 0:
        raise InputError(f"invalid --interval {args.interval}: must be > 0 seconds")
    stop = threading.Event()
    seen = 0
    lock = threading.Lock()

    def on_offer(offer: Offer) -> None:
        nonlocal seen
        with lock:
            out.result(offer_text(offer), {"update": offer.to_json()})
            seen += 1
            if args.count and seen >= args.count:
                stop.set()

    client = make_client(args)
    client.on_offer = on_offer
    listener = None
    if args.mqtt and args.server:
        # Checks go over HTTP; pushes arrive over MQTT.
        from otaflash.client import MqttChannel

        listener = MqttChannel(args.mqtt, args.product, args.device, on_push=client.handle_push)
    try:
        client.watch(args.interval, stop)
    except KeyboardInterrupt:
        stop.set()
    finally:
        if listener is not None:
            listener.close()
        client.close()
    return 0
