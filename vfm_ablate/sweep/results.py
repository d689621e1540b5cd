"""A sweep's outcome, read back from the trial records: the final table and results.csv."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from typing import Any

from ..config import TrialSpec
from ..text_tables import format_table
from .plan import LABEL_COLUMNS, PlannedTrial, SweepPlan
from .progress import first_error_line
from .spec import SweepSpec
from .store import TrialStore
from .trainable import HEADLINE, grid_point_spec, headline_iou, sampled_values, trial_spec_from_config

RESULTS_CSV = "results.csv"


@dataclass
class TrialOutcome:
    """One row of the final table."""

    planned: PlannedTrial
    spec: TrialSpec
    trial_id: str
    status: str  # FINISHED, FAILED, STOPPED (scheduler), NOT RUN
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    attempts: int = 0
    sampled: dict[str, Any] = field(default_factory=dict)


@dataclass
class SweepOutcome:
    sweep_name: str
    store_root: str
    experiment_paths: list[str]
    trials: list[TrialOutcome]
    tracking_uri: str | None = None
    interrupted: bool = False

    def count(self, status: str) -> int:
        return sum(1 for t in self.trials if t.status == status)

    @property
    def ok(self) -> bool:
        return all(t.status in ("FINISHED", "STOPPED") for t in self.trials)


def collect_outcome(sweep: SweepSpec, the_plan: SweepPlan, store: TrialStore, paths: list[str]) -> SweepOutcome:
    """One row per trial Ray ran (per planned trial in grid mode), with the durable record's metrics."""
    from ray import tune

    results = store.results()
    rows: list[TrialOutcome] = []
    by_point = {t.trial_id: t for t in the_plan.trials}
    seen: set[str] = set()
    for path in paths:
        if not tune.Tuner.can_restore(path):
            continue
        grid = tune.ExperimentAnalysis(path)
        for trial in grid.trials:
            spec = trial_spec_from_config(trial.config)
            tid = spec.trial_id()
            if tid in seen:
                continue
            seen.add(tid)
            point = by_point.get(tid) or by_point.get(grid_point_spec(trial.config).trial_id())
            record = results.get(tid)
            last = trial.last_result or {}
            if record is not None:
                status, metrics, error = "FINISHED", record["metrics"], None
            elif trial.status == "ERROR":
                status, metrics, error = "FAILED", dict(last), store.last_error(tid) or first_error_line(trial)
            elif trial.status == "TERMINATED":
                status, metrics, error = "STOPPED", dict(last), None
            else:
                status, metrics, error = "NOT RUN", dict(last), None
            rows.append(
                TrialOutcome(
                    planned=point,
                    spec=spec,
                    trial_id=tid,
                    status=status,
                    metrics=metrics,
                    error=error,
                    attempts=len(store.attempts(tid)),
                    sampled=sampled_values(trial.config),
                )
            )
    if sweep.search is None:  # planned trials Ray never created (driver stopped early) still get a row
        for t in the_plan.trials:
            if t.trial_id not in seen:
                rows.append(TrialOutcome(planned=t, spec=t.spec, trial_id=t.trial_id, status="NOT RUN"))
    order = {t.trial_id: i for i, t in enumerate(the_plan.trials)}
    rows.sort(key=lambda row: order.get(row.planned.trial_id, len(order)))  # the sweep file's order (stable)
    return SweepOutcome(sweep.name, store.root, paths, rows)


def mlflow_statuses(outcome: SweepOutcome) -> dict[str, str]:
    status = {"FINISHED": "FINISHED", "FAILED": "FAILED", "STOPPED": "KILLED"}
    return {t.trial_id: status[t.status] for t in outcome.trials if t.status in status}


def outcome_rows(outcome: SweepOutcome) -> list[dict[str, str]]:
    rows = []
    for t in outcome.trials:
        label = PlannedTrial(spec=t.spec, trial_id=t.trial_id, resources=t.planned.resources).label()
        iou = headline_iou(t.metrics)
        row = {
            **label,
            **{k: f"{float(v):.3g}" for k, v in t.sampled.items()},
            "status": t.status,
            HEADLINE: f"{iou:.4f}" if iou is not None and t.status == "FINISHED" else "-",
            "pooled": f"{float(t.metrics['pooled_iou_fg']):.4f}" if "pooled_iou_fg" in t.metrics else "-",
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
    rest = [c for c in dict.fromkeys(k for r in rows for k in r) if c not in LABEL_COLUMNS and c not in sampled]
    columns = [*LABEL_COLUMNS, *sampled, *rest]
    rows = [{c: r.get(c, "-") for c in columns} for r in rows]
    counts = ", ".join(
        f"{outcome.count(s)} {s.lower()}" for s in ("FINISHED", "FAILED", "STOPPED", "NOT RUN") if outcome.count(s)
    )
    extractions = feature_summary(outcome)
    return "\n".join(
        [
            f"results of sweep '{outcome.sweep_name}': {counts}",
            f"({HEADLINE}: macro mean over test datasets, or the single dataset's; pooled: pixel-pooled over them)",
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
    writer.writerow([*LABEL_COLUMNS, *sampled, "status", "attempts", *keys, "error"])
    for t, row in zip(outcome.trials, outcome_rows(outcome)):
        writer.writerow(
            [row[c] for c in LABEL_COLUMNS]
            + [t.sampled.get(k, "") for k in sampled]
            + [t.status, t.attempts]
            + [t.metrics.get(k, "") for k in keys]
            + [t.error or ""]
        )
    store.write_text(RESULTS_CSV, buf.getvalue())
