"""Content digests of input files (checkpoints, dataset images), each file hashed once per machine.

A trial's identity covers the bytes it reads, not where they lie or when they were written: a dataset copied to
another mount (or `$VFM_ABLATE_DATA_ROOT` pointing at an identical copy) keeps its identity; a file re-exported
under the same name and size does not. Hashing is the expensive part, so digests are cached in
`$XDG_CACHE_HOME/vfm_ablate/file_digests.json` (default `~/.cache`), keyed by absolute path and valid while the
file's size and modification time are unchanged; a launch after the first costs one `stat` per file.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from filelock import FileLock

CACHE_FILE = "file_digests.json"


def cache_path() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vfm_ablate" / CACHE_FILE


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def file_digests(paths: list[Path]) -> dict[Path, tuple[int, str]]:
    """(size, sha256) of each file; files whose size and mtime match the cache are not read again."""
    stats = {p: p.stat() for p in dict.fromkeys(Path(p).resolve() for p in paths)}
    cache_file = cache_path()
    cached = _load(cache_file)
    out: dict[Path, tuple[int, str]] = {}
    todo: list[Path] = []
    for p, st in stats.items():
        hit = cached.get(str(p))
        if hit is not None and hit[0] == st.st_size and hit[1] == st.st_mtime_ns:
            out[p] = (st.st_size, hit[2])
        else:
            todo.append(p)
    if todo:
        with ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1))) as pool:  # hashlib releases the GIL
            for p, digest in zip(todo, pool.map(_sha256, todo)):
                out[p] = (stats[p].st_size, digest)
        _store(cache_file, {str(p): [stats[p].st_size, stats[p].st_mtime_ns, out[p][1]] for p in todo})
    return out


def _load(cache_file: Path) -> dict[str, list]:
    try:
        data = json.loads(cache_file.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _store(cache_file: Path, new: dict[str, list]) -> None:
    """Merge under a lock (several drivers may share a home folder); a cache that cannot be written only costs time."""
    try:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(cache_file) + ".lock", timeout=30):
            merged = {**_load(cache_file), **new}
            tmp = cache_file.with_name(f"{cache_file.name}.tmp-{os.getpid()}")
            tmp.write_text(json.dumps(merged))
            tmp.replace(cache_file)
    except OSError:
        pass
