"""Costs from FLOP counts, for a device that is not at hand (a GPU type nobody has calibrated yet).

The network is built on PyTorch's meta device (structure only: no memory, no arithmetic) and torch's own
`FlopCounterMode` counts the floating-point operations of a training step, an evaluation and an extraction.
Seconds = FLOPs / an assumed sustained throughput. This is the old guess made explicit and computed per
configuration; a calibration measured on the real device replaces it (and is the only source of memory figures).
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..models.registry import BackboneEntry
from ..models.segmenter import build_segmenter
from ..trial.forward import dice_loss
from .records import ConfigKey, Measurement, Spread


def count_flops(key: ConfigKey, entry: BackboneEntry) -> dict[str, float]:
    """FLOPs of one training step (batch), one evaluation (image) and one extraction (image; frozen)."""
    spec = key.trial_spec("cpu")
    model = build_segmenter(spec, entry, device="meta")
    size = (key.height, key.width)
    batch = torch.empty(key.batch_size, 3, *size, device="meta")
    target = torch.empty(key.batch_size, 1, *size, dtype=torch.long, device="meta")
    loss_fn = dice_loss()
    out: dict[str, float] = {}
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            feats = model.features(batch[:1])
    out["extract"] = float(counter.get_total_flops())
    with FlopCounterMode(display=False) as counter:
        if key.regime == "frozen":  # the head on cached features
            logits = model.head_forward(torch.empty(key.batch_size, *feats.shape[1:], device="meta"), size)
        else:
            logits = model(batch, size)
        loss_fn(logits, target).backward()
    out["train_step"] = float(counter.get_total_flops())
    with FlopCounterMode(display=False) as counter:
        with torch.no_grad():
            if key.regime == "frozen":
                model.head_forward(feats, size)
            else:
                model(batch[:1], size)
    out["eval"] = float(counter.get_total_flops())
    return out


def flop_measurement(key: ConfigKey, entry: BackboneEntry, tflops: float) -> Measurement:
    """A Measurement whose seconds are FLOP counts at `tflops` sustained (source 'flops', no memory figure)."""
    flops = count_flops(key, entry)
    rate = tflops * 1e12
    return Measurement(
        key=key,
        source="flops",
        setup_s=0.0,
        train_step_s=Spread.exactly(flops["train_step"] / rate),
        eval_image_s=Spread.exactly(flops["eval"] / rate),
        extract_image_s=Spread.exactly(flops["extract"] / rate) if key.regime == "frozen" else None,
        train_step_tflop=flops["train_step"] / 1e12,
    )
