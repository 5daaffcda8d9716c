"""Options shared by the device verbs (check, watch, update)."""

from __future__ import annotations

import argparse
import os
from typing import TYPE_CHECKING

from otaflash.errors import InputError

if TYPE_CHECKING:  # the client (urllib3, MQTT) loads only for the verbs that talk to a server
    from otaflash.client import Channel, Offer, OnOtaResult, OtaClient


def add_device_arguments(parser: argparse.ArgumentParser) -> None:
    where = parser.add_argument_group("update service")
    where.add_argument(
        "--server",
        default=os.environ.get("OTAFLASH_SERVER"),
        metavar="URL",
        help="otaflash server, http://HOST:PORT (env OTAFLASH_SERVER)",
    )
    where.add_argument(
        "--mqtt",
        default=os.environ.get("OTAFLASH_MQTT"),
        metavar="URL",
        help="MQTT broker, mqtt://HOST:PORT: speak Alibaba IoT's OTA topics (env OTAFLASH_MQTT)",
    )
    device = parser.add_argument_group("device")
    device.add_argument(
        "--product",
        default=os.environ.get("OTAFLASH_PRODUCT"),
        metavar="KEY",
        help="product key (env OTAFLASH_PRODUCT)",
    )
    device.add_argument(
        "--device",
        "--serial",
        dest="device",
        default=os.environ.get("OTAFLASH_DEVICE"),
        metavar="SN",
        help="device name / serial number (env OTAFLASH_DEVICE)",
    )
    device.add_argument(
        "--current",
        required=True,
        metavar="VERSION",
        help="the version the device runs now (integer or dotted)",
    )
    device.add_argument("--module", default="default", help="firmware module (default: default)")
    device.add_argument(
        "--no-delta", action="store_true", help="ask for full images only, never a delta"
    )


def make_client(args: argparse.Namespace, *, on_ota_result: OnOtaResult | None = None) -> OtaClient:
    """Checks go to --server when given, else over --mqtt (where pushes arrive too)."""
    from otaflash.client import HttpChannel, MqttChannel, OtaClient

    if not args.product or not args.device:
        failure = InputError("the product key and the device's serial number are needed")
        failure.hint = "give --product and --device (or OTAFLASH_PRODUCT, OTAFLASH_DEVICE)"
        raise failure
    channel: Channel
    if args.server:
        channel = HttpChannel(args.server, args.product, args.device)
    elif args.mqtt:
        channel = MqttChannel(args.mqtt, args.product, args.device)
    else:
        failure = InputError("no update service given")
        failure.hint = "give --server http://HOST:PORT or --mqtt mqtt://HOST:PORT"
        raise failure
    return OtaClient(
        channel,
        version=args.current,
        module=args.module,
        on_ota_result=on_ota_result,
        accept_delta=not args.no_delta,
    )


def offer_text(offer: Offer) -> str:
    kind = f"delta from {offer.from_version}" if offer.is_diff else "full image"
    must = "forced" if offer.forced else "optional"
    title = f": {offer.title}" if offer.title else ""
    return (
        f"update {offer.version} ({must}, {kind}, {offer.size} bytes, from={offer.source}){title}"
    )
