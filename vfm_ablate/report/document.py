"""The report as one document: Markdown (figures beside it) and self-contained HTML (figures embedded), plus the
plain-text version the terminal prints. Same sections in each: the study's block tables, paired vs single, the
transfer matrix, the alignment methods against none (when a sweep has them), the figures. And the display of a
comparison (`compare_markdown`, `transfer_rows`, `transfer_markdown`: `vfm-ablate report --compare / --transfer`)."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..metric_names import IOU
from ..text_tables import format_table, markdown_table
from .study import Block, delta_display
from .tables import MISSING, SummaryTable

CELL_NOTE = (
    "Cells: mean ± sample std (ddof = 1) over the FINISHED repeats (n); failed / killed / stopped early (by the "
    "search's scheduler, ASHA) / running repeats are "
    f"counted beside the numbers, never averaged; {MISSING} = not run. `macro` = mean over the test datasets, "
    "`pooled` = over all their pixels."
)
ALIGNMENT_NOTE = (
    "Each alignment method against none over matched repeats (same seed and split seed): mean ± std of both, "
    "Δ = method − none with its 95 % bootstrap confidence interval; 'within seed noise' when the interval includes "
    "0. Source → target IoU first, then the feature-gap diagnostics (diag/<stage>/fd, mmd, probe_acc)."
)
CURVE_NOTE = (
    "Label efficiency (data.labelled): per setting and number of labelled images, the mean over repeats with its "
    "95 % bootstrap interval; against the same setting with every image labelled, over matched repeats (same seed "
    "and split seed, so the same nested draws): Δ and the share of its IoU, each with a 95 % bootstrap interval."
)
PAIRED_NOTE = (
    "Δ d = mean IoU on d after paired training − mean IoU on d after training on d alone (n paired / n single). "
    "Δ macro = the paired model's macro IoU − the mean of the single-dataset models' IoUs. Negative = paired "
    "training lost IoU."
)


@dataclass
class ReportParts:
    table: SummaryTable
    blocks: list[Block]
    paired: pd.DataFrame
    transfer: dict[str, pd.DataFrame]
    figures: dict[str, Path] = field(default_factory=dict)  # caption -> PNG
    alignment: pd.DataFrame | None = None  # alignment methods against none (`transfer_rows`), when a sweep has them
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)  # title -> label-efficiency table (`curve_rows`)


def _rows(frame: pd.DataFrame) -> tuple[list[dict[str, object]], list[str]]:
    flat = frame.reset_index() if frame.index.name else frame
    columns = [str(c) for c in flat.columns]
    return [dict(zip(columns, row)) for row in flat.itertuples(index=False)], columns


def _paired_shown(paired: pd.DataFrame) -> pd.DataFrame:
    return delta_display(paired) if not paired.empty else paired


def as_text(parts: ReportParts) -> str:
    """What `vfm-ablate report` prints: one narrow table per block rather than one very wide table."""
    out = [f"{parts.table.metric}: {CELL_NOTE}", ""]
    for block in parts.blocks:
        out += [f"trained on {block.train}", format_table(*_rows(block.table)), ""]
    if not parts.paired.empty:
        out += ["paired vs single-dataset training", format_table(*_rows(_paired_shown(parts.paired))), PAIRED_NOTE, ""]
    for name, frame in parts.transfer.items():
        out += [f"transfer ({name})", format_table(*_rows(frame)), ""]
    if parts.alignment is not None:
        out += ["alignment methods against none", format_table(*_rows(parts.alignment)), ALIGNMENT_NOTE, ""]
    for title, frame in parts.curves.items():
        out += [title, format_table(*_rows(frame)), CURVE_NOTE, ""]
    return "\n".join(out).rstrip() + "\n"


def as_markdown(parts: ReportParts, title: str) -> str:
    out = [f"# {title}", "", f"Metric: `{parts.table.metric}`. {CELL_NOTE}", ""]
    for block in parts.blocks:
        out += [f"## Trained on {block.train}", "", markdown_table(*_rows(block.table)), ""]
    if not parts.paired.empty:
        out += ["## Paired vs single-dataset training", "", markdown_table(*_rows(_paired_shown(parts.paired)))]
        out += ["", PAIRED_NOTE, ""]
    if parts.transfer:
        out += ["## Transfer (train data → test data)", ""]
        for name, frame in parts.transfer.items():
            out += [f"### {name}", "", markdown_table(*_rows(frame)), ""]
    if parts.alignment is not None:
        out += ["## Alignment methods against none", "", markdown_table(*_rows(parts.alignment)), ""]
        out += [ALIGNMENT_NOTE, ""]
    for title, frame in parts.curves.items():
        out += [f"## {title}", "", markdown_table(*_rows(frame)), "", CURVE_NOTE, ""]
    for caption, png in parts.figures.items():
        out += [f"## {caption}", "", f"![{caption}]({png.name})", ""]
    return "\n".join(out)


def _html_table(frame: pd.DataFrame) -> str:
    rows, columns = _rows(frame)
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r[c]))}</td>" for c in columns) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = (
    "body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:0.5em 0 1.5em}"
    "th,td{border:1px solid #ccc;padding:3px 8px;text-align:left;font-size:13px;white-space:nowrap}"
    "th{background:#f3f3f3}img{max-width:100%}p.note{color:#555;font-size:13px}"
)


def as_html(parts: ReportParts, title: str) -> str:
    """One file, nothing beside it: the figures are embedded as data URIs."""
    out = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"]
    out += [f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"]
    out.append(f"<p class='note'>Metric: {html.escape(parts.table.metric)}. {html.escape(CELL_NOTE)}</p>")
    for block in parts.blocks:
        out += [f"<h2>Trained on {html.escape(block.train)}</h2>", _html_table(block.table)]
    if not parts.paired.empty:
        out += ["<h2>Paired vs single-dataset training</h2>", _html_table(_paired_shown(parts.paired))]
        out.append(f"<p class='note'>{html.escape(PAIRED_NOTE)}</p>")
    if parts.transfer:
        out.append("<h2>Transfer (train data → test data)</h2>")
        for name, frame in parts.transfer.items():
            out += [f"<h3>{html.escape(name)}</h3>", _html_table(frame)]
    if parts.alignment is not None:
        out += ["<h2>Alignment methods against none</h2>", _html_table(parts.alignment)]
        out.append(f"<p class='note'>{html.escape(ALIGNMENT_NOTE)}</p>")
    for title, frame in parts.curves.items():
        out += [f"<h2>{html.escape(title)}</h2>", _html_table(frame), f"<p class='note'>{html.escape(CURVE_NOTE)}</p>"]
    for caption, png in parts.figures.items():
        data = base64.b64encode(png.read_bytes()).decode()
        out += [
            f"<h2>{html.escape(caption)}</h2>",
            f"<img alt='{html.escape(caption)}' src='data:image/png;base64,{data}'>",
        ]
    out.append("</body></html>")
    return "\n".join(out)


# ------------------------------------------------------------------------------------------ comparisons


def compare_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """The comparison as a Markdown table: group, metric, both sides (mean ± std over the pairs), Δ [95 % CI]."""
    if frame.empty:
        return "(no comparisons)"
    a, b = str(frame["a"].iloc[0]), str(frame["b"].iloc[0])
    rows = []
    for _, r in frame.iterrows():
        rows.append(
            {
                "group": r["group"],
                "metric": r["metric"],
                "n": int(r["n"]),
                str(a): _pm(r["mean_a"], r["std_a"], digits),
                str(b): _pm(r["mean_b"], r["std_b"], digits),
                f"Δ ({b} − {a}) [95 % CI]": _delta(r, digits),
                "verdict": r["verdict"],
            }
        )
    return f"{frame['axis'].iloc[0]}: {b} vs {a}\n\n" + markdown_table(rows)


def transfer_rows(frame: pd.DataFrame, digits: int = 3) -> pd.DataFrame:
    """The transfer table for display: per method and setting, each test dataset's IoU as `train → test`, then the
    diagnostics, baseline and method side by side with Δ [95 % CI]."""
    rows = []
    for _, r in frame.iterrows():
        group = {k[len("params.") :]: v for k, v in r.items() if k.startswith("params.") and isinstance(v, str)}
        train = group.pop("data.train", "")
        target = group.pop("data.target", "")
        group.pop("data.test", None)  # "measured" names the test dataset
        source = "+".join(d for d in train.split(",") if d)
        if target:
            source += " (target " + "+".join(d for d in target.split(",") if d) + ")"
        metric = str(r["metric"])
        measured = f"{source} → {metric.split('/', 1)[1]}" if metric.startswith(f"{IOU}/") else f"{source}: {metric}"
        rows.append(
            {
                "method": r["b"],
                **{k: group.pop(k, "") for k in ("backbone", "regime")},
                "measured": measured,
                "other settings": ", ".join(f"{k}={v}" for k, v in group.items()),
                "n": int(r["n"]),
                str(r["a"]): _pm(r["mean_a"], r["std_a"], digits),
                "method value": _pm(r["mean_b"], r["std_b"], digits),
                "Δ [95 % CI]": _delta(r, digits),
                "verdict": r["verdict"],
            }
        )
    return pd.DataFrame(rows)


def transfer_markdown(frame: pd.DataFrame, digits: int = 3) -> str:
    """`transfer_rows` as a Markdown table."""
    if frame.empty:
        return "(no comparisons)"
    shown = transfer_rows(frame, digits)
    return markdown_table(shown.to_dict("records"), [str(c) for c in shown.columns])


def _pm(mean: float, std: float, digits: int) -> str:
    return f"{mean:.{digits}f}" + (f" ± {std:.{digits}f}" if math.isfinite(std) else "")


def _delta(r: pd.Series, digits: int) -> str:
    text = f"{r['delta']:+.{digits}f}"
    if math.isfinite(r["ci_low"]):
        text += f" [{r['ci_low']:+.{digits}f}, {r['ci_high']:+.{digits}f}]"
    return text
