"""Measure one configuration in this process, through the trial engine's own code paths.

Random-init weights (throughput does not depend on weight values), synthetic images of the configuration's size.
The training step is `trial.forward.batch_loss` + backward + AdamW, exactly as `trial.run.fit` runs it; frozen
configurations step the head on cached features (the feature cache filled during warm-up), as a frozen trial
does after its first epoch. Warm-up steps are run and not timed; every timed step is kept, so the spread over
repeats is reported. On CUDA every timed region ends with a synchronisation. The network is built on the
measured device (random init there), as `models.segmenter.build_segmenter(device=...)` builds it.
"""

from __future__ import annotations

import resource
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..data.entries import DatasetEntry
from ..data.sources import clear_cache, load_dataset
from ..data.transforms import image_to_tensor, mask_to_tensor
from ..device import resolve_device
from ..models.registry import BackboneEntry
from ..models.segmenter import build_segmenter
from ..trial.forward import Forward, autocast, batch_loss, dice_loss
from ..trial.items import Item
from .records import ConfigKey, DatasetCost, Measurement, Spread


def process_rss_peak_mb() -> float:
    """This process's peak resident set size so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def synthetic_items(n: int, height: int, width: int, seed: int = 0) -> list[Item]:
    """n distinct normalised images with random masks: the shapes a trial feeds the network, no data needed."""
    g = torch.Generator().manual_seed(seed)
    return [
        Item(
            key=f"calibration/{i}",
            dataset="calibration",
            image=torch.randn(3, height, width, generator=g),
            mask=(torch.rand(height, width, generator=g) > 0.7).long(),
            native_mask=None,
            source=f"synthetic {i}",
        )
        for i in range(n)
    ]


def measure(
    key: ConfigKey, entry: BackboneEntry, device: str = "auto", warmup: int = 2, repeats: int = 5
) -> Measurement:
    """Setup, training step, evaluation and (frozen) extraction times and peak memory of one configuration."""
    dev = resolve_device(device)
    spec = key.trial_spec(dev.type)
    torch.manual_seed(0)
    baseline = process_rss_peak_mb()
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)

    start = time.perf_counter()
    model = build_segmenter(spec, entry, device=dev).to(dev)  # built where it runs: no CPU copy of a 1 B model
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=spec.optim.lr)
    fwd = Forward(model, dev, spec, entry)
    _sync(dev)
    setup_s = time.perf_counter() - start

    items = synthetic_items(key.batch_size, key.height, key.width)
    loss_fn = dice_loss()

    extract = None
    if key.regime == "frozen":

        def one_extraction() -> None:
            with torch.no_grad(), autocast(dev, key.precision):
                model.features(items[0].image.unsqueeze(0).to(dev)).float().cpu()

        extract = _timed(one_extraction, dev, warmup, repeats)

    def one_step() -> None:
        model.train()
        loss = batch_loss(fwd, loss_fn, items)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    # frozen: the first (untimed) step fills the feature cache, as a trial's first epoch does
    step = _timed(one_step, dev, max(warmup, 1 if key.regime == "frozen" else 0), repeats)

    def one_evaluation() -> None:
        model.eval()
        with torch.no_grad():
            fwd.logits([items[0]]).argmax(dim=1).cpu()

    evaluation = _timed(one_evaluation, dev, warmup, repeats)

    with tempfile.TemporaryDirectory(prefix="vfm-calibrate-") as folder:
        start = time.perf_counter()
        torch.save(model.trainable_state_dict(), Path(folder) / "state.pt")
        save_s = time.perf_counter() - start

    if dev.type == "cuda":
        peak, kind, base = torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_allocated", 0.0
    else:
        peak, kind, base = process_rss_peak_mb(), "process_rss", baseline
    return Measurement(
        key=key,
        setup_s=setup_s,
        train_step_s=step,
        eval_image_s=evaluation,
        extract_image_s=extract,
        save_s=save_s,
        peak_memory_mb=peak,
        memory_kind=kind,
        baseline_memory_mb=base,
    )


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def _timed(fn: Callable[[], None], dev: torch.device, warmup: int, repeats: int) -> Spread:
    for _ in range(warmup):
        fn()
    _sync(dev)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(dev)
        times.append(time.perf_counter() - start)
    return Spread.of(times)


def measure_dataset(entry: DatasetEntry, sizes: list[tuple[int, int]], split_seed: int = 0) -> list[DatasetCost]:
    """Read the dataset cold (what each worker process pays once) and prepare its slices at each input size
    (what every trial pays: resize, normalise, tensorise)."""
    clear_cache()
    start = time.perf_counter()
    loaded = load_dataset(entry, split_seed)
    load_s = time.perf_counter() - start
    slices = [s for s in [*loaded.train, *loaded.test] if s.mask is not None]
    out = []
    for height, width in sizes:
        start = time.perf_counter()
        for s in slices:
            image_to_tensor(s.image, (height, width))
            mask_to_tensor(s.mask, (height, width))
        per_image = (time.perf_counter() - start) / max(len(slices), 1)
        out.append(
            DatasetCost(
                dataset=entry.name,
                images=len(slices),
                load_s=load_s,
                height=height,
                width=width,
                prepare_image_s=per_image,
            )
        )
    clear_cache()
    return out
