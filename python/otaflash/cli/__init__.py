"""The ``otaflash`` command line.

``main(argv)`` is embeddable (returns the exit code, never calls sys.exit);
each verb lives in its own module here (``VERBS`` lists module names; the
verb is the module's ``NAME``) with ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args, out) -> int``. Verb modules keep
heavy imports inside ``run`` so ``otaflash --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence
from types import ModuleType

from otaflash import __version__
from otaflash.cli.output import Output
from otaflash.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, OtaflashError

__all__ = ["main"]

#: Verb modules, in the order `otaflash --help` lists them.
VERBS: tuple[str, ...] = (
    "hash",
    "diff",
    "patch",
    "patch_info",
    "flash",
    "verify",
    "info",
    "slot",
    "list_devices",
    "agent",
    "sim",
    "update",
    "check",
    "watch",
    "serve",
    "publish",
    "packages",
    "demo",
)

EPILOG = """\
exit codes: 0 ok, 1 failed, 2 bad command line, 3 unusable input, 4 verify
failed, 5 device link failed, 6 flash refused, 7 bad patch, 8 download
failed, 9 update service refused, 10 cancelled, 70 internal error,
130 interrupted. Arguments may be read from a file with @FILE.
"""


def _load_verbs() -> list[ModuleType]:
    return [importlib.import_module(f"otaflash.cli.{name}") for name in VERBS]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="otaflash",
        description="Over-the-air firmware updates: hash, patch, flash and update devices.",
        epilog=EPILOG,
        fromfile_prefix_chars="@",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"otaflash {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per result on stdout (for scripts and station databases)",
    )
    verbs = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    for module in _load_verbs():
        sub = verbs.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.__doc__,
            parents=[common],
            fromfile_prefix_chars="@",
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line; returns the exit code."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # argparse: --help, --version, usage errors
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    out = Output(json_mode=getattr(args, "json", False))
    try:
        code: int = args.run(args, out)
        return code
    except OtaflashError as error:
        out.error(error)
        return error.exit_code
    except KeyboardInterrupt:
        out.message("otaflash: interrupted")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (`otaflash hash * | head`): stop quietly, like coreutils.
        out.detach_stdout()
        return 141
    except Exception:
        traceback.print_exc()
        out.message(
            "otaflash: internal error: this is a bug in otaflash; "
            "please report it with the traceback above"
        )
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
