"""The MLflow UI as the comparison surface: the experiment opens as a model-training experiment, and each sweep
execution gets a saved view (sort, filter, columns) that one address opens ready-made.

What MLflow 3.17's UI reads (from its shipped JavaScript, `mlflow/server/js/build`; checked in a real browser by
tests/test_ui_browser.py):

- experiment tag `mlflow.experimentKind` = `custom_model_development`: the experiment page opens on "Runs"
  (model training), not on the GenAI overview; the address parameter `workflowType=machine_learning` does the
  same for the side bar;
- the runs page address carries `searchFilter`, `orderByKey`, `orderByAsc`, `startTime`, `lifecycleFilter`,
  `datasetsFilter`, `modelVersionFilter`, but *not* the shown columns (kept in the browser's local storage);
- a saved view is an experiment tag `mlflow.sharedViewState.<key>` holding
  `{"name", "createdAt", "updatedAt", "state"}` where `state` is the JSON of the search facets *and* the table
  state (`selectedColumns`, `columnWidths`, `runsHiddenMode`, ...). `…/runs?viewStateShareKey=<key>` opens it, and
  it is listed by name in the page's "Views" menu. That is what carries the chosen columns.
"""

from __future__ import annotations

import json
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote
from urllib.parse import urlencode

from ..metric_names import HEADLINE
from .store import check_id, retry_locked, sqlite_path, tracking_client
from .tags import ROLE_TRIAL, runs_filter

EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
VIEW_TAG_PREFIX = "mlflow.sharedViewState."
WORKFLOW_PARAM = "workflowType=machine_learning"
DEFAULT_UI_ADDRESS = "http://127.0.0.1:5000"  # where `mlflow ui` serves by default

NAME_COLUMN = "attributes.`Run Name`"
TAIL_METRICS = ("epochs_run", "best_epoch")


def column(kind: str, key: str) -> str:
    """The UI's column id: ``metrics.`iou_fg` ``, ``params.`backbone` ``."""
    return f"{kind}.`{key}`"


def view_key(execution_id: str) -> str:
    return f"vfm-{check_id(execution_id, 'execution id')}"


Settings = list[tuple[str, str]] | tuple[tuple[str, str], ...]


def comparison_view(
    execution_id: str, test_metrics: list[str], settings: Settings, name_chars: int = 56
) -> dict[str, Any]:
    """The runs-table state of one execution: its trials only, best headline IoU first, the IoU columns and the
    settings that tell trials apart (`settings`: (kind, key) pairs, e.g. ("params", "lora.rank"), ("tags",
    "vfm.alignment"): the planner's, from what varies across the sweep); `name_chars`: the longest run name."""
    metrics = [HEADLINE, *[m for m in test_metrics if m != HEADLINE], *TAIL_METRICS]
    # the settings beside the name (what each run is), params before tags so that each group stays one block
    ordered = [s for s in settings if s[0] == "params"] + [s for s in settings if s[0] != "params"]
    columns = [column(kind, key) for kind, key in ordered] + [column("metrics", m) for m in metrics]
    return {
        "searchFilter": runs_filter(ROLE_TRIAL, execution_id=execution_id),
        "orderByKey": column("metrics", HEADLINE),
        "orderByAsc": False,
        "startTime": "ALL",
        "lifecycleFilter": "Active",
        "datasetsFilter": [],
        "modelVersionFilter": "All Runs",
        "selectedColumns": columns,
        "columnOrder": [NAME_COLUMN, *columns],
        # the run names in full (`name_chars`: the longest), and tags' texts (`ASHA at epoch 3`) too
        "columnWidths": {
            NAME_COLUMN: min(max(60 + 7 * name_chars, 200), 640),
            **{column(kind, key): 200 for kind, key in settings if kind == "tags"},
        },
        "runsHiddenMode": "SHOW_ALL",  # the chart view plots every trial, not the first ten
        "hideEmptyCharts": True,
    }


def set_up_experiment(
    tracking_uri: str,
    experiment_id: str,
    execution_id: str,
    view_name: str,
    test_metrics: list[str],
    settings: Settings = (),
    name_chars: int = 56,
) -> str:
    """Tag the experiment as model training and save the execution's comparison view (`settings`: its setting
    columns, see `comparison_view`); returns the view key."""
    client = tracking_client(tracking_uri)
    key = view_key(execution_id)
    now = int(time.time() * 1000)
    envelope = {
        "name": view_name,
        "createdAt": now,
        "updatedAt": now,
        "state": json.dumps(comparison_view(execution_id, test_metrics, settings, name_chars)),
    }
    retry_locked(lambda: client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, MODEL_TRAINING_KIND))
    retry_locked(lambda: client.set_experiment_tag(experiment_id, VIEW_TAG_PREFIX + key, json.dumps(envelope)))
    return key


def ui_address(tracking_uri: str) -> str:
    """The UI's base address: the tracking server itself, or where `mlflow ui` serves a local store."""
    if tracking_uri.startswith(("http://", "https://")):
        return tracking_uri.rstrip("/")
    return DEFAULT_UI_ADDRESS


def experiment_address(tracking_uri: str, experiment_id: str, key: str | None = None) -> str:
    """The runs page of the experiment; with `key`, opened on that saved view."""
    query = WORKFLOW_PARAM + (f"&{urlencode({'viewStateShareKey': key})}" if key else "")
    return f"{ui_address(tracking_uri)}/#/experiments/{url_quote(experiment_id)}/runs?{query}"


def ui_command(tracking_uri: str) -> str | None:
    """The exact command that serves a local store's UI (None for a tracking server: it is its own UI)."""
    if tracking_uri.startswith(("http://", "https://")):
        return None
    mlflow = Path(sys.executable).with_name("mlflow")
    exe = "mlflow" if shutil.which("mlflow") == str(mlflow) or not mlflow.exists() else str(mlflow)
    db = sqlite_path(tracking_uri)
    uri = f"sqlite:///{db}" if db is not None else tracking_uri
    return shlex.join([exe, "ui", "--backend-store-uri", uri, "--port", "5000"])
