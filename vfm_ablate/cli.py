"""`vfm-ablate` command line: each subcommand lives beside the code it drives and registers itself here."""

from __future__ import annotations

import argparse
import importlib
import sys

from .errors import VfmAblateError

# module -> exposes `register(subparsers)`, which adds one subcommand and sets `func(args) -> int`
COMMAND_MODULES = [
    "vfm_ablate.data.cli",  # data check / data synth
    "vfm_ablate.models.cli",  # backbones
    "vfm_ablate.train_cli",  # train
    "vfm_ablate.sweep_cli",  # run
    "vfm_ablate.report_cli",  # report
    "vfm_ablate.diagnose_cli",  # diagnose
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vfm-ablate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
