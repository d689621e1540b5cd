"""Whether the trials can ever be scheduled: a trial asking for more CPUs or GPUs than any node has waits forever
(Ray Tune keeps it PENDING and prints nothing). On this machine's own Ray that is an error before anything starts
(`run` and `--dry-run`); on a joined cluster, whose autoscaler may add larger nodes, it is said up front, naming
the trials, what they ask for, and the largest node there is."""

from __future__ import annotations

import os
from typing import TextIO

from ..errors import ConfigError
from .cost.packing import Node
from .plan import PlannedTrial


def local_node(num_cpus: int | None, num_gpus: int | None) -> Node:
    """What the local Ray `run` starts will hold: --num-cpus / run.num_cpus, else every core; run.num_gpus, else
    every visible GPU (as Ray itself counts them)."""
    if num_gpus is None:
        import torch

        num_gpus = torch.cuda.device_count()
    return Node(float(num_cpus or os.cpu_count() or 1), int(num_gpus))


def unschedulable(trials: list[PlannedTrial], nodes: list[Node]) -> dict[str, list[PlannedTrial]]:
    """Trials no node can hold, grouped by what they ask for. A trial asking for GPUs where no node has any runs
    on CPUs on a machine of its own (the driver drops its GPU ask), so only the CPU ask counts there."""
    any_gpu = any(n.gpus > 0 for n in nodes)
    out: dict[str, list[PlannedTrial]] = {}
    for t in trials:
        gpu = t.resources.gpu if any_gpu else 0.0
        if not any(n.cpus >= t.resources.cpu and n.gpus >= gpu for n in nodes):
            out.setdefault(f"{t.resources.cpu:g} CPU, {gpu:g} GPU", []).append(t)
    return out


def _listing(groups: dict[str, list[PlannedTrial]]) -> str:
    parts = []
    for ask, trials in groups.items():
        names = ", ".join(t.label.short for t in trials[:3])
        names += f" and {len(trials) - 3} more" if len(trials) > 3 else ""
        parts.append(f"{len(trials)} trial(s) ask for {ask} ({names})")
    return "; ".join(parts)


def check_local(trials: list[PlannedTrial], node: Node, source: str) -> None:
    """On this machine's own Ray: a trial that can never start is a ConfigError naming it and the fix."""
    groups = unschedulable(trials, [node])
    if groups:
        raise ConfigError(
            f"{source}: {_listing(groups)}, but the local Ray holds {node.describe()}, so they could never start "
            "and the sweep would wait forever: lower resources.cpu / resources.gpu (or their overrides), or give "
            "Ray more (--num-cpus, run.num_cpus, run.num_gpus)"
        )


def local_note(trials: list[PlannedTrial], node: Node) -> str | None:
    """For a dry run, which may be planning for a cluster: the trials this machine's own Ray could not hold."""
    groups = unschedulable(trials, [node])
    if not groups:
        return None
    return (
        f"note: {_listing(groups)}: more than this machine's own Ray holds ({node.describe()}); `run` here would "
        "refuse them, a cluster (--address) needs a node that large"
    )


def note_cluster(trials: list[PlannedTrial], nodes: list[Node], out: TextIO) -> None:
    """On a joined cluster: say which trials wait for a node larger than any there is now."""
    groups = unschedulable(trials, nodes)
    if groups:
        largest = max(nodes, key=lambda n: (n.gpus, n.cpus)) if nodes else Node(0.0, 0)
        print(
            f"note: {_listing(groups)}; no node of the cluster has that now (the largest: {largest.describe()}): they "
            "wait (PENDING) until a node that has joins, e.g. one the autoscaler adds",
            file=out,
            flush=True,
        )
