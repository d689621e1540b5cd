"""Frozen-backbone feature cache: a frozen backbone never runs twice on the same image.

In memory the features of every image are kept for the whole trial (computed in the first epoch that needs
them). Beyond one trial, a `FeatureStore` keyed by (backbone entry, weights, precision) and the exact network
input tensor -- which already encodes the dataset's image, the resize policy, the input alignment and the
normalisation -- serves
features that any earlier trial extracted: a local folder (`feature_cache: disk`, one machine), or the sweep's
shared store under its storage path (every trial of a sweep on every node, see `sweep/feature_store.py`).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import torch

from ..config import TrialSpec
from ..digests import file_digests
from ..models.checkpoints import resolve_checkpoint_path
from ..models.registry import BackboneEntry

DEFAULT_DISK_DIR = Path(os.environ.get("VFM_ABLATE_CACHE", Path.home() / ".cache" / "vfm_ablate" / "features"))


def weights_identity(spec: TrialSpec, entry: BackboneEntry) -> str:
    """The weights a trial's backbone holds, as a key: a random init is its seed's (repeats with other seeds have
    other backbones), a local checkpoint its file's content (a file re-exported under the same name holds other
    weights), hub weights the entry's tag (part of the entry)."""
    if spec.weights == "random":
        return f"random(seed={spec.seed})"  # run_trial seeds torch with spec.seed, then builds the backbone
    if entry.checkpoint is not None:
        path = resolve_checkpoint_path(entry)
        _, sha256 = file_digests([path])[path.resolve()]
        return f"checkpoint(sha256={sha256})"
    return "pretrained"


def backbone_fingerprint(entry_json: dict, weights: str, precision: str) -> str:
    """What makes two backbones produce the same features: every fact of the entry plus the weights' identity
    (`weights_identity`) and precision."""
    blob = json.dumps({"entry": entry_json, "weights": weights, "precision": precision}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


def input_digest(image: torch.Tensor) -> str:
    """The exact network input, as a key: same pixels, size and normalisation -> same digest."""
    return hashlib.sha1(image.contiguous().cpu().numpy().tobytes()).hexdigest()


def features_to_bytes(features: torch.Tensor) -> bytes:
    buf = io.BytesIO()
    torch.save(features, buf)
    return buf.getvalue()


def features_from_bytes(data: bytes) -> torch.Tensor:
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class FeatureStore(Protocol):
    """Features shared between trials: return the stored features, or extract, store and return them."""

    def get_or_extract(
        self, fingerprint: str, digest: str, extract: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, bool]:
        """(features, True if `extract` ran here)."""
        ...


class LocalFeatureStore:
    """One machine's folder (`feature_cache: disk`); written atomically, so concurrent trials never read half a
    file (two trials missing the same image at once both extract it: use the sweep's store to share the work)."""

    def __init__(self, folder: str | Path | None = None) -> None:
        self.folder = Path(folder or DEFAULT_DISK_DIR)

    def get_or_extract(
        self, fingerprint: str, digest: str, extract: Callable[[], torch.Tensor]
    ) -> tuple[torch.Tensor, bool]:
        path = self.folder / fingerprint / digest[:2] / f"{digest}.pt"
        if path.is_file():
            return features_from_bytes(path.read_bytes()), False
        feats = extract()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_bytes(features_to_bytes(feats))
        os.replace(tmp, path)
        return feats, True


class FeatureCache:
    """Maps an item key to backbone features; `extract` is only called on a miss of memory and store."""

    def __init__(
        self,
        extract: Callable[[torch.Tensor], torch.Tensor],
        mode: str = "memory",
        fingerprint: str = "",
        disk_dir: str | Path | None = None,
        store: FeatureStore | None = None,
    ) -> None:
        if mode not in ("off", "memory", "disk"):
            raise ValueError(f"feature_cache must be off|memory|disk, got {mode!r}")
        self._extract = extract
        self.mode = mode
        self.fingerprint = fingerprint
        self._memory: dict[str, torch.Tensor] = {}
        self._store: FeatureStore | None = None
        if mode != "off":  # a sweep's shared store wins over a trial's local folder
            self._store = store or (LocalFeatureStore(disk_dir) if mode == "disk" else None)
        self.extractions = 0  # backbone forward passes actually run (logged as backbone_extractions)
        self.store_hits = 0  # features another trial (or an earlier run) had stored

    def features(self, key: str, image: torch.Tensor) -> torch.Tensor:
        """Features (C×h×w, on CPU) of one image (3×H×W)."""
        if self.mode != "off" and key in self._memory:
            return self._memory[key]
        if self._store is None:
            feats = self._run(image)
        else:
            feats, extracted = self._store.get_or_extract(
                self.fingerprint, input_digest(image), lambda: self._run(image)
            )
            self.store_hits += not extracted
        if self.mode != "off":
            self._memory[key] = feats
        return feats

    def _run(self, image: torch.Tensor) -> torch.Tensor:
        self.extractions += 1
        return self._extract(image.unsqueeze(0))[0].detach().cpu()
