"""Images/s for loading + resizing the shared VNC stack: cold (read from disk) vs cached (in-process).

Usage: python benchmarks/bench_data_loading.py [--data-root ../shared/data] [--repeats 5] [--patch 14] [--threads 1]

Cold = clear the loader's cache, read and decode all 20 labelled slices (TIFF images, PNG masks in
mixed encodings), then resize each to the study's input size (1022x1022 for patch 14) as float
tensors; cached = the same with the loader's in-process cache warm (what every trial after the first
in a process pays). Reports the median over repeats with the min - max.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path


def _one_pass(entry, patch: int) -> int:
    from vfm_ablate.config import ResizeSpec
    from vfm_ablate.data.sources import load_dataset
    from vfm_ablate.data.transforms import image_to_tensor, mask_to_tensor, target_size

    ds = load_dataset(entry, split_seed=0)
    resize = ResizeSpec()
    n = 0
    for s in ds.train + ds.test:
        size = target_size(*s.image.shape, resize, patch)
        image_to_tensor(s.image, size)
        mask_to_tensor(s.mask, size)
        n += 1
    return n


def _spread(rates: list[float]) -> str:
    return f"{statistics.median(rates):8.1f} ({min(rates):.1f} - {max(rates):.1f})"


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=str(repo.parent / "shared" / "data"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--patch", type=int, default=14)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on a shared 2-core machine)")
    args = parser.parse_args(argv)
    if not (Path(args.data_root) / "vnc" / "stack1").is_dir():
        print(f"VNC data not found under {args.data_root}; pass --data-root", file=sys.stderr)
        return 1
    os.environ["VFM_ABLATE_DATA_ROOT"] = args.data_root
    import torch

    torch.set_num_threads(args.threads)
    from vfm_ablate.data.entries import resolve_dataset
    from vfm_ablate.data.sources import clear_cache

    entry = resolve_dataset("vnc")
    from vfm_ablate.data.sources import load_dataset

    cold, warm, read_only = [], [], []
    for _ in range(args.repeats):
        clear_cache()
        t0 = time.perf_counter()
        ds = load_dataset(entry, split_seed=0)
        read_only.append(len(ds.train + ds.test) / (time.perf_counter() - t0))
        clear_cache()
        t0 = time.perf_counter()
        n = _one_pass(entry, args.patch)
        cold.append(n / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        n = _one_pass(entry, args.patch)
        warm.append(n / (time.perf_counter() - t0))
    c, w = statistics.median(cold), statistics.median(warm)
    print(
        f"VNC stack1: {n} slices 1024x1024 -> resized for patch {args.patch}; "
        f"torch threads {torch.get_num_threads()}, cpu {os.cpu_count()}, repeats {args.repeats}; median (min - max)"
    )
    print(f"cold   (read + decode + resize): {_spread(cold)} images/s")
    print(f"cached (resize only)           : {_spread(warm)} images/s")
    print(f"cached / cold                  : {w / c:8.2f}x (of the medians)")
    print(f"(cold read + decode alone      : {_spread(read_only)} images/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
