"""The typed description of one trial: every setting the trial engine reads, with the study's defaults."""

from __future__ import annotations

import hashlib
import json
from typing import Literal

from pydantic import Field, model_validator

from .validation import StrictModel

Regime = Literal["frozen", "lora", "full"]
Sampling = Literal["natural", "balanced", "weighted"]
# the settings that only mean something with several train datasets (dropped, and hidden, with one)
SAMPLING_KEYS = ("data.sampling", "data.weights")


def sampling_applies(num_train_datasets: int) -> bool:
    """Paired-data sampling (and its weights) only changes anything when a trial trains on several datasets."""
    return num_train_datasets > 1


def balanced_share(batch_size: int, num_datasets: int) -> int:
    """Images of each dataset in one balanced batch; a batch size that does not split evenly is a user error."""
    if num_datasets < 1 or batch_size % num_datasets:
        raise ValueError(
            f"balanced sampling puts the same number of images of each of the {num_datasets} train datasets in a "
            f"batch: optim.batch_size must be a multiple of {num_datasets}, got {batch_size}"
        )
    return batch_size // num_datasets


class LoraSpec(StrictModel):
    """LoRA adapter settings; defaults are the study's (r=16, alpha=32, attention qkv + output proj)."""

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # "attention" -> the backbone entry's lora_targets; "attention+mlp" adds its lora_mlp_targets;
    # an explicit list of module-name suffixes overrides both.
    targets: Literal["attention", "attention+mlp", "mlp"] | list[str] = "attention"


class ResizeSpec(StrictModel):
    """How images become network input. Masks always follow with nearest-neighbour."""

    # longest_edge: longest side -> target (aspect kept), both sides snapped to a multiple of the patch size
    # fixed: exactly (height, width) (must be patch multiples)
    # native: keep size, crop nothing, only snap down to a patch multiple
    policy: Literal["longest_edge", "fixed", "native"] = "longest_edge"
    # None -> data.transforms.default_target(patch): the largest patch multiple below 1024 (1022 for 14, 1008 for 16)
    target: int | None = Field(None, ge=1)
    size: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _fixed_needs_size(self) -> ResizeSpec:
        if self.policy == "fixed" and self.size is None:
            raise ValueError("resize.policy 'fixed' needs resize.size: [height, width]")
        return self


class DataSpec(StrictModel):
    """Which datasets a trial trains/tests on and how paired data is sampled."""

    train: list[str] = Field(min_length=1)  # dataset entry names
    test: list[str] | None = None  # None -> the train datasets' test splits
    sampling: Sampling = "natural"
    weights: list[float] | None = None  # for sampling == "weighted", one per train dataset
    val_fraction: float = Field(0.1, gt=0, lt=1)
    resize: ResizeSpec = ResizeSpec()
    normalisation: Literal["imagenet", "backbone"] = "imagenet"
    unlabelled: list[str] = []  # extra dataset names used only for diagnostics (e.g. vnc_stack2)

    @model_validator(mode="after")
    def _sampling_fits(self) -> DataSpec:
        if self.sampling == "weighted":
            if self.weights is None or len(self.weights) != len(self.train):
                raise ValueError(
                    f"sampling 'weighted' needs 'weights' with one value per train dataset ({len(self.train)})"
                )
        elif self.weights is not None:
            raise ValueError("'weights' is only used with sampling: weighted")
        return self

    @property
    def test_datasets(self) -> list[str]:
        return list(self.test) if self.test is not None else list(self.train)


class OptimSpec(StrictModel):
    """The study's protocol: AdamW 5e-5 / 1e-4, batch 2, <=1000 epochs, early stopping patience 20."""

    lr: float = Field(5e-5, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(2, ge=1)
    max_epochs: int = Field(1000, ge=1)
    patience: int = Field(20, ge=1)
    min_delta: float = Field(0.0, ge=0)


class DiagnosticsSpec(StrictModel):
    """Domain-mismatch diagnostics computed inside a trial (frozen and, for lora/full, adapted backbone)."""

    enabled: bool = False
    datasets: list[str] | None = None  # None -> the trial's test datasets (+ unlabelled)
    pooling: Literal["mean", "cls"] = "mean"
    pca_dim: int | None = None  # compute FD on PCA-reduced features when set


class TrialSpec(StrictModel):
    """One trial = backbone (+LoRA) + head trained and evaluated under one setting."""

    backbone: str  # registry entry name
    regime: Regime = "frozen"
    # "pretrained": the entry's hub tag or local checkpoint (fails loudly if unavailable); "random": random init
    weights: Literal["pretrained", "random"] = "pretrained"
    lora: LoraSpec = LoraSpec()
    data: DataSpec
    optim: OptimSpec = OptimSpec()
    seed: int = 0
    split_seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    feature_cache: Literal["off", "memory", "disk"] = "memory"  # frozen regime only
    feature_cache_dir: str | None = None  # disk cache location (default: ~/.cache/vfm_ablate/features)
    eval_native_resolution: bool = False
    diagnostics: DiagnosticsSpec = DiagnosticsSpec()
    save_checkpoint: bool = True
    num_overlays: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _fits_together(self) -> TrialSpec:
        n_train = len(self.data.train)
        if len(set(self.data.train)) != n_train:
            raise ValueError(f"data.train lists a dataset twice: {self.data.train}")
        if self.data.sampling == "balanced" and sampling_applies(n_train):
            balanced_share(self.optim.batch_size, n_train)
        return self

    def dataset_names(self) -> list[str]:
        """Every dataset this trial reads (train, test, unlabelled, diagnostics when on), each once, in that order."""
        diagnostics = (self.diagnostics.datasets or []) if self.diagnostics.enabled else []
        names = [*self.data.train, *self.data.test_datasets, *self.data.unlabelled, *diagnostics]
        return list(dict.fromkeys(names))

    def trial_id(self) -> str:
        """Stable content hash: the same settings always get the same id (used for resume and MLflow dedupe)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]

    def flat_params(self) -> dict[str, str]:
        """Every setting as flat dotted keys, for MLflow params and result tables."""
        out: dict[str, str] = {}

        def walk(prefix: str, value: object) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}.{k}" if prefix else str(k), v)
            elif isinstance(value, (list, tuple)):
                out[prefix] = ",".join(str(v) for v in value)
            else:
                out[prefix] = "" if value is None else str(value)

        walk("", self.model_dump(mode="json"))
        return out
