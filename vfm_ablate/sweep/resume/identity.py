"""What a trial reads, as an identity: `--resume` never mixes results made from other entries or other files.

`TrialSpec.trial_id()` stays what it was: a hash of the trial's *settings*, which names its backbone and datasets.
What those names stand for is the trial's *inputs id*, computed here on the driver and recorded beside the trial
(its attempt records, result.json, the MLflow tag `vfm.inputs_id`) and, per entry, in the sweep's manifest:

- a backbone entry: every fact of the entry except where its checkpoint file lies and the scheduling hints
  (gpu_fraction_*, gpu_memory_gb); for trials that load it pretrained, also the checkpoint file's size and
  SHA-256 (or the hub tag, which the facts hold);
- a dataset entry: every fact except its name and root path, plus the size and SHA-256 of every file the loader
  reads (relative to the root, vfm_ablate/digests.py caches the hashes).

Content, not names + sizes + mtimes: a dataset copied to another mount, or `$VFM_ABLATE_DATA_ROOT` pointing at an
identical copy, is the same input (a copy without `-p` would otherwise look changed and retrain everything),
while images re-exported under the same names and sizes are not. Each file is read once per machine.

Resume, the MLflow lookup and the progress view keep keying on the trial id; a changed input is caught by
comparing inputs ids (`stale_trials`), and `--rerun-changed` moves the stale records aside so those trial ids
start over.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import TrialSpec
from ...data.entries import DatasetEntry
from ...models.registry import BackboneEntry

INPUTS_ID_KEY = "inputs_id"  # in attempt records and result.json
_SCHEDULING = {"gpu_fraction_frozen", "gpu_fraction_adapted", "gpu_memory_gb"}


def _digest(data: Any) -> str:
    return hashlib.sha1(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class InputIdentities:
    """Per entry: its identifying facts and ids (picklable plain data: shipped to every trial)."""

    backbones: dict[str, dict[str, Any]]
    datasets: dict[str, dict[str, Any]]

    def trial_inputs_id(self, spec: TrialSpec) -> str:
        """The inputs id of a trial: its backbone (as loaded: random or pretrained) and each dataset it reads."""
        b = self.backbones[spec.backbone]
        return _digest(
            {
                "backbone": [spec.backbone, spec.weights, b["id_" + spec.weights]],
                "datasets": [[name, self.datasets[name]["id"]] for name in spec.dataset_names()],
            }
        )

    def to_manifest(self) -> dict[str, Any]:
        return {"backbones": self.backbones, "datasets": self.datasets}


def input_identities(
    backbones: dict[str, BackboneEntry], datasets: dict[str, DatasetEntry], pretrained: frozenset[str]
) -> InputIdentities:
    """Identities of resolved entries; checkpoint files are hashed only for backbones some trial loads pretrained."""
    return InputIdentities(
        {name: _backbone_identity(e, name in pretrained) for name, e in backbones.items()},
        {name: _dataset_identity(e) for name, e in datasets.items()},
    )


def _backbone_identity(entry: BackboneEntry, pretrained: bool) -> dict[str, Any]:
    from ...digests import file_digests
    from ...models.checkpoints import resolve_checkpoint_path

    facts = entry.model_dump(mode="json", exclude={"name", "checkpoint", *_SCHEDULING})
    facts["checkpoint"] = entry.checkpoint is not None
    weight_facts = ("pretrained_tag", "checkpoint", "checkpoint_key_map")
    architecture = {k: v for k, v in facts.items() if k not in weight_facts}
    file = None
    if pretrained and entry.checkpoint is not None:
        path = resolve_checkpoint_path(entry)
        size, sha = file_digests([path])[path.resolve()]
        file = {"size": size, "sha256": sha, "path": str(path)}
    weights = {**facts, "file": None if file is None else [file["size"], file["sha256"]]}
    return {
        "facts": facts,
        "file": file,
        "id_random": _digest(architecture),
        "id_pretrained": _digest(weights) if pretrained else None,
    }


def _dataset_identity(entry: DatasetEntry) -> dict[str, Any]:
    from ...data.layouts import list_slices
    from ...digests import file_digests

    facts = entry.model_dump(mode="json", exclude={"name", "path"})
    if entry.path is None:  # generated (synthetic): its facts are everything
        return {"facts": facts, "path": None, "files": 0, "bytes": 0, "files_id": None, "id": _digest(facts)}
    root = entry.root()
    listing = list_slices(entry)
    refs = [*listing.labelled, *(listing.test or []), *listing.unlabelled]
    paths = sorted({p for r in refs for p in (r.image, r.mask) if p is not None})
    digests = file_digests(paths)
    files = [[_relative(p, root), *digests[p.resolve()]] for p in paths]
    return {
        "facts": facts,
        "path": str(root),
        "files": len(files),
        "bytes": sum(f[1] for f in files),
        "files_id": _digest(files),
        "id": _digest({"facts": facts, "files": files}),
    }


def _relative(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root))
    except ValueError:
        return str(path.resolve())


# ------------------------------------------------------------------------------------------ comparing launches


def changed_entries(old: dict[str, Any] | None, new: InputIdentities) -> dict[tuple[str, str], str]:
    """("backbone" | "dataset", name) -> what changed, for the entries both launches use."""
    if not old:
        return {}
    out: dict[tuple[str, str], str] = {}
    for kind, now_all, ids in (
        ("backbone", new.backbones, ("id_random", "id_pretrained")),
        ("dataset", new.datasets, ("id",)),
    ):
        before_all = old.get(kind + "s", {})
        for name, now in now_all.items():
            before = before_all.get(name)
            if before is None:
                continue
            if all(before.get(k) is None or now.get(k) is None or before[k] == now[k] for k in ids):
                continue
            out[(kind, name)] = _describe_change(before, now)
    return out


def _describe_change(before: dict[str, Any], now: dict[str, Any]) -> str:
    parts = []
    old_facts, new_facts = before.get("facts", {}), now.get("facts", {})
    for key in sorted(set(old_facts) | set(new_facts)):
        if old_facts.get(key) != new_facts.get(key):
            parts.append(f"{key} {old_facts.get(key)!r} -> {new_facts.get(key)!r}")
    old_file, new_file = before.get("file"), now.get("file")
    if old_file and new_file and old_file.get("sha256") != new_file.get("sha256"):
        parts.append(
            f"checkpoint file content changed ({old_file['path']}, {old_file['size']} bytes -> "
            f"{new_file['path']}, {new_file['size']} bytes)"
        )
    if before.get("files_id") != now.get("files_id"):
        parts.append(
            f"its files differ ({before.get('files')} files, {before.get('bytes')} bytes at {before.get('path')} -> "
            f"{now['files']} files, {now['bytes']} bytes at {now['path']})"
        )
    return "; ".join(parts) or "its identity changed"


def uses_any(spec: TrialSpec, entries: set[tuple[str, str]]) -> bool:
    """Does the trial read one of these ("backbone" | "dataset", name) entries?"""
    return ("backbone", spec.backbone) in entries or any(("dataset", n) in entries for n in spec.dataset_names())


def stale_trials(records: dict[str, set[str]], valid: set[str]) -> list[str]:
    """Trial ids whose records (attempts, result) were made from inputs no planned trial reads now."""
    return sorted(tid for tid, ids in records.items() if ids - valid)
