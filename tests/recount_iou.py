"""Recount a finished trial's test IoU from its saved checkpoint, in a fresh process, without the trial engine.

    python -m tests.recount_iou TRIAL_DIR   ->  one JSON line {dataset: {"intersection": n, "union": n}}

Reads the trial's config.yaml and trainable_checkpoint.pt, rebuilds the segmenter (its random-init backbone from
the trial's seed, as the trial built it; everything trained comes from the checkpoint, loaded with plain
`load_state_dict`), reads the test PNGs with PIL, predicts with plain torch (batch of one, logits resized
bilinearly to the native size when the trial evaluated there) and counts pixels with numpy. Nothing of
`vfm_ablate.trial` (evaluate, metrics, items, forward) is used. Supports what the correctness tests use: folder
datasets with a predefined test split, resize policy `native`, ImageNet normalisation, fp32.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from PIL import Image

from tests.learnable_data import nearest_resize
from vfm_ablate.config import TrialSpec
from vfm_ablate.models.registry import BackboneEntry
from vfm_ablate.models.segmenter import build_segmenter

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


def network_input(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 H x W -> normalised 3 x h x w. The same float operations as the trial's preprocessing (bilinear,
    antialiased when shrinking; scale and shift folded into one multiply-add), so that the input is bit-identical
    and the recount can be compared for equality, not within a tolerance."""
    x = torch.from_numpy(image.astype(np.float32))[None, None]
    if size != image.shape:
        shrinking = size[0] < image.shape[0] or size[1] < image.shape[1]
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=shrinking)
    return torch.addcmul(-MEAN / STD, x[0], 1.0 / (255.0 * STD))


def recount(trial_dir: Path) -> dict[str, dict[str, int]]:
    config = yaml.safe_load((trial_dir / "config.yaml").read_text())
    spec = TrialSpec.model_validate(config["trial"])
    entry = BackboneEntry.model_validate(config["backbone_entry"])
    assert spec.data.resize.policy == "native" and spec.data.normalisation == "imagenet" and spec.precision == "fp32"
    torch.manual_seed(spec.seed)  # the trial seeds torch, then builds its segmenter: the same random backbone
    model = build_segmenter(spec, entry)
    checkpoint = torch.load(trial_dir / "trainable_checkpoint.pt", map_location="cpu", weights_only=True)
    missing, unexpected = model.load_state_dict(checkpoint, strict=False)
    assert not unexpected, unexpected
    assert all(k.startswith("backbone.") for k in missing), missing  # the untrained backbone is not in it
    assert spec.regime != "full" or not missing
    model.eval()
    patch = entry.patch_size
    counts: dict[str, dict[str, int]] = {}
    for name in spec.data.test_datasets:
        facts = config["dataset_entries"][name]
        root = Path(facts["path"])
        inter = union = 0
        for image_file in sorted((root / facts["test_image_dir"]).glob("*.png")):
            image = np.asarray(Image.open(image_file))
            mask = np.asarray(Image.open(root / facts["test_mask_dir"] / image_file.name)) > 127
            size = (image.shape[0] // patch * patch, image.shape[1] // patch * patch)
            with torch.no_grad():
                logits = model(network_input(image, size)[None], size)
                if spec.eval_native_resolution:
                    logits = F.interpolate(logits, size=mask.shape, mode="bilinear", align_corners=False)
                    target = mask
                else:
                    target = nearest_resize(mask, size)
            scores = logits[0].numpy()
            pred = scores[1] > scores[0]  # class 1 = foreground wins (a tie goes to background, as argmax does)
            inter += int(np.logical_and(pred, target).sum())
            union += int(np.logical_or(pred, target).sum())
        counts[name] = {"intersection": inter, "union": union}
    return counts


if __name__ == "__main__":
    torch.set_num_threads(1)  # as the trial ran (tests/conftest.py): the same reduction order, the same logits
    print(json.dumps(recount(Path(sys.argv[1]))))
