"""A sweep's cost before it runs: per-trial seconds from a calibration file, device-hours, the GPU share each
trial needs by its measured memory, and the makespan on a cluster shape (sweep/packing).

One trial, as `trial.run.run_trial` spends it (every term measured by `vfm-ablate calibrate`):

    setup (build the segmenter)  +  data (read each dataset once per worker process; resize every image)
    + epochs x (training steps by (input size, group size) + validation images)
    + test images  +  writing the trainable state
    frozen: + one backbone pass per image, paid by the first trial of the sweep that needs each
      (backbone, weights, precision, dataset, input size): the sweep's shared feature store serves the rest;
      steps and evaluations are then the head on cached features

A launch adds, once: the CLI planning the sweep, MLflow's store and parent run (when tracked), Ray's start-up,
and the first worker processes' imports (`startup_s`, paid in parallel by the concurrent workers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from ...calibration.records import Calibration, ConfigKey, Measurement
from ...errors import ConfigError
from ..plan import PlannedTrial, SweepPlan, TrialResources
from ..spec import SweepSpec
from .epochs import EpochModel
from .packing import Job, Node, simulate

if TYPE_CHECKING:  # workload computes input sizes with data.transforms, which loads torch: not for the driver
    from .workload import TrialWorkload

MEMORY_HEADROOM = 0.9  # share of a GPU's memory trials may fill (CUDA context, allocator fragmentation)


@dataclass(frozen=True)
class TrialEstimate:
    workload: TrialWorkload
    epochs: float
    epochs_source: str  # "median of N finished", "max_epochs" or "assumed"
    seconds: float | None  # None: a configuration it needs was not calibrated
    extraction_s: float  # of which: backbone passes filling the shared feature store (frozen)
    gpu: float  # the GPU share it asks Ray for
    share_source: str  # "memory", "sweep", "entry"
    peak_memory_mb: float | None
    missing: tuple[str, ...] = ()
    samples: int = 1  # search mode: the trials Optuna runs at this grid point (ASHA may stop some early)

    @property
    def trial(self) -> PlannedTrial:
        return self.workload.trial

    @property
    def hours(self) -> float:
        """Run time of this trial (all its samples in search mode)."""
        return (self.seconds or 0.0) * self.samples / 3600

    @property
    def gpu_hours(self) -> float:
        """Device-hours it occupies: its run time times the share of a device it holds."""
        return self.hours * max(self.gpu, 0.0)


@dataclass
class SweepEstimate:
    calibration: Calibration
    trials: list[TrialEstimate]
    epoch_note: str
    launch_s: float
    nodes: list[Node] = field(default_factory=list)
    cluster: str = ""
    makespan_s: float | None = None  # trials only (search mode: the grid points' searches one after another)
    max_concurrent: int | None = None

    @property
    def complete(self) -> bool:
        return all(t.seconds is not None for t in self.trials)

    @property
    def trial_hours(self) -> float:
        return sum(t.hours for t in self.trials)

    @property
    def gpu_hours(self) -> float:
        return sum(t.gpu_hours for t in self.trials)

    @property
    def wall_s(self) -> float | None:
        return None if self.makespan_s is None else self.launch_s + self.makespan_s

    @property
    def compute_bound_s(self) -> float | None:
        """The makespan if trials packed on one GPU shared its compute (each was measured alone): the trials'
        GPU seconds spread over every GPU of the cluster. None without GPUs or without GPU trials."""
        gpus = sum(n.gpus for n in self.nodes)
        on_gpu = [t.hours * 3600 for t in self.trials if t.gpu > 0]
        if not gpus or not on_gpu or self.makespan_s is None:
            return None
        return max(self.makespan_s, sum(on_gpu) / gpus)


def measured_share(measurement: Measurement | None, calibration: Calibration) -> tuple[float | None, int | None]:
    """(GPU share, trials per GPU) from a configuration's peak accelerator memory; None without a figure."""
    memory_gb = calibration.device.memory_gb
    if measurement is None or measurement.memory_kind != "cuda_allocated" or not memory_gb:
        return None, None
    usable_mb = memory_gb * 1024 * MEMORY_HEADROOM
    peak = measurement.peak_memory_mb or 0.0
    if peak > usable_mb:
        return float(math.ceil(peak / usable_mb)), 0  # whole GPUs (the trial would need model parallelism)
    fits = max(1, int(usable_mb // max(peak, 1.0)))
    return 1.0 / fits, fits


def _explicit_gpu(sweep: SweepSpec, trial: PlannedTrial) -> bool:
    """The sweep file sets this trial's GPU ask itself (resources.gpu, or an override rule with gpu)."""
    s = trial.spec
    return sweep.resources.gpu != "auto" or any(
        r.gpu is not None and r.matches(s.backbone, s.regime) for r in sweep.resources.overrides
    )


def _step_seconds(calibration: Calibration, base: ConfigKey, h: int, w: int, n: int) -> tuple[float | None, str]:
    key = base.model_copy(update={"height": h, "width": w, "batch_size": n})
    m = calibration.find(key) or calibration.nearest_batch(key)
    if m is None:
        return None, key.model_copy(update={"batch_size": base.batch_size}).label()
    return m.train_step_s.median * n / m.key.batch_size, ""


def estimate_trial(
    the_plan: SweepPlan,
    w: TrialWorkload,
    calibration: Calibration,
    epochs: EpochModel,
    extracts: set[str],
    workers: int,
) -> TrialEstimate:
    """One trial's seconds; `extracts`: the datasets whose frozen features it is the first of the sweep to need."""
    s = w.trial.spec
    base = ConfigKey.of(s, 1, 1, s.optim.batch_size)
    n_epochs, source = epochs.epochs_for(s)
    missing: list[str] = []
    per_size: dict[tuple[int, int], Measurement] = {}
    for h, wd in set(w.sizes.values()):
        key = base.model_copy(update={"height": h, "width": wd})
        m = calibration.find(key) or calibration.nearest_batch(key)
        if m is None:
            missing.append(key.label())
        else:
            per_size[(h, wd)] = m
    epoch_s = 0.0
    for (h, wd, n), count in w.step_groups.items():
        step, miss = _step_seconds(calibration, base, h, wd, n)
        if step is None:
            missing.append(miss)
        else:
            epoch_s += count * step
    extraction_s = 0.0
    seconds = None
    if not missing:
        for name, n in w.val_images.items():
            epoch_s += n * per_size[w.sizes[name]].eval_image_s.median
        test_s = sum(n * per_size[w.sizes[name]].eval_image_s.median for name, n in w.test_images.items())
        if s.regime == "frozen":
            for name, n in w.extracted_images.items():
                if name not in extracts:
                    continue
                m = per_size[w.sizes[name]]
                extraction_s += n * (m.extract_image_s.median if m.extract_image_s else 0.0)
        any_m = next(iter(per_size.values()))
        data_s = 0.0
        for name in w.sizes:
            h, wd = w.sizes[name]
            cost = calibration.dataset(name, h, wd)
            if cost is not None:
                images = w.train_images.get(name, 0) + w.val_images.get(name, 0) + w.test_images.get(name, 0)
                data_s += cost.load_s / max(workers, 1) + images * cost.prepare_image_s
        seconds = any_m.setup_s + data_s + n_epochs * epoch_s + test_s + extraction_s + any_m.save_s

    sweep = the_plan.sweep
    entry = the_plan.backbones[s.backbone]
    # the trial's largest input decides its memory (paired data: the larger dataset's images)
    largest = max(per_size.values(), key=lambda m: m.peak_memory_mb or 0.0, default=None)
    share, _ = measured_share(largest, calibration)
    peak = largest.peak_memory_mb if largest is not None else None
    if _explicit_gpu(sweep, w.trial):
        gpu, share_source = w.trial.resources.gpu, "sweep"
    elif share is not None:
        gpu, share_source = share, "memory"
    else:
        gpu = entry.gpu_fraction(s.regime)
        share_source = "entry"
    missing_once = tuple(dict.fromkeys(missing))
    samples = sweep.search.num_samples if sweep.search is not None and w.trial.search_space else 1
    return TrialEstimate(w, n_epochs, source, seconds, extraction_s, gpu, share_source, peak, missing_once, samples)


def estimate_sweep(
    the_plan: SweepPlan,
    workloads: list[TrialWorkload],
    calibration: Calibration,
    epochs: EpochModel,
    nodes: list[Node] | None = None,
    cluster: str = "",
    max_concurrent: int | None = None,
) -> SweepEstimate:
    """Every trial's estimate in sweep order, and (given nodes) the simulated makespan. Grid mode: one Ray
    experiment of all trials; search mode: one per grid point (its samples), run one after the other."""
    sweep = the_plan.sweep
    cap = max_concurrent or sweep.run.max_concurrent_trials
    workers = cap or len(workloads)
    seen: set[tuple] = set()
    trials = []
    for w in workloads:
        extracts = set()
        if w.trial.spec.regime == "frozen":
            extracts = {name for name in w.sizes if w.feature_key(name) not in seen}
            seen |= {w.feature_key(name) for name in w.sizes}
        trials.append(estimate_trial(the_plan, w, calibration, epochs, extracts, workers))
    launch_s = (
        (calibration.driver_start_s or 0.0)
        + (calibration.ray_start_s or 0.0)
        + (calibration.tracking_start_s or 0.0 if sweep.tracking.enabled else 0.0)
        + calibration.startup_s
    )
    out = SweepEstimate(calibration, trials, epochs.note, launch_s, nodes or [], cluster, None, cap)
    if nodes and out.complete:
        cpu_only = all(n.gpus == 0 for n in nodes)  # the driver then asks for no GPU

        def jobs(ts: list[TrialEstimate]) -> list[Job]:
            return [
                Job(t.seconds or 0.0, t.trial.resources.cpu, 0.0 if cpu_only else t.gpu)
                for t in ts
                for _ in range(t.samples)
            ]

        try:
            if sweep.search is None:
                out.makespan_s = simulate(jobs(trials), nodes, cap).makespan
            else:
                out.makespan_s = sum(simulate(jobs([t]), nodes, cap).makespan for t in trials)
        except ConfigError as err:
            out.cluster += f" (cannot schedule: {err})"
    return out


def measured_gpu_shares(estimate: SweepEstimate) -> dict[str, float]:
    """trial id -> the GPU share its measured memory calls for (trials the sweep file sets itself excluded)."""
    return {t.trial.trial_id: t.gpu for t in estimate.trials if t.share_source == "memory"}


def with_gpu_shares(trials: list[PlannedTrial], shares: dict[str, float]) -> list[PlannedTrial]:
    """The planned trials asking Ray for the given GPU shares instead of their backbone entry's guess."""
    return [
        replace(t, resources=TrialResources(cpu=t.resources.cpu, gpu=shares[t.trial_id])) if t.trial_id in shares else t
        for t in trials
    ]
