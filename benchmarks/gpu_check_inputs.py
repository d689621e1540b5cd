"""What gpu_check feeds the CLI: stand-in datasets in the study's on-disk layouts (only their counts and sizes enter
the cost), and copies of the study's sweep files with a few settings changed (bf16, tiny backbones)."""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import yaml


def _slice(args: tuple[str, str, int, int, int, int]) -> None:
    """One EM-like stand-in slice (noise, brighter discs) and its mask (0 / 255), written where the layout says."""
    import numpy as np
    import tifffile
    from PIL import Image

    image_path, mask_path, seed, height, width, discs = args
    rng = np.random.default_rng(seed)
    mask = np.zeros((height, width), dtype=bool)
    for _ in range(discs):  # each disc drawn in its own bounding box
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        r = rng.uniform(0.03, 0.08) * min(height, width)
        y0, y1 = max(0, int(cy - r)), min(height, int(cy + r) + 1)
        x0, x1 = max(0, int(cx - r)), min(width, int(cx + r) + 1)
        yy, xx = np.mgrid[y0:y1, x0:x1]
        mask[y0:y1, x0:x1] |= (yy - cy) ** 2 + (xx - cx) ** 2 < r * r
    image = np.clip(rng.normal(110, 30, (height, width)) + 60 * mask, 0, 255).astype(np.uint8)
    Path(image_path).parent.mkdir(parents=True, exist_ok=True)
    Path(mask_path).parent.mkdir(parents=True, exist_ok=True)
    if image_path.endswith(".tif"):
        tifffile.imwrite(image_path, image)
    else:
        Image.fromarray(image).save(image_path, compress_level=1)
    Image.fromarray((mask * 255).astype(np.uint8)).save(mask_path, compress_level=1)


def write_standins(root: Path, lucchi: tuple[int, int, int, int], vnc: tuple[int, int, int]) -> dict[str, str]:
    """lucchi_pp/ and vnc/ under `root` in the built-in entries' layouts (docs/data.md): Lucchi++'s (train slices,
    test slices, height, width), VNC's (labelled slices, height, width)."""
    n_train, n_test, lh, lw = lucchi
    n_vnc, vh, vw = vnc
    jobs = []
    for split, count, offset in (("Train", n_train, 0), ("Test", n_test, 10_000)):
        for i in range(count):
            base = root / "lucchi_pp"
            jobs.append((str(base / f"{split}_In/mask{i:04d}.png"), str(base / f"{split}_Out/{i}.png"), offset + i))
    for i in range(n_vnc):
        base = root / "vnc" / "stack1"
        jobs.append((str(base / f"raw/{i:02d}.tif"), str(base / f"mitochondria/{i:02d}.png"), 20_000 + i))
    sizes = [(lh, lw)] * (n_train + n_test) + [(vh, vw)] * n_vnc
    work = [(img, msk, seed, h, w, 12) for (img, msk, seed), (h, w) in zip(jobs, sizes)]
    written = root / f"standins-{n_train}-{n_test}-{lh}x{lw}-{n_vnc}-{vh}x{vw}.done"
    if not written.exists():  # a kept --work folder with these stand-ins is not written again; other ones go
        for old in [root / "lucchi_pp", root / "vnc", *root.glob("standins-*.done")]:
            shutil.rmtree(old) if old.is_dir() else old.unlink(missing_ok=True)
        with ProcessPoolExecutor(max_workers=max(1, min(8, (os.cpu_count() or 2) - 1))) as pool:
            list(pool.map(_slice, work, chunksize=8))
        written.touch()
    return {
        "lucchi_pp": f"{n_train} train + {n_test} test slices of {lh} x {lw}",
        "vnc": f"{n_vnc} labelled slices of {vh} x {vw} (3 test)",
    }


def set_dotted(data: dict, dotted: str, value: Any) -> None:
    """Set `a.b.c` in nested mappings; on `axes` given as a list of grids, in every grid that has the key."""
    head, _, rest = dotted.partition(".")
    if head == "axes" and isinstance(data.get("axes"), list):
        for grid in data["axes"]:
            if rest in grid:
                grid[rest] = value
        return
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def sweep_copy(source: Path, folder: Path, overrides: dict[str, Any], note: str) -> Path:
    """A sweep file with dotted overrides, written into `folder` (the original when there are none)."""
    if not overrides:
        return source
    data = yaml.safe_load(source.read_text())
    for key, value in overrides.items():
        set_dotted(data, key, value)
    out = folder / f"{data['name']}.yaml"
    out.write_text(f"# {note}\n# from {source}, with {json.dumps(overrides)}\n" + yaml.safe_dump(data, sort_keys=False))
    return out


def axis_values(sweep_file: Path, key: str) -> list[Any]:
    data = yaml.safe_load(sweep_file.read_text())
    grids = data["axes"] if isinstance(data["axes"], list) else [data["axes"]]
    values: list[Any] = []
    for grid in grids:
        for v in grid.get(key, []):
            if v not in values:
                values.append(v)
    return values
