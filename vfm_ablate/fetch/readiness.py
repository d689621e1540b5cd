"""Can these trials run here, offline? Every dataset and pretrained weight the trials read, present or missing.

Looked up without the network (dataset listings, checkpoint files, the libraries' caches), so it runs in a second
before Ray starts. With an offline setting ($HF_HUB_OFFLINE, or $TRANSFORMERS_OFFLINE, which huggingface_hub also
obeys) anything missing is one error listing all of it and the `fetch` command that gets it; online, missing weights
are listed as what the trials will download (a missing dataset is listed too: no trial can download one).
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import TrialSpec
from ..data.entries import DATA_ROOT_ENV, DatasetEntry, data_root
from ..data.layouts import list_slices
from ..errors import ConfigError
from ..models.registry import BackboneEntry
from ..text_tables import format_table
from .sources import DATASET_SOURCES, source_of
from .weights import cached_file, hub_cache_dir, weight_source

OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")  # the settings huggingface_hub reads (timm, open_clip)
_TRUE = {"1", "ON", "YES", "TRUE"}  # huggingface_hub's truthy values


@dataclass(frozen=True)
class Input:
    """One dataset or one backbone's weights, and how many trials read it."""

    kind: Literal["dataset", "weights"]
    name: str
    source: str  # a folder, a hub repo, a URL or a checkpoint file
    trials: int
    present: bool
    detail: str  # where it was found, or why it is missing
    fetchable: bool  # `vfm-ablate fetch` can get it


@dataclass(frozen=True)
class Readiness:
    inputs: list[Input]
    offline: str | None  # the setting that makes this run offline, e.g. "HF_HUB_OFFLINE=1"
    fetch_command: str
    generated: int  # trials whose data are synthetic and weights random: nothing to have on disk

    @property
    def missing(self) -> list[Input]:
        return [i for i in self.inputs if not i.present]

    def format(self) -> str:
        """The readiness section of `run --dry-run` (and what `run` prints before starting if something is missing)."""
        mode = f"offline ({self.offline})" if self.offline else "online (no HF_HUB_OFFLINE)"
        root = data_root().expanduser().resolve()
        lines = [
            f"inputs ({mode}): datasets under ${DATA_ROOT_ENV} ({root}),",
            f"  weights in huggingface_hub's cache {hub_cache_dir()} ($HF_HUB_CACHE, else $HF_HOME/hub)",
        ]
        if not self.inputs:
            lines.append("  nothing to fetch: every trial uses synthetic data and random-init weights")
            return "\n".join(lines)
        rows = [
            {
                "input": i.kind,
                "name": i.name,
                "source": i.source,
                "trials": i.trials,
                "status": ("present: " if i.present else "MISSING: ") + i.detail,
            }
            for i in self.inputs
        ]
        lines.append(format_table(rows))
        lines.extend(self._summary())
        return "\n".join(lines)

    def raise_if_not_ready(self) -> None:
        """Offline and something is missing: one ConfigError with everything missing and the fix."""
        if self.offline and self.missing:
            lines = [
                f"{self.offline}: these trials cannot run offline; missing before launch (nothing was started):",
                *(f"  {i.kind} {i.name}: {i.source} ({i.detail}; {i.trials} trial(s))" for i in self.missing),
                *self._fixes(),
            ]
            raise ConfigError("\n".join(lines))

    def _summary(self) -> list[str]:
        missing = self.missing
        if not missing:
            return ["all present: the trials need no network"]
        counts = Counter(i.kind for i in missing)
        plural = {"dataset": "datasets", "weights": "weights"}
        lines = [f"missing: {', '.join(f'{n} {kind if n == 1 else plural[kind]}' for kind, n in counts.items())}"]
        lines += self._fixes()
        if self.offline:
            lines.append(f"offline: `vfm-ablate run` stops before launch until they are present ({self.offline})")
        else:
            downloads = [i.name for i in missing if i.kind == "weights" and i.fetchable]
            if downloads:
                lines.append(f"online: trials will download the weights of {', '.join(downloads)} on first use")
            failing = [i.name for i in missing if i.kind == "dataset"]
            if failing:
                lines.append(f"online: trials reading {', '.join(failing)} will fail: no trial downloads a dataset")
        return lines

    def _fixes(self) -> list[str]:
        lines = []
        if any(i.fetchable for i in self.missing):
            lines.append(
                "fetch them on a machine with internet (a cluster's login node), with the same "
                f"${DATA_ROOT_ENV} and $HF_HOME as the trials:\n    {self.fetch_command}"
            )
        for i in self.missing:
            if not i.fetchable:
                lines.append(f"not downloadable by fetch: {i.kind} {i.name}: put it in place ({i.source})")
        return lines


def offline_setting() -> str | None:
    """The setting that keeps huggingface_hub (and so timm and open_clip) off the network, if any."""
    for name in OFFLINE_ENV:
        value = os.environ.get(name, "")
        if value.strip().upper() in _TRUE:
            return f"{name}={value}"
    constants = sys.modules.get("huggingface_hub.constants")  # read once, when huggingface_hub was imported
    if constants is not None and getattr(constants, "HF_HUB_OFFLINE", False):
        return "HF_HUB_OFFLINE (set when huggingface_hub was imported)"
    return None


def check_readiness(
    specs: Iterable[TrialSpec],
    backbones: dict[str, BackboneEntry],
    datasets: dict[str, DatasetEntry],
    fetch_command: str,
) -> Readiness:
    """Every input of `specs` (entries as the trials will get them), each looked up once."""
    weight_trials: Counter[str] = Counter()
    dataset_trials: Counter[str] = Counter()
    generated = 0
    for spec in specs:
        needs_weights = spec.weights == "pretrained"
        weight_trials.update([spec.backbone] if needs_weights else [])
        names = [n for n in spec.dataset_names() if datasets[n].layout != "synthetic"]
        dataset_trials.update(names)
        generated += not needs_weights and not names
    inputs = [_dataset_input(datasets[name], n) for name, n in dataset_trials.items()]
    inputs += [_weights_input(backbones[name], n) for name, n in weight_trials.items()]
    return Readiness(inputs, offline_setting(), fetch_command, generated)


def _dataset_input(entry: DatasetEntry, trials: int) -> Input:
    if entry.path is not None and not entry.root().exists():
        fetchable = _fetchable(entry)
        return Input("dataset", entry.name, str(entry.root()), trials, False, "folder not found", fetchable)
    listing = list_slices(entry)
    count = len(listing.labelled) + len(listing.test or []) + len(listing.unlabelled)
    if listing.problems:
        present, detail = False, _short(listing.problems[0], entry.root())
        if len(listing.problems) > 1:
            detail += f" (+{len(listing.problems) - 1} more)"
    elif count == 0:
        present, detail = False, "no slices found"
    else:
        present, detail = True, f"{count} slices"
    return Input("dataset", entry.name, str(entry.root()), trials, present, detail, _fetchable(entry))


def _fetchable(entry: DatasetEntry) -> bool:
    """A built-in dataset read from where `fetch` puts it (not a sweep's own entry of the same name elsewhere)."""
    source = source_of(entry.name, DATASET_SOURCES)
    return source is not None and entry.root() == (data_root() / source.folder).expanduser().resolve()


def _weights_input(entry: BackboneEntry, trials: int) -> Input:
    try:
        source = weight_source(entry)
    except ConfigError as err:
        return Input("weights", entry.name, f"{entry.library} {entry.model_id}", trials, False, str(err), False)
    if source.problem is not None:
        return Input("weights", entry.name, source.describe(), trials, False, source.problem, False)
    found = cached_file(source)
    if found is not None:
        return Input("weights", entry.name, source.describe(), trials, True, found.name, False)
    where = f"the Hugging Face cache {hub_cache_dir()}" if source.kind == "hub" else str(source.path)
    fetchable = source.kind != "checkpoint"
    return Input("weights", entry.name, source.describe(), trials, False, f"not in {where}", fetchable)


def _short(problem: str, root: Path) -> str:
    """A listing problem without the dataset root repeated (the source column shows it)."""
    text = problem.replace(f"{root}: ", "").replace(str(root) + "/", "")
    return text if len(text) <= 110 else text[:107] + "..."
