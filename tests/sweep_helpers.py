"""Building blocks of the small sweeps the Ray tests run: a tiny random-init ViT on 32 px synthetic images, on CPU."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

TINY_DATA = {"layout": "synthetic", "domain": "a", "n_train": 4, "n_test": 2, "size": [32, 32]}
TINY_FACTS = {  # the facts of the built-in tiny_vit_p14, as an inline backbone entry (without its name)
    "family": "tiny",
    "scale": "tiny",
    "library": "timm",
    "model_id": "vit_small_patch14_reg4_dinov2",
    "patch_size": 14,
    "embed_dim": 48,
    "num_prefix_tokens": 5,
    "lora_targets": ["attn.qkv", "attn.proj"],
    "model_kwargs": {"embed_dim": 48, "depth": 2, "num_heads": 3, "img_size": 56, "init_values": 1.0},
}


def tiny_base(optim: dict[str, Any], **settings: Any) -> dict[str, Any]:
    """A sweep's `base`: seconds per trial, trained on the inline dataset `sa` (declare it with TINY_DATA)."""
    return {
        "backbone": "tiny_vit_p14",
        "weights": "random",
        "device": "cpu",
        "num_overlays": 0,
        "data": {"train": ["sa"], "resize": {"policy": "native"}},
        "optim": optim,
        **settings,
    }


def stop_process_tree(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM a process started with start_new_session=True, its process group and every descendant (Ray starts
    its own in other groups), then SIGKILL what is left. Only the processes this test started are touched."""
    import os
    import signal

    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        for p in family:
            try:
                p.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs([*family, *_as_psutil(proc)], timeout=grace_s)
        if not alive:
            break
    proc.wait(timeout=grace_s)


def _as_psutil(proc: subprocess.Popen[bytes]) -> list:
    import psutil

    try:
        return [psutil.Process(proc.pid)]
    except psutil.NoSuchProcess:
        return []


def write_unreadable_dataset(root: Path) -> Path:
    """A `folder` dataset (images/ + masks/) that passes every check made before a sweep starts (listed, paired)
    but fails when a trial reads it: one image is a truncated PNG. What makes a trial fail at run time."""
    import numpy as np
    from PIL import Image

    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(5):
        Image.fromarray(np.full((32, 32), 40 * i, np.uint8)).save(root / "images" / f"{i:02d}.png")
        Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "masks" / f"{i:02d}.png")
    (root / "images" / "02.png").write_bytes((root / "images" / "02.png").read_bytes()[:40])
    return root


def write_em_layouts(root: Path, slices: int = 5, size: int = 16) -> Path:
    """Tiny stand-ins for the study's datasets in their on-disk layouts under `root` (what $VFM_ABLATE_DATA_ROOT
    points at): lucchi_pp (maskNNNN.png <-> N.png), vnc stack1 (raw .tif + mitochondria .png) and stack2."""
    import numpy as np
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)

    def image() -> np.ndarray:
        return rng.integers(0, 256, (size, size), dtype=np.uint8)

    def mask() -> np.ndarray:
        m = np.zeros((size, size), np.uint8)
        m[2:8, 2:8] = 255
        return m

    for split in ("Train", "Test"):
        (root / "lucchi_pp" / f"{split}_In").mkdir(parents=True)
        (root / "lucchi_pp" / f"{split}_Out").mkdir(parents=True)
        for i in range(slices):
            Image.fromarray(image()).save(root / "lucchi_pp" / f"{split}_In" / f"mask{i:04d}.png")
            Image.fromarray(mask()).save(root / "lucchi_pp" / f"{split}_Out" / f"{i}.png")
    for sub in ("stack1/raw", "stack1/mitochondria", "stack2/raw"):
        (root / "vnc" / sub).mkdir(parents=True)
    for i in range(slices):
        tifffile.imwrite(root / "vnc" / "stack1" / "raw" / f"{i:02d}.tif", image())
        Image.fromarray(mask()).save(root / "vnc" / "stack1" / "mitochondria" / f"{i:02d}.png")
        tifffile.imwrite(root / "vnc" / "stack2" / "raw" / f"{i:02d}.tif", image())
    return root


_HEADER_TRIALS = re.compile(r"^#\s*Trials:\s*(\d+)", re.MULTILINE)


def documented_trial_count(path: str | Path) -> int | None:
    """The `# Trials: N` count a sweep file's header comment promises (checked against the expansion)."""
    match = _HEADER_TRIALS.search(Path(path).read_text())
    return int(match.group(1)) if match else None
