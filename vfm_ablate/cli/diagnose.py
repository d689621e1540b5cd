"""`vfm-ablate diagnose`: domain-mismatch diagnostics of datasets in a backbone's feature space, standalone.

Without `--checkpoint`: one stage ("frozen", or the random-init backbone with `--weights random`).
With a trial's `--checkpoint`: the trial's backbone before ("frozen") and after ("adapted") its trained
LoRA/full weights, on the trial's own resize, normalisation and split seed, so any finished trial can be
re-measured. Writes metrics.json, pca_<stage>.png and embeddings_<stage>.npz to `--out`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import MAX_INPUT_SIDE
from ..trial.files import CONFIG_FILE
from .arguments import COUNT, SEED, integer


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "diagnose",
        help="domain-mismatch diagnostics (FD, linear probe, MMD, PCA) of datasets in a backbone's feature space",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--backbone", help="backbone entry name (optional with --checkpoint: the trial's)")
    p.add_argument(
        "--datasets",
        nargs="+",
        default=[],
        metavar="NAME",
        help="datasets whose --split is embedded (built-in entries read $VFM_ABLATE_DATA_ROOT, default ./data)",
    )
    p.add_argument(
        "--unlabelled",
        nargs="+",
        default=[],
        metavar="NAME",
        help="datasets whose unlabelled images are embedded (e.g. vnc_stack2)",
    )
    p.add_argument(
        "--split",
        choices=["test", "train", "all"],
        default="test",
        help="labelled split to measure (default: test, with the probe fitted on the training split)",
    )
    p.add_argument(
        "--weights",
        choices=["pretrained", "random"],
        help="backbone weights (default: pretrained; with --checkpoint: the trial's)",
    )
    p.add_argument(
        "--checkpoint", type=Path, help=f"a trial's trainable_checkpoint.pt ({CONFIG_FILE} must sit next to it)"
    )
    p.add_argument(
        "--pooling",
        choices=["mean", "cls"],
        help="mean of final patch tokens (default), or the CLS token; with --checkpoint: the trial's",
    )
    p.add_argument(
        "--normalisation", choices=["imagenet", "backbone"], help="default: imagenet (with --checkpoint: the trial's)"
    )
    p.add_argument(
        "--resize-target",
        type=integer(1, MAX_INPUT_SIDE),
        help="longest-edge target (default: the study's for the patch size, or the trial's)",
    )
    p.add_argument(
        "--pca-dim",
        type=COUNT,
        help="compute FD on a joint PCA with this many components (with --checkpoint: the trial's)",
    )
    p.add_argument(
        "--probe-cv",
        type=integer(2),
        help="k-fold cross-validated probe on the measured images (instead of fitting it on the training split, or "
        "on 70%% of the images of a dataset without one)",
    )
    p.add_argument(
        "--permutations",
        type=integer(0, 100_000),
        default=1000,
        help="MMD permutation-test permutations (0: no p-value)",
    )
    p.add_argument(
        "--seed", type=SEED, help="probe split and permutation seed (default 0; with --checkpoint: the trial's)"
    )
    p.add_argument(
        "--split-seed", type=SEED, help="dataset test-split seed (default 0; with --checkpoint: the trial's)"
    )
    p.add_argument("--batch-size", type=COUNT, default=4)
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument(
        "--entries", type=Path, help="YAML with inline `backbones:` / `datasets:` entries (as in sweep files)"
    )
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.set_defaults(func=_run)  # fmt: skip


def _run(args: argparse.Namespace) -> int:
    from ..device import resolve_device
    from ..diagnostics.standalone import format_report, run_diagnose, select_slices
    from ..sweep.inputs import check_inputs
    from .folders import check_output_folder, removed_if_left_empty

    setup = _resolve(args)
    check_output_folder(args.out, "--out")
    backbones, datasets = _entries_file(args.entries)
    if setup.checkpoint is not None:  # the trial's own entry, as its config.yaml recorded it
        backbones = {setup.entry.name: setup.entry}
    checked = check_inputs([setup.spec], backbones, datasets, str(args.entries or "diagnose flags"))
    if checked.downloads:
        print(checked.describe(), flush=True)
    slices = select_slices(args.datasets, args.unlabelled, args.split, setup.spec.split_seed, checked.datasets)
    with removed_if_left_empty(args.out):
        report = run_diagnose(
            setup, slices, args.out, device=resolve_device(args.device), probe_cv=args.probe_cv,
            permutations=args.permutations, batch_size=args.batch_size,
        )  # fmt: skip
    print(format_report(report))
    print(f"outputs in {args.out}")
    return 0


def _resolve(args: argparse.Namespace) -> Any:
    """The DiagnoseSetup from flags, or from a trial's config.yaml (flags then override the trial's settings)."""
    from ..config import ResizeSpec, TrialSpec
    from ..diagnostics.standalone import DiagnoseSetup
    from ..errors import ConfigError
    from ..models.registry import get_entry
    from ..trial.outputs import read_trial_config
    from ..validation import validate

    if not args.datasets and not args.unlabelled:
        raise ConfigError("diagnose: give the datasets to compare with --datasets and/or --unlabelled")
    if args.checkpoint is not None:
        spec, entry = read_trial_config(args.checkpoint)
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
        return DiagnoseSetup(spec.model_copy(update=changes) if changes else spec, entry, args.checkpoint)

    if args.backbone is None:
        raise ConfigError("diagnose: --backbone NAME is required (or --checkpoint of a trial)")
    backbones, _ = _entries_file(args.entries)
    entry = get_entry(args.backbone, backbones)
    data: dict[str, Any] = {
        "train": [*args.datasets, *args.unlabelled],
        "normalisation": args.normalisation or "imagenet",
    }
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
    return DiagnoseSetup(spec, entry, None)


def _entries_file(path: Path | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Inline (backbones, datasets) entries of an --entries file; both empty without one."""
    from ..data.entries import DatasetEntry
    from ..errors import ConfigError
    from ..models.registry import BackboneEntry
    from ..trialfile import inline_entries
    from ..validation import load_yaml

    if path is None:
        return {}, {}
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'backbones:' and/or 'datasets:'")
    unknown = sorted(set(raw) - {"backbones", "datasets"})
    if unknown:
        raise ConfigError(
            f"{path}: unknown top-level key(s) {unknown}; an entries file holds 'backbones:' and/or 'datasets:'"
        )
    return (
        inline_entries(BackboneEntry, raw.get("backbones"), "backbones", str(path)),
        inline_entries(DatasetEntry, raw.get("datasets"), "datasets", str(path)),
    )
