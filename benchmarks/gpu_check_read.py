"""Reading what gpu_check's commands wrote (the backbone table, dry-run texts, trial metrics, the calibration
file) into figures, and the summary in the words the README and the sweep headers use."""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path
from typing import Any

METRIC_KEYS = ("macro_iou_fg", "pooled_iou_fg")  # and every iou_fg/<dataset>


def parameter_counts(text: str) -> dict[str, float]:
    """`vfm-ablate backbones`: name -> parameters (M), from its table."""
    counts = {}
    for line in text.splitlines():
        m = re.match(r"^(\S+)\s+\S+\s+\S+\s+\d+\s+\d+\s+([\d.]+)M\s", line)
        if m:
            counts[m.group(1)] = float(m.group(2))
    return counts


def table_rows(text: str, first: str, must: str) -> list[dict[str, str]]:
    """The rows of a fixed-width table (header line starting with `first` and containing `must`, then dashes)."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        if line.startswith(first) and must in line and set(lines[i + 1]) <= {"-", " "}:
            spans = [(m.start(), m.end()) for m in re.finditer(r"-+", lines[i + 1])]
            spans[-1] = (spans[-1][0], 10_000)
            names = [line[a:b].strip() for a, b in spans]
            rows = []
            for row in lines[i + 2 :]:
                if not row.strip() or row.startswith(("total:", "not calibrated")):
                    break
                rows.append({n: row[a:b].strip() for n, (a, b) in zip(names, spans)})
            return rows
    return []


def dry_run_figures(text: str) -> dict[str, Any]:
    """The totals of a `run --dry-run --calibration` text; every figure None where the text has none."""
    out: dict[str, Any] = {"trials": None, "trial_hours": None, "gpu_hours": None, "makespan": None}
    m = re.search(r"^total: (\d+) trials, ([\d.]+) trial-hours, ([\d.]+) GPU-hours", text, re.M)
    if m:
        out.update(trials=int(m.group(1)), trial_hours=float(m.group(2)), gpu_hours=float(m.group(3)))
    m = re.search(r"^makespan on (.*?): (\S+(?: \S+)?) \(trials", text, re.M)
    if m:
        out["makespan"] = m.group(2)
    m = re.search(r"^  up to (\S+(?: \S+)?) if trials sharing", text, re.M)
    out["makespan_if_compute_bound"] = m.group(1) if m else None
    m = re.search(r"^not calibrated \((\d+) configurations", text, re.M)
    out["not_calibrated"] = int(m.group(1)) if m else 0
    m = re.search(r"^epochs: (.*)$", text, re.M)
    out["epochs"] = m.group(1) if m else None
    by_backbone: dict[str, float] = {}
    for row in table_rows(text, "backbone", "GPU-h"):
        try:
            by_backbone[row["backbone"]] = by_backbone.get(row["backbone"], 0.0) + float(row["GPU-h"])
        except (KeyError, ValueError):
            continue
    out["gpu_hours_by_backbone"] = dict(sorted(by_backbone.items(), key=lambda kv: -kv[1]))
    return out


def trial_metrics(folder: Path) -> dict[str, Any] | None:
    path = folder / "metrics.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    metrics = data.get("metrics", data)
    history = data.get("history", [])
    return {
        "metrics": {k: v for k, v in metrics.items() if k.startswith("iou_fg/") or k in METRIC_KEYS},
        "epochs_run": metrics.get("epochs_run"),
        "train_time_s": metrics.get("train_time_s"),
        "first_train_loss": history[0].get("train_loss") if history else None,
    }


def compare_trials(reference: dict | None, other: dict | None, tolerance: float) -> dict[str, Any]:
    """IoU of a trial against the CPU reference: every metric finite and within `tolerance`."""
    if reference is None or other is None:
        return {"ok": False, "why": "a trial did not finish", "tolerance": tolerance}
    deltas = {}
    for key, ref in reference["metrics"].items():
        value = other["metrics"].get(key)
        deltas[key] = None if value is None or not math.isfinite(value) else value - ref
    bad = [k for k, d in deltas.items() if d is None or abs(d) > tolerance]
    loss_ref, loss = reference.get("first_train_loss"), other.get("first_train_loss")
    return {
        "ok": not bad and bool(deltas),
        "tolerance": tolerance,
        "delta": deltas,
        "max_abs_delta": max((abs(d) for d in deltas.values() if d is not None), default=None),
        "first_epoch_loss_rel_diff": abs(loss - loss_ref) / abs(loss_ref) if loss and loss_ref else None,
        "why": f"outside ±{tolerance:g} or not finite: {', '.join(bad)}" if bad else "",
    }


def calibration_rows(path: Path) -> tuple[list[dict[str, Any]], list[str], dict[str, Any]]:
    """The measured configurations of a calibration file, flat, with its notes and device."""
    if not path.exists():
        return [], ["no calibration file"], {}
    data = json.loads(path.read_text())
    rows = []
    for m in data.get("measurements", []):
        key = m["key"]
        step = m["train_step_s"]["median"]
        rows.append(
            {
                "backbone": key["backbone"],
                "regime": key["regime"],
                "precision": key["precision"],
                "size": f"{key['height']}x{key['width']}",
                "batch": key["batch_size"],
                "step_s": step,
                "step_s_per_image": step / key["batch_size"],
                "eval_s_per_image": m["eval_image_s"]["median"],
                "extract_s_per_image": (m.get("extract_image_s") or {}).get("median"),
                "setup_s": m.get("setup_s"),
                "peak_memory_mb": m.get("peak_memory_mb"),
                "memory_kind": m.get("memory_kind"),
            }
        )
    return rows, list(data.get("notes", [])), data.get("device", {})


def _small(x: float | None) -> str:
    return "-" if x is None else f"{x:.2g}"


def _hours(h: float | None) -> str:
    return "-" if h is None else f"{h:,.1f}"


def summary_markdown(summary: dict[str, Any], sweeps: tuple[str, ...], precisions: tuple[str, ...]) -> str:
    """The figures, in the words the README and the sweep headers use."""
    stages = summary["stages"]
    env = stages.get("prepare", {}).get("environment", {})
    elapsed, budget = summary.get("elapsed_s", 0), summary["budget_s"]
    lines = [f"# GPU check ({summary['mode']} mode): {elapsed:.0f} s of {budget:.0f}", "", "stage | status | seconds"]
    lines.append("---|---|---")
    for name, s in stages.items():
        error = f" ({s['error']})" if "error" in s else ""
        lines.append(f"{name} | {s['status']}{error} | {s['seconds']:.0f}")
    gpu = env.get("gpu") or "no GPU"
    lines += [
        "",
        f"machine: {gpu} ({env.get('gpu_memory_gb', '-')} GB), torch {env.get('torch')}, "
        f"CUDA {env.get('cuda_runtime')}, Python {env.get('python')}; "
        f"matrix product {env.get('matmul_tflops', '-')} TFLOP/s",
    ]
    trials = stages.get("trials", {})
    if "fp32_vs_cpu" in trials:
        settings = trials["settings"]
        data = " + ".join(settings["data.train"])
        for label in precisions:
            cmp = trials[f"{label}_vs_cpu"]
            device = trials["runs"][f"device_{label}"]["device"]
            same = " (the same run)" if (device, label) == ("cpu", "fp32") else ""
            lines.append(
                f"trial ({settings['backbone']}, {settings['regime']}, {data}) on {device} {label} vs CPU fp32{same}: "
                f"{'OK' if cmp['ok'] else 'FAILED'}, max |ΔIoU| {_small(cmp.get('max_abs_delta'))}, "
                f"tolerance {cmp['tolerance']:g}"
            )
    cal = stages.get("calibrate", {})
    rows = cal.get("measured", [])
    if rows:
        lines += [
            "",
            "configuration | step s (per image) | eval s/image | extract s/image | peak MB",
            "---|---|---|---|---",
        ]
        for r in rows:
            extract = f"{r['extract_s_per_image']:.4f}" if r["extract_s_per_image"] is not None else "-"
            peak = f"{r['peak_memory_mb']:.0f}" if r["peak_memory_mb"] is not None else "-"
            lines.append(
                f"{r['backbone']} {r['regime']} {r['precision']} {r['size']} b{r['batch']} | {r['step_s']:.4f} "
                f"({r['step_s_per_image']:.4f}) | {r['eval_s_per_image']:.4f} | {extract} | {peak}"
            )
    lines += [f"not measured: {note}" for note in cal.get("notes", [])]
    figures = stages.get("dry runs", {}).get("figures", {})
    if figures:
        lines += [
            "",
            "sweep | precision | GPU memory | trials | trial-hours | GPU-hours | makespan on cluster.yaml | largest",
            "---|---|---|---|---|---|---|---",
        ]
        for name, f in figures.items():
            sweep, precision, memory = name.split("-", 2)
            largest = ", ".join(f"{b} {_hours(h)} h" for b, h in list(f.get("gpu_hours_by_backbone", {}).items())[:3])
            incomplete = f" ({f['not_calibrated']} configurations not calibrated)" if f.get("not_calibrated") else ""
            bound = f" (up to {f['makespan_if_compute_bound']})" if f.get("makespan_if_compute_bound") else ""
            lines.append(
                f"{sweep} | {precision} | {memory} | {f.get('trials')} | {_hours(f.get('trial_hours'))} | "
                f"{_hours(f.get('gpu_hours'))}{incomplete} | {f.get('makespan') or '-'}{bound} | {largest}"
            )
        epochs = next((f["epochs"] for f in figures.values() if f.get("epochs")), None)
        if epochs:
            lines.append(f"epochs: {epochs}")
        basis = f"{cal.get('device', {}).get('name', '?')}, {time.strftime('%Y-%m-%d')}"
        lines += ["", f"For the sweep headers (calibrated on {basis}; epochs still assumed):"]
        for sweep in sweeps:
            per = {
                p: figures.get(f"{sweep}-{p}-cluster_memory") or figures.get(f"{sweep}-{p}-measured")
                for p in precisions
            }
            missing = [p for p, f in per.items() if not f or f.get("gpu_hours") is None or f.get("not_calibrated")]
            if missing:  # a partial sum is not a figure for a header
                lines.append(f"  {sweep}: none: {', '.join(missing)} not costed in full (see the table above)")
                continue
            lines.append(
                f"  {sweep}: GPU-hours "
                + ", ".join(f"{p} ~{_hours(f['gpu_hours'])}" for p, f in per.items())
                + "; makespan on cluster.yaml: "
                + ", ".join(f"{p} {f['makespan'] or '-'}" for p, f in per.items())
            )
    return "\n".join(lines) + "\n"
