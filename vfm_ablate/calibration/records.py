"""The calibration file: what was measured, on which device, with which software and settings.

One `Measurement` per configuration (backbone entry, regime, precision, input size, batch size); one
`DatasetCost` per (dataset, input size). Written as JSON by `vfm-ablate calibrate`, validated once on load.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..config import DataSpec, LoraSpec, OptimSpec, TrialSpec
from ..errors import ConfigError
from ..validation import StrictModel, validate

FORMAT_VERSION = 1
_LORA = {"lora_rank", "lora"}  # LoRA settings barely change the cost: a measurement of another rank stands in
Source = Literal["measured", "flops"]  # timed on this device, or FLOP counts at an assumed throughput
# a fresh process per configuration (its own peak RSS on a CPU), or per backbone entry (imports and CUDA start paid
# once per backbone; CUDA peaks are reset per configuration, a CPU's peak RSS is then not measured)
Isolation = Literal["configuration", "backbone"]


class Spread(StrictModel):
    """Seconds over timed repeats (warm-up excluded)."""

    mean: float = Field(ge=0)
    median: float = Field(ge=0)  # what the estimate uses: robust to a few repeats slowed by other load
    std: float = Field(0.0, ge=0)
    min: float = Field(ge=0)
    max: float = Field(ge=0)
    n: int = Field(ge=1)

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("a spread needs at least one timed value")
        std = statistics.stdev(values) if len(values) > 1 else 0.0
        return cls(
            mean=statistics.fmean(values),
            median=statistics.median(values),
            std=std,
            min=min(values),
            max=max(values),
            n=len(values),
        )

    @classmethod
    def exactly(cls, value: float) -> Spread:
        return cls(mean=value, median=value, min=value, max=value, n=1)

    @classmethod
    def pooled(cls, spreads: list[Spread]) -> Spread:
        """Several processes' spreads of the same quantity as one (the median of their medians)."""
        return cls(
            mean=statistics.fmean(s.mean for s in spreads),
            median=statistics.median(s.median for s in spreads),
            std=max(s.std for s in spreads),
            min=min(s.min for s in spreads),
            max=max(s.max for s in spreads),
            n=sum(s.n for s in spreads),
        )

    def describe(self) -> str:
        spread = self.std / self.mean * 100 if self.mean else 0
        return f"{self.median:.4g} s (median; ± {spread:.0f} %, n={self.n})"


class ConfigKey(StrictModel):
    """What a trial's cost depends on (besides its data): the configuration one measurement covers."""

    backbone: str
    regime: Literal["frozen", "lora", "full"]
    precision: Literal["fp32", "bf16"]
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lora_rank: int | None = None  # measured with this rank (lora only); other ranks cost about the same
    lora: LoraSpec | None = None  # the trial's own LoRA settings (targets change the cost); None: not lora

    @classmethod
    def of(cls, spec: TrialSpec, height: int, width: int, batch_size: int) -> ConfigKey:
        """The configuration of one of a trial's training steps: its own backbone, regime, precision and LoRA."""
        lora = spec.lora if spec.lora_applies else None
        return cls(
            backbone=spec.backbone,
            regime=spec.regime,
            precision=spec.precision,
            height=height,
            width=width,
            batch_size=batch_size,
            lora_rank=lora.rank if lora is not None else None,
            lora=lora,
        )

    def trial_spec(self, device: str = "auto") -> TrialSpec:
        """The trial this configuration measures: random-init weights, synthetic images of its size (the data
        name is a placeholder: measurements feed the network directly)."""
        lora = self.lora or (LoraSpec(rank=self.lora_rank) if self.lora_rank is not None else LoraSpec())
        return TrialSpec(
            backbone=self.backbone,
            regime=self.regime,
            weights="random",
            precision=self.precision,
            device=device,
            lora=lora,
            data=DataSpec(train=["calibration"]),
            optim=OptimSpec(batch_size=self.batch_size),
        )

    def label(self) -> str:
        rank = f" r{self.lora_rank}" if self.lora_rank is not None else ""
        if self.lora is not None and self.lora.targets != "attention":
            targets = self.lora.targets
            rank += f" {targets if isinstance(targets, str) else '+'.join(targets)}"
        size = f"{self.height}x{self.width}"
        return f"{self.backbone} {self.regime}{rank} {self.precision} {size} batch {self.batch_size}"


class Measurement(StrictModel):
    """One configuration's costs. Frozen: `train_step_s` / `eval_image_s` are the head on cached features and
    `extract_image_s` the backbone pass that fills the cache; lora/full: the whole network."""

    key: ConfigKey
    source: Source = "measured"
    setup_s: float = Field(ge=0)  # build the segmenter (random init) and its optimiser, move it to the device
    train_step_s: Spread  # one optimiser step on a batch of key.batch_size images of key's size
    eval_image_s: Spread  # one image through the model without gradients (validation / test)
    extract_image_s: Spread | None = None  # frozen: one image through the backbone (the feature cache's miss)
    save_s: float = Field(0.0, ge=0)  # write the trainable state once (a trial writes it at its end)
    train_step_tflop: float | None = None  # FLOP count of one training step (flops source; informative)
    # peak memory of the configuration: accelerator memory allocated by torch (cuda), or the peak resident set
    # size of a fresh process that measured only this configuration (cpu), and the process's RSS before building
    peak_memory_mb: float | None = None
    memory_kind: Literal["cuda_allocated", "process_rss", "none"] = "none"
    baseline_memory_mb: float = 0.0


class DatasetCost(StrictModel):
    """Reading a dataset once per worker process, and preparing (resize, normalise) its images per trial."""

    dataset: str
    images: int = Field(ge=0)
    load_s: float = Field(ge=0)  # read every slice and mask from disk (cached in-process afterwards)
    height: int = Field(ge=1)
    width: int = Field(ge=1)
    prepare_image_s: float = Field(ge=0)  # one slice to network input at height x width


class DeviceInfo(StrictModel):
    kind: Literal["cpu", "cuda"]
    name: str
    memory_gb: float | None = None  # accelerator memory (cuda), or the machine's RAM (cpu)
    cpu_count: int = Field(ge=1)


class CalibrationSettings(StrictModel):
    warmup: int = Field(ge=0)
    repeats: int = Field(ge=1)
    threads: int | None = None  # torch CPU threads per measured process (a CPU trial's cpu ask)
    concurrent: int = Field(1, ge=1)  # copies of each configuration measured at once (trials sharing the device)
    isolate: Isolation = "configuration"  # what one fresh measuring process covers
    assumed_tflops: float | None = None  # flops source: sustained throughput the seconds are derived from
    sweep: str | None = None  # the sweep file whose configurations were measured


class Calibration(StrictModel):
    """A whole calibration file."""

    format_version: int = FORMAT_VERSION
    created: str
    device: DeviceInfo
    torch_version: str
    vfm_ablate_version: str
    settings: CalibrationSettings
    startup_s: float = Field(0.0, ge=0)  # a fresh worker process importing the trial engine (torch, timm, MONAI)
    ray_start_s: float | None = None  # ray.init + one task + shutdown on this machine (None: not measured)
    tracking_start_s: float | None = None  # import mlflow, a new SQLite store, one run (a tracked launch's parent)
    driver_start_s: float | None = None  # the CLI reading and planning the sweep file (`run --dry-run`)
    measurements: list[Measurement] = []
    datasets: list[DatasetCost] = []
    notes: list[str] = []  # configurations that could not be measured, and why

    def find(self, key: ConfigKey) -> Measurement | None:
        """The measurement of this configuration: the same LoRA settings if measured, else another rank's."""
        want = key.model_dump(exclude=_LORA)
        same = [m for m in self.measurements if m.key.model_dump(exclude=_LORA) == want]
        exact = [m for m in same if (m.key.lora_rank, m.key.lora) == (key.lora_rank, key.lora)]
        rank = [m for m in same if m.key.lora_rank == key.lora_rank]
        return (exact or rank or same or [None])[0]

    def nearest_batch(self, key: ConfigKey) -> Measurement | None:
        """The same configuration at the closest measured batch size (the caller scales per image)."""
        want = key.model_dump(exclude={*_LORA, "batch_size"})
        same = [m for m in self.measurements if m.key.model_dump(exclude={*_LORA, "batch_size"}) == want]
        return min(same, key=lambda m: abs(m.key.batch_size - key.batch_size), default=None)

    def dataset(self, name: str, height: int, width: int) -> DatasetCost | None:
        for d in self.datasets:
            if d.dataset == name and (d.height, d.width) == (height, width):
                return d
        return None


def save_calibration(calibration: Calibration, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(calibration.model_dump(mode="json"), indent=2) + "\n")
    return path


def load_calibration(path: str | Path) -> Calibration:
    """Read and validate a calibration file; a missing or malformed one is an error naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such calibration file (write one with `vfm-ablate calibrate`)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: not a JSON calibration file ({err})") from None
    except OSError as err:  # a folder, no permission
        raise ConfigError(f"{path}: cannot read the calibration file ({err.strerror or err})") from None
    if isinstance(data, dict) and data.get("format_version", FORMAT_VERSION) != FORMAT_VERSION:
        raise ConfigError(
            f"{path}: calibration format {data.get('format_version')} (this vfm-ablate reads {FORMAT_VERSION}); "
            "run `vfm-ablate calibrate` again"
        )
    return validate(Calibration, data, path)
