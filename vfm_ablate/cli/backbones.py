"""`vfm-ablate backbones`: what can be swept, with the facts a sweep author needs (patch, dim, size, weights);
`--describe NAME` prints one entry in full, as a sweep file holds it (an inferred one included: freeze it)."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from ..errors import ConfigError
from ..models.backbones import backbone_parameter_count, describe_source
from ..models.registry import BackboneEntry, get_entry, list_entries
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
    parser.add_argument(
        "--describe",
        metavar="NAME",
        help="print one entry in full as YAML (every fact, inferred ones included): a registered name, an inline "
        "entry of --sweep FILE, or LIBRARY:MODEL_ID (e.g. timm:vit_small_patch14_reg4_dinov2.lvd142m, "
        "open_clip:ViT-B-16)",
    )
    parser.add_argument("--sweep", type=Path, metavar="FILE", help="a sweep or trial file whose inline entries count")
    parser.add_argument("--pretrained-tag", help="with --describe LIBRARY:MODEL_ID: the pretrained tag (open_clip)")
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
    if args.describe:
        print(describe(args.describe, args.sweep, args.pretrained_tag))
        return 0
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


def describe(name: str, sweep: Path | None = None, pretrained_tag: str | None = None) -> str:
    """One entry as YAML a sweep file's `backbones:` takes as it is, with a comment saying what was read from the
    model (so that the inferred facts can be frozen, or checked)."""
    import yaml

    from ..models.infer import INFERRED, complete_entry

    stated: set[str] | None = None
    inline = _inline_facts(sweep) if sweep is not None else {}
    if name in inline:
        stated = set(inline[name])
        entry = complete_entry({**inline[name], "name": name}, f"{sweep} [backbones.{name}]")
    elif ":" in name and name.split(":", 1)[0] in ("timm", "open_clip"):
        library, model_id = name.split(":", 1)
        facts: dict[str, object] = {"library": library, "model_id": model_id}
        if pretrained_tag:
            facts["pretrained_tag"] = pretrained_tag
        stated = set(facts)
        entry_name = re.sub(r"[^A-Za-z0-9_]+", "_", model_id.split(".", 1)[0]).strip("_").lower()
        entry = complete_entry({**facts, "name": entry_name}, f"--describe {name}")
    else:
        known = [e.name for e in list_entries()] + list(inline)
        if name not in known:
            raise ConfigError(suggest(name, known, "backbone", "--describe"))
        entry = get_entry(name)
    facts_out = entry.model_dump(mode="json")
    facts_out.pop("name")
    lines = [
        f"# {entry.name}: {entry.library} {entry.model_id}, {backbone_parameter_count(entry) / 1e6:.2f}M parameters "
        f"(backbone as the grid uses it); pretrained weights: {describe_source(entry)}"
    ]
    if stated is not None:
        inferred = [k for k in INFERRED if k not in stated]
        lines.append(f"# read from the model: {', '.join(inferred)}")
    body = yaml.safe_dump({entry.name: facts_out}, sort_keys=False, default_flow_style=None, width=120)
    return "\n".join(lines) + "\n" + body.rstrip()


def _inline_facts(path: Path) -> dict[str, dict]:
    """The raw `backbones:` mapping of a sweep or trial file (what its author stated)."""
    from ..validation import load_yaml

    data = load_yaml(path)
    raw = data.get("backbones") if isinstance(data, dict) else None
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, dict) for v in raw.values()):
        raise ConfigError(f"{path}: 'backbones' must be a mapping of name -> entry")
    return raw
