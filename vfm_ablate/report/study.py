"""The study's views of a summary table: one table per block of training data, paired training against
single-dataset training, and the transfer matrix (train data -> test data).

All three read `SummaryTable.stats` (one row per cell: mean, std, n over the FINISHED repeats), so every number
is the mean over seeds of one setting; no run is counted twice.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .tables import MISSING, SummaryTable, scale_rank

AGGREGATES = ("macro", "pooled")


def train_datasets(train_label: str) -> list[str]:
    """The datasets a block trained on: `a+b (balanced)` -> [a, b]; `a` -> [a]; `a+b[0]` -> [a] (b zero-shot:
    data.labelled 0, only tested)."""
    return [d for d in train_label.split(" (", 1)[0].split("+") if not d.endswith("[0]")]


def backbone_labels(stats: pd.DataFrame) -> dict[str, str]:
    """Row names: `family scale` (`dinov2 L`); where two entries share them, the entry name with its family and
    scale (`tiny_vit_p14 (tiny)`)."""
    rows = stats.drop_duplicates("backbone")[["family", "scale", "backbone"]]
    short = {r.backbone: " ".join(dict.fromkeys(p for p in (r.family, r.scale) if p)) for r in rows.itertuples()}
    counts = pd.Series(list(short.values())).value_counts()
    return {b: s if s and counts[s] == 1 else (f"{b} ({s})" if s and s != b else b) for b, s in short.items()}


def _ordered_backbones(stats: pd.DataFrame) -> list[str]:
    rows = stats.drop_duplicates("backbone")
    rows = rows.assign(_rank=rows["scale"].map(scale_rank)).sort_values(["family", "_rank", "backbone"], kind="stable")
    return list(rows["backbone"])


def regime_label(regime: str, variant: str) -> str:
    return f"{regime} ({variant})" if variant else regime


@dataclass
class Block:
    """One block of the study's tables: the trials trained on `train`."""

    train: str
    table: pd.DataFrame  # index: backbone label; columns: "<test> · <regime>"; cells: mean ± std (n)


def block_tables(table: SummaryTable) -> list[Block]:
    """One table per training data, as the study lays them out: rows backbone, columns test dataset × regime.
    Settings that vary besides these (a LoRA rank, an alignment method) add rows, `backbone (setting)`, so a table
    stays as narrow as the study's however many values an ablation axis has."""
    stats = table.stats
    labels = backbone_labels(stats)
    order = _ordered_backbones(stats)
    blocks = []
    for train in dict.fromkeys(stats["train"]):
        part = stats[stats["train"] == train]
        columns = list(dict.fromkeys(f"{t} · {r}" for t, r in zip(part["test"], part["regime"])))
        variants = sorted(set(part["variant"]))
        rows = [
            _row_label(labels[b], v)
            for b in order
            if b in set(part["backbone"])
            for v in variants
            if ((part["backbone"] == b) & (part["variant"] == v)).any()
        ]
        frame = pd.DataFrame(MISSING, index=rows, columns=columns)
        for rec in part.itertuples(index=False):
            frame.loc[_row_label(labels[rec.backbone], rec.variant), f"{rec.test} · {rec.regime}"] = rec.cell
        frame.index.name = "backbone" if variants == [""] else "backbone (setting)"
        blocks.append(Block(train, frame))
    return blocks


def _row_label(backbone: str, variant: str) -> str:
    return f"{backbone} ({variant})" if variant else backbone


def paired_vs_single(table: SummaryTable) -> pd.DataFrame:
    """Paired training minus single-dataset training, per backbone, regime, paired training data and test dataset.

    One row per (backbone, regime, paired train data). For each test dataset d of the pair:
    `Δ d` = mean IoU on d after paired training − mean IoU on d after training on d alone (blank when either was
    not run). `Δ macro` = the paired model's macro IoU − the mean of the single-dataset models' IoUs (each on its
    own dataset); `paired macro` / `paired pooled` are the paired model's own macro and pooled IoU.
    """
    stats = table.stats[table.stats["n"] > 0]
    labels = backbone_labels(table.stats)
    mean = {(r.backbone, r.regime, r.variant, r.train, r.test): (r.mean, r.n) for r in stats.itertuples(index=False)}
    rows = []
    for backbone in _ordered_backbones(table.stats):
        for (regime, variant, train), _ in stats[stats["backbone"] == backbone].groupby(
            ["regime", "variant", "train"], sort=False
        ):
            datasets = train_datasets(train)
            if len(datasets) < 2:
                continue
            row: dict[str, object] = {
                "backbone": labels[backbone],
                "regime": regime_label(regime, variant),
                "paired": train,
            }
            singles = []
            for d in datasets:
                paired = mean.get((backbone, regime, variant, train, d))
                single = mean.get((backbone, regime, variant, d, d))
                if single is not None:
                    singles.append(single[0])
                row[f"Δ {d}"] = paired[0] - single[0] if paired and single else np.nan
                row[f"n {d}"] = f"{paired[1] if paired else 0}/{single[1] if single else 0}"
            macro = mean.get((backbone, regime, variant, train, "macro"))
            pooled = mean.get((backbone, regime, variant, train, "pooled"))
            complete = len(singles) == len(datasets)
            row["Δ macro"] = macro[0] - float(np.mean(singles)) if macro and complete else np.nan
            row["paired macro"] = macro[0] if macro else np.nan
            row["paired pooled"] = pooled[0] if pooled else np.nan
            rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    regimes = {r: i for i, r in enumerate(("frozen", "lora", "full"))}
    order = {b: i for i, b in enumerate(labels[x] for x in _ordered_backbones(table.stats))}
    keys = frame.assign(
        _b=frame["backbone"].map(order), _r=frame["regime"].map(lambda r: regimes.get(r.split(" ")[0], 9))
    )
    return frame.loc[keys.sort_values(["_b", "paired", "_r", "regime"], kind="stable").index].reset_index(drop=True)


def transfer_matrices(table: SummaryTable) -> dict[str, pd.DataFrame]:
    """Train data -> test data, per backbone and regime: mean IoU on each test dataset. Only where some trial
    was tested on a dataset it did not train on (otherwise the matrix is the block tables' diagonal)."""
    stats = table.stats[~table.stats["test"].isin(AGGREGATES)]
    crossed = [t not in train_datasets(tr) for t, tr in zip(stats["test"], stats["train"])]
    if not any(crossed):
        return {}
    labels = backbone_labels(table.stats)
    out: dict[str, pd.DataFrame] = {}
    for backbone in _ordered_backbones(stats):
        for (regime, variant), part in stats[stats["backbone"] == backbone].groupby(["regime", "variant"], sort=False):
            frame = part.pivot_table(index="train", columns="test", values="cell", aggfunc="first", sort=False)
            frame = frame.reindex(columns=sorted(frame.columns)).fillna(MISSING)
            frame.index.name = "train → test"
            out[f"{labels[backbone]} · {regime_label(regime, variant)}"] = frame
    return out


def format_delta(value: float) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:+.3f}"


def delta_display(frame: pd.DataFrame) -> pd.DataFrame:
    """The paired-vs-single table as text: signed differences with their repeat counts, IoUs to three decimals."""
    shown = frame.copy()
    for col in list(shown.columns):
        if col.startswith("n "):
            continue
        if col.startswith("Δ "):
            counts = shown.get(f"n {col[2:]}")
            text = shown[col].map(format_delta)
            shown[col] = text if counts is None else [f"{t} ({n})" for t, n in zip(text, counts)]
        elif col.startswith("paired ") and col != "paired":
            shown[col] = shown[col].map(lambda v: "—" if not np.isfinite(v) else f"{v:.3f}")
    return shown.drop(columns=[c for c in shown.columns if c.startswith("n ")])
