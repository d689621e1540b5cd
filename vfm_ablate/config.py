"""The typed description of one trial: every setting the trial engine reads, with the study's defaults.

One module on purpose: it is mostly the schema's field declarations with their comments, and the rules over them
(what applies to a trial, its id, its flat params) have to be read beside the fields they judge."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, field_validator, model_validator

from .validation import StrictModel

Regime = Literal["frozen", "lora", "full"]
Sampling = Literal["natural", "balanced", "weighted"]
# the settings that only mean something with several datasets in the batches (dropped, and hidden, with one)
SAMPLING_KEYS = ("data.sampling", "data.weights")


def sampling_applies(num_batch_datasets: int) -> bool:
    """Paired-data sampling (and its weights) only changes anything when a trial's batches draw from several
    datasets: several train datasets, or train + unlabelled target datasets under a loss-level alignment."""
    return num_batch_datasets > 1


def balanced_share(batch_size: int, num_datasets: int) -> int:
    """Images of each dataset in one balanced batch; a batch size that does not split evenly is a user error."""
    if num_datasets < 1 or batch_size % num_datasets:
        raise ValueError(
            f"balanced sampling puts the same number of images of each of the {num_datasets} train datasets in a "
            f"batch: optim.batch_size must be a multiple of {num_datasets}, got {batch_size}"
        )
    return batch_size // num_datasets


ALL_LABELLED = "all"


def _labelled_value(value: Any) -> int | float | str:
    """One `data.labelled` value: a count (a whole number >= 0), a fraction in (0, 1], or 'all'. Strings (MLflow's
    flat params, `key=value` overrides) are parsed; a bool or a whole-number float (4.0: a count or a fraction?) is
    refused rather than guessed."""
    expected = "expected a count of labelled training images (0, 1, 2, ...), a fraction in (0, 1] or 'all'"
    if isinstance(value, str):
        text = value.strip()
        if text == ALL_LABELLED:
            return text
        try:
            return _labelled_value(int(text))
        except ValueError:
            pass
        try:
            return _labelled_value(float(text))
        except ValueError:
            raise ValueError(f"{expected}, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{expected}, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"a count of labelled images cannot be negative, got {value}")
        return value
    if not 0 < value <= 1:
        hint = " (write the count as a whole number, e.g. 4; 0 is zero-shot)" if value == int(value) else ""
        raise ValueError(f"a fraction of labelled images must be in (0, 1], got {value}{hint}")
    return value


# a count (int) or a fraction (float) of a train dataset's training images that carry labels, or 'all'
LabelledValue = Annotated[int | float | str, BeforeValidator(_labelled_value)]


def labelled_is_zero(value: Any) -> bool:
    """Whether a (possibly not yet validated) `data.labelled` value means no labelled image: zero-shot."""
    try:
        return _labelled_value(value) == 0
    except ValueError:
        return False


def batch_datasets(alignment: AlignmentSpec, train: list[str], target: list[str], zero_shot: list[str]) -> list[str]:
    """The datasets training batches draw from: the train datasets that have labelled images, then, when a
    loss-level alignment needs unlabelled images in the batches, the zero-shot train datasets (in their place) and
    the targets."""
    loss = alignment.on("loss")
    return [*(d for d in train if loss or d not in zero_shot), *(target if loss else [])]


class LoraSpec(StrictModel):
    """LoRA adapter settings; defaults are the study's (r=16, alpha=32, attention qkv + output proj)."""

    rank: int = Field(16, ge=1)
    alpha: float = Field(32.0, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    # "attention" -> the backbone entry's lora_targets; "attention+mlp" adds its lora_mlp_targets;
    # an explicit list of module-name suffixes overrides both.
    targets: Literal["attention", "attention+mlp", "mlp"] | list[str] = "attention"


# the largest network input side a setting may ask for: beyond it one image's tokens would not fit any accelerator
MAX_INPUT_SIDE = 16384
# seeds feed numpy's SeedSequence (non-negative) and torch.manual_seed
SEED_LIMIT = 2**32


class ResizeSpec(StrictModel):
    """How images become network input. Masks always follow with nearest-neighbour."""

    # longest_edge: longest side -> target (aspect kept), both sides snapped to a multiple of the patch size
    # fixed: exactly (height, width) (must be patch multiples)
    # native: keep size, crop nothing, only snap down to a patch multiple
    policy: Literal["longest_edge", "fixed", "native"] = "longest_edge"
    # None -> data.transforms.default_target(patch): the largest patch multiple below 1024 (1022 for 14, 1008 for 16)
    target: int | None = Field(None, ge=1, le=MAX_INPUT_SIDE)
    size: tuple[int, int] | None = None

    @model_validator(mode="after")
    def _fixed_needs_size(self) -> ResizeSpec:
        if self.policy == "fixed" and self.size is None:
            raise ValueError("resize.policy 'fixed' needs resize.size: [height, width]")
        if self.size is not None and not all(1 <= side <= MAX_INPUT_SIDE for side in self.size):
            raise ValueError(
                f"resize.size {list(self.size)}: each side must be between 1 and {MAX_INPUT_SIDE} pixels (and a "
                "multiple of the backbone's patch size)"
            )
        return self


class DataSpec(StrictModel):
    """Which datasets a trial trains/tests on and how paired data is sampled."""

    train: list[str] = Field(min_length=1)  # dataset entry names
    test: list[str] | None = None  # None -> the train datasets' test splits; never empty (a trial tests something)
    sampling: Sampling = "natural"
    weights: list[float] | None = None  # for sampling == "weighted", one per train dataset
    val_fraction: float = Field(0.1, gt=0, lt=1)
    resize: ResizeSpec = ResizeSpec()
    normalisation: Literal["imagenet", "backbone"] = "imagenet"
    unlabelled: list[str] = []  # extra dataset names used only for diagnostics (e.g. vnc_stack2)
    # unsupervised domain adaptation: datasets whose training images join the trial WITHOUT their masks (which are
    # never read) wherever an alignment setting uses them; their labelled test splits are tested
    target: list[str] = []
    # label efficiency: per train dataset, how many of its training images carry labels (a count, a fraction in
    # (0, 1], or 'all', the default). The labelled ones are a draw seeded by the split seed, nested (for one split
    # seed the 2-image set contains the 1-image set); the validation hold-out comes from them (a single labelled
    # image trains, none is held out); the rest are unlabelled images of that dataset, used as data.target images
    # are (masks never read). 0 = zero-shot: the dataset gives no training batch and no validation image, it is
    # tested, and its training images are all unlabelled. 'all' entries are dropped: the trial of the default.
    labelled: dict[str, LabelledValue] = {}

    @field_validator("labelled")
    @classmethod
    def _all_is_the_default(cls, value: dict[str, int | float | str]) -> dict[str, int | float | str]:
        return {k: v for k, v in value.items() if v != ALL_LABELLED and not (isinstance(v, float) and v == 1.0)}

    @field_validator("test")
    @classmethod
    def _tests_something(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and not value:
            raise ValueError(
                "an empty test list would run and log no test metric: name the test datasets, or leave data.test "
                "out to test on the train (and target) datasets"
            )
        return value

    @model_validator(mode="after")
    def _sampling_fits(self) -> DataSpec:
        if self.sampling != "weighted" and self.weights is not None:
            raise ValueError("'weights' is only used with sampling: weighted")
        if self.sampling == "weighted" and self.weights is None:
            raise ValueError("sampling 'weighted' needs 'weights' (one value per dataset in the batches)")
        unknown = [d for d in self.labelled if d not in self.train]
        if unknown:
            raise ValueError(
                f"data.labelled names {unknown}, not in data.train {self.train}: it counts the labelled images of "
                "train datasets (a target's images are all unlabelled already)"
            )
        if not self.labelled_train:
            raise ValueError(
                f"data.labelled gives every train dataset 0 labelled images ({self.labelled}): nothing to train on; "
                "a dataset that is only tested belongs in data.test (and in data.target for alignment)"
            )
        if all(isinstance(self.labelled.get(d), int) and self.labelled[d] <= 1 for d in self.train):
            raise ValueError(
                f"data.labelled {self.labelled} leaves no validation image: validation images are held out of each "
                "train dataset's labelled images, and a dataset with one labelled image keeps it for training; "
                "give some train dataset at least 2 labelled images"
            )
        return self

    @property
    def zero_shot(self) -> list[str]:
        """The train datasets with no labelled image (data.labelled 0): tested, never trained or validated on."""
        return [d for d in self.train if d in self.labelled and self.labelled[d] == 0]

    @property
    def labelled_train(self) -> list[str]:
        """The train datasets that have labelled training images."""
        return [d for d in self.train if d not in self.zero_shot]

    @property
    def test_datasets(self) -> list[str]:
        """The explicit test list, else every train and target dataset (its test split)."""
        return list(self.test) if self.test is not None else [*self.train, *self.target]


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


@dataclass(frozen=True)
class MethodFacts:
    """What an alignment method needs from a trial, so the rules below read facts instead of method names."""

    reads_reference: bool = False  # a reference dataset's training pixels (histogram matching)
    own_statistics: bool = False  # statistics estimated on each train / target dataset's own training images
    replaces_normalisation: bool = False  # the method's statistics replace data.normalisation
    rows_per_domain: int = 1  # rows of each domain one batch term needs with alignment.sample 'pooled'


NO_METHOD = "none"
# one table per level: method name -> its facts (the implementations: alignment/intensity.INPUT_METHODS,
# trial/alignment.FEATURE_METHODS and LOSS_METHODS, keyed alike; tests/test_alignment_config.py checks the keys)
ALIGNMENT_METHODS: dict[str, dict[str, MethodFacts]] = {
    "input": {
        NO_METHOD: MethodFacts(),
        "histogram": MethodFacts(reads_reference=True),
        "zscore": MethodFacts(own_statistics=True, replaces_normalisation=True),
        "clahe": MethodFacts(),
    },
    "features": {NO_METHOD: MethodFacts(), "standardise": MethodFacts(own_statistics=True)},
    "loss": {
        NO_METHOD: MethodFacts(),
        "mmd": MethodFacts(),
        "coral": MethodFacts(rows_per_domain=2),
        "dann": MethodFacts(),
    },
}
ALIGNMENT_LEVELS = tuple(ALIGNMENT_METHODS)
InputMethod = Literal["none", "histogram", "zscore", "clahe"]
FeatureMethod = Literal["none", "standardise"]
LossMethod = Literal["none", "mmd", "coral", "dann"]
_LOSSES = frozenset(ALIGNMENT_METHODS["loss"]) - {NO_METHOD}
# each option of AlignmentSpec -> (the setting it depends on, the values of that setting it applies to); an option
# applies when its setting applies and has one of those values (the rule of sweep collapsing and method labels)
ALIGNMENT_OPTIONS: dict[str, tuple[str, frozenset[str]]] = {
    "reference": ("input", frozenset({"histogram"})),
    "clahe_clip_limit": ("input", frozenset({"clahe"})),
    "clahe_kernel": ("input", frozenset({"clahe"})),
    "loss_weight": ("loss", _LOSSES),
    "schedule": ("loss", _LOSSES),
    "schedule_epochs": ("schedule", frozenset({"dann"})),
    "layer": ("loss", _LOSSES),
    "sample": ("loss", _LOSSES),
    "max_tokens": ("sample", frozenset({"tokens"})),
    "mmd_bandwidth": ("loss", frozenset({"mmd"})),
    "dann_hidden": ("loss", frozenset({"dann"})),
}


class AlignmentSpec(StrictModel):
    """Domain alignment at three levels, combinable (one method per level); docs/alignment.md defines each method
    with its reference. Every field is a sweep axis (`alignment.input`, `alignment.loss_weight`, ...)."""

    # input level, on the raw pixels before resize: histogram matching to a reference dataset, per-dataset
    # intensity z-scoring (replaces data.normalisation), or CLAHE
    input: InputMethod = "none"
    # histogram: whose intensity distribution every image is matched to: "source" (the first train dataset),
    # "target" (the first data.target dataset) or a dataset name of the trial (its training images, never its test)
    reference: str = "source"
    clahe_clip_limit: float = Field(0.01, gt=0, le=1)
    clahe_kernel: int | None = Field(None, ge=8)  # None: 1/8 of each image side (scikit-image's default)
    # feature level: the backbone's patch tokens standardised per dataset before the head
    features: FeatureMethod = "none"
    # loss level, added to Dice: Gaussian-kernel MMD, CORAL, or DANN (gradient reversal into a domain classifier)
    loss: LossMethod = "none"
    loss_weight: float = Field(1.0, gt=0)  # lambda (DANN: the gradient-reversal coefficient)
    schedule: Literal["constant", "dann"] = "constant"  # dann: lambda * (2 / (1 + exp(-10 p)) - 1), p = epoch ramp
    schedule_epochs: int = Field(10, ge=1)  # epochs over which the dann ramp goes from 0 to lambda
    # where the loss acts: "bottleneck" = the head's first 512-channel stage (trainable in every regime, and its
    # gradient reaches LoRA / full backbones), "head_input" = the features the head receives (not for frozen)
    layer: Literal["bottleneck", "head_input"] = "bottleneck"
    # samples of each domain: one mean-pooled vector per image, or the feature vectors of its patch tokens
    sample: Literal["pooled", "tokens"] = "pooled"
    max_tokens: int = Field(256, ge=2)  # tokens drawn per domain and batch (seeded) with sample: tokens
    mmd_bandwidth: float | None = Field(None, gt=0)  # Gaussian kernel sigma; None: median pairwise distance
    dann_hidden: int = Field(256, ge=1)  # hidden units of DANN's domain classifier

    def applies(self, option: str) -> bool:
        """Whether `option` can change anything under this spec's methods (unused options collapse in sweeps)."""
        if option in ALIGNMENT_LEVELS:
            return True
        parent, values = ALIGNMENT_OPTIONS[option]
        return self.applies(parent) and getattr(self, parent) in values

    def unused_options(self) -> list[str]:
        return [k for k in ALIGNMENT_OPTIONS if not self.applies(k)]

    def facts(self, level: str) -> MethodFacts:
        """The facts of the method this spec chooses at `level`."""
        return ALIGNMENT_METHODS[level][getattr(self, level)]

    def on(self, level: str) -> bool:
        """Whether a method (not none) is chosen at `level`."""
        return getattr(self, level) != NO_METHOD

    @property
    def active(self) -> bool:
        return any(self.on(level) for level in ALIGNMENT_LEVELS)

    @property
    def own_statistics(self) -> list[str]:
        """The levels whose method estimates statistics on each dataset's own training images."""
        return [level for level in ALIGNMENT_LEVELS if self.facts(level).own_statistics]

    def label(self) -> str:
        """The method as one short name (the report's "method" axis): each level that is not none, with the options
        that apply and differ from their defaults, e.g. `histogram+standardise`, `mmd(loss_weight=0.1)`, `none`."""
        defaults = AlignmentSpec()
        parts = []
        for level in ALIGNMENT_LEVELS:
            if not self.on(level):
                continue
            opts = [
                f"{k}={getattr(self, k):g}" if isinstance(getattr(self, k), float) else f"{k}={getattr(self, k)}"
                for k in ALIGNMENT_OPTIONS
                if _option_level(k) == level and self.applies(k) and getattr(self, k) != getattr(defaults, k)
            ]
            value = getattr(self, level)
            parts.append(f"{value}({', '.join(opts)})" if opts else value)
        return "+".join(parts) or NO_METHOD

    def embeds_unlabelled_images(self) -> bool:
        """Whether a method passes unlabelled training images through the backbone: a loss-level method (they are in
        the batches) or feature statistics estimated on each dataset's own images. (Input-level statistics are
        estimated on raw pixels.)"""
        return self.on("loss") or self.facts("features").own_statistics

    def uses_target_images(self, target: list[str]) -> bool:
        """Whether any method reads the target datasets' (unlabelled) training images: loss-level methods draw them
        into batches, per-dataset statistics are estimated on them, a histogram reference may be one."""
        if not target:
            return False
        if self.on("loss") or self.own_statistics:
            return True
        return self.facts("input").reads_reference and self.reference in ("target", *target)


def alignment_label(a: AlignmentSpec) -> str:
    """`AlignmentSpec.label` (kept for callers that map over specs)."""
    return a.label()


def _option_level(option: str) -> str:
    while option not in ALIGNMENT_LEVELS:
        option = ALIGNMENT_OPTIONS[option][0]
    return option


def lora_applies(regime: str) -> bool:
    """LoRA settings change a trial only in the lora regime (elsewhere they collapse, and reports ignore them)."""
    return regime == "lora"


def inapplicable_settings(
    regime: str, alignment: AlignmentSpec, train: list[str], target: list[str], zero_shot: list[str] | None = None
) -> list[str]:
    """The dotted settings (a whole section as its name, e.g. `lora`) that cannot change a trial with these facts:
    what sweep expansion collapses and what reports never compare. The planner calls it on a trial's facts before
    the trial is validated; everything else calls `TrialSpec.inapplicable_settings`."""
    out = [] if lora_applies(regime) else ["lora"]
    out += [f"alignment.{k}" for k in alignment.unused_options()]
    if not alignment.uses_target_images(target):  # (no target at all: nothing to compare either)
        out.append("data.target")
    if alignment.facts("input").replaces_normalisation:
        out.append("data.normalisation")
    if not sampling_applies(len(batch_datasets(alignment, train, target, zero_shot or []))):
        out += SAMPLING_KEYS
    return out


class TrialSpec(StrictModel):
    """One trial = backbone (+LoRA) + head trained and evaluated under one setting."""

    backbone: str  # registry entry name
    regime: Regime = "frozen"
    # "pretrained": the entry's hub tag or local checkpoint (fails loudly if unavailable); "random": random init
    weights: Literal["pretrained", "random"] = "pretrained"
    lora: LoraSpec = LoraSpec()
    data: DataSpec
    optim: OptimSpec = OptimSpec()
    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    split_seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    feature_cache: Literal["off", "memory", "disk"] = "memory"  # frozen regime only
    feature_cache_dir: str | None = None  # disk cache location (default: ~/.cache/vfm_ablate/features)
    eval_native_resolution: bool = False
    diagnostics: DiagnosticsSpec = DiagnosticsSpec()
    alignment: AlignmentSpec = AlignmentSpec()
    save_checkpoint: bool = True
    num_overlays: int = Field(3, ge=0)

    @model_validator(mode="after")
    def _fits_together(self) -> TrialSpec:
        data = self.data
        n_train = len(data.train)
        if len(set(data.train)) != n_train:
            raise ValueError(f"data.train lists a dataset twice: {data.train}")
        if len(set(data.target)) != len(data.target):
            raise ValueError(f"data.target lists a dataset twice: {data.target}")
        both = [d for d in data.target if d in data.train]
        if both:
            raise ValueError(
                f"data.target {both} is also in data.train: a dataset is either labelled source data or an unlabelled "
                "target, not both"
            )
        batch = self.batch_datasets()
        if data.sampling == "weighted" and data.weights is not None and len(data.weights) != len(batch):
            raise ValueError(
                f"sampling 'weighted' needs 'weights' with one value per dataset in the batches ({len(batch)}: {batch})"
            )
        if data.sampling == "balanced" and sampling_applies(len(batch)):
            balanced_share(self.optim.batch_size, len(batch))
        _check_alignment(self)
        return self

    @property
    def lora_applies(self) -> bool:
        return lora_applies(self.regime)

    def inapplicable_settings(self) -> list[str]:
        """The settings that cannot change this trial (see the module-level rule)."""
        data = self.data
        return inapplicable_settings(self.regime, self.alignment, data.train, data.target, data.zero_shot)

    def uses_target_images(self) -> bool:
        return self.alignment.uses_target_images(self.data.target)

    def sampling_applies(self) -> bool:
        return sampling_applies(len(self.batch_datasets()))

    def batch_datasets(self) -> list[str]:
        """The datasets training batches draw from (see the module-level rule)."""
        return batch_datasets(self.alignment, self.data.train, self.data.target, self.data.zero_shot)

    def dataset_names(self) -> list[str]:
        """Every dataset this trial reads (train, target, test, unlabelled, diagnostics when on), each once, in that
        order."""
        diagnostics = (self.diagnostics.datasets or []) if self.diagnostics.enabled else []
        names = [*self.data.train, *self.data.target, *self.data.test_datasets, *self.data.unlabelled, *diagnostics]
        return list(dict.fromkeys(names))

    def reference_dataset(self) -> str | None:
        """The dataset whose training images histogram matching uses as its reference (None: not histogram)."""
        a = self.alignment
        if not a.facts("input").reads_reference:
            return None
        if a.reference == "source":
            return self.data.train[0]
        if a.reference == "target":
            return self.data.target[0] if self.data.target else None
        return a.reference

    def trial_id(self) -> str:
        """Stable content hash: the same settings always get the same id (used for resume and MLflow dedupe).
        Settings added after trials were first identified are left out while at their default, so those trials keep
        their ids (and their results on resume)."""
        data = self.model_dump(mode="json")
        for section, key in _ID_OMITTED_AT_DEFAULT:
            model = getattr(self, section)
            if getattr(model, key) == type(model).model_fields[key].get_default(call_default_factory=True):
                del data[section][key]
        blob = json.dumps(data, sort_keys=True)
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

    @classmethod
    def from_flat_params(cls, params: dict[str, str], source: str = "<params>") -> TrialSpec:
        """The inverse of `flat_params`: a TrialSpec from MLflow's flat strings (runs logged before the spec itself
        was logged). Keys this version does not know are left out; missing keys take their defaults."""
        from .validation import validate

        return validate(cls, _unflatten(cls, params, ""), source)


# (section, key) of the settings `trial_id` leaves out while at their default
_ID_OMITTED_AT_DEFAULT = (("data", "labelled"),)


def _check_alignment(spec: TrialSpec) -> None:
    """Alignment settings that cannot work with this trial's data or regime, rejected with the setting named."""
    a, data = spec.alignment, spec.data
    own_images = [*data.train, *data.target]
    if a.facts("input").reads_reference:
        if a.reference == "target" and not data.target:
            raise ValueError(
                f"alignment.reference 'target' (alignment.input '{a.input}') needs an unlabelled target dataset in "
                f"data.target; this trial has none (train: {data.train})"
            )
        if a.reference not in ("source", "target") and a.reference not in own_images:
            raise ValueError(
                f"alignment.reference '{a.reference}' (alignment.input '{a.input}') must be 'source', 'target' or "
                f"one of the trial's train/target datasets {own_images}: the reference distribution comes from its "
                "training images"
            )
    missing = [d for d in data.test_datasets if d not in own_images]
    for level in a.own_statistics:
        if missing:
            raise ValueError(
                f"alignment.{level} '{getattr(a, level)}' uses each dataset's own statistics, estimated on its "
                f"training images; test dataset(s) {missing} are neither in data.train nor in data.target: list them "
                "in data.target (their training images are used without labels)"
            )
    if not a.on("loss"):
        return
    domains = spec.batch_datasets()
    if len(domains) < 2:
        raise ValueError(
            f"alignment.loss '{a.loss}' aligns two domains, but this trial's batches hold one dataset ({domains}): "
            "add an unlabelled target dataset (data.target) or train on two datasets"
        )
    if a.layer == "head_input" and spec.regime == "frozen":
        raise ValueError(
            f"alignment.loss '{a.loss}' on alignment.layer 'head_input' cannot move anything in the frozen regime "
            "(nothing before the head trains): use alignment.layer 'bottleneck', or regime lora / full"
        )
    rows = a.facts("loss").rows_per_domain
    if rows > 1 and a.sample == "pooled":
        share = spec.optim.batch_size // len(domains) if data.sampling == "balanced" else 0
        if share < rows:
            raise ValueError(
                f"alignment.loss '{a.loss}' with alignment.sample 'pooled' matches covariances of pooled image "
                f"vectors, which needs at least {rows} images of each domain in every batch (balanced sampling with "
                f"optim.batch_size >= {rows * len(domains)}); use alignment.sample 'tokens' (covariance over patch "
                "tokens) instead"
            )


def _unflatten(model: type[StrictModel], params: dict[str, str], prefix: str) -> dict[str, Any]:
    """Nested plain data for `model` from flat `prefix.key` strings, each parsed by its field's type."""
    import typing

    from pydantic import BaseModel

    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        key = f"{prefix}{name}"
        annotation = field.annotation
        nested = next(
            (a for a in (annotation, *typing.get_args(annotation)) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        if nested is not None:
            inner = _unflatten(nested, params, f"{key}.")
            if inner:
                out[name] = inner
            continue
        if typing.get_origin(annotation) is dict:  # a mapping setting: one flat key per entry (`data.labelled.x`);
            # '' is a run without that entry (a table of several runs has the union of their keys)
            entries = {k[len(key) + 1 :]: v for k, v in params.items() if k.startswith(f"{key}.") and v != ""}
            if entries:
                out[name] = entries
            continue
        if key not in params:
            continue
        out[name] = _parse_flat(params[key], annotation)
    return out


def _parse_flat(text: str, annotation: Any) -> Any:
    """One flat string back into plain data: '' is None where None is allowed, lists and tuples were joined by
    commas, a literal choice stays a string."""
    import typing

    args = typing.get_args(annotation)
    optional = type(None) in args
    if text == "" and optional:
        return None
    literals = {v for a in (annotation, *args) if typing.get_origin(a) is Literal for v in typing.get_args(a)}
    if text in literals:
        return text
    sequence = any(typing.get_origin(a) in (list, tuple) for a in (annotation, *args))
    if sequence:
        return [v for v in text.split(",") if v != ""]
    return text
