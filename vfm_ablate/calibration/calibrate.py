"""Measure a list of configurations (and the datasets' read / resize costs) into one `Calibration`."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import torch

from .. import __version__
from ..data.entries import DatasetEntry
from ..device import resolve_device
from ..models.registry import BackboneEntry
from .flops import flop_measurement
from .isolate import IsolatedResult, measure_group, measure_isolated
from .measure import measure_dataset
from .records import Calibration, CalibrationSettings, ConfigKey, DatasetCost, DeviceInfo, Measurement, Spread


def device_info(device: str) -> DeviceInfo:
    """The device a calibration describes: its name and memory (accelerator memory, or RAM on a CPU)."""
    dev = resolve_device(device)
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        return DeviceInfo(
            kind="cuda", name=props.name, memory_gb=props.total_memory / 2**30, cpu_count=os.cpu_count() or 1
        )
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return DeviceInfo(kind="cpu", name=_cpu_name(), memory_gb=ram, cpu_count=os.cpu_count() or 1)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class CalibrationInterrupted(Exception):
    """Ctrl-C (SIGINT) during a calibration: `calibration` holds what was measured before it, to be written."""

    def __init__(self, calibration: Calibration) -> None:
        super().__init__("calibration interrupted")
        self.calibration = calibration


def calibrate(
    keys: list[ConfigKey],
    entries: dict[str, BackboneEntry],
    settings: CalibrationSettings,
    *,
    device: str = "auto",
    datasets: dict[str, tuple[DatasetEntry, list[tuple[int, int]]]] | None = None,
    timeout_s: float | None = None,
    info: DeviceInfo | None = None,
    progress: Callable[[str], None] = print,
) -> Calibration:
    """Time every configuration in fresh processes (one per configuration, or one per backbone entry as
    settings.isolate says), or count its FLOPs with settings.assumed_tflops for the device `info` names.
    Interrupted (SIGINT), it raises `CalibrationInterrupted` carrying what was measured so far."""
    info = info or device_info(device)
    found = _Collected(keys, progress)
    costs: list[DatasetCost] = []
    try:
        if settings.assumed_tflops is not None:
            for key in keys:
                found.add_flops(key, entries[key.backbone], settings.assumed_tflops)
        elif settings.isolate == "backbone":
            for backbone in dict.fromkeys(k.backbone for k in keys):
                group = [k for k in keys if k.backbone == backbone]
                results = measure_group(
                    group,
                    entries[backbone],
                    device=device,
                    warmup=settings.warmup,
                    repeats=settings.repeats,
                    threads=settings.threads,
                    timeout_s=timeout_s,
                    on_result=lambda key, result: found.add(key, [result]),
                )
                found.imports.extend(r.import_s for r in results[:1] if r.import_s)  # one process
        else:
            for key in keys:
                results = _measure_copies(key, entries[key.backbone], settings, device, timeout_s)
                found.imports.extend(r.import_s for r in results if r.import_s)
                found.add(key, results)
        if settings.assumed_tflops is None:
            costs = _dataset_costs(datasets or {}, found.notes, progress)
    except KeyboardInterrupt:
        missing = len(keys) - found.done
        found.notes.append(
            f"interrupted: {missing} of {len(keys)} configurations not measured"
            + ("" if settings.assumed_tflops is not None else ", datasets not measured")
        )
        raise CalibrationInterrupted(found.calibration(info, settings, costs)) from None
    return found.calibration(info, settings, costs)


class _Collected:
    """The measurements of a calibration as they come in, with a progress line for each."""

    def __init__(self, keys: list[ConfigKey], progress: Callable[[str], None]) -> None:
        self.total = len(keys)
        self.progress = progress
        self.done = 0
        self.measurements: list[Measurement] = []
        self.notes: list[str] = []
        self.imports: list[float] = []
        self.since = time.perf_counter()

    def add(self, key: ConfigKey, results: list[IsolatedResult]) -> None:
        failed = [r.error for r in results if r.measurement is None]
        if failed:
            self._failed(key, str(failed[0]))
        else:
            self._measured(_pooled([r.measurement for r in results if r.measurement is not None]))

    def add_flops(self, key: ConfigKey, entry: BackboneEntry, tflops: float) -> None:
        try:
            m = flop_measurement(key, entry, tflops)
        except Exception as err:  # a structure the meta device cannot build: say so, go on
            self._failed(key, f"{type(err).__name__}: {err}")
            return
        self._measured(m)

    def _failed(self, key: ConfigKey, error: str) -> None:
        self.done += 1
        self.notes.append(f"{key.label()}: {error}"[:300])
        self.progress(f"[{self.done}/{self.total}] {key.label()}: FAILED {self.notes[-1]}")
        self.since = time.perf_counter()

    def _measured(self, m: Measurement) -> None:
        self.done += 1
        self.measurements.append(m)
        memory = f", peak {m.peak_memory_mb:.0f} MB" if m.peak_memory_mb is not None else ""
        self.progress(
            f"[{self.done}/{self.total}] {m.key.label()}: step {m.train_step_s.describe()}, "
            f"eval {m.eval_image_s.median:.4g} s/image"
            + (f", extract {m.extract_image_s.median:.4g} s/image" if m.extract_image_s else "")
            + f"{memory} ({time.perf_counter() - self.since:.0f} s)"
        )
        self.since = time.perf_counter()

    def calibration(self, info: DeviceInfo, settings: CalibrationSettings, costs: list[DatasetCost]) -> Calibration:
        imports = sorted(self.imports)
        return Calibration(
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            device=info,
            torch_version=torch.__version__,
            vfm_ablate_version=__version__,
            settings=settings,
            startup_s=imports[len(imports) // 2] if imports else 0.0,
            measurements=self.measurements,
            datasets=costs,
            notes=self.notes,
        )


def _dataset_costs(
    datasets: dict[str, tuple[DatasetEntry, list[tuple[int, int]]]], notes: list[str], progress: Callable[[str], None]
) -> list[DatasetCost]:
    costs: list[DatasetCost] = []
    for name, (entry, sizes) in datasets.items():
        try:
            costs.extend(measure_dataset(entry, sizes))
            read, resize = costs[-1].load_s, costs[-1].prepare_image_s
            progress(f"dataset {name}: read {read:.2f} s, resize {resize:.4f} s/image")
        except Exception as err:  # data absent here: the estimate leaves reading out and says nothing wrong
            notes.append(f"dataset {name}: not measured ({type(err).__name__}: {err})"[:300])
            progress(f"dataset {name}: not measured ({err})")
    return costs


def _measure_copies(
    key: ConfigKey, entry: BackboneEntry, settings: CalibrationSettings, device: str, timeout_s: float | None
) -> list[IsolatedResult]:
    """`settings.concurrent` fresh processes measuring the same configuration at the same time: a trial's speed
    while the sweep runs that many trials side by side on the device (CPU cores, memory bandwidth, one GPU)."""

    def one(_: int) -> IsolatedResult:
        return measure_isolated(
            key,
            entry,
            device=device,
            warmup=settings.warmup,
            repeats=settings.repeats,
            threads=settings.threads,
            timeout_s=timeout_s,
        )

    with ThreadPoolExecutor(settings.concurrent) as pool:
        return list(pool.map(one, range(settings.concurrent)))


def _pooled(measurements: list[Measurement]) -> Measurement:
    """The copies of one configuration as one measurement: pooled timings, the largest peak memory."""
    first = measurements[0]
    if len(measurements) == 1:
        return first
    extracts = [m.extract_image_s for m in measurements if m.extract_image_s is not None]
    peaks = [m.peak_memory_mb for m in measurements if m.peak_memory_mb is not None]
    return first.model_copy(
        update={
            "setup_s": max(m.setup_s for m in measurements),
            "train_step_s": Spread.pooled([m.train_step_s for m in measurements]),
            "eval_image_s": Spread.pooled([m.eval_image_s for m in measurements]),
            "extract_image_s": Spread.pooled(extracts) if extracts else None,
            "save_s": max(m.save_s for m in measurements),
            "peak_memory_mb": max(peaks) if peaks else None,
            "baseline_memory_mb": max(m.baseline_memory_mb for m in measurements),
        }
    )
