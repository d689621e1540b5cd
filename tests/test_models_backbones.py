"""Backbones turn images into the grid the head reads: final norm applied, CLS/registers dropped, any patch-multiple
size."""

from __future__ import annotations

import pytest
import torch

from vfm_ablate.errors import ConfigError
from vfm_ablate.models.backbones import build_backbone
from vfm_ablate.models.registry import get_entry


def _backbone(name: str):  # noqa: ANN202
    torch.manual_seed(0)
    return build_backbone(get_entry(name), pretrained=False).eval()


@pytest.mark.parametrize(
    ("name", "size", "grid"),
    [
        ("tiny_vit_p14", (70, 126), (5, 9)),  # patch 14, non-square, not the model's 56 px training size
        ("tiny_vit_p16", (48, 112), (3, 7)),  # patch 16 with RoPE
        ("tiny_openclip", (80, 48), (5, 3)),  # open_clip: positional embedding resized from its 4 x 4 grid
        ("efficientnet_lite0", (64, 96), (4, 6)),  # CNN: stride-16 features_only map
    ],
)
def test_grid_shapes_at_non_square_sizes(name: str, size: tuple[int, int], grid: tuple[int, int]) -> None:
    backbone = _backbone(name)
    with torch.no_grad():
        out = backbone(torch.randn(2, 3, *size))
        emb = backbone.embed(torch.randn(2, 3, *size))
    assert out.shape == (2, backbone.entry.embed_dim, *grid)
    assert emb.shape == (2, backbone.entry.embed_dim)
    assert torch.isfinite(out).all()


def test_timm_grid_is_normed_patch_tokens_without_cls_and_registers() -> None:
    backbone = _backbone("tiny_vit_p14")  # DINOv2 architecture with 4 register tokens
    x = torch.randn(1, 3, 42, 70)
    with torch.no_grad():
        tokens = backbone.net.forward_features(x)  # CLS + 4 registers + 15 patches, final norm applied
        grid = backbone(x)
    assert tokens.shape[1] == 5 + 3 * 5
    assert torch.allclose(grid.flatten(2).transpose(1, 2), tokens[:, 5:])
    assert not torch.allclose(grid.flatten(2).transpose(1, 2), tokens[:, 1:16])  # registers really are dropped
    # row-major reshape: grid[:, :, i, j] is the patch at row i, column j
    assert torch.equal(grid[0, :, 1, 3], tokens[0, 5 + 1 * 5 + 3])
    # timm's own prefix-dropping, normed NCHW output agrees
    ref = backbone.net.forward_intermediates(x, indices=1, norm=True, output_fmt="NCHW", intermediates_only=True)[-1]
    assert torch.allclose(grid, ref, atol=1e-5)


def test_final_norm_is_applied() -> None:
    # at init every LayerNorm has weight 1, bias 0: normed tokens have zero mean and unit variance over channels
    for name in ("tiny_vit_p14", "tiny_vit_p16", "tiny_openclip"):
        with torch.no_grad():
            grid = _backbone(name)(torch.randn(1, 3, 112, 112))  # a multiple of 14 and of 16
        per_token = grid.flatten(2)
        assert per_token.mean(dim=1).abs().max() < 1e-4, name
        assert (per_token.var(dim=1, unbiased=False) - 1).abs().max() < 1e-2, name


def test_openclip_matches_open_clip_at_its_own_size_and_interpolates_elsewhere() -> None:
    backbone = _backbone("tiny_openclip")
    x = torch.randn(2, 3, 64, 64)  # the tower's training size (4 x 4 grid)
    with torch.no_grad():
        ours = backbone(x)
        ref = backbone.net.forward_intermediates(x, indices=1, normalize_intermediates=True, intermediates_only=True)
        bigger = backbone(torch.nn.functional.interpolate(x, size=(96, 128), mode="bilinear"))
    assert torch.allclose(ours, ref["image_intermediates"][-1], atol=1e-5)
    assert bigger.shape == (2, 64, 6, 8)
    assert backbone.net.proj is None  # the CLIP text-space projection is not part of the grid backbone


def test_embed_pooling_mean_and_cls() -> None:
    backbone = _backbone("tiny_vit_p16")
    x = torch.randn(2, 3, 48, 64)
    with torch.no_grad():
        grid = backbone(x)
        mean = backbone.embed(x, pooling="mean")
        cls = backbone.embed(x, pooling="cls")
        tokens = backbone.net.forward_features(x)
    assert torch.allclose(mean, grid.mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(cls, tokens[:, 0])
    cnn = _backbone("efficientnet_lite0")
    with pytest.raises(ConfigError, match="without a CLS token"):
        cnn.embed(torch.randn(1, 3, 32, 32), pooling="cls")


def test_vit_rejects_sizes_that_are_not_patch_multiples() -> None:
    with pytest.raises(ConfigError, match="multiples of its patch size 14"):
        _backbone("tiny_vit_p14")(torch.randn(1, 3, 56, 57))
    with pytest.raises(ConfigError, match="B x 3 x H x W"):
        _backbone("tiny_vit_p14")(torch.randn(1, 1, 56, 56))


@pytest.mark.parametrize(
    ("name", "size"), [("tiny_vit_p14", (28, 42)), ("tiny_vit_p16", (32, 48)), ("tiny_openclip", (32, 48))]
)
def test_gradients_flow_to_the_input(name: str, size: tuple[int, int]) -> None:
    x = torch.randn(1, 3, *size, requires_grad=True)
    _backbone(name)(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
