"""`vfm-ablate fetch SWEEP.yaml | DATASET | BACKBONE ...`: everything a sweep reads, onto disk before launch.

Run once where the network is reachable (a cluster's login node), with the same $VFM_ABLATE_DATA_ROOT and $HF_HOME
the trials will have: datasets go under the data root in the loaders' layouts (then `data check`), weights into the
caches timm / open_clip read. Re-running is a no-op; an interrupted run is finished by running it again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..data.entries import DATA_ROOT_ENV, data_root
from ..errors import ConfigError, VfmAblateError
from ..fetch.datasets import install_source
from ..fetch.sources import DATASET_SOURCES, DatasetSource, get_source, source_of
from ..fetch.weights import HubUnreachable, cached_file, fetch_weights, hub_cache_dir, weight_source
from ..models.registry import BackboneEntry, get_entry, list_entries
from ..text_tables import format_table
from ..validation import suggest

if TYPE_CHECKING:
    from ..sweep.plan import SweepPlan


@dataclass
class Wanted:
    """What the targets name: dataset sources to install, backbone entries whose weights to fetch."""

    sources: dict[str, DatasetSource]
    backbones: dict[str, BackboneEntry]
    sweeps: list[SweepPlan]


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "fetch",
        help="download a sweep's datasets and pretrained weights before launch (run on a login node)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "targets",
        nargs="+",
        metavar="TARGET",
        help="a sweep file (everything its trials read), a dataset name (lucchi_pp, vnc) or a backbone entry name",
    )
    only = p.add_mutually_exclusive_group()
    only.add_argument("--datasets-only", action="store_true", help="skip the weights")
    only.add_argument("--weights-only", action="store_true", help="skip the datasets")
    p.add_argument("--no-check", action="store_true", help="skip `data check` on the fetched datasets")
    p.set_defaults(func=_fetch)


def _fetch(args: argparse.Namespace) -> int:
    wanted = _resolve(args.targets)
    if args.weights_only:
        wanted.sources = {}
    if args.datasets_only:
        wanted.backbones = {}
    print(f"data root: {data_root().expanduser().resolve()} (${DATA_ROOT_ENV}); weights cache: {hub_cache_dir()}")
    rows: list[dict[str, str]] = []
    failures: list[str] = []
    for source in wanted.sources.values():
        rows.append(_fetch_dataset(source, not args.no_check, failures))
    unreachable: list[str] = []  # once the hub is out of reach, the other hub downloads are not tried
    for entry in wanted.backbones.values():
        rows.append(_fetch_backbone(entry, failures, unreachable))
    if rows:
        print(format_table(rows))
    from ..sweep.inputs import sweep_readiness

    for the_plan in wanted.sweeps:
        sweep = the_plan.sweep.source
        readiness = sweep_readiness(the_plan)  # the disk as it is now, after fetching
        print(readiness.format())
        kinds = {"dataset"} if args.datasets_only else {"weights"} if args.weights_only else {"dataset", "weights"}
        for i in readiness.missing:
            if not i.fetchable and i.kind in kinds:
                failures.append(f"{i.kind} {i.name} ({sweep}): not downloadable by fetch: put it in place ({i.source})")
    if failures:
        raise VfmAblateError(f"{len(failures)} input(s) not fetched:\n  " + "\n  ".join(failures))
    return 0


def _resolve(targets: list[str]) -> Wanted:
    wanted = Wanted({}, {}, [])
    for target in targets:
        path = Path(target)
        if path.suffix in (".yaml", ".yml") or path.is_file():
            _add_sweep(wanted, path)
        elif target in DATASET_SOURCES or source_of(target) is not None:
            source = get_source(target)
            wanted.sources[source.name] = source
        else:
            try:
                entry = get_entry(target)
            except ConfigError:
                names = set(DATASET_SOURCES) | {e.name for e in list_entries()}
                raise ConfigError(
                    suggest(target, names, "fetch target (a sweep file, a dataset or a backbone)")
                ) from None
            wanted.backbones[entry.name] = entry
    return wanted


def _add_sweep(wanted: Wanted, path: Path) -> None:
    from ..sweep.plan import load_plan

    the_plan = load_plan(path)
    for s in the_plan.specs:
        if s.weights == "pretrained":
            wanted.backbones.setdefault(s.backbone, the_plan.backbones[s.backbone])
        for name in s.dataset_names():
            source, entry = source_of(name), the_plan.datasets[name]
            where = entry.root() if entry.path is not None else None
            if source is not None and where == (data_root() / source.folder).expanduser().resolve():
                wanted.sources[source.name] = source
    wanted.sweeps.append(the_plan)


def _fetch_dataset(source: DatasetSource, check: bool, failures: list[str]) -> dict[str, str]:
    row = {"input": "dataset", "name": source.name}
    try:
        result = install_source(source, check=check, progressbar=sys.stderr.isatty())
    except VfmAblateError as err:
        failures.append(f"dataset {source.name}: {err}")
        return {**row, "result": "FAILED", "where": str(err).splitlines()[0][:100]}
    checks = "; ".join(
        f"{c.name}: " + ("OK " if c.ok else "BROKEN ") + ", ".join(f"{k} {v}" for k, v in c.counts().items())
        for c in result.checks
    )
    for c in result.checks:
        if not c.ok:
            failures.append(f"dataset {c.name}: data check: {c.problems[0]} (details: vfm-ablate data check {c.name})")
    action = {"present": "already there", "by hand": "already there (not fetched)", "installed": "downloaded"}
    return {
        **row,
        "result": action[result.action] + (" (checksum pinned)" if result.pinned else ""),
        "where": str(result.folder),
        "data check": checks or "-",
    }


def _fetch_backbone(entry: BackboneEntry, failures: list[str], unreachable: list[str]) -> dict[str, str]:
    row = {"input": "weights", "name": entry.name}
    try:
        source = weight_source(entry)
        before = cached_file(source)
        if before is None and source.kind == "hub" and unreachable:
            failures.append(f"weights {entry.name}: not tried, the hub was unreachable for {unreachable[0]}")
            return {**row, "result": "FAILED", "where": f"{source.describe()}: not tried (no network)"}
        path = fetch_weights(source)
    except HubUnreachable as err:
        unreachable.append(entry.name)
        failures.append(f"weights {entry.name}: {err}")
        return {**row, "result": "FAILED", "where": str(err).splitlines()[0][:100]}
    except VfmAblateError as err:
        failures.append(f"weights {entry.name}: {err}")
        return {**row, "result": "FAILED", "where": str(err).splitlines()[0][:100]}
    size = path.stat().st_size / 2**20
    result = "already there" if before is not None else "downloaded"
    if source.kind == "checkpoint":
        result = "local file (checked)"
    return {**row, "result": f"{result} ({size:,.1f} MiB)", "where": str(path)}
