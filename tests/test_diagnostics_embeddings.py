"""Image-level embeddings of slices with a real (tiny, random-init) backbone: sizes never padded together."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vfm_ablate.config import ResizeSpec
from vfm_ablate.data.sources import Slice
from vfm_ablate.data.transforms import image_to_tensor
from vfm_ablate.diagnostics.embeddings import dataset_embeddings
from vfm_ablate.errors import ConfigError, DataError
from vfm_ablate.models.backbones import build_backbone
from vfm_ablate.models.registry import get_entry

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NATIVE = ResizeSpec(policy="native")


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    return build_backbone(get_entry("tiny_vit_p14"), pretrained=False)


def _slices(shapes: list[tuple[int, int]], seed: int = 0) -> list[Slice]:
    rng = np.random.default_rng(seed)
    return [
        Slice(image=rng.integers(0, 256, s, dtype=np.uint8), mask=None, source=f"img{i}") for i, s in enumerate(shapes)
    ]


def test_mixed_sizes_are_embedded_like_single_images_in_input_order(vit):
    shapes = [(28, 42), (42, 42), (28, 42), (42, 42), (28, 42)]  # interleaved: two network sizes
    slices = _slices(shapes)
    emb = dataset_embeddings(vit, slices, NATIVE, MEAN, STD, pooling="mean", batch_size=3)
    assert emb.shape == (5, 48) and emb.dtype == np.float32
    vit.eval()
    with torch.no_grad():
        singles = [
            vit.embed(image_to_tensor(s.image, s.image.shape, MEAN, STD)[None], "mean")[0].numpy() for s in slices
        ]
    np.testing.assert_allclose(emb, np.stack(singles), rtol=1e-5, atol=1e-6)
    # what zero padding into one batch would have given for the small images: visibly different
    tensors = [image_to_tensor(s.image, s.image.shape, MEAN, STD) for s in slices]
    padded = _zero_padded(tensors)
    with torch.no_grad():
        padded_emb = vit.embed(padded, "mean").numpy()
    assert np.abs(padded_emb[0] - emb[0]).max() > 1e-3


def test_resize_policy_is_applied_with_the_backbones_patch(vit):
    slices = _slices([(100, 75)])
    emb = dataset_embeddings(vit, slices, ResizeSpec(policy="longest_edge", target=56), MEAN, STD)
    with torch.no_grad():
        # longest edge 100 -> 56, 75 -> 42 (a multiple of the patch 14)
        expected = vit.embed(image_to_tensor(slices[0].image, (56, 42), MEAN, STD)[None], "mean").numpy()
    np.testing.assert_allclose(emb, expected, rtol=1e-5, atol=1e-6)


def test_cls_pooling_takes_the_cls_token_and_training_mode_is_restored(vit):
    slices = _slices([(42, 42)] * 2)
    vit.train()
    cls = dataset_embeddings(vit, slices, NATIVE, MEAN, STD, pooling="cls")
    assert vit.training and all(m.training for m in vit.modules())
    vit.eval()
    with torch.no_grad():
        x = torch.stack([image_to_tensor(s.image, (42, 42), MEAN, STD) for s in slices])
        prefix, _ = vit.tokens(x)
    np.testing.assert_allclose(cls, prefix[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    mean = dataset_embeddings(vit, slices, NATIVE, MEAN, STD, pooling="mean")
    assert not vit.training and np.abs(cls - mean).max() > 1e-3


def test_cnn_backbone_averages_its_feature_map_and_has_no_cls():
    torch.manual_seed(0)
    cnn = build_backbone(get_entry("efficientnet_lite0"), pretrained=False)
    slices = _slices([(64, 48), (64, 64)])
    emb = dataset_embeddings(cnn, slices, NATIVE, MEAN, STD)
    assert emb.shape == (2, 112) and np.isfinite(emb).all()
    with pytest.raises(ConfigError, match="without a CLS token"):
        dataset_embeddings(cnn, slices, NATIVE, MEAN, STD, pooling="cls")


def test_bad_inputs_are_named(vit):
    with pytest.raises(DataError, match="got no slices"):
        dataset_embeddings(vit, [], NATIVE, MEAN, STD)
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        dataset_embeddings(vit, _slices([(42, 42)]), NATIVE, MEAN, STD, batch_size=0)


def _zero_padded(images: list[torch.Tensor]) -> torch.Tensor:
    """Mixed-size images zero-padded bottom/right into one batch: what the loader must never do."""
    h = max(int(t.shape[-2]) for t in images)
    w = max(int(t.shape[-1]) for t in images)
    out = images[0].new_zeros((len(images), images[0].shape[0], h, w))
    for i, img in enumerate(images):
        out[i, :, : img.shape[-2], : img.shape[-1]] = img
    return out
