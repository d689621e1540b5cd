"""The sweep's summary in MLflow and on the terminal: counts and headline IoUs on the execution's sweep run, the
results table and the report as its artifacts (refreshed at the end of every launch), and where to look."""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..errors import VfmAblateError
from .plan import SweepPlan
from .results import RESULTS_CSV, SweepOutcome
from .spec import SweepSpec
from .store import TrialStore
from .trainable import HEADLINE, TrackingTarget, headline_iou

_log = logging.getLogger(__name__)


def test_metrics(the_plan: SweepPlan) -> list[str]:
    """The test-metric columns of the sweep's UI view: `iou_fg/<dataset>`, and macro/pooled when a trial tests
    on several datasets."""
    names: list[str] = []
    several = False
    for t in the_plan.trials:
        tested = t.spec.data.test_datasets
        several = several or len(tested) > 1
        names += [f"{HEADLINE}/{d}" for d in tested]
    keys = list(dict.fromkeys(names))
    return keys + ([f"macro_{HEADLINE}", f"pooled_{HEADLINE}"] if several else [])


def summary_metrics(outcome: SweepOutcome) -> dict[str, float]:
    """Counts by status, the best / mean headline IoU of the finished trials, and the frozen trials' backbone
    passes against features read from the sweep's store (one extraction per image per sweep)."""
    ious = [headline_iou(t.metrics) for t in outcome.trials if t.status == "FINISHED"]
    values = [v for v in ious if v is not None and math.isfinite(v)]
    out: dict[str, float] = {
        "trials": float(len(outcome.trials)),
        "trials_finished": float(outcome.count("FINISHED")),
        "trials_failed": float(outcome.count("FAILED")),
        "trials_killed": float(outcome.count("STOPPED") + outcome.count("NOT RUN")),
    }
    if values:
        out[f"best_{HEADLINE}"] = max(values)
        out[f"mean_{HEADLINE}"] = sum(values) / len(values)
    frozen = [t.metrics for t in outcome.trials if "backbone_extractions" in t.metrics]
    if frozen:
        out["backbone_extractions"] = sum(float(m["backbone_extractions"]) for m in frozen)
        out["feature_store_hits"] = sum(float(m.get("feature_store_hits", 0.0)) for m in frozen)
    return out


def publish_summary(tracker: Any, outcome: SweepOutcome, store: TrialStore) -> None:
    """Refresh the sweep run: summary metrics, results.csv and the report of this execution's trial runs. A report
    that cannot be made (e.g. nothing finished yet) is said once, never fatal: the trials' own runs hold it all."""
    from ..report.runs import load_runs
    from ..report.write import write_report

    with tempfile.TemporaryDirectory(prefix="vfm-summary-") as tmp:
        folder = Path(tmp)
        csv = Path(store.root) / RESULTS_CSV
        if "://" not in store.root and csv.exists():
            shutil.copy(csv, folder / RESULTS_CSV)
        try:
            runs = load_runs(tracker.tracking_uri, tracker.experiment, execution_id=tracker.execution_id)
            write_report(runs, folder / "report", title=f"{outcome.sweep_name}: results")
        except VfmAblateError as err:
            _log.warning("sweep run: no report this time (%s)", err)
        tracker.publish(summary_metrics(outcome), folder)


def where_to_look(sweep: SweepSpec, target: TrackingTarget) -> str:
    """The lines that end `vfm-ablate run`: how to open this sweep's trials in the MLflow UI, and the report."""
    from ..tracking.ui import experiment_address, ui_command

    command = ui_command(target.uri)
    address = experiment_address(target.uri, target.experiment_id, target.view_key)
    lines = [f"MLflow: experiment '{target.experiment}' in {target.uri} (execution {target.execution_id})"]
    if command:
        lines.append(f"  open the UI:    {command}")
    lines.append(f"  trials, by IoU: {address}")
    lines.append(f"  tables:         vfm-ablate report {sweep.source}")
    return "\n".join(lines)
