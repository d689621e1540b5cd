"""A sweep's inputs before anything starts (`run`, `run --dry-run`, `train`): every local file trials will read,
and the readiness of every dataset and weight (present locally or in the hub caches, else the `fetch` command).

- dataset entries: their files are listed and paired the way the loader does (layouts.list_slices), so a missing
  folder, a missing mask or an unpairable name fails here, naming the file, not seconds into every trial;
- local checkpoint files of backbones that trials load pretrained;
- inline backbone entries (a sweep or trial file's `backbones:`): built on the meta device (no weights, no memory)
  so that a stated kind, embed_dim, patch_size, num_prefix_tokens, pretrained tag or LoRA target the model
  contradicts is an error now (an entry that leaves facts out had them read from the model when it was parsed);
- what trials make of the images: every train dataset keeps at least two training slices (one is held out for
  validation), and every image of every dataset a trial reads becomes a grid of at least 2x2 patches of its backbone
  under its resize setting (a fixed size that is not a patch multiple, or a 1x1 grid, would fail only inside the
  trial); image sizes come from the files' headers, pixels unread;
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
from ..data.layouts import Listing, list_slices
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
    listings = {name: list_slices(ds) for name, ds in resolved_d.items()}
    problems = [p for name, ds in resolved_d.items() if (p := _dataset_problem(ds, listings[name]))]
    if not problems:
        problems = _input_size_problems(specs, resolved_b, resolved_d, listings)
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


def _dataset_problem(entry: DatasetEntry, listing: Listing) -> str | None:
    problems = listing.problems
    if not problems:
        return None
    shown = "\n  - ".join(problems[:MAX_PROBLEMS_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_PROBLEMS_SHOWN} more" if len(problems) > MAX_PROBLEMS_SHOWN else ""
    return (
        f"dataset '{entry.name}' ({entry.layout} at {entry.path}) cannot be read:\n  - {shown}{more}\n"
        f"  (full report: vfm-ablate data check {entry.path})"
    )


MIN_GRID = 2  # patches a side: the head's first BatchNorm has nothing to normalise over one token of one image


def _input_size_problems(
    specs: list[TrialSpec],
    backbones: dict[str, BackboneEntry],
    datasets: dict[str, DatasetEntry],
    listings: dict[str, Listing],
) -> list[str]:
    """Train datasets with too few training slices, and images whose network input (resize setting, backbone patch)
    is not a grid of at least MIN_GRID x MIN_GRID patches; each problem once."""
    from ..data.check import MIN_TRAIN_SLICES, too_few_to_train
    from ..data.transforms import target_size
    from ..errors import DataError

    sizes: dict[str, set[tuple[int, int]]] = {}
    problems: dict[str, None] = {}
    checked: set[tuple] = set()
    for s in specs:
        patch = backbones[s.backbone].patch_size
        for name in s.data.train:
            listing = listings[name]
            if listing.labelled and listing.train_count < MIN_TRAIN_SLICES:
                problems[too_few_to_train(name, listing.train_count)] = None
        for name in dict.fromkeys([*s.data.train, *s.data.target, *s.data.test_datasets]):
            if name not in sizes:
                sizes[name] = _native_sizes(datasets[name], listings[name])
            for h, w in sorted(sizes[name]):
                key = (name, h, w, s.data.resize, patch)
                if key in checked:
                    continue
                checked.add(key)
                where = f"dataset '{name}' ({h}x{w} images) with backbone '{s.backbone}' (patch {patch})"
                try:
                    th, tw = target_size(h, w, s.data.resize, patch)
                except (ConfigError, DataError) as err:
                    problems[f"{where}: {err}"] = None
                    continue
                if th // patch < MIN_GRID or tw // patch < MIN_GRID:
                    problems[
                        f"{where}: data.resize {_resize_text(s)} makes {th}x{tw} input, a {th // patch}x{tw // patch} "
                        f"grid of patches; the head needs at least {MIN_GRID}x{MIN_GRID} (its BatchNorm normalises "
                        "over patches): use a larger resize.target or resize.size, or resize.policy longest_edge"
                    ] = None
    return list(problems)


def _resize_text(spec: TrialSpec) -> str:
    r = spec.data.resize
    return "{" + ", ".join(f"{k}: {v}" for k, v in r.model_dump(exclude_none=True).items()) + "}"


def _native_sizes(entry: DatasetEntry, listing: Listing) -> set[tuple[int, int]]:
    """The distinct (height, width) of a dataset's images, from file headers (synthetic: its size)."""
    from ..data.images import native_size

    if entry.layout == "synthetic":
        return {(int(entry.size[0]), int(entry.size[1]))}
    refs = [*listing.labelled, *(listing.test or []), *listing.unlabelled]
    stacks: dict[Path, tuple[int, int] | None] = {}
    out = set()
    for ref in refs:
        if ref.image_page is not None:  # one header read per stack
            if ref.image not in stacks:
                stacks[ref.image] = native_size(ref)
            size = stacks[ref.image]
        else:
            size = native_size(ref)
        if size is not None:
            out.add(size)
    return out


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
        _check_on_meta(entry.model_dump_json())
    except VfmAblateError as err:
        return f"[backbones.{entry.name}]: {err}"
    return None


@functools.lru_cache(maxsize=64)
def _check_on_meta(entry_json: str) -> None:
    """Build the architecture without weights (seconds even for ViT-g) and hold the entry to it: kind, patch size,
    dim, prefix tokens, pretrained tag, LoRA targets (models/infer.check_entry)."""
    from ..models.infer import check_entry

    check_entry(BackboneEntry.model_validate_json(entry_json))


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
