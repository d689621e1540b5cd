"""Frozen-backbone feature cache: a frozen backbone never runs twice on the same image.

In memory the features of every image are kept for the whole trial (computed in the first epoch that needs
them). On disk they are keyed by (backbone entry, weights, precision) and the exact network input tensor — which
already encodes the resize policy, normalisation and image content — so later trials with the same backbone
skip extraction entirely.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import torch

DEFAULT_DISK_DIR = Path(os.environ.get("VFM_ABLATE_CACHE", Path.home() / ".cache" / "vfm_ablate" / "features"))


def backbone_fingerprint(entry_json: dict, weights: str, precision: str) -> str:
    """What makes two backbones produce the same features: every fact of the entry plus weights and precision."""
    blob = json.dumps({"entry": entry_json, "weights": weights, "precision": precision}, sort_keys=True)
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


class FeatureCache:
    """Maps an item key to backbone features; `extract` is only called on a miss."""

    def __init__(
        self,
        extract: Callable[[torch.Tensor], torch.Tensor],
        mode: str = "memory",
        fingerprint: str = "",
        disk_dir: str | Path | None = None,
    ) -> None:
        if mode not in ("off", "memory", "disk"):
            raise ValueError(f"feature_cache must be off|memory|disk, got {mode!r}")
        self._extract = extract
        self.mode = mode
        self._memory: dict[str, torch.Tensor] = {}
        self._disk = Path(disk_dir or DEFAULT_DISK_DIR) / fingerprint if mode == "disk" else None
        self.extractions = 0  # backbone forward passes actually run (for tests and benchmarks)
        self.disk_hits = 0

    def features(self, key: str, image: torch.Tensor) -> torch.Tensor:
        """Features (C×h×w, on CPU) of one image (3×H×W)."""
        if self.mode != "off" and key in self._memory:
            return self._memory[key]
        feats = None
        path = None
        if self._disk is not None:
            digest = hashlib.sha1(image.contiguous().cpu().numpy().tobytes()).hexdigest()
            path = self._disk / digest[:2] / f"{digest}.pt"
            if path.is_file():
                feats = torch.load(path, map_location="cpu", weights_only=True)
                self.disk_hits += 1
        if feats is None:
            feats = self._extract(image.unsqueeze(0))[0].detach().cpu()
            self.extractions += 1
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(f".tmp{os.getpid()}")
                torch.save(feats, tmp)
                os.replace(tmp, path)  # atomic: concurrent trials never read a half-written file
        if self.mode != "off":
            self._memory[key] = feats
        return feats
