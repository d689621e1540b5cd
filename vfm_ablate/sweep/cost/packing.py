"""How long a sweep takes on a cluster: a simulation of the scheduler packing its trials onto nodes.

Model of Ray's placement (one bundle per trial, see `sweep/trainable.trial_resources`): trials are offered in
sweep order whenever something finishes; each starts on the first node with enough free CPUs and, for a GPU
share up to 1, one GPU with that much free (the fullest one that still fits, so shares pack), or for k whole
GPUs, k idle GPUs of one node. A trial that does not fit waits while later trials that do fit start (backfill).
`max_concurrent` caps the trials running at once. Packed trials are assumed to run at their measured speed: on a
compute-bound GPU they slow each other down, so a makespan with shares below 1 is a lower bound.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...errors import ConfigError
from ...validation import load_yaml

EPS = 1e-9


@dataclass(frozen=True)
class Node:
    cpus: float
    gpus: int

    def describe(self) -> str:
        cpus = "any CPUs" if math.isinf(self.cpus) else f"{self.cpus:g} CPUs"
        return f"{self.gpus} GPU, {cpus}" if self.gpus else cpus


@dataclass(frozen=True)
class Job:
    seconds: float
    cpu: float = 1.0
    gpu: float = 0.0


@dataclass(frozen=True)
class Placement:
    job: int
    node: int
    gpus: tuple[int, ...]
    start: float
    end: float


@dataclass(frozen=True)
class Schedule:
    placements: list[Placement]  # in job order

    @property
    def makespan(self) -> float:
        return max((p.end for p in self.placements), default=0.0)


class _NodeState:
    def __init__(self, node: Node) -> None:
        self.cpus = node.cpus
        self.gpu_free = [1.0] * node.gpus

    def fit(self, job: Job) -> tuple[int, ...] | None:
        """The GPUs this job would take here (empty tuple: CPU only), or None if it does not fit."""
        if job.cpu > self.cpus + EPS:
            return None
        if job.gpu <= 0:
            return ()
        if job.gpu <= 1 + EPS:
            fitting = [i for i, free in enumerate(self.gpu_free) if free + EPS >= job.gpu]
            return (min(fitting, key=lambda i: self.gpu_free[i]),) if fitting else None
        idle = [i for i, free in enumerate(self.gpu_free) if free >= 1 - EPS]
        whole = int(round(job.gpu))
        return tuple(idle[:whole]) if len(idle) >= whole else None

    def take(self, job: Job, gpus: tuple[int, ...], sign: float = 1.0) -> None:
        self.cpus -= sign * job.cpu
        share = job.gpu if job.gpu <= 1 + EPS else 1.0
        for i in gpus:
            self.gpu_free[i] -= sign * share


def simulate(jobs: list[Job], nodes: list[Node], max_concurrent: int | None = None) -> Schedule:
    """Start, end, node and GPUs of every job; a job no node could ever hold is an error naming it."""
    for j, job in enumerate(jobs):
        if not any(_NodeState(n).fit(job) is not None for n in nodes):
            raise ConfigError(
                f"trial {j + 1} asks for {job.cpu:g} CPU and {job.gpu:g} GPU; no node of the cluster "
                f"({'; '.join(n.describe() for n in nodes) or 'no nodes'}) can ever hold it"
            )
    state = [_NodeState(n) for n in nodes]
    pending = list(range(len(jobs)))
    running: list[tuple[float, int]] = []
    where: dict[int, tuple[int, tuple[int, ...]]] = {}
    placements: dict[int, Placement] = {}
    now = 0.0
    while pending or running:
        for j in list(pending):
            if max_concurrent is not None and len(running) >= max_concurrent:
                break
            for n, node in enumerate(state):
                gpus = node.fit(jobs[j])
                if gpus is not None:
                    node.take(jobs[j], gpus)
                    where[j] = (n, gpus)
                    placements[j] = Placement(j, n, gpus, now, now + jobs[j].seconds)
                    heapq.heappush(running, (now + jobs[j].seconds, j))
                    pending.remove(j)
                    break
        now, j = heapq.heappop(running)
        n, gpus = where[j]
        state[n].take(jobs[j], gpus, sign=-1.0)
        while running and running[0][0] <= now + EPS:  # everything ending at the same moment frees at once
            _, k = heapq.heappop(running)
            state[where[k][0]].take(jobs[k], where[k][1], sign=-1.0)
    return Schedule([placements[j] for j in range(len(jobs))])


def gpu_nodes(count: int, cpus_per_node: float = math.inf) -> list[Node]:
    """`--gpus N`: N single-GPU nodes."""
    if count < 1:
        raise ConfigError(f"--gpus must be at least 1, got {count}")
    return [Node(cpus=cpus_per_node, gpus=1) for _ in range(count)]


def cluster_nodes(path: str | Path) -> list[Node]:
    """The largest cluster a Ray cluster-launcher file can scale to: every worker type at its max_workers
    (capped by the file's global max_workers), plus the head."""
    data: Any = load_yaml(path)
    types = data.get("available_node_types") if isinstance(data, dict) else None
    if not isinstance(types, dict) or not types:
        raise ConfigError(f"{path}: no available_node_types (expected a Ray cluster-launcher file)")
    head = data.get("head_node_type", "head")
    budget = data.get("max_workers")  # the cluster's cap on workers of all types together
    nodes: list[Node] = []
    for name, node_type in types.items():
        resources = (node_type or {}).get("resources") or {}
        count = 1 if name == head else int((node_type or {}).get("max_workers", 0))
        if name != head and budget is not None:
            count = min(count, int(budget))
            budget = int(budget) - count
        node = Node(cpus=float(resources.get("CPU", 0)), gpus=int(resources.get("GPU", 0)))
        nodes.extend([node] * count)
    if not nodes:
        raise ConfigError(f"{path}: its node types have no workers (max_workers 0)")
    return nodes
