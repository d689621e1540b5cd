"""The makespan simulation against schedules computed by hand."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from vfm_ablate.errors import ConfigError
from vfm_ablate.sweep.cost.packing import Job, Node, cluster_nodes, gpu_nodes, simulate

H = 3600.0


def test_four_one_hour_and_two_two_hour_trials_at_half_a_gpu_on_two_gpus() -> None:
    # 4 slots (2 GPUs x 2 halves). Short trials first: 0-1 h four short ones; 1-3 h the two long ones -> 3 h.
    short_first = [Job(1 * H, gpu=0.5)] * 4 + [Job(2 * H, gpu=0.5)] * 2
    schedule = simulate(short_first, gpu_nodes(2))
    assert schedule.makespan == pytest.approx(3 * H)
    assert [p.start for p in schedule.placements] == [0, 0, 0, 0, H, H]
    # Long trials first: 0-2 h both long ones and two short ones, 1-2 h the other two short ones -> 2 h.
    long_first = [Job(2 * H, gpu=0.5)] * 2 + [Job(1 * H, gpu=0.5)] * 4
    schedule = simulate(long_first, gpu_nodes(2))
    assert schedule.makespan == pytest.approx(2 * H)
    assert [p.start for p in schedule.placements] == [0, 0, 0, 0, H, H]
    # two halves share each GPU: never more than 1.0 of a GPU at once
    for t in (0.5 * H, 1.5 * H):
        for node in (0, 1):
            held = sum(0.5 for p in schedule.placements if p.node == node and p.start <= t < p.end)
            assert held == 1.0


def test_whole_gpu_trials_wait_for_idle_gpus_and_smaller_ones_backfill() -> None:
    # 1 node, 2 GPUs. A (1 h, 1 GPU) starts at 0; B (1 h, 2 GPUs) cannot start until A ends;
    # C (0.5 h, 0.5 GPU) backfills the idle GPU at 0. B runs 1-2 h -> makespan 2 h.
    jobs = [Job(1 * H, gpu=1), Job(1 * H, gpu=2), Job(0.5 * H, gpu=0.5)]
    schedule = simulate(jobs, [Node(cpus=8, gpus=2)])
    starts = [p.start for p in schedule.placements]
    assert starts == [0, H, 0]
    assert schedule.placements[1].gpus == (0, 1)
    assert schedule.makespan == pytest.approx(2 * H)


def test_cpus_and_max_concurrent_limit_what_runs_at_once() -> None:
    # 2 CPUs, 1 CPU per trial: pairs. 3 trials of 10 s -> 20 s; with max_concurrent 1 -> 30 s.
    jobs = [Job(10.0, cpu=1)] * 3
    assert simulate(jobs, [Node(cpus=2, gpus=0)]).makespan == pytest.approx(20.0)
    assert simulate(jobs, [Node(cpus=2, gpus=0)], max_concurrent=1).makespan == pytest.approx(30.0)
    # a node's CPUs bound the trials sharing its GPU: 4 quarter-GPU trials, 2 CPUs each, 4 CPUs -> 2 at once
    quarter = [Job(10.0, cpu=2, gpu=0.25)] * 4
    assert simulate(quarter, [Node(cpus=4, gpus=1)]).makespan == pytest.approx(20.0)


def test_a_trial_no_node_can_hold_is_an_error() -> None:
    with pytest.raises(ConfigError, match="trial 2 asks for 1 CPU and 2 GPU"):
        simulate([Job(1.0, gpu=1), Job(1.0, gpu=2)], gpu_nodes(4))


def test_cluster_yaml_at_its_largest(tmp_path: Path) -> None:
    nodes = cluster_nodes(Path(__file__).parents[1] / "cluster.yaml")
    gpu = [n for n in nodes if n.gpus]
    assert len(gpu) == 8 and all(n.gpus == 1 and n.cpus == 26 for n in gpu)
    assert len(nodes) == 9  # + the CPU head
    capped = tmp_path / "c.yaml"
    capped.write_text(
        "max_workers: 3\nhead_node_type: h\navailable_node_types:\n"
        "  h: {resources: {CPU: 2}}\n  a: {max_workers: 2, resources: {CPU: 4, GPU: 2}}\n"
        "  b: {max_workers: 5, resources: {CPU: 4, GPU: 1}}\n"
    )
    assert sorted(n.gpus for n in cluster_nodes(capped)) == [0, 1, 2, 2]  # 3 workers in all
    assert math.isinf(gpu_nodes(2)[0].cpus)
