"""Output folders of the commands that write one (`train`, `diagnose`): a failed command leaves no empty one."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def removed_if_left_empty(out: Path) -> Iterator[None]:
    """On failure, remove the folders of `out` (and its missing parents) that this command created and left empty;
    whatever it did write stays."""
    created = [p for p in [out, *out.parents] if not p.exists()]
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()  # only if empty
            except OSError:
                break
        raise
