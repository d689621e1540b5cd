"""Domain-mismatch diagnostics on the real data with the real pretrained EfficientNet-Lite0 (frozen, ImageNet).

Embeds the Lucchi++ subset test set (17 slices), VNC stack 1 (all 20 labelled slices, as the study's
diagnostics) and VNC stack 2 (20 unlabelled slices) at the study's resize (longest edge 1008 for stride 16)
and prints, for Lucchi++ vs each VNC stack and for VNC stack 1 vs stack 2 (same tissue, other stack):
Fréchet distance (full D and on a joint 16-component PCA), its effective rank, the linear probe's accuracy and
ROC-AUC (30 % held out, and 5-fold cross-validated), and the unbiased linear MMD^2 with its permutation p-value.
Writes a joint PCA plot of the three sets plus one per pair, and the embeddings.

    python benchmarks/bench_diagnostics.py [--target 1008] [--out vfm_runs/bench_diagnostics] \
        [--device cpu] [--threads 1]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from _shared import require_shared_data

from vfm_ablate.config import ResizeSpec
from vfm_ablate.data.entries import resolve_dataset
from vfm_ablate.data.sources import load_dataset
from vfm_ablate.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from vfm_ablate.diagnostics.embeddings import dataset_embeddings
from vfm_ablate.diagnostics.measures import RankDeficiencyWarning, frechet_distance, linear_mmd, linear_probe
from vfm_ablate.diagnostics.plots import pca_plot
from vfm_ablate.models.backbones import build_backbone
from vfm_ablate.models.registry import get_entry

PAIRS = [("lucchi_pp", "vnc"), ("lucchi_pp", "vnc_stack2"), ("vnc", "vnc_stack2")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, default=1008, help="longest edge (the study's for stride 16)")
    parser.add_argument("--pca-dim", type=int, default=16, help="components for the PCA-reduced FD (< 17 slices)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (1 is fastest on a shared small CPU)")
    parser.add_argument("--out", type=Path, default=Path("vfm_runs/bench_diagnostics"))
    args = parser.parse_args()
    require_shared_data()
    if args.threads:
        torch.set_num_threads(args.threads)

    started = time.perf_counter()
    lucchi = load_dataset(resolve_dataset("lucchi_pp_subset"), split_seed=0)
    vnc = load_dataset(resolve_dataset("vnc"), split_seed=0)
    stack2 = load_dataset(resolve_dataset("vnc_stack2"), split_seed=0)
    sets = {"lucchi_pp": lucchi.test, "vnc": [*vnc.train, *vnc.test], "vnc_stack2": stack2.unlabelled}
    print(
        f"data: {', '.join(f'{k} n={len(v)} {v[0].image.shape}' for k, v in sets.items())} "
        f"({time.perf_counter() - started:.1f} s)"
    )

    entry = get_entry("efficientnet_lite0")
    backbone = build_backbone(entry, pretrained=True).to(args.device)
    report = backbone.load_report
    print(
        f"backbone {entry.name}: {report['source']}, loaded {report['loaded']} tensors, "
        f"missing {report['missing']}, unexpected {report['unexpected']}; D={entry.embed_dim}"
    )

    resize = ResizeSpec(policy="longest_edge", target=args.target)
    embeddings: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for name, slices in sets.items():
        embeddings[name] = dataset_embeddings(backbone, slices, resize, IMAGENET_MEAN, IMAGENET_STD, batch_size=2)
    n_images = sum(len(s) for s in sets.values())
    embed_s = time.perf_counter() - t0
    print(
        f"embedded {n_images} images at longest edge {args.target} on {args.device} in {embed_s:.1f} s "
        f"({1000 * embed_s / n_images:.0f} ms/image)"
    )

    args.out.mkdir(parents=True, exist_ok=True)
    np.savez(args.out / "embeddings.npz", **embeddings)
    header = (
        f"{'pair':<24} {'FD':>9} {'rank':>5} {f'FD@pca{args.pca_dim}':>10} {'probe acc':>9} {'AUROC':>6} "
        f"{'cv5 acc':>7} {'cv5 AUC':>7} {'MMD^2':>9} {'p':>7} {'ms':>6}"
    )
    print(header)
    for a, b in PAIRS:
        t = time.perf_counter()
        x, y = embeddings[a], embeddings[b]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RankDeficiencyWarning)  # n < D is expected: the rank is printed
            fd = frechet_distance(x, y)
        fd_pca = frechet_distance(x, y, pca_dim=args.pca_dim)
        probe = linear_probe({a: x, b: y}, seed=args.seed)
        probe_cv = linear_probe({a: x, b: y}, seed=args.seed, cv=5)
        mmd = linear_mmd(x, y, permutations=1000, seed=args.seed)
        ms = 1000 * (time.perf_counter() - t)
        print(
            f"{a + ' vs ' + b:<24} {fd.value:>9.3f} {fd.effective_rank:>5d} {fd_pca.value:>10.3f} "
            f"{probe.accuracy:>9.3f} {probe.roc_auc:>6.3f} {probe_cv.accuracy:>7.3f} {probe_cv.roc_auc:>7.3f} "
            f"{mmd.mmd2:>9.3f} {mmd.p_value:>7.4f} {ms:>6.0f}"
        )
        ratio = pca_plot({a: x, b: y}, args.out / f"pca_{a}_vs_{b}.png", f"{entry.name} frozen: {a} vs {b}")
        print(f"{'':<24} PCA explained variance PC1 {100 * ratio[0]:.1f} %, PC2 {100 * ratio[1]:.1f} %")
    ratio = pca_plot(
        embeddings, args.out / "pca_all.png", f"{entry.name} frozen (ImageNet), longest edge {args.target}"
    )
    print(
        f"joint PCA of all three sets: PC1 {100 * ratio[0]:.1f} %, PC2 {100 * ratio[1]:.1f} % "
        f"-> {args.out / 'pca_all.png'}"
    )
    print(f"total {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
