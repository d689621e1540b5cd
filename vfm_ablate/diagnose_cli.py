"""`vfm-ablate diagnose`: domain-mismatch diagnostics of datasets in a backbone's feature space, standalone.

Without `--checkpoint`: one stage ("frozen", or the random-init backbone with `--weights random`).
With a trial's `--checkpoint`: the trial's backbone before ("frozen") and after ("adapted") its trained
LoRA/full weights, on the trial's own resize, normalisation and split seed, so any finished trial can be
re-measured. Writes metrics.json, pca_<stage>.png and embeddings_<stage>.npz to `--out`.
"""

from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .trial_outputs import CONFIG_FILE as TRIAL_CONFIG


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="domain-mismatch diagnostics (FD, linear probe, MMD, PCA) of datasets in a backbone's feature space",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backbone", help="backbone entry name (optional with --checkpoint: the trial's)")
    p.add_argument("--datasets", nargs="+", default=[], metavar="NAME", help="datasets whose --split is embedded (built-in entries read $VFM_ABLATE_DATA_ROOT, default ./data)")
    p.add_argument("--unlabelled", nargs="+", default=[], metavar="NAME", help="datasets whose unlabelled images are embedded (e.g. vnc_stack2)")
    p.add_argument("--split", choices=["test", "train", "all"], default="test", help="labelled split to embed (default: test)")
    p.add_argument("--weights", choices=["pretrained", "random"], help="backbone weights (default: pretrained; with --checkpoint: the trial's)")
    p.add_argument("--checkpoint", type=Path, help=f"a trial's trainable_checkpoint.pt ({TRIAL_CONFIG} must sit next to it)")
    p.add_argument("--pooling", choices=["mean", "cls"], help="mean of final patch tokens (default), or the CLS token; with --checkpoint: the trial's")
    p.add_argument("--normalisation", choices=["imagenet", "backbone"], help="default: imagenet (with --checkpoint: the trial's)")
    p.add_argument("--resize-target", type=int, help="longest-edge target (default: the study's for the patch size, or the trial's)")
    p.add_argument("--pca-dim", type=int, help="compute FD on a joint PCA with this many components (with --checkpoint: the trial's)")
    p.add_argument("--probe-cv", type=int, help="k-fold cross-validated probe instead of a 30%% held-out split")
    p.add_argument("--permutations", type=int, default=1000, help="MMD permutation-test permutations (0: no p-value)")
    p.add_argument("--seed", type=int, help="probe split and permutation seed (default 0; with --checkpoint: the trial's)")
    p.add_argument("--split-seed", type=int, help="dataset test-split seed (default 0; with --checkpoint: the trial's)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--entries", type=Path, help="YAML with inline `backbones:` / `datasets:` entries (as in sweep files)")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run)


@dataclass(frozen=True)
class _Setup:
    """Everything one diagnose run reads, resolved from flags (and the trial's config when given)."""

    spec: Any  # TrialSpec: backbone, weights, regime, lora, data.resize/normalisation, seed, split_seed, diagnostics
    entry: Any  # BackboneEntry
    checkpoint: Path | None


def _run(args: argparse.Namespace) -> int:
    import numpy as np

    from .device import resolve_device
    from .data.transforms import IMAGENET_MEAN, IMAGENET_STD
    from .diagnostics import RankDeficiencyWarning, domain_metrics, pca_plot

    setup = _resolve(args)
    datasets = _extra_datasets(args.entries)
    slices = _select_slices(args, setup.spec.split_seed, datasets)
    device = resolve_device(args.device)
    imagenet = setup.spec.data.normalisation == "imagenet"
    mean, std = (IMAGENET_MEAN, IMAGENET_STD) if imagenet else (setup.entry.mean, setup.entry.std)

    stages = _stages(setup)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "backbone": setup.entry.name,
        "weights": setup.spec.weights,
        "checkpoint": str(setup.checkpoint) if setup.checkpoint else None,
        "regime": setup.spec.regime if setup.checkpoint else None,
        "pooling": setup.spec.diagnostics.pooling,
        "datasets": {name: {"n": len(s), "split": split} for name, (split, s) in slices.items()},
        "stages": {},
    }
    for stage in stages:
        backbone, load_report = _stage_backbone(setup, stage, device)
        embeddings = {
            name: _embed(backbone, s, setup.spec.data.resize, mean, std, setup.spec.diagnostics.pooling, args.batch_size)
            for name, (_, s) in slices.items()
        }
        del backbone
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", RankDeficiencyWarning)
            metrics = domain_metrics(
                embeddings,
                seed=setup.spec.seed,
                pca_dim=setup.spec.diagnostics.pca_dim,
                probe_cv=args.probe_cv,
                mmd_permutations=args.permutations,
            )
        notes = [str(w.message) for w in caught if issubclass(w.category, RankDeficiencyWarning)]
        for w in caught:  # anything else (e.g. a probe convergence warning) is shown as usual
            if not issubclass(w.category, RankDeficiencyWarning):
                warnings.showwarning(w.message, w.category, w.filename, w.lineno)
        title = f"{setup.entry.name} ({stage}, {setup.spec.weights})"
        ratio = pca_plot(embeddings, out / f"pca_{stage}.png", title)
        np.savez(out / f"embeddings_{stage}.npz", **embeddings)
        report["stages"][stage] = {
            "metrics": metrics,
            "pca_explained_variance": list(ratio),
            "fd_warnings": notes,
            "backbone_load": load_report,
        }
        for note in notes:
            print(f"warning ({stage}): {note}")
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=str))
    _print_table(report)
    print(f"outputs in {out}")
    return 0


# ------------------------------------------------------------------------------------------------ resolving


def _resolve(args: argparse.Namespace) -> _Setup:
    from .config import ResizeSpec, TrialSpec
    from .errors import ConfigError
    from .models.registry import get_entry
    from .validation import validate

    if not args.datasets and not args.unlabelled:
        raise ConfigError("diagnose: give the datasets to compare with --datasets and/or --unlabelled")
    if args.checkpoint is not None:
        spec, entry = _trial_config(args.checkpoint)
        if args.backbone is not None and args.backbone != entry.name:
            raise ConfigError(
                f"--backbone '{args.backbone}' but {args.checkpoint} was trained with backbone '{entry.name}'; "
                f"drop --backbone (the checkpoint's backbone is used)"
            )
        if args.weights is not None and args.weights != spec.weights:
            raise ConfigError(
                f"--weights {args.weights} but {args.checkpoint}'s trial used weights: {spec.weights}; its adapters "
                f"only make sense on those weights (drop --weights)"
            )
        changes: dict[str, Any] = {}
        data_changes: dict[str, Any] = {}
        if args.normalisation is not None:
            data_changes["normalisation"] = args.normalisation
        if args.resize_target is not None:
            data_changes["resize"] = ResizeSpec(target=args.resize_target)
        if args.split_seed is not None:
            changes["split_seed"] = args.split_seed
        if args.seed is not None:
            changes["seed"] = args.seed
        diag_changes = {k: v for k, v in (("pooling", args.pooling), ("pca_dim", args.pca_dim)) if v is not None}
        if diag_changes:
            changes["diagnostics"] = spec.diagnostics.model_copy(update=diag_changes)
        if data_changes:
            changes["data"] = spec.data.model_copy(update=data_changes)
        return _Setup(spec.model_copy(update=changes) if changes else spec, entry, args.checkpoint)

    if args.backbone is None:
        raise ConfigError("diagnose: --backbone NAME is required (or --checkpoint of a trial)")
    backbones = _extra_backbones(args.entries)
    entry = get_entry(args.backbone, backbones)
    data: dict[str, Any] = {"train": [*args.datasets, *args.unlabelled], "normalisation": args.normalisation or "imagenet"}
    if args.resize_target is not None:
        data["resize"] = {"target": args.resize_target}
    spec = validate(
        TrialSpec,
        {
            "backbone": entry.name,
            "weights": args.weights or "pretrained",
            "data": data,
            "seed": args.seed or 0,
            "split_seed": args.split_seed or 0,
            "diagnostics": {"pooling": args.pooling or "mean", "pca_dim": args.pca_dim},
        },
        "diagnose flags",
    )
    return _Setup(spec, entry, None)


def _trial_config(checkpoint: Path) -> tuple[Any, Any]:
    """The TrialSpec and backbone entry a trial wrote next to its checkpoint."""
    from .config import TrialSpec
    from .errors import CheckpointError, ConfigError
    from .models.registry import BackboneEntry
    from .validation import load_yaml, validate

    if not checkpoint.is_file():
        raise CheckpointError(f"--checkpoint {checkpoint}: file not found")
    config_path = checkpoint.parent / TRIAL_CONFIG
    if not config_path.is_file():
        raise CheckpointError(
            f"--checkpoint {checkpoint}: the trial's {TRIAL_CONFIG} is not next to it ({config_path} missing); "
            f"diagnose needs it to rebuild the backbone and its adapters"
        )
    raw = load_yaml(config_path)
    if not isinstance(raw, dict) or "trial" not in raw or "backbone_entry" not in raw:
        raise ConfigError(f"{config_path}: expected the keys 'trial' and 'backbone_entry' written by a trial")
    spec = validate(TrialSpec, raw["trial"], f"{config_path} [trial]")
    entry = validate(BackboneEntry, raw["backbone_entry"], f"{config_path} [backbone_entry]")
    return spec, entry


def _entries_file(path: Path | None) -> dict[str, Any]:
    from .errors import ConfigError
    from .validation import load_yaml

    if path is None:
        return {}
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'backbones:' and/or 'datasets:'")
    unknown = sorted(set(raw) - {"backbones", "datasets"})
    if unknown:
        raise ConfigError(f"{path}: unknown top-level key(s) {unknown}; an entries file holds 'backbones:' and/or 'datasets:'")
    return raw


def _extra_backbones(path: Path | None) -> dict[str, Any]:
    from .models.registry import BackboneEntry
    from .trialfile import inline_entries

    return inline_entries(BackboneEntry, _entries_file(path).get("backbones"), "backbones", str(path))


def _extra_datasets(path: Path | None) -> dict[str, Any]:
    from .data.entries import DatasetEntry
    from .trialfile import inline_entries

    return inline_entries(DatasetEntry, _entries_file(path).get("datasets"), "datasets", str(path))


def _select_slices(args: argparse.Namespace, split_seed: int, datasets: dict[str, Any]) -> dict[str, tuple[str, list]]:
    """name -> (which split, slices): --split of each --datasets entry (unlabelled-only datasets give their
    images), the unlabelled images of each --unlabelled entry."""
    from .data.entries import resolve_dataset
    from .data.sources import load_dataset
    from .errors import ConfigError, DataError

    names = [*args.datasets, *args.unlabelled]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"diagnose: dataset(s) {dupes} given more than once")
    out: dict[str, tuple[str, list]] = {}
    for name in args.datasets:
        ds = load_dataset(resolve_dataset(name, datasets), split_seed)
        chosen = {"test": ds.test, "train": ds.train, "all": [*ds.train, *ds.test]}[args.split]
        if chosen:
            out[name] = (args.split, list(chosen))
        elif not ds.train and not ds.test and ds.unlabelled:
            out[name] = ("unlabelled", list(ds.unlabelled))
        else:
            raise DataError(f"dataset '{name}' has no {args.split} slices")
    for name in args.unlabelled:
        ds = load_dataset(resolve_dataset(name, datasets), split_seed)
        if not ds.unlabelled:
            raise DataError(f"--unlabelled '{name}' has no unlabelled images (use --datasets for labelled datasets)")
        out[name] = ("unlabelled", list(ds.unlabelled))
    if len(out) < 2:
        raise ConfigError(f"diagnose: needs at least two datasets to compare, got {list(out)}")
    return out


def _stages(setup: _Setup) -> list[str]:
    """Which backbones to measure: the trial's starting point ("frozen") and/or its trained state ("adapted")."""
    from .errors import CheckpointError

    if setup.checkpoint is None or setup.spec.regime == "frozen":
        return ["frozen"]  # a frozen trial's checkpoint holds only the head: the backbone is the entry's
    if setup.spec.weights == "pretrained":
        return ["frozen", "adapted"]
    if setup.spec.regime == "lora":
        raise CheckpointError(
            f"{setup.checkpoint}: this LoRA trial started from random weights, which its checkpoint does not hold "
            f"(only adapters + head); its adapted backbone cannot be rebuilt"
        )
    # full fine-tune from random init: the checkpoint holds every weight, but the random start is gone
    print("note: the trial started from random weights (not saved); only the adapted stage is measured")
    return ["adapted"]


def _stage_backbone(setup: _Setup, stage: str, device):
    """Frozen: the entry's backbone as the trial started. Adapted: the trial's segmenter with its trained weights."""
    from .models.backbones import build_backbone, read_state_dict
    from .models.segmenter import build_segmenter

    if stage == "frozen":
        backbone = build_backbone(setup.entry, pretrained=setup.spec.weights == "pretrained")
        return backbone.to(device), dict(backbone.load_report)
    segmenter = build_segmenter(setup.spec, setup.entry)
    state = read_state_dict(setup.checkpoint)
    segmenter.load_trainable_state_dict(state)  # exact keys and shapes, or CheckpointError
    report = {**segmenter.backbone.load_report, "trial_checkpoint": str(setup.checkpoint), "trial_tensors": len(state)}
    return segmenter.backbone.to(device), report


def _embed(backbone, slices, resize, mean, std, pooling, batch_size):
    from .embeddings import dataset_embeddings

    return dataset_embeddings(backbone, slices, resize, mean, std, pooling=pooling, batch_size=batch_size)


def _print_table(report: dict[str, Any]) -> None:
    sizes = ", ".join(f"{n} ({d['split']}, n={d['n']})" for n, d in report["datasets"].items())
    print(f"backbone {report['backbone']} ({report['weights']} weights), pooling {report['pooling']}: {sizes}")
    stages = list(report["stages"])
    keys = list(report["stages"][stages[0]]["metrics"])
    width = max(len(k) for k in keys)
    print(f"{'metric':<{width}}  " + "  ".join(f"{s:>12}" for s in stages))
    for k in keys:
        print(f"{k:<{width}}  " + "  ".join(f"{report['stages'][s]['metrics'][k]:>12.6g}" for s in stages))
