"""LoRA gets the alpha it is configured with: peft's scaling is alpha / rank in every adapted module, the adapters
compute with that scaling, and lora_targets.json reports what peft holds (read from the model, not the config)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from peft.tuners.lora import LoraLayer

from vfm_ablate.config import LoraSpec, TrialSpec
from vfm_ablate.data.entries import DatasetEntry
from vfm_ablate.models.lora import peft_settings
from vfm_ablate.models.registry import get_entry
from vfm_ablate.models.segmenter import Segmenter, build_segmenter
from vfm_ablate.trial import run_trial
from vfm_ablate.trial.outputs import write_outputs
from vfm_ablate.validation import validate

# (rank, alpha): alpha above, below and equal to the rank, and a fractional alpha
PAIRS = [(1, 1.0), (2, 7.5), (4, 32.0), (8, 4.0)]
DATASETS = {"syn_a": DatasetEntry(name="syn_a", layout="synthetic", domain="a", n_train=3, n_test=1, size=(28, 28))}


def _lora_segmenter(
    backbone: str, rank: int, alpha: float, targets: str = "attention+mlp", dropout: float = 0.0
) -> Segmenter:
    torch.manual_seed(0)
    spec = TrialSpec(
        backbone=backbone,
        regime="lora",
        weights="random",
        lora=LoraSpec(rank=rank, alpha=alpha, targets=targets, dropout=dropout),
        data={"train": ["d"]},
    )
    return build_segmenter(spec, get_entry(backbone))


def _adapted(seg: Segmenter) -> dict[str, LoraLayer]:
    return {n.replace(".base_layer", ""): m for n, m in seg.backbone.net.named_modules() if isinstance(m, LoraLayer)}


@pytest.mark.parametrize("backbone", ["tiny_vit_p14", "tiny_openclip"])
@pytest.mark.parametrize(("rank", "alpha"), PAIRS)
def test_peft_scaling_is_alpha_over_rank_in_every_adapted_module(backbone: str, rank: int, alpha: float) -> None:
    seg = _lora_segmenter(backbone, rank, alpha)
    adapted = _adapted(seg)
    assert sorted(adapted) == sorted(seg.lora_targets) and len(adapted) >= 4  # 2 blocks x (attention + mlp)
    for name, module in adapted.items():
        assert module.r == {"default": rank}, name
        assert module.lora_alpha == {"default": alpha}, name
        assert module.scaling == {"default": pytest.approx(alpha / rank)}, name


@pytest.mark.parametrize(("rank", "alpha"), PAIRS)
def test_an_adapter_adds_alpha_over_rank_times_b_a_x(rank: int, alpha: float) -> None:
    """Behaviour, not bookkeeping: with B made non-zero, a linear module's output moves by (alpha / r) B A x."""
    seg = _lora_segmenter("tiny_vit_p14", rank, alpha, targets="attention")
    module = _adapted(seg)["blocks.0.attn.qkv"]
    g = torch.Generator().manual_seed(rank)
    with torch.no_grad():
        module.lora_B["default"].weight.copy_(torch.randn(module.lora_B["default"].weight.shape, generator=g))
        x = torch.randn(5, module.in_features, generator=g)
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        delta = module(x) - module.base_layer(x)
    assert torch.allclose(delta, (alpha / rank) * x @ a.T @ b.T, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backbone", ["tiny_vit_p14", "tiny_openclip"])
def test_peft_settings_name_each_adapted_module_as_its_target(backbone: str) -> None:
    """What lora_targets.json reports is keyed like the targets (an open_clip attention's out_proj sits under peft's
    base_layer) and holds peft's rank, alpha and scaling."""
    seg = _lora_segmenter(backbone, 2, 6.0)
    settings = peft_settings(seg.backbone.net)
    assert sorted(settings) == sorted(seg.lora_targets)
    assert all(v == {"rank": 2, "alpha": 6.0, "scaling": 3.0} for v in settings.values()), settings


@pytest.mark.parametrize("dropout", [0.0, 0.25])
def test_every_adapter_drops_out_with_the_configured_rate(dropout: float) -> None:
    """lora.dropout reaches peft: the input of each adapter's A goes through that dropout (none at 0)."""
    adapted = _adapted(_lora_segmenter("tiny_vit_p14", 2, 4.0, dropout=dropout))
    for name, module in adapted.items():
        drop = module.lora_dropout["default"]
        assert (drop.p if isinstance(drop, torch.nn.Dropout) else 0.0) == dropout, name


def test_lora_targets_json_reports_the_scaling_peft_holds_not_the_configs(tmp_path: Path) -> None:
    seg = _lora_segmenter("tiny_vit_p14", 4, 32.0)
    spec = TrialSpec(backbone="tiny_vit_p14", regime="lora", weights="random", data={"train": ["d"]})
    # one module made to compute with another scaling: the file must show it (it reads peft, not the LoraSpec)
    _adapted(seg)["blocks.1.attn.proj"].scaling["default"] = 0.125
    write_outputs(tmp_path, spec, get_entry("tiny_vit_p14"), seg, {}, [], {})
    written = json.loads((tmp_path / "lora_targets.json").read_text())
    assert written["rank"] == 4 and written["alpha"] == 32.0
    assert written["scaling"]["blocks.1.attn.proj"] == 0.125
    assert {v for k, v in written["scaling"].items() if k != "blocks.1.attn.proj"} == {8.0}
    assert sorted(written["scaling"]) == sorted(seg.lora_targets)


def test_a_lora_trial_writes_the_rank_alpha_and_scaling_it_trained_with(tmp_path: Path) -> None:
    spec = validate(
        TrialSpec,
        {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "regime": "lora",
            "device": "cpu",
            "lora": {"rank": 2, "alpha": 7.0},
            "data": {"train": ["syn_a"], "resize": {"policy": "native"}, "val_fraction": 0.34},
            "optim": {"max_epochs": 1},
            "num_overlays": 0,
            "save_checkpoint": False,
        },
    )
    result = run_trial(spec, tmp_path, datasets=DATASETS)
    written = json.loads((tmp_path / "lora_targets.json").read_text())
    assert written["rank"] == 2 and written["alpha"] == 7.0
    assert written["scaling"] == {name: 3.5 for name in result.lora_targets} and len(result.lora_targets) == 4


def test_a_frozen_trial_reports_no_adapters(tmp_path: Path) -> None:
    seg = build_segmenter(
        TrialSpec(backbone="tiny_vit_p14", weights="random", data={"train": ["d"]}), get_entry("tiny_vit_p14")
    )
    write_outputs(tmp_path, TrialSpec(backbone="tiny_vit_p14", data={"train": ["d"]}), seg.entry, seg, {}, [], {})
    written = json.loads((tmp_path / "lora_targets.json").read_text())
    assert written["rank"] is None and written["alpha"] is None and written["scaling"] == {}
