"""Regimes do what they say: frozen trains only the head, LoRA only adapters + head (starting equal to frozen),
full all."""

from __future__ import annotations

import pytest
import torch

from vfm_ablate.config import LoraSpec, TrialSpec
from vfm_ablate.errors import CheckpointError, ConfigError
from vfm_ablate.models.registry import get_entry
from vfm_ablate.models.segmenter import Segmenter, build_segmenter

SIZES = {14: (42, 56), 16: (48, 64)}


def _segmenter(name: str, regime: str, seed: int = 0, lora: LoraSpec | None = None) -> Segmenter:
    torch.manual_seed(seed)
    spec = TrialSpec(backbone=name, regime=regime, weights="random", lora=lora or LoraSpec(), data={"train": ["d"]})
    return build_segmenter(spec, get_entry(name))


def _images(name: str, n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(n, 3, *SIZES[get_entry(name).patch_size])


def _step(seg: Segmenter, x: torch.Tensor, lr: float = 1e-2) -> None:
    seg.train()
    optimiser = torch.optim.AdamW([p for p in seg.parameters() if p.requires_grad], lr=lr)
    logits = seg(x, (30, 40))
    target = (torch.arange(30 * 40).reshape(1, 30, 40) % 3 == 0).long().expand(x.shape[0], -1, -1)
    torch.nn.functional.cross_entropy(logits, target).backward()
    optimiser.step()


def _backbone_state(seg: Segmenter) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in seg.backbone.state_dict().items()}


@pytest.mark.parametrize("name", ["tiny_vit_p14", "tiny_openclip", "efficientnet_lite0"])
def test_frozen_regime_really_freezes_the_backbone(name: str) -> None:
    seg = _segmenter(name, "frozen")
    before = _backbone_state(seg)
    head_before = {k: v.clone() for k, v in seg.head.state_dict().items()}
    x = _images(name)
    _step(seg, x)
    assert not seg.backbone.training and seg.head.training  # .train() keeps a frozen backbone in eval mode
    assert all(p.grad is None and not p.requires_grad for p in seg.backbone.parameters())
    after = seg.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights AND BatchNorm statistics unchanged
    head_after = seg.head.state_dict()
    assert not torch.equal(head_before["reduce.0.weight"], head_after["reduce.0.weight"])
    assert not torch.equal(head_before["reduce.1.running_mean"], head_after["reduce.1.running_mean"])
    counts = seg.parameter_counts()
    assert counts["trainable"] == counts["head"] and counts["lora"] == 0 and seg.lora_targets == []


@pytest.mark.parametrize("name", ["tiny_vit_p14", "tiny_vit_p16", "tiny_openclip"])
def test_untrained_lora_equals_frozen_then_only_adapters_move(name: str) -> None:
    frozen = _segmenter(name, "frozen", seed=3)
    lora = _segmenter(name, "lora", seed=3)  # same seed: same backbone init, then adapters
    lora.head.load_state_dict(frozen.head.state_dict())
    frozen.eval()
    lora.eval()
    x = _images(name)
    with torch.no_grad():
        assert torch.equal(lora(x, (20, 30)), frozen(x, (20, 30)))  # B = 0: the adapters add exactly nothing
    assert all(torch.count_nonzero(p) == 0 for n, p in lora.named_parameters() if "lora_B" in n)
    assert all(torch.count_nonzero(p) > 0 for n, p in lora.named_parameters() if "lora_A" in n)

    base_before = {k: v.clone() for k, v in lora.backbone.state_dict().items() if "lora_" not in k}
    _step(lora, x)
    lora.eval()
    base_after = {k: v for k, v in lora.backbone.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(base_before[k], base_after[k]) for k in base_before)  # pretrained weights untouched
    assert any(torch.count_nonzero(p) > 0 for n, p in lora.named_parameters() if "lora_B" in n)
    with torch.no_grad():
        assert not torch.allclose(lora.features(x), frozen.features(x), atol=1e-4)


def test_lora_targets_and_counts_follow_the_spec() -> None:
    seg = _segmenter("tiny_vit_p16", "lora", lora=LoraSpec(rank=4, alpha=8))
    assert seg.lora_targets == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    counts = seg.parameter_counts()
    assert counts["lora"] == 2 * 4 * 6 * 64  # 2 blocks x r x (4D + 2D)
    assert counts["trainable"] == counts["lora"] + counts["head"]
    explicit = _segmenter("tiny_vit_p16", "lora", lora=LoraSpec(rank=2, targets=["mlp.fc2"]))
    assert explicit.lora_targets == ["blocks.0.mlp.fc2", "blocks.1.mlp.fc2"]
    assert explicit.parameter_counts()["lora"] == 2 * 2 * (256 + 64)


def test_lora_on_the_cnn_keeps_its_batchnorm_statistics_fixed() -> None:
    seg = _segmenter("efficientnet_lite0", "lora", lora=LoraSpec(rank=2))
    stats = {k: v.clone() for k, v in seg.backbone.state_dict().items() if "running" in k}
    _step(seg, torch.randn(2, 3, 64, 64))
    assert all(torch.equal(stats[k], seg.backbone.state_dict()[k]) for k in stats)
    assert seg.parameter_counts()["lora"] > 0


def test_bad_lora_targets_name_the_targets() -> None:
    with pytest.raises(ConfigError, match=r"\['attn.qkvx'\] match no module.*blocks.0.attn.qkv"):
        _segmenter("tiny_vit_p14", "lora", lora=LoraSpec(targets=["attn.qkvx"]))
    with pytest.raises(
        ConfigError, match="inside an nn.MultiheadAttention.*target the attention module itself \\('attn'\\)"
    ):
        _segmenter("tiny_openclip", "lora", lora=LoraSpec(targets=["attn.out_proj"]))
    with pytest.raises(ConfigError, match="matches 'blocks.0.attn', a Attention"):
        _segmenter("tiny_vit_p14", "lora", lora=LoraSpec(targets=["attn"]))
    with pytest.raises(ConfigError, match="declares no modules in lora_mlp_targets"):
        _segmenter("efficientnet_lite0", "lora", lora=LoraSpec(targets="mlp"))


def test_full_regime_trains_everything() -> None:
    seg = _segmenter("tiny_vit_p14", "full")
    counts = seg.parameter_counts()
    assert counts["trainable"] == counts["total"] and counts["trainable_pct"] == 100.0
    before = _backbone_state(seg)
    _step(seg, _images("tiny_vit_p14"))
    assert seg.backbone.training
    assert not torch.equal(
        before["net.patch_embed.proj.weight"], seg.backbone.state_dict()["net.patch_embed.proj.weight"]
    )
    assert set(seg.trainable_state_dict()) == set(seg.state_dict())


@pytest.mark.parametrize(("name", "regime"), [("tiny_vit_p14", "frozen"), ("tiny_openclip", "lora")])
def test_trainable_state_round_trip_restores_the_model(name: str, regime: str) -> None:
    seg = _segmenter(name, regime, seed=4)
    x = _images(name)
    _step(seg, x)
    seg.eval()
    saved = {k: v.clone() for k, v in seg.trainable_state_dict().items()}
    assert all(k.startswith("head.") or "lora_" in k for k in saved)
    assert any(k.endswith("running_mean") for k in saved)  # the head's BN statistics travel with it
    with torch.no_grad():
        expected = seg(x, (20, 30))
    fresh = _segmenter(name, regime, seed=4)
    fresh.load_trainable_state_dict(saved)
    fresh.eval()
    with torch.no_grad():
        assert torch.allclose(fresh(x, (20, 30)), expected, atol=1e-6)
    with pytest.raises(CheckpointError, match="1 missing"):
        fresh.load_trainable_state_dict({k: v for k, v in list(saved.items())[1:]})


def test_forward_resizes_logits_to_the_mask_size() -> None:
    seg = _segmenter("tiny_vit_p14", "frozen").eval()
    x = _images("tiny_vit_p14")
    with torch.no_grad():
        feats = seg.features(x)
        assert feats.shape == (2, 48, 3, 4)
        assert seg.head_forward(feats, (33, 45)).shape == (2, 2, 33, 45)
        assert seg(x).shape == (2, 2, 42, 56)
        assert torch.equal(seg(x, (33, 45)), seg.head_forward(feats, (33, 45)))
