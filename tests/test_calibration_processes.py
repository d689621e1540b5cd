"""How `vfm-ablate calibrate` spends its processes: the network built on the measured device, one process per
backbone entry (`--isolate backbone`: a failing configuration does not stop the others; on a CPU no peak memory is
claimed), and Ctrl-C keeping what was measured."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.sweep_helpers import TINY_FACTS, stop_process_tree
from vfm_ablate.calibration import measure as measure_module
from vfm_ablate.calibration.isolate import measure_group
from vfm_ablate.calibration.records import ConfigKey, load_calibration
from vfm_ablate.errors import ConfigError
from vfm_ablate.models.registry import BackboneEntry, get_entry

CLI = "import sys; from vfm_ablate.cli.main import main; sys.exit(main())"


def _key(regime: str, size: int = 28, precision: str = "fp32") -> ConfigKey:
    return ConfigKey(
        backbone="tiny_vit_p14",
        regime=regime,
        precision=precision,
        height=size,
        width=size,
        batch_size=2,
        lora_rank=16 if regime == "lora" else None,
    )


def _sweep_file(tmp_path: Path) -> Path:
    sweep = {
        "name": "processes",
        "base": {
            "backbone": "tiny_vit_p14",
            "weights": "random",
            "device": "cpu",
            "data": {"train": ["sa"], "resize": {"policy": "native"}},
        },
        "axes": {"regime": ["frozen", "lora"], "precision": ["fp32", "bf16"]},
        "datasets": {"sa": {"layout": "synthetic", "domain": "a", "n_train": 6, "n_test": 2, "size": [28, 28]}},
    }
    path = tmp_path / "processes.yaml"
    path.write_text(yaml.safe_dump(sweep))
    return path


def test_the_network_is_built_on_the_measured_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """No CPU copy first: a 1 B-parameter backbone is initialised where it is measured."""
    seen = []
    real = measure_module.build_segmenter

    def spy(spec, entry, **kwargs):  # noqa: ANN001, ANN202 - the real function's signature
        seen.append(kwargs.get("device"))
        return real(spec, entry, **kwargs)

    monkeypatch.setattr(measure_module, "build_segmenter", spy)
    m = measure_module.measure(_key("lora"), get_entry("tiny_vit_p14"), device="cpu", warmup=0, repeats=1)
    assert seen == [measure_module.resolve_device("cpu")]
    assert m.train_step_s.n == 1


@pytest.mark.slow(seconds=15)
def test_one_process_per_backbone_measures_each_configuration_and_goes_on_past_a_failure() -> None:
    facts = {**TINY_FACTS, "lora_targets": ["no_such_module"]}  # LoRA cannot attach: that configuration fails
    entry = BackboneEntry.model_validate({"name": "tiny_vit_p14", **facts})
    keys = [_key("frozen"), _key("lora"), _key("frozen", 56)]
    seen: list[str] = []
    results = measure_group(
        keys, entry, device="cpu", warmup=0, repeats=2, on_result=lambda k, r: seen.append(k.label())
    )
    assert seen == [k.label() for k in keys]  # each reported as it was measured, in order
    first, broken, third = results
    assert broken.measurement is None and "no_such_module" in (broken.error or "")
    for result, key in ((first, keys[0]), (third, keys[2])):
        assert result.error is None and result.measurement is not None and result.measurement.key == key
        assert result.measurement.train_step_s.n == 2
        # several configurations in one CPU process: a high-water mark of its RSS is not any one's own peak
        assert result.measurement.memory_kind == "none" and result.measurement.peak_memory_mb is None
    assert first.import_s == third.import_s > 0  # one process: the imports were paid once


def test_one_process_per_backbone_measures_one_copy_at_a_time(tmp_path: Path) -> None:
    sweep_file = _sweep_file(tmp_path)
    args = ["calibrate", str(sweep_file), "-o", str(tmp_path / "c.json"), "--isolate", "backbone", "--concurrent", "2"]
    with pytest.raises(ConfigError, match="--isolate backbone measures one copy at a time"):
        _raising_main(args)
    assert not (tmp_path / "c.json").exists()


def _raising_main(argv: list[str]) -> None:
    """The command's own function, so its ConfigError reaches the test (main() turns it into exit status 2)."""
    from vfm_ablate.cli.main import build_parser

    args = build_parser().parse_args(argv)
    args.func(args)


@pytest.mark.slow(seconds=15)
@pytest.mark.timeout(300)
def test_an_interrupted_calibration_writes_what_it_measured(tmp_path: Path) -> None:
    sweep_file = _sweep_file(tmp_path)
    out = tmp_path / "cal.json"
    argv = ["calibrate", str(sweep_file), "-o", str(out), "--isolate", "backbone", "--no-ray", "--device", "cpu"]
    argv += ["--warmup", "1", "--repeats", "3", "--threads", "1"]
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        lines, total = [], 0
        for line in proc.stdout:
            lines.append(line)
            first = re.match(r"\[1/(\d+)\] ", line)
            if first:
                total = int(first.group(1))
                os.killpg(proc.pid, signal.SIGINT)  # as Ctrl-C in a terminal: the whole process group
                break
        rest = proc.stdout.read()
        assert proc.wait(timeout=120) == 130, "".join(lines) + rest
    finally:
        stop_process_tree(proc)
    assert f"interrupted: wrote {out}" in rest
    cal = load_calibration(out)
    assert cal.settings.isolate == "backbone" and cal.settings.concurrent == 1
    assert total >= 4 and 1 <= len(cal.measurements) < total  # fp32 and bf16 of each regime, at least
    missing = total - len(cal.measurements)
    assert cal.notes[-1].startswith(f"interrupted: {missing} of {total} configurations not measured")
    assert cal.datasets == []
