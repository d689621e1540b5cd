"""Output paths of the commands that write them (`train`, `data synth`, `calibrate`, `report`, `diagnose`): checked
before any work, so that minutes of training or measuring never end in "cannot write"; and a failed command leaves
no empty folder behind."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConfigError


@contextmanager
def removed_if_left_empty(out: Path) -> Iterator[None]:
    """On failure, remove the folders of `out` (and its missing parents) that this command created and left empty;
    whatever it did write stays."""
    created = [p for p in [out, *out.parents] if not p.exists()]
    try:
        yield
    except BaseException:
        _remove_empty(created)
        raise


def _remove_empty(created: list[Path]) -> None:
    for folder in created:  # deepest first
        try:
            folder.rmdir()  # only if empty
        except OSError:
            break


def check_output_folder(path: Path, what: str) -> None:
    """A folder the command will write into can be made and written: no file in its way, not a place such as /proc
    where nothing can be created, permissions. Leaves nothing behind (folders it made to find out are removed)."""
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{what} {path}: is a file; expected a folder (or a path where one can be made)")
    _check_folder(path, f"{what} {path}")


def check_output_file(path: Path, what: str) -> None:
    """A file the command will write at its end can be written: its folder can be made and written, and the path is
    not a folder, nor a file this process may not replace."""
    path = path.expanduser()
    if path.is_dir():
        raise ConfigError(f"{what} {path}: is a folder; expected a file name")
    if path.exists() and not os.access(path, os.W_OK):
        raise ConfigError(f"{what} {path}: exists and cannot be written")
    _check_folder(path.parent, f"{what} {path}")


def _check_folder(path: Path, shown: str) -> None:
    blocker = next((p for p in [path, *path.parents] if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise ConfigError(f"{shown}: {blocker} is a file, not a folder")
    created = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vfm-write-check-"):
            pass
    except OSError as err:
        raise ConfigError(f"{shown}: cannot create or write it ({err.strerror or err})") from None
    finally:
        _remove_empty(created)
