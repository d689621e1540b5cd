"""`vfm-ablate backbones`: what can be swept, with the facts a sweep author needs (patch, dim, size, weights)."""

from __future__ import annotations

import argparse
import json

from ..errors import ConfigError
from ..models.backbones import backbone_parameter_count, describe_source
from ..models.registry import BackboneEntry, list_entries
from ..text_tables import format_table
from ..validation import suggest


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "backbones",
        help="list registered backbones (family, scale, patch, dim, parameters, pretrained source)",
        description="List the backbone registry. Parameter counts are computed on the meta device: no weights load.",
    )
    parser.add_argument("--family", action="append", help="only these families (repeatable), e.g. dinov2")
    parser.add_argument("--no-params", action="store_true", help="skip the parameter counts (faster)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.set_defaults(func=run)


def backbone_rows(entries: list[BackboneEntry], with_params: bool = True) -> list[dict[str, object]]:
    """One row per entry: the listing's facts (parameter count in units, None when not computed)."""
    return [
        {
            "name": e.name,
            "family": e.family,
            "scale": e.scale,
            "library": e.library,
            "kind": e.kind,
            "patch_size": e.patch_size,
            "embed_dim": e.embed_dim,
            "prefix_tokens": e.num_prefix_tokens if e.kind == "vit" else 0,
            "parameters": backbone_parameter_count(e) if with_params else None,
            "pretrained": describe_source(e),
        }
        for e in entries
    ]


def run(args: argparse.Namespace) -> int:
    entries = list_entries()
    if args.family:
        known = {e.family for e in entries}
        for family in args.family:
            if family not in known:
                raise ConfigError(suggest(family, known, "backbone family", "--family"))
        entries = [e for e in entries if e.family in args.family]
    rows = backbone_rows(entries, with_params=not args.no_params)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    shown = [
        {
            "name": r["name"],
            "family": r["family"],
            "scale": r["scale"],
            "patch": r["patch_size"],
            "dim": r["embed_dim"],
            "params": "-" if r["parameters"] is None else f"{int(r['parameters']) / 1e6:.2f}M",
            "pretrained weights": r["pretrained"],
        }
        for r in rows
    ]
    print(format_table(shown))
    return 0
