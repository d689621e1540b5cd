"""Parameter counts must equal the study's to the parameter: head-only per D, LoRA r=16/alpha=32 + head per scale.

Real architectures at random init, built on the meta device (structure only, no memory), through the same
`build_segmenter` a trial uses.
"""

from __future__ import annotations

import pytest

from vfm_ablate.config import LoraSpec, TrialSpec
from vfm_ablate.models.backbones import backbone_parameter_count
from vfm_ablate.models.head import SegmentationHead
from vfm_ablate.models.registry import get_entry
from vfm_ablate.models.segmenter import build_segmenter

# head-only trainable parameters for D = 384 ... 1536, to the parameter (SPEC.md gives them in millions:
# 3.829M, 4.025M, 4.157M, 4.288M, 4.419M)
HEAD_EXACT = {384: 3_828_866, 768: 4_025_474, 1024: 4_156_546, 1280: 4_287_618, 1536: 4_418_690}
HEAD_STUDY_MILLIONS = {384: 3.829, 768: 4.025, 1024: 4.157, 1280: 4.288, 1536: 4.419}
# LoRA (r=16, alpha=32, qkv + proj) + head, by scale: head(D) + depth x 16 x 6D (SPEC.md: 4.271M ... 10.317M)
LORA_EXACT = {"S": 4_271_234, "B": 4_910_210, "L": 6_515_842, "G": 10_316_930}
LORA_STUDY_MILLIONS = {"S": 4.271, "B": 4.910, "L": 6.516, "G": 10.317}

LORA_CASES = [
    ("dinov2_vits14_reg", "S"),
    ("dinov2_vitb14_reg", "B"),
    ("dinov2_vitl14_reg", "L"),
    ("dinov2_vitg14_reg", "G"),
    ("dinov3_vits16", "S"),
    ("dinov3_vitb16", "B"),
    ("dinov3_vitl16", "L"),
    ("openclip_vitb16", "B"),
    ("openclip_vitl14", "L"),
]


def _spec(backbone: str, regime: str, lora: LoraSpec | None = None) -> TrialSpec:
    return TrialSpec(backbone=backbone, regime=regime, weights="random", lora=lora or LoraSpec(), data={"train": ["d"]})


@pytest.mark.parametrize("dim", sorted(HEAD_EXACT))
def test_head_only_counts_match_the_study(dim: int) -> None:
    count = sum(p.numel() for p in SegmentationHead(dim).parameters())
    assert count == HEAD_EXACT[dim]
    assert round(count / 1e6, 3) == HEAD_STUDY_MILLIONS[dim]  # and the exact figure is the study's, rounded


@pytest.mark.parametrize("name", ["dinov2_vits14_reg", "dinov3_vitl16", "openclip_vitb16"])
def test_frozen_segmenter_trains_only_the_head(name: str) -> None:
    seg = build_segmenter(_spec(name, "frozen"), get_entry(name), device="meta")
    counts = seg.parameter_counts()
    assert counts["trainable"] == counts["head"] == HEAD_EXACT[get_entry(name).embed_dim]
    assert counts["lora"] == 0
    assert counts["total"] == counts["head"] + backbone_parameter_count(get_entry(name))
    assert counts["trainable_pct"] == pytest.approx(100 * counts["trainable"] / counts["total"])


@pytest.mark.parametrize(("name", "scale"), LORA_CASES)
def test_lora_plus_head_totals_match_the_study(name: str, scale: str) -> None:
    entry = get_entry(name)
    seg = build_segmenter(_spec(name, "lora"), entry, device="meta")
    counts = seg.parameter_counts()
    assert counts["trainable"] == LORA_EXACT[scale]
    assert round(counts["trainable"] / 1e6, 3) == LORA_STUDY_MILLIONS[scale]
    assert counts["trainable"] == counts["head"] + counts["lora"] and counts["head"] == HEAD_EXACT[entry.embed_dim]
    # r x (D + 3D) for qkv plus r x (D + D) for the output projection, in every block
    depth = len(seg.lora_targets) // 2
    assert counts["lora"] == depth * 16 * 6 * entry.embed_dim
    assert all(t.endswith(("attn.qkv", "attn.proj", "attn", "attn.out_proj")) for t in seg.lora_targets)


def test_openclip_packed_in_proj_counts_like_qkv() -> None:
    clip = build_segmenter(_spec("openclip_vitl14", "lora"), get_entry("openclip_vitl14"), device="meta")
    dino = build_segmenter(_spec("dinov2_vitl14", "lora"), get_entry("dinov2_vitl14"), device="meta")
    assert clip.parameter_counts()["lora"] == dino.parameter_counts()["lora"]
    assert "transformer.resblocks.0.attn" in clip.lora_targets
    assert "transformer.resblocks.0.attn.out_proj" in clip.lora_targets


def test_rank_and_mlp_targets_change_the_count_as_lora_predicts() -> None:
    entry = get_entry("dinov2_vits14")
    base = build_segmenter(_spec(entry.name, "lora", LoraSpec(rank=4)), entry, device="meta").parameter_counts()
    assert base["lora"] == 12 * 4 * 6 * 384
    wide = build_segmenter(
        _spec(entry.name, "lora", LoraSpec(rank=4, targets="attention+mlp")), entry, device="meta"
    ).parameter_counts()
    # fc1: r x (384 + 1536), fc2: r x (1536 + 384)
    assert wide["lora"] - base["lora"] == 12 * 2 * 4 * (384 + 1536)
