"""One configuration per fresh process: its peak memory is its own.

On a CPU the only peak-memory figure is the process's peak resident set size (ru_maxrss), a high-water mark
that never goes down. Measured in one long-lived process, every configuration after the largest would report the
largest's peak. So each configuration is measured by `python -m vfm_ablate.calibration.isolate` in a new
interpreter that builds only that configuration; it also reports its own import time (torch, timm, MONAI and the
trial engine), which is what each new Ray worker process pays once. A configuration that fails (out of memory,
a backbone that cannot be built) comes back as an error message, not as a crash of the whole calibration.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass

from ..models.registry import BackboneEntry
from .records import ConfigKey, Measurement

RESULT_PREFIX = "VFM_CALIBRATION_RESULT "


@dataclass(frozen=True)
class IsolatedResult:
    measurement: Measurement | None
    import_s: float
    error: str | None = None


def measure_isolated(
    key: ConfigKey,
    entry: BackboneEntry,
    *,
    device: str = "auto",
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    timeout_s: float | None = None,
) -> IsolatedResult:
    """Measure `key` in a fresh Python process (same interpreter, same environment)."""
    request = {
        "key": key.model_dump(mode="json"),
        "entry": entry.model_dump(mode="json"),
        "device": device,
        "warmup": warmup,
        "repeats": repeats,
        "threads": threads,
    }
    env = dict(os.environ)
    if threads is not None:  # as Ray does for a worker with `threads` CPUs
        env["OMP_NUM_THREADS"] = str(threads)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "vfm_ablate.calibration.isolate"],
            input=json.dumps(request),
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return IsolatedResult(None, 0.0, f"no result within {timeout_s:g} s")
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_PREFIX)]
    if not lines:
        tail = " ".join(proc.stderr.strip().splitlines()[-3:]) or f"exit status {proc.returncode}"
        return IsolatedResult(None, 0.0, tail[-400:])
    reply = json.loads(lines[-1][len(RESULT_PREFIX) :])
    if reply.get("error"):
        return IsolatedResult(None, reply.get("import_s", 0.0), reply["error"])
    return IsolatedResult(Measurement.model_validate(reply["measurement"]), reply["import_s"])


def _worker() -> None:
    started = time.perf_counter()
    import torch

    from ..trial.forward import dice_loss
    from .measure import measure

    dice_loss()  # imports MONAI, as a trial's first loss does
    import_s = time.perf_counter() - started
    request = json.loads(sys.stdin.read())
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    try:
        m = measure(
            ConfigKey.model_validate(request["key"]),
            BackboneEntry.model_validate(request["entry"]),
            device=request["device"],
            warmup=int(request["warmup"]),
            repeats=int(request["repeats"]),
        )
        reply = {"measurement": m.model_dump(mode="json"), "import_s": import_s}
    except Exception as err:  # reported to the parent, which records it as a note and goes on
        reply = {"error": f"{type(err).__name__}: {err}"[:400], "import_s": import_s}
    print(RESULT_PREFIX + json.dumps(reply), flush=True)


if __name__ == "__main__":
    _worker()
