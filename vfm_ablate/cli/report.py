"""`vfm-ablate report SWEEP.yaml|EXPERIMENT`: paper-style tables and figures read back from MLflow."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import TYPE_CHECKING

from ..metric_names import IOU

if TYPE_CHECKING:
    import pandas as pd


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report",
        help="tables (mean ± std over seeds) and figures of a sweep, read from MLflow",
        description=(
            "Read a sweep's trial runs from MLflow and print/write the study's tables: one per block of training "
            "data (rows backbone, columns test dataset × regime; cells mean ± std (n) over seeds, failed runs shown "
            "as such), paired minus single-dataset training, the transfer matrix where cross-dataset tests exist, "
            "figures, and one report.html / report.md with all of them."
        ),
    )
    p.add_argument("target", help="a sweep file (its tracking experiment is read) or an MLflow experiment name")
    p.add_argument(
        "--tracking-uri",
        help="MLflow tracking URI (default, as `vfm-ablate run`: the sweep file's tracking.uri, "
        "else $MLFLOW_TRACKING_URI, "
        "else ./mlflow.db)",
    )
    p.add_argument("--out", type=Path, help="output folder (default: ./reports/<experiment>)")
    p.add_argument(
        "--metric", default=IOU, help="metric family: <metric>/<dataset>, macro_<metric>, pooled_<metric>"
    )
    p.add_argument(
        "--sweep-id", help="only runs of this sweep id (tag vfm.sweep_id); default: every sweep in the experiment"
    )
    p.add_argument(
        "--execution-id",
        help="only runs of this execution of a sweep (tag vfm.execution_id, printed by `run` and kept in sweep.json)",
    )
    p.add_argument(
        "--compare",
        action="append",
        default=[],
        metavar="AXIS=A,B",
        help="B against A over matched repeats (same seed and split seed): mean Δ with a 95%% bootstrap CI per "
        "metric, 'within seed noise' when it includes 0; AXIS is any dotted setting (regime=frozen,lora, "
        "lora.rank=8,16, data.sampling=natural,balanced) or method (an alignment method label, e.g. method=none,mmd)",
    )
    p.add_argument(
        "--curve",
        metavar="AXIS",
        help="IoU against the number of labelled images of each dataset the runs label partly (data.labelled): one "
        "line per setting that varies, 95%% bootstrap intervals over repeats, Δ and share of the all-labelled IoU "
        "over matched repeats; printed (the report folder holds it whenever runs set data.labelled: "
        "curve_<dataset>.png / .csv)",
    )
    p.add_argument(
        "--transfer",
        action="store_true",
        help="the transfer table: every alignment method against none (source → target IoU, feature-gap diagnostics)",
    )
    p.set_defaults(func=_run)


def resolve_target(target: str, tracking_uri: str | None) -> tuple[str, str]:
    """(experiment, tracking URI) for a sweep file or an experiment name; the same defaults as `vfm-ablate run`."""
    from ..errors import ConfigError
    from ..tracking.store import resolve_tracking_uri

    if Path(target).is_dir():
        raise ConfigError(f"{target}: is a directory; give a sweep file (.yaml) or an MLflow experiment name")
    if target.endswith((".yaml", ".yml")) or Path(target).is_file():
        from ..sweep.spec import load_sweep

        sweep = load_sweep(target)
        return sweep.experiment_name, resolve_tracking_uri(tracking_uri, sweep.tracking.uri, Path.cwd())
    return target, resolve_tracking_uri(tracking_uri, None, Path.cwd())


def _run(args: argparse.Namespace) -> int:
    from ..report.document import as_text
    from ..report.runs import load_runs
    from ..report.write import write_report
    from ..tracking.store import check_tracking_store
    from .folders import check_output_folder

    requests = [_compare_request(r) for r in args.compare]  # a malformed request fails before anything is read
    if args.curve is not None:
        _check_curve_axis(args.curve)
    experiment, uri = resolve_target(args.target, args.tracking_uri)
    out = args.out or Path("reports") / re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)
    check_output_folder(out, "--out")
    check_tracking_store(uri)
    runs = load_runs(uri, experiment, sweep_id=args.sweep_id, execution_id=args.execution_id)
    parts, paths = write_report(runs, out, metric=args.metric, title=f"{experiment}: {args.metric}")
    print(f"experiment '{experiment}' at {uri}: {len(runs)} trial runs")
    print(as_text(parts))
    print(f"report: {paths['html']} (self-contained), {paths['markdown']}; tables as CSV and figures in {out}")
    _comparisons(requests, args.transfer, runs, out)
    if args.curve:
        _curves(runs, args.metric, paths)
    return 0


def _check_curve_axis(axis: str) -> None:
    from ..errors import ConfigError
    from ..report.curve import CURVE_AXES
    from ..validation import suggest

    if axis not in CURVE_AXES:
        raise ConfigError(suggest(axis, list(CURVE_AXES), "--curve axis", "vfm-ablate report"))


def _curves(runs: pd.DataFrame, metric: str, paths: dict[str, Path]) -> None:
    """--curve data.labelled: each curve's tables printed, with where its figure and numbers are."""
    from ..report.curve import curve_markdown, labelled_curves
    from ..report.write import curve_file_stem

    for curve in labelled_curves(runs, metric, n_resamples=2000):  # nothing to draw: an error saying why
        stem = curve_file_stem(curve.dataset)
        print(f"\n{curve_markdown(curve)}\n\nwrote curve: {paths[f'{stem}_png']} ({paths[f'{stem}_csv']})")


def _compare_request(request: str) -> tuple[str, str, str]:
    from ..errors import ConfigError

    axis, _, values = request.partition("=")
    choices = [v.strip() for v in values.split(",")]
    if not axis.strip() or len(choices) != 2 or not all(choices):
        raise ConfigError(f"--compare {request!r}: expected AXIS=A,B (e.g. regime=frozen,lora)")
    return axis.strip(), choices[0], choices[1]


def _comparisons(requests: list[tuple[str, str, str]], transfer: bool, runs: pd.DataFrame, out: Path) -> None:
    """--compare / --transfer: printed, and written as compare_<axis>_<a>_<b>.md / transfer.md in the report folder."""
    from ..report.compare import compare_settings, transfer_table
    from ..report.document import compare_markdown, transfer_markdown

    texts: dict[str, str] = {}
    for axis, a, b in requests:
        texts[f"compare_{axis}_{a}_{b}"] = compare_markdown(compare_settings(runs, axis, a, b))
    if transfer:
        texts["transfer"] = "alignment methods against none\n\n" + transfer_markdown(transfer_table(runs))
    for name, text in texts.items():
        path = out / (re.sub(r"[^A-Za-z0-9._-]+", "_", name) + ".md")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
        print(f"\n{text}\nwrote comparison: {path}")
