"""The MLflow UI of a finished sweep in a real browser: what the rendered page shows, and the docs' screenshots.

    python scripts/ui_screenshots.py                 # runs sweeps/demo.yaml in a temporary folder, then shoots
    python scripts/ui_screenshots.py --workdir DIR   # a folder where `vfm-ablate run sweeps/demo.yaml` already ran
    python scripts/ui_screenshots.py --sweep sweeps/demo_alignment.yaml --prefix ui_alignment --no-charts
    python scripts/ui_screenshots.py --sweep sweeps/demo_search.yaml --prefix ui_search --no-charts

Starts a real `mlflow server` on 127.0.0.1 over the sweep's store, opens the address that `vfm-ablate run` prints
(the execution's saved view) in headless Chromium (Debian package `chromium`), reads the runs table from the
rendered page and writes docs/<prefix>_table.png and docs/<prefix>_charts.png (default prefix ui_trials).
tests/test_ui_browser.py uses the same functions on a tiny sweep.

The browser is driven over the DevTools protocol on a pipe (`--remote-debugging-pipe`): no port, no extra package.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
]
WINDOW = (1600, 1000)
# MLflow's assistant panel opens by itself on a browser's first visit to a local server; the screenshots show the
# page as it is after closing it once (the UI keeps that in local storage).
ASSISTANT_SEEN = {"mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true", "mlflow.assistant.panelOpen_v1": "false"}


def find_chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class Chromium:
    """A headless Chromium driven over the DevTools protocol on a pipe (fd 3 commands in, fd 4 replies out)."""

    def __init__(self, executable: str, profile: Path, window: tuple[int, int] = WINDOW):
        cmd_r, cmd_w = os.pipe()
        res_r, res_w = os.pipe()
        high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (cmd_r, res_w)]  # out of the way of fds 3 and 4

        def wire() -> None:
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        args = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}"]
        self.process = subprocess.Popen(
            args, preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for fd in (cmd_r, res_w, *high):
            os.close(fd)
        self._out = os.fdopen(cmd_w, "wb")
        self._in = os.fdopen(res_r, "rb")
        self._buffer = b""
        self._next_id = 0
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": window[0], "height": window[1], "deviceScaleFactor": 1, "mobile": False},
            session=True,
        )

    def call(self, method: str, params: dict[str, Any] | None = None, session: bool = False) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = self.session
        self._out.write(json.dumps(message).encode() + b"\0")
        self._out.flush()
        while True:
            reply = self._read()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def _read(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._in.fileno(), 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(raw)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=True)
        return result.get("result", {}).get("value")

    def open(self, url: str) -> None:
        self.call("Page.navigate", {"url": url}, session=True)

    def wait_for(self, expression: str, timeout_s: float = 90.0) -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout_s
        value = None
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise TimeoutError(f"page never satisfied {expression[:120]} (last value {value!r})")

    def screenshot(self, path: Path) -> Path:
        data = self.call("Page.captureScreenshot", {"format": "png"}, session=True)["data"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except Exception:
            pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=15)
        self._out.close()
        self._in.close()


# The runs table as the page renders it: AG Grid draws the pinned run-name column and the other columns in
# separate containers, joined by the row index.
READ_TABLE = """(() => {
  const rows = {};
  for (const cell of document.querySelectorAll('[role="row"][row-index] [col-id]')) {
    const index = cell.closest('[role="row"]').getAttribute('row-index');
    (rows[index] = rows[index] || {})[cell.getAttribute('col-id')] = cell.innerText.trim();
  }
  return Object.values(rows);
})()"""
NAME_COLUMN = "attributes.`Run Name`"
IOU_COLUMN = "metrics.`iou_fg`"


@dataclass
class Shot:
    table: list[dict[str, str]]  # one dict per rendered row: column id -> shown text
    screenshots: list[Path]


def shoot(
    chromium: str,
    address: str,
    out_dir: Path | None,
    expected_rows: int,
    profile: Path,
    prefix: str = "ui_trials",
    charts: bool = True,
) -> Shot:
    """Open `address` (the saved view `vfm-ablate run` prints), read the rendered runs table, and (with out_dir)
    write the table (and chart) screenshots."""
    browser = Chromium(chromium, profile)
    shots: list[Path] = []
    try:
        browser.open(address.split("#", 1)[0])  # the origin first, to set its local storage
        browser.wait_for("document.readyState === 'complete'")
        for key, value in ASSISTANT_SEEN.items():
            browser.evaluate(f"localStorage.setItem({json.dumps(key)}, {json.dumps(value)})")
        browser.open(address)
        count = (
            f"document.querySelectorAll('[role=\"row\"][row-index] [col-id={json.dumps(IOU_COLUMN)}]').length"
            f" >= {expected_rows}"
        )
        browser.wait_for(count)
        time.sleep(1.0)  # let the grid finish its layout (column widths) before reading and shooting
        table = browser.evaluate(READ_TABLE)
        if out_dir is not None:
            shots.append(browser.screenshot(out_dir / f"{prefix}_table.png"))
        if out_dir is not None and charts:
            browser.open(address + "&compareRunsMode=CHART")
            browser.wait_for("document.querySelectorAll('canvas, svg.main-svg').length > 0")
            time.sleep(3.0)
            shots.append(browser.screenshot(out_dir / f"{prefix}_charts.png"))
    finally:
        browser.close()
    return Shot(table, shots)


def run_demo(workdir: Path, sweep: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("MLFLOW_TRACKING_URI", None)
    cmd = [sys.executable, "-m", "vfm_ablate", "run", str(sweep)]
    subprocess.run(cmd, cwd=workdir, env=env, check=True)


def view_address(
    workdir: Path, sweep_name: str, server_uri: str, experiment_name: str | None = None
) -> tuple[str, str]:
    """(experiment id, address of the execution's saved view) on `server_uri`, from the sweep's manifest."""
    from mlflow import MlflowClient

    from vfm_ablate.tracking.ui import experiment_address, view_key

    manifest = json.loads((workdir / "ray_results" / sweep_name / "sweep.json").read_text())
    experiment = MlflowClient(server_uri).get_experiment_by_name(experiment_name or sweep_name)
    key = view_key(manifest["execution_id"])
    return experiment.experiment_id, experiment_address(server_uri, experiment.experiment_id, key)


def trial_runs(server_uri: str, experiment_id: str, execution_id: str) -> int:
    """How many trial runs the execution's view lists (what the rendered table must show)."""
    from mlflow import MlflowClient

    from vfm_ablate.tracking.tags import ROLE_TRIAL, runs_filter

    runs = MlflowClient(server_uri).search_runs([experiment_id], runs_filter(ROLE_TRIAL, execution_id=execution_id))
    return len(runs)


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    from vfm_ablate.tracking.server import start_mlflow_server, stop_mlflow_server

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, help="where the sweep already ran (mlflow.db, ray_results/<name>)")
    parser.add_argument("--sweep", type=Path, default=REPO / "sweeps" / "demo.yaml", help="default sweeps/demo.yaml")
    parser.add_argument("--prefix", default="ui_trials", help="PNG names: <prefix>_table.png, <prefix>_charts.png")
    parser.add_argument("--no-charts", action="store_true", help="the runs table only")
    parser.add_argument("--out", type=Path, default=REPO / "docs", help="where the PNG files go (default docs/)")
    args = parser.parse_args(argv)
    from vfm_ablate.sweep.spec import load_sweep

    sweep = load_sweep(args.sweep)
    chromium = find_chromium()
    if chromium is None:
        print("no Chromium found: apt-get install -y chromium", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="vfm-ui-") as tmp:
        workdir = args.workdir.resolve() if args.workdir else Path(tmp) / sweep.name
        if args.workdir is None:
            workdir.mkdir()
            run_demo(workdir, args.sweep.resolve())
        server = start_mlflow_server(Path(tmp) / "server", backend_uri=f"sqlite:///{workdir / 'mlflow.db'}")
        try:
            experiment_id, address = view_address(workdir, sweep.name, server.uri, sweep.experiment_name)
            manifest = json.loads((workdir / "ray_results" / sweep.name / "sweep.json").read_text())
            rows = trial_runs(server.uri, experiment_id, manifest["execution_id"])
            shot = shoot(
                chromium, address, args.out, rows, Path(tmp) / "profile", args.prefix, charts=not args.no_charts
            )
        finally:
            stop_mlflow_server(server)
    for row in shot.table:
        print(json.dumps({k: v.splitlines()[-1] if v else v for k, v in row.items()}, ensure_ascii=False))
    for path in shot.screenshots:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
