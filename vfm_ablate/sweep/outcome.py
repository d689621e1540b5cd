"""A sweep's outcome, read back from the trial records, and what is shown of it: the final table and results.csv,
the summary on the execution's sweep run in MLflow (counts, IoUs, results.csv and the report, refreshed at the end
of every launch), and where to look."""

from __future__ import annotations

import csv
import io
import logging
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrialSpec
from ..errors import VfmAblateError
from ..metric_names import MACRO_IOU, POOLED_IOU, iou_metric
from ..text_tables import format_table
from .labels import HEADLINE, LABEL_COLUMNS, headline_iou, short_value
from .plan import PlannedTrial, SweepPlan
from .progress import first_error_line
from .store import TrialStore
from .trainable import TrackingTarget, decode_config

RESULTS_CSV = "results.csv"
_log = logging.getLogger(__name__)


@dataclass
class TrialOutcome:
    """One row of the final table: a planned trial (a grid point's sample in search mode) and how it ended."""

    planned: PlannedTrial
    trial_id: str
    spec: TrialSpec  # what the trial ran: its grid point's spec, with a search sample's values
    status: str  # FINISHED, FAILED, STOPPED (scheduler), NOT RUN
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    sampled: dict[str, Any] = field(default_factory=dict)
    ended: str | None = None  # how a trial that did not finish ended: `stopped by ASHA at epoch 3`, `interrupted ...`

    @property
    def shown_status(self) -> str:
        """The status as the result table says it: a scheduler's stop and an interruption in words."""
        return self.ended or self.status


@dataclass
class SweepOutcome:
    sweep_name: str
    store_root: str
    experiment_paths: list[str]
    trials: list[TrialOutcome]
    shown: tuple[str, ...] = LABEL_COLUMNS  # the label columns of the table: what varies across the trials
    common: str = ""  # the settings every trial shares, in words
    tracking_uri: str | None = None
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(1 for t in self.trials if t.status == status)

    @property
    def ok(self) -> bool:
        return all(t.status in ("FINISHED", "STOPPED") for t in self.trials)


def collect_outcome(the_plan: SweepPlan, store: TrialStore, paths: list[str]) -> SweepOutcome:
    """One row per trial Ray ran (per planned trial in grid mode), with the durable record's metrics."""
    from ray import tune

    results = store.results()
    rows: list[TrialOutcome] = []
    by_point = {t.trial_id: t for t in the_plan.trials}
    seen: set[str] = set()
    scheduler = the_plan.sweep.early_stopper
    for path in paths:
        if not tune.Tuner.can_restore(path):
            continue
        for trial in tune.ExperimentAnalysis(path).trials:
            ray_trial = decode_config(trial.config)
            tid = ray_trial.trial_id
            if tid in seen:
                continue
            seen.add(tid)
            record = results.get(tid)
            last = trial.last_result or {}
            ended = None
            reached = f"epoch {int(last['epoch']) + 1}" if "epoch" in last else None  # its last reported epoch
            if record is not None:
                status, metrics, error = "FINISHED", record["metrics"], None
            elif trial.status == "ERROR":
                status, metrics, error = "FAILED", dict(last), store.last_error(tid) or first_error_line(trial)
            elif trial.status == "TERMINATED":  # ended without its final report: the scheduler stopped it
                status, metrics, error = "STOPPED", dict(last), None
                ended = f"stopped by {scheduler}" + (f" at {reached}" if reached else "")
            else:
                status, metrics, error = "NOT RUN", dict(last), None
                ended = f"interrupted at {reached}" if reached else None
            rows.append(
                TrialOutcome(
                    planned=by_point[ray_trial.point_id],
                    trial_id=tid,
                    spec=ray_trial.spec,
                    status=status,
                    metrics=metrics,
                    error=error,
                    attempts=len(store.attempts(tid)),
                    sampled=ray_trial.sampled,
                    ended=ended,
                )
            )
    if the_plan.sweep.search is None:  # planned trials Ray never created (driver stopped early) still get a row
        for t in the_plan.trials:
            if t.trial_id not in seen:
                rows.append(TrialOutcome(planned=t, trial_id=t.trial_id, spec=t.spec, status="NOT RUN"))
    order = {t.trial_id: i for i, t in enumerate(the_plan.trials)}
    rows.sort(key=lambda row: order.get(row.planned.trial_id, len(order)))  # the sweep file's order (stable)
    labels = the_plan.labels
    return SweepOutcome(the_plan.sweep.name, store.root, paths, rows, labels.shown, labels.common)


def mlflow_statuses(outcome: SweepOutcome) -> dict[str, str]:
    status = {"FINISHED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}
    return {t.trial_id: status[t.status] for t in outcome.trials if t.status in status}


def end_tags(outcome: SweepOutcome) -> dict[str, dict[str, str]]:
    """Trial id -> the tags that say how a trial ended when MLflow's KILLED cannot: stopped by the search's
    scheduler (`vfm.stopped_by: ASHA at epoch 3`) or interrupted by a person (`vfm.interrupted: at epoch 2`)."""
    from ..tracking.tags import INTERRUPTED_TAG, STOPPED_BY_TAG

    out: dict[str, dict[str, str]] = {}
    for t in outcome.trials:
        if t.ended is None:
            continue
        if t.status == "STOPPED":
            out[t.trial_id] = {STOPPED_BY_TAG: t.ended.removeprefix("stopped by ")}
        else:
            out[t.trial_id] = {INTERRUPTED_TAG: t.ended.removeprefix("interrupted ")}
    return out


def outcome_rows(outcome: SweepOutcome) -> list[dict[str, str]]:
    rows = []
    for t in outcome.trials:
        iou = headline_iou(t.metrics)
        row = {
            **t.planned.label.columns,
            "id": t.trial_id,
            **{k: short_value(v) for k, v in t.sampled.items()},
            "status": t.shown_status,
            HEADLINE: f"{iou:.4f}" if iou is not None and t.status == "FINISHED" else "-",
            "pooled": f"{float(t.metrics[POOLED_IOU]):.4f}" if POOLED_IOU in t.metrics else "-",
            "epochs": str(int(t.metrics["epochs_run"])) if "epochs_run" in t.metrics else "-",
            "attempts": str(t.attempts),
        }
        if t.error:
            row["error"] = t.error[:100]
        rows.append(row)
    return rows


def format_outcome(outcome: SweepOutcome) -> str:
    rows = outcome_rows(outcome)
    sampled = sorted({k for t in outcome.trials for k in t.sampled})
    labels = {k for t in outcome.trials for k in t.planned.label.columns}  # every setting: shown are the varying
    rest = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in labels and c not in sampled]
    columns = [*outcome.shown, *sampled, *rest]
    rows = [{c: r.get(c, "-") for c in columns} for r in rows]
    counts = ", ".join(
        f"{outcome.count(s)} {s.lower()}" for s in ("FINISHED", "FAILED", "STOPPED", "NOT RUN") if outcome.count(s)
    )
    extractions = feature_summary(outcome)
    return "\n".join(
        [
            f"results of sweep '{outcome.sweep_name}': {counts}",
            f"({HEADLINE}: macro mean over test datasets, or the single dataset's; pooled: pixel-pooled over them)",
            *([f"same for every trial: {outcome.common}"] if outcome.common else []),
            format_table(rows, columns),
            f"every metric: {outcome.store_root}/{RESULTS_CSV}; "
            f"trial outputs: {outcome.store_root}/trials/<id>/outputs",
            *([extractions] if extractions else []),
        ]
    )


def feature_summary(outcome: SweepOutcome) -> str:
    """The sweep's backbone extractions (frozen trials): each image once per sweep, the rest from the store."""
    frozen = [t for t in outcome.trials if "backbone_extractions" in t.metrics]
    if not frozen:
        return ""
    extracted = sum(int(float(t.metrics["backbone_extractions"])) for t in frozen)
    loaded = sum(int(float(t.metrics.get("feature_store_hits", 0))) for t in frozen)
    return (
        f"backbone extractions: {extracted} over {len(frozen)} frozen trials ({loaded} images served by the sweep's "
        f"feature store {outcome.store_root}/features)"
    )


def write_results_csv(store: TrialStore, outcome: SweepOutcome) -> None:
    keys = sorted({k for t in outcome.trials for k, v in t.metrics.items() if isinstance(v, (int, float))})
    buf = io.StringIO()
    writer = csv.writer(buf)
    sampled = sorted({k for t in outcome.trials for k in t.sampled})
    settings = list(dict.fromkeys([*LABEL_COLUMNS, *(k for t in outcome.trials for k in t.planned.label.columns)]))
    writer.writerow([*settings, *sampled, "status", "ended", "attempts", *keys, "error"])
    for t, row in zip(outcome.trials, outcome_rows(outcome)):
        writer.writerow(
            [row.get(c, "") for c in settings]
            + [t.sampled.get(k, "") for k in sampled]
            + [t.status, t.ended or "", t.attempts]
            + [t.metrics.get(k, "") for k in keys]
            + [t.error or ""]
        )
    store.write_text(RESULTS_CSV, buf.getvalue())


def test_metrics(the_plan: SweepPlan) -> list[str]:
    """The test-metric columns of the sweep's UI view: `iou_fg/<dataset>`, and macro/pooled when a trial tests
    on several datasets."""
    names: list[str] = []
    several = False
    for t in the_plan.trials:
        tested = t.spec.data.test_datasets
        several = several or len(tested) > 1
        names += [iou_metric(d) for d in tested]
    keys = list(dict.fromkeys(names))
    return keys + ([MACRO_IOU, POOLED_IOU] if several else [])


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


def where_to_look(source: str, target: TrackingTarget) -> str:
    """The lines that end `vfm-ablate run`: how to open this sweep's trials in the MLflow UI, and the report."""
    from ..tracking.ui import experiment_address, ui_command

    command = ui_command(target.uri)
    address = experiment_address(target.uri, target.experiment_id, target.view_key)
    lines = [f"MLflow: experiment '{target.experiment}' in {target.uri} (execution {target.execution_id})"]
    if command:
        lines.append(f"  open the UI:    {command}")
    lines.append(f"  trials, by IoU: {address}")
    lines.append(f"  tables:         vfm-ablate report {source}")
    return "\n".join(lines)
