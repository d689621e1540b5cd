"""`vfm-ablate train`: run one trial from a YAML file and/or flags, write its output folder, print its metrics."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from .arguments import COUNT, SEED

PHASE_LINE_EVERY_S = 10.0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run one trial (no Ray, no MLflow) and write its output folder")
    p.add_argument("--config", type=Path, help="trial YAML (TrialSpec keys, optional inline backbones:/datasets:)")
    p.add_argument("--backbone", help="backbone entry name (see `vfm-ablate backbones`)")
    p.add_argument("--regime", choices=["frozen", "lora", "full"])
    p.add_argument("--train", nargs="+", metavar="DATASET", help="train dataset names")
    p.add_argument("--test", nargs="+", metavar="DATASET", help="test dataset names (default: the train ones)")
    p.add_argument("--epochs", type=COUNT, help="optim.max_epochs")
    p.add_argument("--seed", type=SEED)
    p.add_argument("--weights", choices=["pretrained", "random"])
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="dotted override, e.g. optim.lr=1e-4"
    )
    p.add_argument("--out", type=Path, default=Path("vfm_runs/train"), help="output folder")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the outputs of another trial found in --out (else an error): its files are removed first",
    )
    p.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError
    from ..overrides import apply_overrides, set_dotted
    from ..sweep.inputs import check_inputs
    from ..trial import run_trial
    from ..trial.phases import EVERY_EPOCH, Phase
    from ..trialfile import parse_trial_file
    from ..validation import load_yaml
    from .folders import check_output_folder, removed_if_left_empty

    data: Any = load_yaml(args.config) if args.config else {}
    if not isinstance(data, dict):
        raise ConfigError(f"{args.config}: expected a mapping of trial settings (backbone, regime, data, ...)")
    flag_values = {
        "backbone": args.backbone,
        "regime": args.regime,
        "data.train": args.train,
        "data.test": args.test,
        "optim.max_epochs": args.epochs,
        "seed": args.seed,
        "weights": args.weights,
    }
    for key, value in flag_values.items():
        if value is not None:
            set_dotted(data, key, value)
    apply_overrides(data, args.set)
    source = str(args.config or "<flags>")
    trial = parse_trial_file(data, source)
    check_output_folder(args.out, "--out")
    replaced = _other_trial_files(args.out, trial.spec.trial_id(), args.overwrite)
    checked = check_inputs([trial.spec], trial.backbones, trial.datasets, source)
    if checked.downloads:
        print(checked.describe(), flush=True)

    class PrintEpochs:
        """Each epoch's losses; each new phase, its end, and progress inside it at most every PHASE_LINE_EVERY_S."""

        step: tuple[str, int | None] | None = None  # the phase now (kind, epoch)
        shown = 0.0  # when the last phase line was printed

        def epoch_end(self, epoch: int, metrics: dict[str, float], save_checkpoint: object) -> None:
            print(
                f"epoch {epoch:4d}  train_loss {metrics['train_loss']:.4f}  val_loss {metrics['val_loss']:.4f}",
                flush=True,
            )

        def phase(self, phase: Phase) -> None:
            now = time.monotonic()
            new = phase.step != self.step
            routine = phase.kind in EVERY_EPOCH and self.step is not None and self.step[0] in EVERY_EPOCH
            self.step = phase.step
            due = phase.total > 0 and (phase.finished or now - self.shown >= PHASE_LINE_EVERY_S)
            if (new and not routine) or due:
                self.shown = now
                print(phase.text(), flush=True)

    if replaced:
        _remove(args.out, replaced)
        print(f"--overwrite: removed the other trial's {', '.join(replaced)} from {args.out}", flush=True)
    with removed_if_left_empty(args.out):
        result = run_trial(
            trial.spec, args.out, reporter=PrintEpochs(), backbones=checked.backbones, datasets=checked.datasets
        )
    print(json.dumps({k: round(v, 6) for k, v in sorted(result.metrics.items())}, indent=2))
    print(f"outputs in {result.out_dir}")
    return 0



def _other_trial_files(out: Path, trial_id: str, overwrite: bool) -> list[str]:
    """The outputs of another trial in --out (an error unless `overwrite`). --out may hold this very trial's outputs
    (a re-run writes the same files), never another trial's unasked: those would be overwritten file by file,
    leaving a folder whose metrics and config disagree with each other."""
    import yaml

    from ..errors import ConfigError
    from ..trial.files import CHECKPOINT_FILE, CONFIG_FILE, LORA_TARGETS_FILE, METRICS_FILE, OVERLAYS_DIR

    found = [
        name
        for name in (METRICS_FILE, CONFIG_FILE, LORA_TARGETS_FILE, CHECKPOINT_FILE, OVERLAYS_DIR)
        if (out / name).exists()
    ]
    if not found:
        return []
    other = "a trial whose config.yaml cannot be read"
    try:
        config = yaml.safe_load((out / CONFIG_FILE).read_text())
        if isinstance(config, dict) and config.get("trial_id") == trial_id:
            return []
        if isinstance(config, dict) and config.get("trial_id"):
            other = f"trial {config['trial_id']}"
    except (OSError, yaml.YAMLError, UnicodeDecodeError):
        pass
    if not overwrite:
        raise ConfigError(
            f"--out {out} holds the outputs of another trial ({other}: {', '.join(found)}), not of this one "
            f"({trial_id}): choose another --out, or add --overwrite to replace them"
        )
    return found


def _remove(out: Path, names: list[str]) -> None:
    """--overwrite: the other trial's outputs go whole, so none of its files stays beside this trial's."""
    import shutil

    for name in names:
        path = out / name
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
