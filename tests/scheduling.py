"""The order the suite runs in, so that README's parallel test command (`pytest -n 4`) ends soon after its longest
test: longest files first, a file's tests on one worker (its module fixtures set up once), and a worker whose long
test is waiting for a companion (xdist runs a test only once it knows the next) given the lightest file, not the
next long one.

A test's cost is what its `slow` mark says it takes alone on 2 idle cores (`@pytest.mark.slow(seconds=270)`); a
slow test that states none counts `SLOW_DEFAULT_S`, a fast one `FAST_S`. The figures only order the run: a wrong
one makes the run longer, never a test pass or fail.
"""

from __future__ import annotations

from collections import defaultdict

import pytest

SLOW_DEFAULT_S = 10.0
FAST_S = 0.3


def expected_seconds(item: pytest.Item) -> float:
    mark = item.get_closest_marker("slow")
    return FAST_S if mark is None else float(mark.kwargs.get("seconds", SLOW_DEFAULT_S))


def file_of(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Files by their tests' summed cost, longest first; a file's tests stay together and in their order."""
    per_file: dict[str, float] = defaultdict(float)
    for item in items:
        per_file[file_of(item)] += expected_seconds(item)
    items.sort(key=lambda item: -per_file[file_of(item)])  # stable: ties keep collection order


try:
    from xdist.scheduler import LoadFileScheduling
except ImportError:  # without pytest-xdist the suite runs in one process, in the same order
    pass
else:

    class LongestFirstScheduling(LoadFileScheduling):
        """`--dist loadfile` with the collection's order kept (longest files first) and light fillers."""

        def __init__(self, config: pytest.Config, log: object = None) -> None:
            config.option.loadscopereorder = False  # xdist would reorder files by their number of tests
            super().__init__(config, log)

        def _reschedule(self, node) -> None:  # noqa: ANN001 (xdist's WorkerController)
            """xdist's rule, except that a lone test waiting for a next one (xdist runs a test only once it knows the
            next) gets the lightest file, so that no long test waits behind it."""
            if self.workqueue and not node.shutting_down and self._pending_of(self.assigned_work[node]) == 1:
                self.workqueue.move_to_end(next(reversed(self.workqueue)), last=False)
            super()._reschedule(node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> LoadFileScheduling | None:
        return LongestFirstScheduling(config, log) if config.getvalue("dist") == "loadfile" else None
