"""The sweep's manifest (`<storage>/<sweep>/sweep.json`): which sweep and execution a storage folder holds, so a
fresh start never mixes into an old one and a resume only continues the same sweep."""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from ...errors import ConfigError
from ..plan import SweepPlan
from ..store import TrialStore
from .identity import InputIdentities

MANIFEST = "sweep.json"


def sweep_id(the_plan: SweepPlan) -> str:
    """Stable across launches of the same sweep: its name, its trials and its search settings."""
    sweep = the_plan.sweep
    search = sweep.search.model_dump(mode="json") if sweep.search else None
    blob = json.dumps({"name": sweep.name, "trials": sorted(t.trial_id for t in the_plan.trials), "search": search})
    return hashlib.sha1(blob.encode()).hexdigest()[:12]


def execution_id(old_manifest: dict[str, Any] | None) -> str:
    """The execution's id: kept from the manifest on --resume, new on a fresh start. MLflow runs are keyed by
    it, so starting the same sweep over (another storage path, the same store) never writes into the runs of an
    earlier execution, while resumes and retries find their own."""
    if old_manifest and old_manifest.get("execution_id"):
        return str(old_manifest["execution_id"])
    return uuid.uuid4().hex[:12]


def manifest(the_plan: SweepPlan, sid: str, execution: str, identities: InputIdentities) -> dict[str, Any]:
    sweep = the_plan.sweep
    return {
        "name": sweep.name,
        "sweep_id": sid,
        "execution_id": execution,
        "source": sweep.source,
        "mode": "search" if sweep.search else "grid",
        "trial_ids": [t.trial_id for t in the_plan.trials],
        "inputs": identities.to_manifest(),
    }


def check_manifest(store: TrialStore, the_plan: SweepPlan, sid: str, resume: bool) -> dict[str, Any] | None:
    """A fresh run never mixes into an old experiment; a resume only continues the same sweep. Returns the
    manifest already there (None for a fresh start)."""
    old = store.read_json(MANIFEST)
    if old is None:
        return None
    if not resume:
        raise ConfigError(
            f"{store.root} already holds sweep '{old.get('name')}' (from {old.get('source')}): "
            "add --resume to finish it, or choose another --storage-path (or delete that folder) to start over"
        )
    if old.get("sweep_id") != sid:
        before, now = set(old.get("trial_ids", [])), {t.trial_id for t in the_plan.trials}
        raise ConfigError(
            f"{the_plan.sweep.source}: the sweep changed since it was started in {store.root} "
            f"({len(now - before)} trials added, {len(before - now)} removed, or its search settings changed); "
            "--resume only finishes the same sweep: run the changed file with another name or --storage-path"
        )
    return old
