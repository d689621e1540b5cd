"""Sweep files without Ray: every shipped sweep validates and expands to its documented count; typos, collapsing,
de-duplication, seeds, resources and the dry-run output."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.sweep_helpers import documented_trial_count, write_em_layouts
from vfm_ablate.cli import main
from vfm_ablate.errors import ConfigError
from vfm_ablate.sweep.driver import run_sweep
from vfm_ablate.sweep.plan import plan
from vfm_ablate.sweep.spec import load_sweep, parse_sweep
from vfm_ablate.sweep.store import TrialStore

REPO = Path(__file__).resolve().parents[1]
SWEEP_FILES = sorted((REPO / "sweeps").glob("*.yaml"))

TINY = {
    "name": "t",
    "base": {"backbone": "tiny_vit_p14", "weights": "random", "data": {"train": ["synthetic_a"]}},
}


def sweep_of(**sections: object) -> dict:
    data = yaml.safe_load(yaml.safe_dump(TINY))
    data.update(sections)
    return data


def error_of(data: dict) -> str:
    with pytest.raises(ConfigError) as info:
        plan(parse_sweep(data, "s.yaml"))
    return str(info.value)


def expand(sweep) -> list:
    return plan(sweep).specs


# --------------------------------------------------------------------------------------------- shipped files


def test_sweep_files_are_shipped() -> None:
    names = {p.stem for p in SWEEP_FILES}
    assert {"demo", "main_table", "sampling", "lora_rank", "domain_diagnostics"} <= names
    assert any(n.startswith("scale_") for n in names)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_sweep_file_validates_to_its_documented_count(path: Path) -> None:
    sweep = load_sweep(path)
    header = path.read_text().split("\nname:")[0]
    assert "Reproduces:" in header and "GPU-hours:" in header, f"{path.name}: header must name its table and cost"
    expected = documented_trial_count(path)
    assert expected is not None, f"{path.name}: header needs '# Trials: N'"
    the_plan = plan(sweep)
    assert the_plan.num_trials == expected
    ids = [t.trial_id for t in the_plan.trials]
    assert len(set(ids)) == len(ids)


def test_main_table_is_the_reference_grid() -> None:
    specs = expand(load_sweep(REPO / "sweeps" / "main_table.yaml"))
    assert len({s.backbone for s in specs}) == 9
    assert {s.regime for s in specs} == {"frozen", "lora"}
    assert {tuple(s.data.train) for s in specs} == {("lucchi_pp",), ("vnc",), ("lucchi_pp", "vnc")}
    # five repeats that differ in seed AND split seed (SPEC pitfall 4)
    assert {(s.seed, s.split_seed) for s in specs} == {(i, i) for i in range(5)}


@pytest.fixture(scope="module")
def em_data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in datasets' layouts in miniature: the dry run checks every file a sweep reads (17 slices each, as
    the shared Lucchi++ subset: enough for label_efficiency's 16 labelled slices, which the check counts)."""
    return write_em_layouts(tmp_path_factory.mktemp("em_data"), slices=17)


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_dry_run_prints_count_and_one_row_per_trial(
    path: Path, em_data_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(em_data_root))
    assert main(["run", str(path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    n = documented_trial_count(path)
    assert f"{n} trials" in out or f"{n} grid points" in out
    header = next(line for line in out.splitlines() if line.startswith("id "))
    the_plan = plan(load_sweep(path))
    assert header.split() == [*the_plan.labels.shown, "cpu", "gpu", *(["search"] if the_plan.sweep.search else [])]
    ids = {t.trial_id for t in the_plan.trials}
    rows = [line for line in out.splitlines() if line[:12] in ids]
    assert len(rows) == n


def test_dry_run_reports_collapsed_combinations(
    em_data_root: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VFM_ABLATE_DATA_ROOT", str(em_data_root))
    main(["run", str(REPO / "sweeps" / "lora_rank.yaml"), "--dry-run"])
    out = capsys.readouterr().out
    assert "180 trials (300 combinations, 120 collapsed" in out
    assert "lora settings dropped for regime 'frozen'" in out


def test_cli_reports_a_bad_file_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(sweep_of(axes={"regim": ["frozen"]})))
    assert main(["run", str(bad), "--dry-run"]) == 2
    assert "Did you mean 'regime'?" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- typos and invalid input


@pytest.mark.parametrize(
    ("sections", "expected"),
    [
        ({"resorces": {}}, "unknown key 'resorces'. Did you mean 'resources'?"),
        ({"run": {"max_concurent_trials": 2}}, "Did you mean 'max_concurrent_trials'?"),
        ({"tracking": {"experiement": "x"}}, "Did you mean 'experiment'?"),
        ({"axes": {"lora.rnk": [4]}}, "'rnk'. Did you mean 'rank'?"),
        ({"axes": {"optim.learning_rate": [1e-4]}}, "unknown key under optim"),
        ({"axes": {"backbone": ["tiny_vit_p15"]}}, "unknown backbone 'tiny_vit_p15'. Did you mean 'tiny_vit_p16'?"),
        ({"axes": {"data.train": [["synthetic_c"]]}}, "unknown dataset 'synthetic_c'. Did you mean 'synthetic_"),
        ({"axes": {"regime": "lora"}}, "must be a non-empty list"),
        (
            {"base": {"backbone": "tiny_vit_p14", "optim": {"lrr": 1}, "data": {"train": ["synthetic_a"]}}},
            "Did you mean 'lr'?",
        ),
        ({"search": {"num_samples": 2, "space": {"optim.lr": {"loguniform": [0, 1]}}}}, "loguniform needs low > 0"),
        (
            {"search": {"num_samples": 2, "space": {"optim.lr": {"logunifrom": [1e-5, 1e-3]}}}},
            "Did you mean 'loguniform'?",
        ),
    ],
)
def test_typos_and_bad_values_are_named_with_a_suggestion(sections: dict, expected: str) -> None:
    assert expected in error_of(sweep_of(**sections))


def test_inline_backbone_typo_gets_a_suggestion() -> None:
    entry = {
        "family": "x",
        "scale": "S",
        "library": "timm",
        "model_id": "vit_small_patch14_dinov2",
        "patch_size": 14,
        "embed_dim": 384,
        "gpu_fraction_frozn": 0.1,
    }
    assert "Did you mean 'gpu_fraction_frozen'?" in error_of(sweep_of(backbones={"mine": entry}))


def test_weighted_sampling_without_weights_is_rejected_before_ray() -> None:
    msg = error_of(sweep_of(axes={"data.train": [["synthetic_a", "synthetic_b"]], "data.sampling": ["weighted"]}))
    assert "sampling 'weighted' needs 'weights'" in msg and "s.yaml [trial" in msg


def test_balanced_sampling_needs_a_batch_size_multiple_of_the_datasets() -> None:
    data = sweep_of(
        axes={"data.train": [["synthetic_a", "synthetic_b"]], "data.sampling": ["balanced"], "optim.batch_size": [3]}
    )
    assert "batch_size must be a multiple of 2" in error_of(data)


def test_seed_axis_and_repeats_conflict() -> None:
    assert "use one of them" in error_of(sweep_of(axes={"seed": [1, 2]}, repeats=3))


def test_search_key_cannot_also_be_a_grid_axis() -> None:
    data = sweep_of(
        axes={"optim.lr": [1e-4]}, search={"num_samples": 2, "space": {"optim.lr": {"uniform": [1e-5, 1e-3]}}}
    )
    assert "both a grid axis and a search.space key" in error_of(data)


def test_resource_override_for_an_unknown_backbone_is_rejected() -> None:
    data = sweep_of(resources={"overrides": [{"backbone": "tiny_vit_p1_4", "gpu": 1}]})
    assert "Did you mean 'tiny_vit_p14'?" in error_of(data)


def test_fractional_gpu_above_one_is_rejected() -> None:
    data = sweep_of(resources={"gpu": 1.5})
    assert "fraction up to 1 or a whole number" in error_of(data)


# --------------------------------------------------------------------------------------------- expansion


def test_lora_settings_collapse_for_frozen_and_full() -> None:
    sweep = parse_sweep(sweep_of(axes={"regime": ["frozen", "full", "lora"], "lora.rank": [4, 8, 16]}), "s.yaml")
    the_plan = plan(sweep)
    assert the_plan.grid_points == 9
    assert the_plan.num_trials == 1 + 1 + 3
    assert the_plan.collapsed == 4
    assert sorted(t.spec.lora.rank for t in the_plan.trials if t.spec.regime == "lora") == [4, 8, 16]
    assert the_plan.collapse_reasons == {
        "lora settings dropped for regime 'frozen'": 3,
        "lora settings dropped for regime 'full'": 3,
    }


def test_sampling_collapses_for_a_single_train_dataset() -> None:
    data = sweep_of(
        axes={"data.train": [["synthetic_a"], ["synthetic_a", "synthetic_b"]], "data.sampling": ["natural", "balanced"]}
    )
    the_plan = plan(parse_sweep(data, "s.yaml"))
    assert the_plan.num_trials == 3
    single = [t.spec for t in the_plan.trials if len(t.spec.data.train) == 1]
    assert len(single) == 1 and single[0].data.sampling == "natural"
    assert the_plan.collapse_reasons == {"sampling dropped for a single train dataset": 1}


def test_overlapping_grids_are_deduplicated_by_trial_id() -> None:
    data = sweep_of(axes=[{"regime": ["frozen", "lora"]}, {"regime": ["lora"], "lora.rank": [16, 8]}])
    the_plan = plan(parse_sweep(data, "s.yaml"))
    assert the_plan.grid_points == 4
    assert [(t.spec.regime, t.spec.lora.rank) for t in the_plan.trials] == [("frozen", 16), ("lora", 16), ("lora", 8)]


def test_repeats_vary_seed_and_split_seed_from_the_base() -> None:
    base = {**TINY["base"], "seed": 10, "split_seed": 100}
    specs = expand(parse_sweep(sweep_of(base=base, repeats=3), "s.yaml"))
    assert [(s.seed, s.split_seed) for s in specs] == [(10, 100), (11, 101), (12, 102)]


def test_a_seed_axis_also_sets_the_split_seed() -> None:
    specs = expand(parse_sweep(sweep_of(axes={"seed": [3, 7]}), "s.yaml"))
    assert [(s.seed, s.split_seed) for s in specs] == [(3, 3), (7, 7)]


def test_section_axis_values_merge_into_the_base_section() -> None:
    base = {**TINY["base"], "regime": "lora", "lora": {"dropout": 0.1}}
    specs = expand(
        parse_sweep(sweep_of(base=base, axes={"lora": [{"rank": 4, "alpha": 8}, {"rank": 8, "alpha": 16}]}), "s.yaml")
    )
    assert [(s.lora.rank, s.lora.alpha, s.lora.dropout) for s in specs] == [(4, 8.0, 0.1), (8, 16.0, 0.1)]


def test_search_space_drops_lora_dimensions_where_they_do_not_apply() -> None:
    search = {"num_samples": 4, "space": {"optim.lr": {"loguniform": [1e-5, 1e-3]}, "lora.alpha": {"uniform": [8, 64]}}}
    the_plan = plan(parse_sweep(sweep_of(axes={"regime": ["frozen", "lora"]}, search=search), "s.yaml"))
    spaces = {t.spec.regime: sorted(t.search_space) for t in the_plan.trials}
    assert spaces == {"frozen": ["optim.lr"], "lora": ["lora.alpha", "optim.lr"]}


# --------------------------------------------------------------------------------------------- resources and entries


def test_resources_follow_the_entry_regime_and_overrides() -> None:
    data = {
        "name": "r",
        "base": {"backbone": "dinov2_vits14_reg", "data": {"train": ["lucchi_pp"]}},
        "axes": {"backbone": ["dinov2_vits14_reg", "dinov2_vitg14_reg"], "regime": ["frozen", "lora"]},
        "resources": {"cpu": 2, "overrides": [{"backbone": "dinov2_vitg14_reg", "regime": "lora", "gpu": 1, "cpu": 6}]},
    }
    got = {
        (t.spec.backbone, t.spec.regime): (t.resources.cpu, t.resources.gpu)
        for t in plan(parse_sweep(data, "r.yaml")).trials
    }
    assert got == {
        ("dinov2_vits14_reg", "frozen"): (2.0, 0.25),
        ("dinov2_vits14_reg", "lora"): (2.0, 0.25),
        ("dinov2_vitg14_reg", "frozen"): (2.0, 0.5),  # the entry's gpu_fraction_frozen
        ("dinov2_vitg14_reg", "lora"): (6.0, 1.0),  # the override
    }


def test_inline_entries_reach_trials_with_absolute_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    data = sweep_of(
        base={**TINY["base"], "data": {"train": ["mine"]}},
        datasets={"mine": {"layout": "folder", "path": "rel/data"}},
    )
    sweep = parse_sweep(data, "s.yaml")
    datasets = plan(sweep).datasets
    assert datasets["mine"].path == str(tmp_path / "rel" / "data")


# --------------------------------------------------------------------------------------------- storage guards


def test_a_fresh_run_refuses_to_mix_into_an_existing_sweep(tmp_path: Path) -> None:
    sweep = parse_sweep(sweep_of(), "t.yaml")
    TrialStore(str(tmp_path / "t")).write_json("sweep.json", {"name": "t", "sweep_id": "x", "trial_ids": []})
    with pytest.raises(ConfigError, match="add --resume"):
        run_sweep(plan(sweep), storage_path=str(tmp_path), workdir=tmp_path)
    with pytest.raises(ConfigError, match="the sweep changed since it was started"):
        run_sweep(plan(sweep), storage_path=str(tmp_path), workdir=tmp_path, resume=True)


def test_trial_store_round_trip(tmp_path: Path) -> None:
    store = TrialStore(str(tmp_path / "s"))
    name = store.start_attempt("abc", {"node_id": "n1"})
    store.end_attempt("abc", name, "FAILED", ValueError("bad\nvalue"))
    store.write_json("trials/abc/result.json", {"metrics": {"iou_fg/x": 0.5}})
    assert store.result("abc") == {"metrics": {"iou_fg/x": 0.5}}
    assert store.results() == {"abc": {"metrics": {"iou_fg/x": 0.5}}}
    [attempt] = store.attempts("abc")
    assert attempt["node_id"] == "n1" and attempt["status"] == "FAILED" and attempt["error"] == "ValueError: bad value"
    assert "Traceback" in attempt["traceback"] or "ValueError" in attempt["traceback"]


@pytest.mark.parametrize("path", SWEEP_FILES, ids=lambda p: p.stem)
def test_every_trial_reads_back_from_its_flat_params(path: Path) -> None:
    """What the report does with runs logged before the spec itself was: MLflow's flat strings give the same
    TrialSpec, for every trial of every shipped sweep."""
    from vfm_ablate.config import TrialSpec

    for spec in plan(load_sweep(path)).specs:
        assert TrialSpec.from_flat_params(spec.flat_params()) == spec
