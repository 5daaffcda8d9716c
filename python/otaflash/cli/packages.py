"""List, enable, disable or delete published packages; push an update to a
device (server push, from=2) or trigger it as an app would (from=1).
"""

from __future__ import annotations

import argparse

from otaflash.cli.output import Output
from otaflash.cli.publish import add_server_arguments

NAME = "packages"
HELP = "list/enable/disable/delete packages; push or trigger an update"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_server_arguments(parser)
    parser.add_argument(
        "action", choices=("list", "enable", "disable", "delete", "push", "trigger")
    )
    parser.add_argument(
        "ids",
        nargs="*",
        metavar="ARG",
        help="package ids (enable/disable/delete); PRODUCT_KEY DEVICE (push/trigger); "
        "optional PRODUCT_KEY (list)",
    )
    parser.add_argument("--module", default="default", help="module (push/trigger)")
    parser.add_argument(
        "--device-version", metavar="VERSION", help="the device's version (push/trigger)"
    )


def run(args: argparse.Namespace, out: Output) -> int:
    from otaflash.admin import AdminClient
    from otaflash.errors import InputError

    admin = AdminClient(args.server, args.token)
    if args.action == "list":
        for package in admin.packages(args.ids[0] if args.ids else None):
            state = "enabled" if package["enabled"] else "disabled"
            out.result(
                f"{package['id']}\t{package['productKey']}/{package['module']}\t"
                f"{package['version']}\t{package['scope']}\t"
                f"{'forced' if package['forced'] else 'optional'}\t{package['rollout']}%\t{state}",
                package,
            )
        return 0
    if args.action in {"push", "trigger"}:
        if len(args.ids) != 2:
            raise InputError(f"packages {args.action} needs PRODUCT_KEY DEVICE")
        sent = admin.notify(
            args.ids[0],
            args.ids[1],
            source=args.action,
            module=args.module,
            version=args.device_version,
        )
        out.result(f"sent {sent['version']} to {args.ids[0]}/{args.ids[1]}", sent)
        return 0
    if not args.ids:
        raise InputError(f"packages {args.action} needs package ids")
    for raw in args.ids:
        if not raw.isdigit():
            raise InputError(f"invalid package id {raw!r}: a number from `packages list`")
        if args.action == "delete":
            admin.delete(int(raw))
            out.result(f"deleted package {raw}", {"id": int(raw), "deleted": True})
        else:
            package = admin.set_enabled(int(raw), args.action == "enable")
            out.result(f"package {raw} {args.action}d", package)
    return 0
