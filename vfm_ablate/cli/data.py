"""`vfm-ablate data check PATH|NAME ...` and `vfm-ablate data synth OUT_DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..data.check import check_dataset, detect_entry
from ..data.entries import LAYOUT_OPTIONS, DatasetEntry, builtin_datasets, resolve_dataset
from ..data.synthetic import DOMAINS, write_folder
from ..errors import ConfigError, DataError
from .arguments import SEED


def _parse_sets(pairs: list[str]) -> dict[str, Any]:
    from ..yaml_text import parse_yaml

    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. --set image_dir=raw), got '{pair}'")
        out[key.strip()] = parse_yaml(value, f"--set {pair}")
    return out


def _entry_for(target: str, layout: str | None, options: dict[str, Any]) -> DatasetEntry:
    """A path on disk wins over a built-in name; anything else is an unknown name (with a suggestion)."""
    if Path(target).exists() or layout is not None:
        return detect_entry(target, layout, options)
    if options:
        raise ConfigError(f"--set applies to a PATH; '{target}' is a dataset name")
    try:
        return resolve_dataset(target)
    except ConfigError as err:
        raise ConfigError(f"'{target}' is neither an existing path nor a dataset name: {err}") from None


def _check(args: argparse.Namespace) -> int:
    options = _parse_sets(args.set or [])
    broken = []
    for target in args.targets:
        report = check_dataset(_entry_for(target, args.layout, options), split_seed=args.split_seed)
        print(report.format())
        print()
        if not report.ok:
            broken.append(report)
    if broken:
        first = broken[0]
        raise DataError(
            f"{len(broken)} dataset(s) broken; {first.name}: {first.problems[0]}"
            + (
                f" (+{len(first.problems) - 1} more problem(s), see the report above)"
                if len(first.problems) > 1
                else ""
            )
        )
    return 0


def _synth(args: argparse.Namespace) -> int:
    from ..data.entries import MAX_SYNTHETIC_SIDE, MAX_SYNTHETIC_SLICES, MIN_SYNTHETIC_SIDE
    from .folders import check_output_folder

    if not 2 <= args.n_train <= MAX_SYNTHETIC_SLICES or not 1 <= args.n_test <= MAX_SYNTHETIC_SLICES:
        raise ConfigError(
            f"--n-train must be 2..{MAX_SYNTHETIC_SLICES} (one training image is held out for validation) and "
            f"--n-test 1..{MAX_SYNTHETIC_SLICES}, got {args.n_train} and {args.n_test}"
        )
    if not all(MIN_SYNTHETIC_SIDE <= side <= MAX_SYNTHETIC_SIDE for side in args.size):
        raise ConfigError(f"--size must be {MIN_SYNTHETIC_SIDE}..{MAX_SYNTHETIC_SIDE} a side, got {args.size}")
    check_output_folder(Path(args.out_dir), "OUT_DIR")
    entry = write_folder(
        args.out_dir, args.domain, args.n_train, args.n_test, tuple(args.size), args.seed, overwrite=args.overwrite
    )
    print(
        f"wrote synthetic domain '{args.domain}' ({args.n_train} train / {args.n_test} test, "
        f"{args.size[0]}x{args.size[1]}) to {args.out_dir}"
    )
    import yaml

    facts = entry.model_dump(mode="json", exclude_defaults=True, exclude={"name"})
    facts["pairing"] = entry.pairing
    print("use it in a sweep file as:")
    print(yaml.safe_dump({"datasets": {entry.name: facts}}, sort_keys=False).rstrip())
    print(f"check it with: vfm-ablate data check {args.out_dir}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add `data` with sub-commands `check` and `synth`."""
    data = subparsers.add_parser("data", help="check datasets on disk, write synthetic ones")
    sub = data.add_subparsers(dest="data_command", required=True)

    check = sub.add_parser(
        "check",
        help="report counts, shapes, mask encodings, foreground per slice and problems; non-zero exit if broken",
    )
    check.add_argument(
        "targets",
        nargs="+",
        metavar="PATH|NAME",
        help=f"a dataset folder (layout recognised) or TIFF stack, or a dataset name ({', '.join(builtin_datasets())})",
    )
    check.add_argument("--layout", choices=sorted(LAYOUT_OPTIONS), help="layout of PATH instead of recognising it")
    check.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="a dataset entry option for PATH, e.g. --set mask_dir=labels --set 'mask_labels=[191]'",
    )
    check.add_argument("--split-seed", type=SEED, default=0, help="split seed for seeded test splits (default 0)")
    check.set_defaults(func=_check)

    synth = sub.add_parser("synth", help="write a synthetic EM-like dataset in the folder layout")
    synth.add_argument("out_dir", metavar="OUT_DIR")
    synth.add_argument("--domain", choices=sorted(DOMAINS), default="a")
    synth.add_argument("--n-train", type=int, default=8)
    synth.add_argument("--n-test", type=int, default=4)
    synth.add_argument("--size", type=int, nargs=2, default=[128, 128], metavar=("H", "W"))
    synth.add_argument("--seed", type=SEED, default=0)
    synth.add_argument("--overwrite", action="store_true", help="replace an existing train/ and test/ in OUT_DIR")
    synth.set_defaults(func=_synth)
