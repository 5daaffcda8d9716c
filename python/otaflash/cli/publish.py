"""Publish a firmware package to an update server: upload the full image (and
deltas), and set the rule that picks devices.

A package is formal (every device of the product) unless --test-sn names the
only devices that get it. Devices below VERSION are offered it; one running
exactly a --delta source version gets that delta instead of the full image.
"""

from __future__ import annotations

import argparse
import os

from otaflash.cli.output import Output
from otaflash.errors import InputError

NAME = "publish"
HELP = "upload and publish a package (full image, deltas, rule)"


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--server",
        default=os.environ.get("OTAFLASH_SERVER", "http://127.0.0.1:8080"),
        metavar="URL",
        help="update server (env OTAFLASH_SERVER; default: %(default)s)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("OTAFLASH_ADMIN_TOKEN"),
        help="admin token (env OTAFLASH_ADMIN_TOKEN)",
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    parser.add_argument("product", metavar="PRODUCT_KEY")
    parser.add_argument("version", metavar="VERSION", help="target version (integer or dotted)")
    parser.add_argument("image", metavar="IMAGE", help="the full image file")
    parser.add_argument("--module", default="default", help="firmware module (default: default)")
    parser.add_argument(
        "--delta",
        action="append",
        default=[],
        metavar="FROM=PATCH",
        help="a delta for devices running exactly version FROM (repeatable)",
    )
    parser.add_argument(
        "--make-delta-from",
        action="append",
        default=[],
        metavar="VERSION",
        help="have the server make a delta from this published version (needs the delta engine)",
    )
    parser.add_argument("--forced", action="store_true", help="a forced update (default: optional)")
    parser.add_argument(
        "--test-sn",
        action="append",
        default=[],
        metavar="SN",
        help="a test package for only this serial number (repeatable; @FILE reads a list)",
    )
    parser.add_argument("--title", default="", help="short title shown to users")
    parser.add_argument("--desc", default="", help="release notes")
    parser.add_argument(
        "--rollout", type=int, default=100, metavar="PERCENT", help="share of devices (0..100)"
    )
    parser.add_argument("--disabled", action="store_true", help="publish, but offer to nobody yet")


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.admin import AdminClient

    deltas: dict[str, str] = {}
    for spec in args.delta:
        source, sep, patch = spec.partition("=")
        if not sep or not source or not patch:
            raise InputError(f"invalid --delta {spec!r}: use FROM_VERSION=PATCH_FILE")
        deltas[source] = patch
    if not 0 <= args.rollout <= 100:
        raise InputError(f"invalid --rollout {args.rollout}: use 0..100")
    admin = AdminClient(args.server, args.token)
    package = admin.publish(
        args.product,
        args.version,
        args.image,
        module=args.module,
        deltas=deltas,
        make_deltas_from=args.make_delta_from,
        forced=args.forced,
        test_serials=args.test_sn,
        title=args.title,
        description=args.desc,
        rollout=args.rollout,
        enabled=not args.disabled,
    )
    scope = f"test ({len(package['serials'])} devices)" if package["scope"] == "test" else "formal"
    out.result(
        f"published package {package['id']}: {package['productKey']}/{package['module']} "
        f"{package['version']}, {scope}, {'forced' if package['forced'] else 'optional'}, "
        f"{package['full']['size']} bytes, sha256 {package['full']['sha256']}, "
        f"{len(package['deltas'])} delta(s)",
        package,
    )
    return 0
