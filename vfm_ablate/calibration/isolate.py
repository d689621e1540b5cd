"""Configurations measured in fresh processes: one per configuration (the default), or one per backbone entry.

On a CPU the only peak-memory figure is the process's peak resident set size (ru_maxrss), a high-water mark
that never goes down. Measured in one long-lived process, every configuration after the largest would report the
largest's peak. So by default each configuration is measured by `python -m vfm_ablate.calibration.isolate` in a
new interpreter that builds only that configuration; it also reports its own import time (torch, timm, MONAI and
the trial engine), which is what each new Ray worker process pays once.

On a GPU the peak is torch's allocated memory, which is reset before each configuration, so the configurations
of one backbone can share a process (`measure_group`): the imports and the CUDA start are paid once per backbone
instead of once per configuration, which is what lets a whole study be calibrated within a short GPU lease. On a
CPU a shared process reports no memory figure (`memory_kind: none`) rather than a high-water mark that is not the
configuration's own.

A configuration that fails (out of memory, a backbone that cannot be built) comes back as an error message, not as
a crash of the whole calibration; a process that dies or runs past its time keeps what it measured before.
"""

from __future__ import annotations

import gc
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
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
    """Measure `key` alone in a fresh Python process (same interpreter, same environment)."""
    return measure_group(
        [key], entry, device=device, warmup=warmup, repeats=repeats, threads=threads, timeout_s=timeout_s
    )[0]


def measure_group(
    keys: list[ConfigKey],
    entry: BackboneEntry,
    *,
    device: str = "auto",
    warmup: int = 2,
    repeats: int = 5,
    threads: int | None = None,
    timeout_s: float | None = None,
    on_result: Callable[[ConfigKey, IsolatedResult], None] | None = None,
) -> list[IsolatedResult]:
    """Measure the configurations of one backbone one after another in one fresh process, a result per key in
    order; `on_result` sees each as soon as it is measured. `timeout_s` is per configuration: the process is
    stopped when one takes longer, and the configurations it had not reached come back as errors."""
    request = {
        "keys": [k.model_dump(mode="json") for k in keys],
        "entry": entry.model_dump(mode="json"),
        "device": device,
        "warmup": warmup,
        "repeats": repeats,
        "threads": threads,
    }
    env = dict(os.environ)
    if threads is not None:  # as Ray does for a worker with `threads` CPUs
        env["OMP_NUM_THREADS"] = str(threads)
    results: list[IsolatedResult] = []
    with tempfile.TemporaryFile(mode="w+") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "vfm_ablate.calibration.isolate"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
        lines: queue.Queue[str | None] = queue.Queue()
        reader = threading.Thread(target=_read_lines, args=(proc, lines), daemon=True)
        reader.start()
        stopped = ""
        try:
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(request))
            proc.stdin.close()
            while len(results) < len(keys):
                try:
                    line = lines.get(timeout=timeout_s)
                except queue.Empty:
                    stopped = f"no result within {timeout_s:g} s"
                    break
                if line is None:  # the process ended
                    break
                if line.startswith(RESULT_PREFIX):
                    result = _parse(json.loads(line[len(RESULT_PREFIX) :]))
                    results.append(result)
                    if on_result is not None:
                        on_result(keys[len(results) - 1], result)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            reader.join(timeout=5)
        if len(results) < len(keys):
            stderr.seek(0)
            tail = " ".join(stderr.read().strip().splitlines()[-3:]) or f"exit status {proc.returncode}"
            reason = stopped or tail[-400:]
            import_s = results[0].import_s if results else 0.0
            for key in keys[len(results) :]:
                results.append(IsolatedResult(None, import_s, reason))
                if on_result is not None:
                    on_result(key, results[-1])
    return results


def _read_lines(proc: subprocess.Popen, lines: queue.Queue[str | None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def _parse(reply: dict) -> IsolatedResult:
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
    keys = [ConfigKey.model_validate(k) for k in request["keys"]]
    entry = BackboneEntry.model_validate(request["entry"])
    shared = len(keys) > 1
    for key in keys:
        try:
            before_mb = _release_memory(request["device"]) if shared else 0.0
            m = measure(
                key,
                entry,
                device=request["device"],
                warmup=int(request["warmup"]),
                repeats=int(request["repeats"]),
            )
            if shared:
                m = _shared_process_memory(m, before_mb)
            reply = {"measurement": m.model_dump(mode="json"), "import_s": import_s}
        except Exception as err:  # reported to the parent, which records it as a note and goes on
            reply = {"error": f"{type(err).__name__}: {err}"[:400], "import_s": import_s}
        print(RESULT_PREFIX + json.dumps(reply), flush=True)


def _release_memory(device: str) -> float:
    """Free what the previous configuration left (a shared process); the CUDA memory still allocated, in MB."""
    import torch

    from ..device import resolve_device

    gc.collect()
    dev = resolve_device(device)
    if dev.type != "cuda":
        return 0.0
    torch.cuda.synchronize(dev)
    torch.cuda.empty_cache()
    return torch.cuda.memory_allocated(dev) / 2**20


def _shared_process_memory(m: Measurement, before_mb: float) -> Measurement:
    """A CUDA peak is the configuration's own (reset before it; `before_mb`, e.g. library workspaces, is kept as
    its baseline); a CPU process's peak RSS is not, so none is reported."""
    if m.memory_kind == "cuda_allocated":
        return m.model_copy(update={"baseline_memory_mb": before_mb})
    return m.model_copy(update={"peak_memory_mb": None, "memory_kind": "none", "baseline_memory_mb": 0.0})


if __name__ == "__main__":
    _worker()
