"""A sweep's inputs before anything starts (`run`, `run --dry-run`, `train`): every local file trials will read,
and the readiness of every dataset and weight (present locally or in the hub caches, else the `fetch` command).

- dataset entries: their files are listed and paired the way the loader does (layouts.list_slices), so a missing
  folder, a missing mask or an unpairable name fails here, naming the file, not seconds into every trial;
- local checkpoint files of backbones that trials load pretrained;
- inline backbone entries (a sweep or trial file's `backbones:`): built on the meta device (no weights, no memory)
  so that a stated embed_dim, patch_size or num_prefix_tokens the model contradicts is an error now;
- hub weights are not fetched: the check lists what will be downloaded at run time.

The result holds the entries with relative paths made absolute, which is what trials get.
"""

from __future__ import annotations

import functools
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from ..config import TrialSpec
from ..data.entries import DatasetEntry, resolve_dataset
from ..errors import ConfigError, VfmAblateError
from ..fetch.readiness import Readiness, check_readiness
from ..models.registry import BackboneEntry, get_entry

if TYPE_CHECKING:
    from .plan import SweepPlan

_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # package:..., s3://..., file://... (not a plain path)
MAX_PROBLEMS_SHOWN = 5


@dataclass(frozen=True)
class CheckedInputs:
    """The entries trials will read (relative paths resolved), and the hub weights they will download."""

    backbones: dict[str, BackboneEntry]
    datasets: dict[str, DatasetEntry]
    pretrained: frozenset[str] = frozenset()  # backbones some trial loads with pretrained weights
    downloads: list[str] = field(default_factory=list)  # "backbone 'x': timm hub ..." (fetched at run time)

    def describe(self, with_downloads: bool = True) -> str:
        """What was checked, and the hub weights that were not (they are downloaded at run time; a sweep's dry run
        shows them in its readiness section instead, with whether each is already in the cache)."""
        files = sum(1 for d in self.datasets.values() if d.path is not None)
        local = sum(1 for n in self.pretrained if self.backbones[n].checkpoint is not None)
        lines = [f"inputs: {files} dataset folder(s) and {local} checkpoint file(s) checked"]
        if self.downloads and with_downloads:
            lines.append("will be downloaded at run time (not checked; unless already in the hub cache):")
            lines.extend(f"  - {d}" for d in self.downloads)
        return "\n".join(lines)


def resolve_entries(
    specs: list[TrialSpec], backbones: dict[str, BackboneEntry], datasets: dict[str, DatasetEntry]
) -> tuple[dict[str, BackboneEntry], dict[str, DatasetEntry]]:
    """Every backbone/dataset the trials use, relative paths made absolute here (trials run in other folders)."""
    out_b: dict[str, BackboneEntry] = {}
    out_d: dict[str, DatasetEntry] = {}
    for s in specs:
        if s.backbone not in out_b:
            entry = get_entry(s.backbone, backbones)
            if entry.checkpoint is not None and not _HAS_SCHEME.match(entry.checkpoint):
                entry = entry.model_copy(update={"checkpoint": str(Path(entry.checkpoint).expanduser().resolve())})
            out_b[s.backbone] = entry
        for name in s.dataset_names():
            if name not in out_d:
                ds = resolve_dataset(name, datasets)
                out_d[name] = ds.model_copy(update={"path": str(ds.root())}) if ds.path is not None else ds
    return out_b, out_d


def check_inputs(
    specs: list[TrialSpec],
    backbones: dict[str, BackboneEntry],
    datasets: dict[str, DatasetEntry],
    source: str,
) -> CheckedInputs:
    """Check what `specs` will read (see the module docstring); a ConfigError names the entry and the file."""
    from ..models.backbones import describe_source
    from ..models.checkpoints import resolve_checkpoint_path

    resolved_b, resolved_d = resolve_entries(specs, backbones, datasets)
    problems = [p for ds in resolved_d.values() if (p := _dataset_problem(ds))]
    problems += _labelled_problems(specs, resolved_d)
    pretrained = frozenset(s.backbone for s in specs if s.weights == "pretrained")
    downloads = []
    for name, entry in resolved_b.items():
        if name in backbones and (problem := _facts_problem(entry)):  # inline: hold the user's facts to the model
            problems.append(problem)
        if name not in pretrained:
            continue
        if entry.checkpoint is not None:
            try:
                resolve_checkpoint_path(entry)
            except VfmAblateError as err:
                problems.append(str(err))
        elif entry.pretrained_tag is None:
            problems.append(
                f"backbone '{name}' declares no pretrained source (no pretrained_tag, no checkpoint) but trials load "
                "it with weights: pretrained; add one to the entry, or use weights: random"
            )
        else:
            downloads.append(f"backbone '{name}': {describe_source(entry)}")
    if len(problems) == 1:
        raise ConfigError(f"{source}: {problems[0]}")
    if problems:
        raise ConfigError(
            f"{source}: {len(problems)} problems with the inputs trials would read:\n- " + "\n- ".join(problems)
        )
    return CheckedInputs(resolved_b, resolved_d, pretrained, downloads)


def _dataset_problem(entry: DatasetEntry) -> str | None:
    from ..data.layouts import list_slices

    problems = list_slices(entry).problems
    if not problems:
        return None
    shown = "\n  - ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    return (
        f"dataset '{entry.name}' ({entry.layout} at {entry.path}) cannot be read:\n  - {shown}{more}\n"
        f"  (full report: vfm-ablate data check {entry.path})"
    )


def _labelled_problems(specs: list[TrialSpec], datasets: dict[str, DatasetEntry]) -> list[str]:
    """data.labelled counts larger than a dataset's training split (a trial would fail on them)."""
    from ..data.layouts import training_count

    counts: dict[str, int | None] = {}
    problems: dict[tuple[str, int], str] = {}
    for s in specs:
        for name, k in s.data.labelled.items():
            if not isinstance(k, int) or (name, k) in problems:
                continue
            if name not in counts:
                counts[name] = training_count(datasets[name])
            n = counts[name]
            if n is not None and k > n:
                problems[(name, k)] = (
                    f"data.labelled asks for {k} labelled training images of dataset '{name}', which has {n} "
                    f"(after its test split; e.g. trial {s.trial_id()})"
                )
    return list(problems.values())


def _facts_problem(entry: BackboneEntry) -> str | None:
    try:
        _build_on_meta(entry.model_dump_json())
    except VfmAblateError as err:
        return f"[backbones.{entry.name}]: {err}"
    return None


@functools.lru_cache(maxsize=64)
def _build_on_meta(entry_json: str) -> None:
    """Build the architecture without weights (seconds even for ViT-g); build_backbone checks the stated facts."""
    from ..models.backbones import build_backbone

    build_backbone(BackboneEntry.model_validate_json(entry_json), pretrained=False, device="meta")


# ------------------------------------------------------------------------------------------ readiness


def fetch_command(source: str) -> str:
    """The command that fetches everything the sweep file `source` reads (run where the network is reachable)."""
    return f"vfm-ablate fetch {shlex.quote(source)}"


def sweep_readiness(the_plan: SweepPlan) -> Readiness:
    """Every dataset and pretrained weight the trials read, with the entries exactly as the trials get them."""
    return check_readiness(the_plan.specs, the_plan.backbones, the_plan.datasets, fetch_command(the_plan.sweep.source))


def check_ready(the_plan: SweepPlan, out: TextIO) -> None:
    """Before Ray starts: offline with anything missing is one ConfigError; online, what is missing is printed."""
    readiness = sweep_readiness(the_plan)
    readiness.raise_if_not_ready()
    if readiness.missing:
        print(readiness.format(), file=out, flush=True)
