"""The ``hotdog`` command: its parser and the dispatch of a command to its function.

The commands live by what they use: ``local`` (the engine in this process), ``remote`` (a
running service, through app.client), ``ops`` (running the service), ``demo`` (the
experiment and its data). Every command takes ``--json`` to print one JSON object as its
last line for scripts.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from app.cli import demo, local, ops, remote, storage
from app.cli.exit_codes import EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_USAGE, error_exit_code
from app.core.logs import configure_logging


class _Formatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Examples kept as written; defaults shown, except a None one (nothing to show)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None:
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hotdog",
        description="Fine-tune a pretrained ResNet-18 on your labelled photos and classify "
        "new ones.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str,
                epilog: str = "", *, json_logs: bool = False) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help, epilog=epilog + EXIT_CODES_HELP,
                           formatter_class=_Formatter)
        p.add_argument("--json", action="store_true",
                       help="log one JSON object per line (as LOG_FORMAT=json does)"
                       if json_logs else "print one JSON object as the last line of output; "
                       "progress and messages go to stderr")
        p.set_defaults(func=func, json_logs=json_logs)
        return p

    local.register(command)
    demo.register_data(command)
    ops.register(command)
    remote.register(command)
    storage.register(command)
    demo.register(command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        # LOG_FORMAT, or JSON lines for `serve --json` / `worker --json`
        configure_logging(logging.DEBUG if args.verbose else logging.WARNING,
                          "json" if args.json_logs and args.json else None)
    except ValueError as exc:
        return _fail(EXIT_USAGE, exc)
    return dispatch(args)


def dispatch(args: argparse.Namespace) -> int:
    """Run the command; an expected error is one line on stderr and its exit code."""
    func: Callable[[argparse.Namespace], Any] = args.func
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print("hotdog: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        code = error_exit_code(exc, unusable_422=getattr(args, "unusable_422", False))
        if code is None:
            raise
        if isinstance(exc, ConnectionError) and getattr(args, "url", None):
            return _fail(code, f"{exc}, or pass --url (or set HOTDOG_URL)")
        return _fail(code, exc)


def _fail(code: int, error: BaseException | str) -> int:
    print(f"hotdog: error: {error}", file=sys.stderr)
    return code
