"""Sweep files: schema, validation, expansion into TrialSpecs (with explicit collapsing) and per-trial resources.

A sweep file is validated once, here, before Ray starts. Expansion is a pure function of the file:

    base (partial TrialSpec)  x  axes (grid; a list of grids is their union)  x  repeats (seed AND split_seed)
      -> collapse settings that do not apply (lora.* unless regime is lora; sampling/weights with one train
         dataset) -> de-duplicate by TrialSpec.trial_id() -> one PlannedTrial per distinct trial.

With a `search:` section every planned trial is a *grid point*: Ray Tune runs one Optuna search (num_samples
trials, ASHA early stopping) per grid point over the continuous `search.space` keys.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr, field_validator, model_validator

from .config import Regime, TrialSpec
from .data.entries import DatasetEntry, resolve_dataset
from .errors import ConfigError
from .models.registry import BackboneEntry, get_entry
from .overrides import set_dotted
from .trialfile import inline_entries
from .validation import StrictModel, load_yaml, suggest, validate

# Keys whose value is irrelevant outside the LoRA regime / with a single train dataset: collapsed, not run twice.
LORA_PREFIX = "lora"
SAMPLING_KEYS = ("data.sampling", "data.weights")
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
    def _exactly_one(self) -> "Distribution":
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
    def _sets_something(self) -> "ResourceOverride":
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
    gpu: float | Literal["auto"] = "auto"
    overrides: list[ResourceOverride] = []


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


class TrackingSpec(StrictModel):
    """MLflow: one parent run per sweep, one child run per trial."""

    enabled: bool = True
    uri: str | None = None  # None: $MLFLOW_TRACKING_URI, else a SQLite file in the working folder
    experiment: str | None = None  # None: the sweep file's stem


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
    def experiment_name(self) -> str:
        return self.tracking.experiment or (Path(self.source).stem if self.source != "<sweep>" else self.name)


# --------------------------------------------------------------------------------------------- loading


def parse_sweep(data: Any, source: str | Path = "<sweep>", default_name: str | None = None) -> SweepSpec:
    """Validate plain data as a sweep file: schema, inline entries, axis/search keys, and every trial."""
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
    plan(sweep)  # expands and validates every trial (unknown backbones/datasets, bad combinations) now
    return sweep


def load_sweep(path: str | Path) -> SweepSpec:
    """Read and validate a sweep YAML file; the sweep's name defaults to the file's stem."""
    path = Path(path)
    return parse_sweep(load_yaml(path), path, default_name=path.stem)


def _check_keys(sweep: SweepSpec) -> None:
    src = sweep.source
    for i, grid in enumerate(sweep.grids):
        where = f"axes[{i}]" if isinstance(sweep.axes, list) else "axes"
        for key in grid:
            check_dotted(key, f"{src}: {where}")
        if "seed" in grid and sweep.repeats > 1:
            raise ConfigError(f"{src}: {where} has a 'seed' axis and repeats: {sweep.repeats}; use one of them")
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
    from .models.registry import list_entries

    return sorted({e.name for e in list_entries()} | set(sweep.backbones))


def check_dotted(key: str, where: str) -> None:
    """A dotted TrialSpec key must name a real setting; unknown parts get the closest valid name."""
    model: type[BaseModel] | None = TrialSpec
    walked: list[str] = []
    for part in key.split("."):
        if model is None:
            raise ConfigError(f"{where}: '{'.'.join(walked)}' is a value, it has no '{part}' inside (key '{key}')")
        fields = model.model_fields
        if part not in fields:
            prefix = ".".join(walked)
            raise ConfigError(suggest(part, set(fields), f"key{' under ' + prefix if prefix else ''} (in '{key}')", where))
        walked.append(part)
        model = _submodel(fields[part].annotation)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    return None


# --------------------------------------------------------------------------------------------- expansion


@dataclass(frozen=True)
class TrialResources:
    cpu: float
    gpu: float

    def describe(self) -> str:
        return f"{self.cpu:g} CPU, {self.gpu:g} GPU"


@dataclass(frozen=True)
class PlannedTrial:
    """One distinct trial (a grid point in search mode) with the resources it asks Ray for."""

    spec: TrialSpec
    trial_id: str
    resources: TrialResources
    search_space: dict[str, Distribution] = field(default_factory=dict)  # search mode: dims that apply here

    def label(self) -> dict[str, str]:
        return trial_label(self.spec, self.trial_id)


LABEL_COLUMNS = ("id", "backbone", "regime", "rank", "train", "sampling", "seed")  # the keys of trial_label, in order


def trial_label(s: TrialSpec, trial_id: str | None = None) -> dict[str, str]:
    """The columns of the dry-run / result tables: what tells one trial of a study from another."""
    multi = len(s.data.train) > 1
    return {
        "id": trial_id or s.trial_id(),
        "backbone": s.backbone,
        "regime": s.regime,
        "rank": str(s.lora.rank) if s.regime == "lora" else "-",
        "train": "+".join(s.data.train),
        "sampling": s.data.sampling if multi else "-",
        "seed": str(s.seed) if s.seed == s.split_seed else f"{s.seed}/{s.split_seed}",
    }


def short_label(s: TrialSpec) -> str:
    """One-line description for progress output, e.g. `dinov2_vitl14_reg lora r16 lucchi_pp+vnc balanced seed 3`."""
    lab = trial_label(s, "-")
    parts = [lab["backbone"], lab["regime"]]
    if lab["rank"] != "-":
        parts.append(f"r{lab['rank']}")
    parts.append(lab["train"])
    if lab["sampling"] != "-":
        parts.append(lab["sampling"])
    parts.append(f"seed {lab['seed']}")
    return " ".join(parts)


@dataclass(frozen=True)
class SweepPlan:
    trials: list[PlannedTrial]
    grid_points: int  # combinations before collapsing/de-duplication
    collapsed: int  # combinations dropped because they became identical to another trial
    collapse_reasons: dict[str, int]  # which rule dropped which axis value, counted per combination

    @property
    def num_trials(self) -> int:
        return len(self.trials)


def plan(sweep: SweepSpec) -> SweepPlan:
    """Expand, collapse, de-duplicate and validate every trial of the sweep; resources included."""
    seen: dict[str, PlannedTrial] = {}
    reasons: dict[str, int] = {}
    combos = 0
    for g, grid in enumerate(sweep.grids):
        keys = list(grid)
        for values in product(*(grid[k] for k in keys)):
            assignment = dict(zip(keys, values))
            for rep in range(sweep.repeats):
                combos += 1
                data, dropped = _collapse(_trial_data(sweep, assignment, rep))
                where = _where(sweep, g, assignment, rep)
                spec = validate(TrialSpec, data, where)
                for reason in dropped:
                    reasons[reason] = reasons.get(reason, 0) + 1
                _check_trial(sweep, spec, where)
                tid = spec.trial_id()
                if tid in seen:
                    continue
                entry = get_entry(spec.backbone, sweep.backbones)
                seen[tid] = PlannedTrial(
                    spec=spec,
                    trial_id=tid,
                    resources=resources_for(spec, entry, sweep, where),
                    search_space=_applicable_space(sweep, spec),
                )
    return SweepPlan(
        trials=list(seen.values()), grid_points=combos, collapsed=combos - len(seen), collapse_reasons=reasons
    )


def expand(sweep: SweepSpec) -> list[TrialSpec]:
    """The distinct TrialSpecs of a sweep (grid points in search mode), in file order."""
    return [p.spec for p in plan(sweep).trials]


def _where(sweep: SweepSpec, grid: int, assignment: dict[str, Any], rep: int) -> str:
    parts = [f"{k}={v}" for k, v in assignment.items()]
    if sweep.repeats > 1:
        parts.append(f"repeat={rep}")
    prefix = f"axes[{grid}] " if isinstance(sweep.axes, list) else ""
    return f"{sweep.source} [trial {prefix}{', '.join(parts) or 'base'}]"


def _trial_data(sweep: SweepSpec, assignment: dict[str, Any], rep: int) -> dict[str, Any]:
    data = copy.deepcopy(sweep.base)
    for key, value in assignment.items():
        _merge_dotted(data, key, value)
        if key == "seed" and "split_seed" not in assignment:
            # a repeat must differ in its data split too (SPEC pitfall 4), not only in its init/order seed
            _merge_dotted(data, "split_seed", value)
    if "seed" not in assignment:
        data["seed"] = int(data.get("seed", 0)) + rep
        data["split_seed"] = int(data.get("split_seed", 0)) + rep
    return data


def _merge_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Section values (dicts) merge into the base section; anything else replaces the setting."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    leaf = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(leaf), dict):
        merged = copy.deepcopy(node[leaf])
        for k, v in value.items():
            _merge_dotted(merged, k, v)
        node[leaf] = merged
    else:
        set_dotted(data, key, copy.deepcopy(value))


def _collapse(data: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """Drop settings that cannot affect this trial, so trials differing only in them share one trial_id.

    LoRA settings only matter in the lora regime; sampling (and its weights) only with several train datasets.
    """
    dropped: set[str] = set()
    regime = data.get("regime", TrialSpec.model_fields["regime"].default)
    if regime != "lora" and "lora" in data:
        del data["lora"]
        dropped.add(f"lora settings dropped for regime '{regime}'")
    section = data.get("data")
    if isinstance(section, dict) and isinstance(section.get("train"), list) and len(section["train"]) == 1:
        if section.get("sampling", "natural") != "natural" or section.get("weights") is not None:
            dropped.add("sampling dropped for a single train dataset")
        section.pop("sampling", None)
        section.pop("weights", None)
    return data, dropped


def _check_trial(sweep: SweepSpec, spec: TrialSpec, where: str) -> None:
    """Unknown backbone/dataset names and impossible settings fail here, before Ray starts, naming the trial."""
    n_train = len(spec.data.train)
    if spec.data.sampling == "balanced" and spec.optim.batch_size % n_train:
        raise ConfigError(
            f"{where}: balanced sampling puts the same number of images of each of the {n_train} train datasets "
            f"in a batch: optim.batch_size must be a multiple of {n_train}, got {spec.optim.batch_size}"
        )
    if len(set(spec.data.train)) != n_train:
        raise ConfigError(f"{where}: data.train lists a dataset twice: {spec.data.train}")
    names = [*spec.data.train, *spec.data.test_datasets, *spec.data.unlabelled, *(spec.diagnostics.datasets or [])]
    try:
        get_entry(spec.backbone, sweep.backbones)
        for name in names:
            resolve_dataset(name, sweep.datasets)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None


def _applicable_space(sweep: SweepSpec, spec: TrialSpec) -> dict[str, Distribution]:
    if sweep.search is None:
        return {}
    space = dict(sweep.search.space)
    if spec.regime != "lora":
        space = {k: v for k, v in space.items() if not k.startswith(LORA_PREFIX + ".")}
    if len(spec.data.train) == 1:
        space = {k: v for k, v in space.items() if k not in SAMPLING_KEYS}
    return space


def spec_with_samples(spec: TrialSpec, sampled: dict[str, Any]) -> TrialSpec:
    """A grid point's TrialSpec with the values one search trial sampled (dotted keys)."""
    if not sampled:
        return spec
    data = spec.model_dump(mode="json")
    for key, value in sampled.items():
        set_dotted(data, key, value.item() if hasattr(value, "item") else value)
    return validate(TrialSpec, data, f"search sample {sampled}")


# --------------------------------------------------------------------------------------------- resources


def resources_for(spec: TrialSpec, entry: BackboneEntry, sweep: SweepSpec, where: str = "") -> TrialResources:
    """CPU/GPU for one trial: the entry's frozen or adapted GPU fraction, then the sweep's overrides in order."""
    res = sweep.resources
    gpu = entry.gpu_fraction_frozen if spec.regime == "frozen" else entry.gpu_fraction_adapted
    if res.gpu != "auto":
        gpu = float(res.gpu)
    cpu = res.cpu
    for rule in res.overrides:
        if rule.matches(spec.backbone, spec.regime):
            cpu = rule.cpu if rule.cpu is not None else cpu
            gpu = rule.gpu if rule.gpu is not None else gpu
    if gpu > 1 and gpu != int(gpu):
        raise ConfigError(
            f"{where or sweep.source}: a trial of '{spec.backbone}' ({spec.regime}) would ask for {gpu:g} GPUs; "
            "Ray takes a fraction up to 1 or a whole number of GPUs (set resources.overrides or the entry's "
            "gpu_fraction_frozen/gpu_fraction_adapted)"
        )
    return TrialResources(cpu=float(cpu), gpu=float(gpu))


def without_gpus(trials: list[PlannedTrial]) -> list[PlannedTrial]:
    """The same trials asking for no GPU: what runs on a cluster that has none."""
    from dataclasses import replace

    return [replace(t, resources=TrialResources(cpu=t.resources.cpu, gpu=0.0)) for t in trials]


# --------------------------------------------------------------------------------------------- entries for trials


def resolved_entries(sweep: SweepSpec, trials: list[PlannedTrial]) -> tuple[dict[str, BackboneEntry], dict[str, DatasetEntry]]:
    """Every backbone/dataset the trials use, with relative paths made absolute here on the driver.

    Trials run in other working directories (and on other nodes), so they never resolve a name or a relative
    path themselves: they get exactly these entries.
    """
    backbones: dict[str, BackboneEntry] = {}
    datasets: dict[str, DatasetEntry] = {}
    for t in trials:
        s = t.spec
        entry = get_entry(s.backbone, sweep.backbones)
        if entry.checkpoint is not None and not _HAS_SCHEME.match(entry.checkpoint):
            entry = entry.model_copy(update={"checkpoint": str(Path(entry.checkpoint).expanduser().resolve())})
        backbones[s.backbone] = entry
        names = [*s.data.train, *s.data.test_datasets, *s.data.unlabelled, *(s.diagnostics.datasets or [])]
        for name in names:
            ds = resolve_dataset(name, sweep.datasets)
            if ds.path is not None:
                ds = ds.model_copy(update={"path": str(ds.root())})
            datasets[name] = ds
    return backbones, datasets


# --------------------------------------------------------------------------------------------- dry-run text


def format_table(rows: list[dict[str, str]], columns: list[str] | None = None) -> str:
    """A plain fixed-width table (no dependencies), one line per row."""
    if not rows:
        return "(no rows)"
    columns = columns or list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    line = lambda r: "  ".join(str(r.get(c, "")).ljust(widths[c]) for c in columns).rstrip()  # noqa: E731
    header = {c: c for c in columns}
    return "\n".join([line(header), "  ".join("-" * widths[c] for c in columns), *(line(r) for r in rows)])


def describe_plan(sweep: SweepSpec, the_plan: SweepPlan) -> str:
    """The dry-run report: counts, what was collapsed, and one row per trial with its resources."""
    lines = [f"sweep '{sweep.name}' ({sweep.source})"]
    n = the_plan.num_trials
    if sweep.search is None:
        lines.append(f"{n} trials ({the_plan.grid_points} combinations, {the_plan.collapsed} collapsed as duplicates)")
    else:
        total = sum(sweep.search.num_samples if t.search_space else 1 for t in the_plan.trials)
        lines.append(
            f"{n} grid points ({the_plan.grid_points} combinations, {the_plan.collapsed} collapsed); "
            f"search: {sweep.search.num_samples} Optuna samples per grid point -> {total} trials; "
            f"metric {sweep.search.metric} ({sweep.search.mode})"
            + (f", ASHA grace {sweep.search.asha.grace_period}" if sweep.search.asha.enabled else "")
        )
    for reason, count in sorted(the_plan.collapse_reasons.items()):
        lines.append(f"  collapsed: {reason} (applied to {count} combinations)")
    rows = []
    for t in the_plan.trials:
        row = {**t.label(), "cpu": f"{t.resources.cpu:g}", "gpu": f"{t.resources.gpu:g}"}
        if sweep.search is not None:
            row["search"] = ", ".join(f"{k}~{d.describe()}" for k, d in t.search_space.items()) or "(none: 1 trial)"
        rows.append(row)
    lines.append(format_table(rows))
    shapes: dict[str, int] = {}
    for t in the_plan.trials:
        shapes[t.resources.describe()] = shapes.get(t.resources.describe(), 0) + 1
    lines.append(
        "resources per trial: "
        + "; ".join(f"{n} x ({shape})" for shape, n in shapes.items())
        + " (GPU asks become 0 on a cluster without GPUs); max_concurrent_trials: "
        + str(sweep.run.max_concurrent_trials or "as resources allow")
    )
    return "\n".join(lines)


_HAS_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # package:..., s3://..., file://... (not a plain path)
_HEADER_TRIALS = re.compile(r"^#\s*Trials:\s*(\d+)", re.MULTILINE)


def documented_trial_count(path: str | Path) -> int | None:
    """The `# Trials: N` count a sweep file's header comment promises (checked by the test suite)."""
    match = _HEADER_TRIALS.search(Path(path).read_text())
    return int(match.group(1)) if match else None
