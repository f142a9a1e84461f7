"""The `geoloc` command line: one module per command group, each parser beside its handler."""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import PackageNotFoundError, version

from geoloc.cli import collections, encoders, explain, keys, learning, locate, maintenance, models, service
from geoloc.cli.common import USER_ERRORS

COMMAND_GROUPS = (collections, locate, explain, learning, encoders, models, service, keys, maintenance)


def installed_version() -> str:
    try:
        return version("geoloc")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="geoloc", description="Where was this photo taken?")
    parser.add_argument("--version", action="version", version=f"geoloc {installed_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in COMMAND_GROUPS:
        group.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"geoloc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("geoloc: interrupted", file=sys.stderr)
        return 130
