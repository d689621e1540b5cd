"""The names of a trial's metrics, in one place: what the trial logs, the live view, the result tables, the MLflow
UI's columns and the report all read (MLflow takes only [/\\w.\\- :] in a metric name)."""

from __future__ import annotations

import re

IOU = "iou_fg"  # foreground IoU, pixel totals over all test pixels of a dataset
MACRO_IOU = f"macro_{IOU}"  # mean over test datasets
POOLED_IOU = f"pooled_{IOU}"  # pixel totals over the union of test datasets
HEADLINE = IOU  # the one IoU per trial in tables and views: the macro mean, or the single dataset's
LABELLED = "labelled_images"  # per train dataset, its training images that carried labels (data.labelled resolved)

_METRIC_UNSAFE = re.compile(r"[^\w.\-]")


def metric_token(name: str) -> str:
    """A dataset name as an MLflow-safe metric-name part."""
    return _METRIC_UNSAFE.sub("_", name)


def iou_metric(dataset: str, family: str = IOU) -> str:
    """`iou_fg/<dataset>`: one test dataset's IoU (or another metric family's)."""
    return f"{family}/{dataset}"


def labelled_metric(dataset: str) -> str:
    """`labelled_images/<dataset>`: how many of a train dataset's training images carried labels (validation
    included): the x of a label-efficiency curve."""
    return f"{LABELLED}/{dataset}"


def headline_iou(metrics: dict[str, float]) -> float | None:
    """macro_iou_fg with several test datasets, else the single iou_fg/<dataset>."""
    if MACRO_IOU in metrics:
        return float(metrics[MACRO_IOU])
    per = [float(v) for k, v in metrics.items() if k.startswith(f"{IOU}/")]
    return per[0] if len(per) == 1 else None
