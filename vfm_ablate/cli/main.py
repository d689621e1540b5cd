"""`vfm-ablate` command line: one module per command, each adding its subparser with `register(subparsers)`."""

from __future__ import annotations

import argparse
import sys

from ..errors import VfmAblateError
from . import backbones, calibrate, data, diagnose, fetch, report, run, train

COMMANDS = (data, backbones, fetch, train, run, calibrate, report, diagnose)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfm-ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VfmAblateError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
