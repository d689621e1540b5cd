"""The registry's entries tell the truth about their networks; inline entries validate and build; the CLI lists them."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from vfm_ablate.cli import backbones as models_cli
from vfm_ablate.config import LoraSpec
from vfm_ablate.errors import CheckpointError, ConfigError
from vfm_ablate.models.backbones import build_backbone
from vfm_ablate.models.lora import apply_lora, matching_modules, target_suffixes
from vfm_ablate.models.registry import BackboneEntry, get_entry, list_entries
from vfm_ablate.validation import validate

STUDY_BACKBONES = [
    "dinov2_vits14_reg", "dinov2_vitb14_reg", "dinov2_vitl14_reg", "dinov2_vitg14_reg",
    "dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16", "dinov3_vith16plus",
    "openclip_vitb16", "openclip_vitl14", "openclip_vith14", "efficientnet_lite0",
]  # fmt: skip


@pytest.mark.parametrize("entry", list_entries(), ids=lambda e: e.name)
def test_every_entry_is_truthful_and_its_lora_targets_resolve(entry: BackboneEntry) -> None:
    # building checks embed_dim / patch size / prefix tokens against the real network (meta: structure only)
    backbone = build_backbone(entry, pretrained=False, device="meta")
    targets = "attention+mlp" if entry.lora_mlp_targets else "attention"
    matches = matching_modules(backbone.net, entry, target_suffixes(entry, LoraSpec(targets=targets)))
    assert set(matches) == {*entry.lora_targets, *entry.lora_mlp_targets}
    assert all(len(names) >= 2 for names in matches.values())  # in every block, not just one module


@pytest.mark.parametrize("name", ["tiny_vit_p14", "tiny_vit_p16", "tiny_openclip", "efficientnet_lite0"])
def test_peft_adapts_exactly_the_matched_modules(name: str) -> None:
    entry = get_entry(name)
    backbone = build_backbone(entry, pretrained=False, device="meta")
    targets = "attention+mlp" if entry.lora_mlp_targets else "attention"
    matched = matching_modules(backbone.net, entry, target_suffixes(entry, LoraSpec(targets=targets)))
    names = apply_lora(backbone, entry, LoraSpec(targets=targets))
    expected = {n for found in matched.values() for n in found}
    if entry.library == "open_clip":  # peft's MultiheadAttention LoRA also adapts the attention's out_proj
        expected |= {n + ".out_proj" for n in matched["attn"]}
    assert set(names) == expected
    assert all(p.requires_grad == ("lora_" in n) for n, p in backbone.named_parameters())


def test_the_study_backbones_are_registered_with_their_sources() -> None:
    for name in STUDY_BACKBONES:
        entry = get_entry(name)
        assert entry.pretrained_tag or entry.checkpoint
        assert entry.gpu_fraction_adapted >= entry.gpu_fraction_frozen
    assert get_entry("dinov2_vitl14_reg").model_id == "vit_large_patch14_reg4_dinov2"
    assert get_entry("dinov2_vitl14_reg").num_prefix_tokens == 5
    assert get_entry("dinov2_vitl14").num_prefix_tokens == 1


def test_unknown_backbone_name_suggests_the_closest() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'dinov2_vitl14'"):
        get_entry("dinov2_vitl14x")


def test_inline_entry_dict_validates_and_builds() -> None:
    data = {
        "name": "my_vit",
        "family": "custom",
        "scale": "XS",
        "library": "timm",
        "model_id": "vit_small_patch16_224",
        "patch_size": 16,
        "embed_dim": 32,
        "num_prefix_tokens": 1,
        "lora_targets": ["attn.qkv", "attn.proj"],
        "model_kwargs": {"embed_dim": 32, "depth": 1, "num_heads": 2, "img_size": 32},
    }
    entry = validate(BackboneEntry, data, "sweep.yaml: backbones.my_vit")
    assert get_entry("my_vit", {"my_vit": entry}) is entry
    backbone = build_backbone(entry, pretrained=False).eval()
    with torch.no_grad():
        assert backbone(torch.randn(1, 3, 48, 80)).shape == (1, 32, 3, 5)
    assert backbone.load_report["source"] == "random-init"


def test_inline_entry_with_a_typo_names_the_key_and_the_fix() -> None:
    data = {"name": "x", "family": "f", "scale": "s", "library": "timm", "model_id": "m", "patch_size": 16,
            "embed_dim": 8, "lora_target": ["qkv"]}  # fmt: skip
    with pytest.raises(ConfigError, match=r"(?s)sweep.yaml.*'lora_target'.*Did you mean 'lora_targets'"):
        validate(BackboneEntry, data, "sweep.yaml")


def test_inline_entry_that_misstates_its_network_is_rejected() -> None:
    wrong_dim = get_entry("tiny_vit_p14").model_copy(update={"name": "liar", "embed_dim": 99})
    with pytest.raises(ConfigError, match="embed_dim=99 .* has 48"):
        build_backbone(wrong_dim, pretrained=False)
    wrong_prefix = get_entry("tiny_vit_p14").model_copy(update={"name": "liar2", "num_prefix_tokens": 1})
    with pytest.raises(ConfigError, match="num_prefix_tokens=1 .* has 5"):
        build_backbone(wrong_prefix, pretrained=False)


def test_unknown_model_id_is_a_config_error_with_suggestion() -> None:
    entry = get_entry("tiny_vit_p14").model_copy(update={"name": "typo", "model_id": "vit_small_patch14_dinov"})
    with pytest.raises(ConfigError, match="Did you mean 'vit_small_patch14_dinov2'"):
        build_backbone(entry, pretrained=False)


def test_entry_schema_rejects_inconsistent_facts() -> None:
    base = {"name": "x", "family": "f", "scale": "s", "model_id": "m", "patch_size": 16, "embed_dim": 8}
    with pytest.raises(ConfigError, match="kind 'cnn'"):
        validate(BackboneEntry, {**base, "library": "open_clip", "kind": "cnn"}, "inline")
    with pytest.raises(ConfigError, match="by_position"):
        validate(BackboneEntry, {**base, "library": "timm", "checkpoint_key_map": "by_position"}, "inline")


def test_pretrained_without_any_source_is_a_checkpoint_error() -> None:
    with pytest.raises(CheckpointError, match="declares no pretrained source"):
        build_backbone(get_entry("tiny_vit_p14"), pretrained=True)


def test_hub_failure_says_what_was_tried_and_how_to_use_a_local_file(monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # this machine has no internet anyway
    entry = get_entry("tiny_vit_p14").model_copy(
        update={
            "name": "hub_vit",
            "model_id": "vit_small_patch14_dinov2",
            "num_prefix_tokens": 1,
            "pretrained_tag": "lvd142m",
        }
    )
    with pytest.raises(CheckpointError) as info:
        build_backbone(entry, pretrained=True)
    message = str(info.value)
    assert "timm hub vit_small_patch14_dinov2.lvd142m" in message
    assert "checkpoint: /path/to/weights.pth" in message


def _run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="vfm-ablate")
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_cli_lists_entries_with_patch_dim_params_and_source(capsys: pytest.CaptureFixture[str]) -> None:
    out = _run_cli(["backbones", "--family", "dinov2", "--family", "efficientnet"], capsys)
    line = next(row for row in out.splitlines() if row.startswith("dinov2_vitl14_reg "))
    assert line.split()[1:6] == ["dinov2", "L", "14", "1024", "304.37M"]
    assert "timm hub vit_large_patch14_reg4_dinov2.lvd142m" in line
    assert "openclip" not in out
    cnn = next(row for row in out.splitlines() if row.startswith("efficientnet_lite0 "))
    assert cnn.split()[3:5] == ["16", "112"] and "efficientnet-lite0-57934424.pth" in cnn


def test_cli_json_counts_are_exact(capsys: pytest.CaptureFixture[str]) -> None:
    rows = json.loads(_run_cli(["backbones", "--family", "openclip", "--json"], capsys))
    by_name = {r["name"]: r for r in rows}
    assert set(by_name) == {"openclip_vitb16", "openclip_vitl14", "openclip_vith14"}
    vitl = by_name["openclip_vitl14"]
    assert (vitl["patch_size"], vitl["embed_dim"], vitl["prefix_tokens"]) == (14, 1024, 1)
    # the visual tower without the CLIP projection: conv1 + cls + positions + ln_pre + 24 blocks + ln_post
    assert vitl["parameters"] == 303_179_776


def test_cli_unknown_family_suggests(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="vfm-ablate")
    models_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["backbones", "--family", "openclp", "--no-params"])
    with pytest.raises(ConfigError, match="Did you mean 'openclip'"):
        args.func(args)


def test_bad_model_kwargs_or_feature_index_name_the_entry() -> None:
    typo = get_entry("tiny_vit_p14").model_copy(update={"name": "typo_kwargs", "model_kwargs": {"depthh": 2}})
    with pytest.raises(ConfigError, match=r"'typo_kwargs'.*model_kwargs \{'depthh': 2\}.*depthh"):
        build_backbone(typo, pretrained=False)
    deep = get_entry("efficientnet_lite0").model_copy(update={"name": "too_deep", "feature_index": 7})
    with pytest.raises(ConfigError, match="'too_deep'.*feature_index 7"):
        build_backbone(deep, pretrained=False)
