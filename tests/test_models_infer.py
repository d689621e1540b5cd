"""A backbone in two lines: what an inline entry leaves out is read from its library's own model (built on the meta
device: no weights, no download), what it states is held to that model, and `backbones --describe` prints the
whole entry. Several architectures at random init: ViTs with registers (DINOv2), EVA, CNNs (ConvNeXt,
EfficientNet), an open_clip ViT."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest
import yaml

from vfm_ablate.cli import backbones as backbones_cli
from vfm_ablate.config import LoraSpec, TrialSpec
from vfm_ablate.errors import ConfigError
from vfm_ablate.models.backbones import backbone_parameter_count, build_backbone
from vfm_ablate.models.infer import complete_entry
from vfm_ablate.models.lora import apply_lora
from vfm_ablate.models.registry import BackboneEntry, get_entry
from vfm_ablate.models.segmenter import build_segmenter
from vfm_ablate.sweep.spec import parse_sweep

TWO_LINE_TIMM = {"library": "timm", "model_id": "vit_small_patch14_reg4_dinov2.lvd142m"}
TWO_LINE_OPEN_CLIP = {"library": "open_clip", "model_id": "ViT-B-16", "pretrained_tag": "laion2b_s34b_b88k"}


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Inference reads the libraries' code and configs only: any connection attempt fails the test."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def _entry(name: str, **facts: object) -> BackboneEntry:
    return complete_entry({"name": name, **facts}, f"test [backbones.{name}]")


@pytest.mark.parametrize(
    ("facts", "builtin"), [(TWO_LINE_TIMM, "dinov2_vits14_reg"), (TWO_LINE_OPEN_CLIP, "openclip_vitb16")]
)
def test_a_two_line_entry_has_every_fact_of_the_builtin_entry_of_its_model(facts: dict, builtin: str) -> None:
    inferred = _entry("mine", **facts)
    reference = get_entry(builtin)
    assert inferred.model_dump(exclude={"name"}) == reference.model_dump(exclude={"name"})
    assert backbone_parameter_count(inferred) == backbone_parameter_count(reference)


def test_eva_and_cnns_are_read_from_their_networks() -> None:
    eva = _entry("eva", library="timm", model_id="eva02_tiny_patch14_224.mim_in22k")
    assert (eva.kind, eva.family, eva.scale, eva.patch_size, eva.embed_dim) == ("vit", "eva02", "T", 14, 192)
    assert eva.num_prefix_tokens == 1 and eva.pretrained_tag == "mim_in22k"
    assert eva.lora_targets == ["attn.qkv", "attn.proj"] and eva.lora_mlp_targets == ["mlp.fc1", "mlp.fc2"]
    assert eva.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))  # EVA-02's CLIP statistics, not ImageNet's

    convnext = _entry("cnx", library="timm", model_id="convnext_atto")
    assert (convnext.kind, convnext.family, convnext.patch_size, convnext.embed_dim) == ("cnn", "convnext", 32, 320)
    assert convnext.num_prefix_tokens == 0 and convnext.lora_targets == ["mlp.fc1", "mlp.fc2"]

    # EfficientNet-Lite0 at its stride-16 level: the built-in entry's network facts (the built-in adds a local file)
    lite0 = _entry("lite", library="timm", model_id="tf_efficientnet_lite0", feature_index=3)
    builtin = get_entry("efficientnet_lite0")
    for key in ("kind", "family", "scale", "patch_size", "embed_dim", "lora_targets", "lora_mlp_targets", "mean"):
        assert getattr(lite0, key) == getattr(builtin, key), key
    # a squeeze-excitation branch is no LoRA target; the pointwise convolutions are
    assert _entry("b0", library="timm", model_id="efficientnet_b0").lora_targets == ["conv_pw", "conv_pwl"]


@pytest.mark.parametrize(
    "facts",
    [
        TWO_LINE_TIMM,
        {"library": "timm", "model_id": "eva02_tiny_patch14_224.mim_in22k"},
        {"library": "timm", "model_id": "convnext_atto"},
        TWO_LINE_OPEN_CLIP,
    ],
    ids=["dinov2-reg", "eva02", "convnext", "open_clip"],
)
def test_inferred_entries_build_and_take_lora_where_they_say(facts: dict) -> None:
    entry = _entry("x", **facts)
    build_backbone(entry, pretrained=False, device="meta")  # holds patch size, dim and prefix tokens to the model
    targets = "attention+mlp" if entry.lora_mlp_targets else "attention"
    adapted = apply_lora(build_backbone(entry, pretrained=False, device="meta"), entry, LoraSpec(targets=targets))
    assert len(adapted) >= 2 * len([*entry.lora_targets, *entry.lora_mlp_targets])  # in every block
    spec = TrialSpec(backbone="x", regime="lora", weights="random", data={"train": ["d"]})
    counts = build_segmenter(spec, entry, device="meta").parameter_counts()
    assert counts["lora"] > 0


@pytest.mark.parametrize(
    ("facts", "message"),
    [
        ({"embed_dim": 999}, r"embed_dim=999 but timm model 'vit_small_patch14_reg4_dinov2' has 384"),
        ({"num_prefix_tokens": 1}, r"num_prefix_tokens=1 but .* has 5"),
        ({"patch_size": 16, "family": "d", "scale": "S", "embed_dim": 384}, r"patch_size=16 but .* has 14"),
        ({"kind": "cnn"}, r"kind=cnn but .* has vit"),
        ({"lora_targets": ["attn.qkvv"]}, r"lora_targets \['attn.qkvv'\] do not fit .*match no module"),
        ({"pretrained_tag": "other"}, r"names the pretrained tag 'lvd142m' but pretrained_tag is 'other'"),
        ({"patch_sise": 14}, r"'patch_sise'.*Did you mean 'patch_size'"),
    ],
)
def test_a_stated_fact_the_model_contradicts_is_named(facts: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        _entry("mine", **TWO_LINE_TIMM, **facts)
    assert "backbones.mine" in str(info.value)


def test_an_unknown_pretrained_tag_gets_the_closest_known_one() -> None:
    with pytest.raises(
        ConfigError, match=r"unknown pretrained_tag 'laion2b_s34b_b8k'.*Did you mean 'laion2b_s34b_b88k'"
    ):
        _entry("clip", library="open_clip", model_id="ViT-B-16", pretrained_tag="laion2b_s34b_b8k")


def test_a_sweep_file_takes_a_two_line_entry(tmp_path: Path) -> None:
    sweep = parse_sweep(
        {
            "name": "two",
            "backbones": {"my_vit": TWO_LINE_TIMM},
            "base": {"backbone": "my_vit", "data": {"train": ["synthetic_a"]}},
        },
        tmp_path / "two.yaml",
    )
    entry = sweep.backbones["my_vit"]
    assert (entry.model_id, entry.pretrained_tag, entry.embed_dim) == ("vit_small_patch14_reg4_dinov2", "lvd142m", 384)


def _describe(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    parser = argparse.ArgumentParser(prog="vfm-ablate")
    backbones_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["backbones", *argv])
    assert args.func(args) == 0
    return capsys.readouterr().out


def test_describe_prints_an_entry_that_a_sweep_file_takes_as_it_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sweep_file = tmp_path / "s.yaml"
    sweep_file.write_text(yaml.safe_dump({"backbones": {"my_vit": TWO_LINE_TIMM}}))
    out = _describe(["--describe", "my_vit", "--sweep", str(sweep_file)], capsys)
    assert out.startswith("# my_vit: timm vit_small_patch14_reg4_dinov2, 22.06M parameters")
    assert "# read from the model: family, scale, kind, patch_size, embed_dim, num_prefix_tokens" in out
    frozen = yaml.safe_load(out)["my_vit"]  # frozen: every fact stated, nothing left to infer
    assert complete_entry({**frozen, "name": "my_vit"}, "frozen") == _entry("my_vit", **TWO_LINE_TIMM)

    out = _describe(["--describe", "open_clip:ViT-B-16", "--pretrained-tag", "openai"], capsys)
    described = yaml.safe_load(out)["vit_b_16"]
    assert (described["family"], described["scale"], described["patch_size"]) == ("openclip", "B", 16)
    assert described["lora_targets"] == ["attn"] and "pretrained=openai" in out.splitlines()[0]


@pytest.mark.slow
@pytest.mark.parametrize("regime", ["frozen", "lora"])
@pytest.mark.parametrize(("facts", "size"), [(TWO_LINE_TIMM, 28), (TWO_LINE_OPEN_CLIP, 32)], ids=["timm", "open_clip"])
def test_two_line_entries_train_frozen_and_with_lora(
    facts: dict, size: int, regime: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The real architectures (ViT-S/14 with registers, CLIP ViT-B/16) at random init on a few tiny images, through
    `vfm-ablate train` and a trial file whose backbone is the two-line entry."""
    import json

    from vfm_ablate.cli import main

    trial = {
        "backbones": {"two_line": facts},
        "datasets": {"d": {"layout": "synthetic", "domain": "a", "n_train": 4, "n_test": 1, "size": [size, size]}},
        "backbone": "two_line",
        "regime": regime,
        "weights": "random",
        "device": "cpu",
        "num_overlays": 0,
        "save_checkpoint": False,
        "data": {"train": ["d"], "resize": {"policy": "native"}},
        "optim": {"max_epochs": 1},
        "lora": {"rank": 2, "targets": "attention+mlp"},
    }
    (tmp_path / "trial.yaml").write_text(yaml.safe_dump(trial))
    assert main(["train", "--config", str(tmp_path / "trial.yaml"), "--out", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["iou_fg/d"] <= 1.0 and metrics["epochs_run"] == 1
    if regime == "frozen":
        assert metrics["params/lora"] == 0 and metrics["backbone_extractions"] == 5
        assert "extracting features 5/5 images" in printed  # `train` says each phase
    else:
        targets = json.loads((tmp_path / "out" / "lora_targets.json").read_text())
        assert metrics["params/lora"] > 0 and len(targets["targets"]) >= 4
