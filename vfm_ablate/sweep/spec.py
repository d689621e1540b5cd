"""Sweep files: the schema, and loading with validation of the file's own keys and shape.

A sweep file is validated here, before Ray starts: its schema, its keys, its inline entries. Every trial it expands
to is validated by the one expansion each command makes (sweep/plan.py, `load_plan`), a pure function of the file:

    base (partial TrialSpec)  x  axes (grid; a list of grids is their union)  x  repeats (seed AND split_seed)
      -> collapse settings that do not apply (lora.* unless regime is lora; sampling/weights with one train
         dataset) -> de-duplicate by TrialSpec.trial_id() -> one PlannedTrial per distinct trial.

With a `search:` section every planned trial is a *grid point*: Ray Tune runs one Optuna search (num_samples
trials, ASHA early stopping) per grid point over the continuous `search.space` keys.
"""

from __future__ import annotations

import math
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from ..config import Regime, TrialSpec
from ..data.entries import DatasetEntry
from ..errors import ConfigError
from ..models.registry import BackboneEntry, list_entries
from ..trialfile import inline_entries
from ..validation import StrictModel, load_yaml, suggest, validate

# Search-mode metrics: reported every epoch AND in the final report, and validation-based (choosing
# hyperparameters on test IoU would leak the test set into model selection).
SearchMetric = Literal["best_val_loss", "val_loss"]


# --------------------------------------------------------------------------------------------- schema


class Distribution(StrictModel):
    """One search dimension: exactly one of uniform / loguniform / randint (inclusive) / choice."""

    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None
    randint: tuple[int, int] | None = None
    choice: list[Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Distribution:
        given = [k for k in ("uniform", "loguniform", "randint", "choice") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of uniform, loguniform, randint, choice (got {given or 'none'})")
        kind = given[0]
        if kind == "choice":
            if not self.choice:
                raise ValueError("choice needs at least one value")
            return self
        low, high = getattr(self, kind)
        if not low < high:
            raise ValueError(f"{kind} needs [low, high] with low < high, got [{low}, {high}]")
        if kind == "loguniform" and low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {low}")
        return self

    def to_tune(self) -> Any:
        """The Ray Tune domain for this dimension."""
        from ray import tune

        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        if self.randint is not None:
            return tune.randint(self.randint[0], self.randint[1] + 1)  # Ray's upper bound is exclusive
        return tune.choice(list(self.choice or []))

    def describe(self) -> str:
        for kind in ("uniform", "loguniform", "randint"):
            value = getattr(self, kind)
            if value is not None:
                return f"{kind}[{value[0]:g}, {value[1]:g}]"
        return f"choice{list(self.choice or [])}"


class AshaSpec(StrictModel):
    """ASHA early stopping over epochs (Ray's training_iteration = epochs reported)."""

    enabled: bool = True
    grace_period: int = Field(10, ge=1)
    reduction_factor: float = Field(3.0, gt=1)
    brackets: int = Field(1, ge=1)


class SearchSpec(StrictModel):
    """Optuna (TPE) over continuous settings, one independent search per grid point."""

    space: dict[str, Distribution] = Field(min_length=1)  # dotted TrialSpec keys -> distribution
    num_samples: int = Field(ge=1)  # trials per grid point
    metric: SearchMetric = "best_val_loss"
    mode: Literal["min", "max"] = "min"
    seed: int = 0  # Optuna sampler seed (each grid point gets seed + its index)
    asha: AshaSpec = AshaSpec()


class ResourceOverride(StrictModel):
    """Per-trial resources for trials matching `backbone` and/or `regime` (later overrides win)."""

    backbone: str | list[str] | None = None
    regime: Regime | list[Regime] | None = None
    cpu: float | None = Field(None, gt=0)
    gpu: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _sets_something(self) -> ResourceOverride:
        if self.cpu is None and self.gpu is None:
            raise ValueError("a resources override needs 'cpu' and/or 'gpu'")
        return self

    def matches(self, backbone: str, regime: str) -> bool:
        def hit(rule: str | list[str] | None, value: str) -> bool:
            return rule is None or value == rule or (isinstance(rule, list) and value in rule)

        return hit(self.backbone, backbone) and hit(self.regime, regime)


class ResourcesSpec(StrictModel):
    """CPUs/GPUs one trial asks Ray for. gpu 'auto': the backbone entry's frozen/adapted GPU fraction."""

    cpu: float = Field(1.0, gt=0)
    gpu: Annotated[float, Field(ge=0)] | Literal["auto"] = "auto"
    overrides: list[ResourceOverride] = []


DEFAULT_MAX_TRIALS = 10_000  # run.max_trials
MAX_TRIALS_LIMIT = 1_000_000  # what run.max_trials may be raised to: minutes of planning (benchmarks/bench_plan.py)


class RunSpec(StrictModel):
    """How Ray runs the sweep; the CLI flags of `vfm-ablate run` override these."""

    max_concurrent_trials: int | None = Field(None, ge=1)  # None: as many as resources allow
    max_failures: int = Field(0, ge=0)  # retries of a failed trial (from its last checkpoint)
    # local folder, shared filesystem path, or URI (s3://, gs://); None: $VFM_ABLATE_STORAGE_PATH, else ./ray_results
    storage_path: str | None = None
    num_cpus: int | None = Field(None, ge=1)  # local Ray only (ignored with --address)
    num_gpus: int | None = Field(None, ge=0)  # local Ray only
    resume_errored: bool = False  # --resume also retries trials that failed (from their last checkpoint)
    checkpoint_every: int = Field(1, ge=1)  # epochs between training-state checkpoints ...
    checkpoint_min_interval_s: float = Field(30.0, ge=0)  # ... and at least this long (0: every checkpoint_every)
    keep_checkpoints: int = Field(2, ge=1)
    # without a terminal (CI logs, Slurm output): at most one epoch line per running trial every this many seconds
    progress_interval_s: float = Field(30.0, ge=0)
    # combinations (grid x repeats) a sweep may expand to: a guard against a grid larger than meant, checked before
    # expansion; a sweep that really is larger says so here
    max_trials: int = Field(DEFAULT_MAX_TRIALS, ge=1, le=MAX_TRIALS_LIMIT)


class TrackingSpec(StrictModel):
    """MLflow: one parent run per sweep, one child run per trial."""

    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else a SQLite file in the working folder
    experiment: str | None = Field(None, min_length=1)  # None: the sweep file's stem

    @field_validator("uri")
    @classmethod
    def _usable_uri(cls, value: str | None) -> str | None:
        from ..tracking.store import tracking_uri_problem

        if value is not None and (problem := tracking_uri_problem(value)) is not None:
            raise ValueError(problem)
        return value


Axes = dict[str, list[Any]]


class SweepSpec(StrictModel):
    """A whole sweep file. `backbones`/`datasets` are inline registry entries (the mapping key is the name)."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    base: dict[str, Any] = {}
    axes: Any = {}  # Axes, or a list of Axes (the union of several grids); shape checked below
    repeats: int = Field(1, ge=1)  # seeds base.seed + i and split seeds base.split_seed + i, i < repeats
    search: SearchSpec | None = None
    backbones: dict[str, BackboneEntry] = {}
    datasets: dict[str, DatasetEntry] = {}
    resources: ResourcesSpec = ResourcesSpec()
    run: RunSpec = RunSpec()
    tracking: TrackingSpec = TrackingSpec()
    _source: str = PrivateAttr("<sweep>")  # the file it came from (set by parse_sweep; used in messages)

    @property
    def source(self) -> str:
        return self._source

    @field_validator("axes")
    @classmethod
    def _axes_shape(cls, value: Any) -> Any:
        if isinstance(value, list) and not value:
            raise ValueError(
                "axes is an empty list of grids, which expands to no trial: give at least one grid (a mapping of "
                "settings to lists of values), or leave axes out for the base trial alone"
            )
        grids = value if isinstance(value, list) else [value]
        for i, grid in enumerate(grids):
            where = f"axes[{i}]" if isinstance(value, list) else "axes"
            if not isinstance(grid, dict):
                raise ValueError(f"{where} must map dotted settings to lists of values (e.g. regime: [frozen, lora])")
            for key, values in grid.items():
                if not isinstance(values, list) or not values:
                    raise ValueError(f"{where}.{key} must be a non-empty list of values, got {values!r}")
        return value

    @property
    def grids(self) -> list[Axes]:
        return self.axes if isinstance(self.axes, list) else [self.axes]

    @property
    def early_stopper(self) -> str:
        """Who stops trials before max_epochs besides early stopping: the name the live view, the result table and
        MLflow's `vfm.stopped_by` tag give it."""
        return "ASHA" if self.search is not None and self.search.asha.enabled else "the scheduler"

    @property
    def experiment_name(self) -> str:
        return self.tracking.experiment or (Path(self.source).stem if self.source != "<sweep>" else self.name)


# --------------------------------------------------------------------------------------------- loading


def parse_sweep(data: Any, source: str | Path = "<sweep>", default_name: str | None = None) -> SweepSpec:
    """Validate plain data as a sweep file: schema, inline entries, axis/search keys (its trials: `plan`)."""
    source = str(source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping with name/base/axes/... at the top level")
    data = dict(data)
    if default_name is not None:
        data.setdefault("name", default_name)
    backbones = inline_entries(BackboneEntry, data.pop("backbones", None), "backbones", source)
    datasets = inline_entries(DatasetEntry, data.pop("datasets", None), "datasets", source)
    search = data.get("search")
    if isinstance(search, dict) and isinstance(search.get("space"), dict):
        # validated one by one so that a misspelt distribution gets a suggestion (dict keys hide it otherwise)
        space = {k: validate(Distribution, v, f"{source} [search.space.{k}]") for k, v in search["space"].items()}
        data["search"] = {**search, "space": space}
    sweep = validate(SweepSpec, {**data, "backbones": backbones, "datasets": datasets}, source)
    sweep._source = source
    _check_keys(sweep)
    _check_size(sweep)
    return sweep


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file; the sweep's name defaults to the file's stem (its trials:
    `plan.load_plan`)."""
    path = Path(path)
    return parse_sweep(load_yaml(path), path, default_name=path.stem)


def combinations(sweep: SweepSpec) -> int:
    """Grid points times repeats: what expansion walks through (before collapsing and de-duplication)."""
    return sum(math.prod(len(values) for values in grid.values()) for grid in sweep.grids) * sweep.repeats


def _check_size(sweep: SweepSpec) -> None:
    count = combinations(sweep)
    if count <= sweep.run.max_trials:
        return
    shapes = " + ".join(" x ".join(str(len(v)) for v in grid.values()) or "1" for grid in sweep.grids)
    raise ConfigError(
        f"{sweep.source}: the axes expand to {count:,} combinations (grid {shapes}"
        + (f", x {sweep.repeats} repeats" if sweep.repeats > 1 else "")
        + f"), more than run.max_trials ({sweep.run.max_trials:,}): a grid this large is most often larger than "
        f"meant; to run it anyway, set `run: {{max_trials: {count}}}` in the sweep file"
    )


def _check_keys(sweep: SweepSpec) -> None:
    src = sweep.source
    for seed in ("seed", "split_seed"):  # repeats add to them before each trial is validated
        value = sweep.base.get(seed, 0)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{src}: base.{seed} must be a whole number (repeats count up from it), got {value!r}")
    for i, grid in enumerate(sweep.grids):
        where = f"axes[{i}]" if isinstance(sweep.axes, list) else "axes"
        for key in grid:
            check_dotted(key, f"{src}: {where}")
        for seed in ("seed", "split_seed"):
            if seed in grid and sweep.repeats > 1:
                raise ConfigError(
                    f"{src}: {where} has a '{seed}' axis and repeats: {sweep.repeats}; repeats already vary seed and "
                    f"split_seed (base + 0 .. {sweep.repeats - 1}), so the two would overlap: use one of them"
                )
    if sweep.search is not None:
        axis_keys = {k for grid in sweep.grids for k in grid}
        for key in sweep.search.space:
            check_dotted(key, f"{src}: search.space")
            if key in axis_keys:
                raise ConfigError(f"{src}: '{key}' is both a grid axis and a search.space key; keep one")
            if key in ("seed", "split_seed", "backbone", "regime"):
                raise ConfigError(f"{src}: search.space.{key}: search continuous settings; make '{key}' a grid axis")
    names = set(all_backbone_names(sweep))
    for j, rule in enumerate(sweep.resources.overrides):
        wanted = [rule.backbone] if isinstance(rule.backbone, str) else list(rule.backbone or [])
        for b in wanted:
            if b not in names:
                raise ConfigError(suggest(b, names, "backbone", f"{src}: resources.overrides[{j}]"))


def all_backbone_names(sweep: SweepSpec) -> list[str]:
    return sorted({e.name for e in list_entries()} | set(sweep.backbones))


def check_dotted(key: str, where: str) -> None:
    """A dotted TrialSpec key must name a real setting; unknown parts get the closest valid name."""
    model: type[BaseModel] | None = TrialSpec
    walked: list[str] = []
    parts = key.split(".")
    for i, part in enumerate(parts):
        if model is None:
            raise ConfigError(f"{where}: '{'.'.join(walked)}' is a value, it has no '{part}' inside (key '{key}')")
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(walked)
            raise ConfigError(
                suggest(part, set(fields), f"key{' under ' + prefix if prefix else ''} (in '{key}')", where)
            )
        walked.append(part)
        annotation = fields[part].annotation
        if typing.get_origin(annotation) is dict and len(parts) > i + 1:  # a mapping's entry: `data.labelled.<name>`
            if len(parts) > i + 2:
                entry = ".".join(parts[: i + 2])
                raise ConfigError(f"{where}: '{entry}' is a value, it has nothing inside (key '{key}')")
            return
        model = _submodel(annotation)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None
