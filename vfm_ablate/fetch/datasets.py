"""Install a built-in dataset from its public archive, laid out exactly as the loaders read it.

    <data root>/.downloads/<source>/<archive>   the download (pooch: a temporary file, moved in place only after
                                                the checksum matched; deleted once unpacked)
    <data root>/.downloads/<source>/<archive>.sha256   the pinned checksum of a source that has no published one
    <data root>/.<folder>.partial-<pid>/        the archive unpacked here first ...
    <data root>/<folder>/                       ... then renamed in one step, with a marker file recording the
                                                source and checksum; a folder with that marker is never fetched again

An interrupted download restarts from zero (a truncated transfer is retried a few times at once); whatever a killed
run left behind (temporary files, a half-unpacked folder) is removed by the next run, under a per-source file lock
so that two fetches on a shared filesystem do not race. A dataset folder that was put there by hand is never
touched: it is checked, and used if it checks clean.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
import zipfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..data.check import CheckReport, check_dataset
from ..data.entries import DatasetEntry, builtin_datasets, data_root
from ..errors import DataError
from .sources import DatasetSource

DOWNLOADS = ".downloads"
MARKER = ".vfm-ablate-source.json"
DOWNLOAD_ATTEMPTS = 3  # a transfer cut off half-way is restarted this many times in all before giving up

Log = Callable[[str], None]


@dataclass
class DatasetInstall:
    """What `install_source` did for one source."""

    source: str
    folder: Path
    action: str  # "present" (fetched before), "by hand" (a folder not made by fetch, checks clean), "installed"
    sha256: str | None
    pinned: bool = False  # the checksum was pinned by this download (the source has no published one)
    checks: list[CheckReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def source_entries(source: DatasetSource, root: Path) -> list[DatasetEntry]:
    """The built-in dataset entries this source provides, reading `root / source.folder`."""
    builtins = builtin_datasets()
    folder = str((root / source.folder).resolve())
    return [builtins[name].model_copy(update={"path": folder}) for name in source.datasets if name in builtins]


def install_source(
    source: DatasetSource,
    root: Path | None = None,
    *,
    check: bool = True,
    progressbar: bool = False,
    log: Log = print,
) -> DatasetInstall:
    """Download, verify and unpack `source` under the data root (default $VFM_ABLATE_DATA_ROOT), then `data check`.

    A no-op (no network) when the folder already holds this source. Raises DataError naming the file on a checksum
    mismatch, a failed download or an archive without the expected layout; nothing half-written is left behind.
    """
    from filelock import FileLock

    root = (root or data_root()).expanduser().resolve()
    target = root / source.folder
    workdir = root / DOWNLOADS / source.name
    workdir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(workdir / ".lock")):
        _remove_leftovers(root, source, workdir)
        done = _read_marker(target)
        if done is not None:
            if source.sha256 and done.get("sha256") != source.sha256:
                log(
                    f"note: {target} was fetched from an archive with sha256 {done.get('sha256')}, the registry now "
                    f"names {source.sha256}; delete the folder and fetch again to update it"
                )
            result = DatasetInstall(source.name, target, "present", done.get("sha256"))
        elif target.exists():
            result = DatasetInstall(source.name, target, "by hand", None)
        else:
            result = _download_and_unpack(source, root, workdir, progressbar, log)
    if check or result.action == "by hand":
        result.checks = [check_dataset(entry) for entry in source_entries(source, root)]
    if result.action == "by hand" and not result.ok:
        problem = next(p for c in result.checks for p in c.problems)
        raise DataError(
            f"{target} exists but was not made by `vfm-ablate fetch` and does not check clean ({problem}); "
            "fix it, or move it away and run fetch again"
        )
    return result


def pinned_sha256(source: DatasetSource, root: Path | None = None) -> str | None:
    """The checksum a download must match: the published one, else the one pinned by the first download."""
    if source.sha256:
        return source.sha256
    pin = (root or data_root()).expanduser().resolve() / DOWNLOADS / source.name / f"{source.archive}.sha256"
    return pin.read_text().split()[0] if pin.is_file() else None


# ------------------------------------------------------------------------------------------------- internals


def _read_marker(folder: Path) -> dict | None:
    try:
        return json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _remove_leftovers(root: Path, source: DatasetSource, workdir: Path) -> None:
    """What a killed run left: pooch's temporary download files and half-unpacked folders (we hold the lock)."""
    for tmp in workdir.glob("tmp*"):
        tmp.unlink(missing_ok=True)
    for partial in root.glob(f".{source.folder}.partial-*"):
        shutil.rmtree(partial, ignore_errors=True)


def _download_and_unpack(
    source: DatasetSource, root: Path, workdir: Path, progressbar: bool, log: Log
) -> DatasetInstall:
    known = pinned_sha256(source, root)
    archive = _download(source, workdir, known, progressbar, log)
    import pooch

    digest = pooch.file_hash(str(archive), alg="sha256")
    pinned = known is None
    if pinned:
        (workdir / f"{source.archive}.sha256").write_text(f"{digest}  {source.archive}\n")
        log(
            f"{source.archive}: no published checksum, so this download was pinned: sha256 {digest} (later "
            f"downloads must match it; add sha256='{digest}' to the '{source.name}' source in "
            "vfm_ablate/fetch/sources.py once you trust it)"
        )
    staging = root / f".{source.folder}.partial-{os.getpid()}"
    try:
        count = _unpack(archive, source, staging)
        marker = {
            "source": source.name,
            "url": source.download_url(),
            "archive": source.archive,
            "sha256": digest,
            "files": count,
            "fetched": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (staging / MARKER).write_text(json.dumps(marker, indent=1) + "\n")
        os.replace(staging, root / source.folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        archive.unlink(missing_ok=True)  # unpacked, or of the wrong layout (a killed unpack keeps it: reused)
    log(f"{source.name}: {count} files unpacked into {root / source.folder}")
    return DatasetInstall(source.name, root / source.folder, "installed", digest, pinned=pinned)


@contextmanager
def _quiet_pooch():
    """pooch logs each download and, without a known hash, advises editing *its* call: our messages replace both."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download(source: DatasetSource, workdir: Path, known: str | None, progressbar: bool, log: Log) -> Path:
    import pooch
    import requests

    url = source.download_url()
    log(f"{source.name}: downloading {url}" + (f" (sha256 {known[:12]}...)" if known else " (no known checksum)"))
    for attempt in range(1, DOWNLOAD_ATTEMPTS + 1):
        try:
            with _quiet_pooch():
                path = pooch.retrieve(
                    url, known_hash=known, fname=source.archive, path=workdir, progressbar=progressbar
                )
            return Path(path)
        except ValueError as err:  # pooch: the downloaded file's hash differs (the temporary file is deleted)
            raise DataError(
                f"{source.archive} (from {url}): checksum mismatch, nothing was installed. {err} If the archive "
                f"changed upstream, check it and update the '{source.name}' source (vfm_ablate/fetch/sources.py)"
                + ("" if source.sha256 else f" or delete the pin {workdir / (source.archive + '.sha256')}")
            ) from None
        except requests.RequestException as err:
            if attempt == DOWNLOAD_ATTEMPTS:
                raise DataError(
                    f"{source.archive}: download from {url} failed {DOWNLOAD_ATTEMPTS} times "
                    f"({type(err).__name__}: {err}); nothing was installed, run fetch again to restart it"
                ) from None
            name = type(err).__name__
            log(f"{source.archive}: download failed ({name}); restarting it ({attempt + 1}/{DOWNLOAD_ATTEMPTS})")
    raise AssertionError("unreachable")


def _unpack(archive: Path, source: DatasetSource, staging: Path) -> int:
    """Copy the source's members from the archive into `staging`, refusing paths that would leave it."""
    prefix = source.archive_root.strip("/") + "/"
    found = dict.fromkeys(source.members, 0)
    count = 0
    try:
        with zipfile.ZipFile(archive) as zf:
            for info in zf.infolist():
                if info.is_dir() or not info.filename.startswith(prefix):
                    continue
                rel = PurePosixPath(info.filename[len(prefix) :])
                if rel.is_absolute() or ".." in rel.parts:
                    raise DataError(f"{archive}: refusing archive member '{info.filename}' (leaves the folder)")
                member = next((m for m in source.members if rel.as_posix() == m or rel.is_relative_to(m)), None)
                if member is None:
                    continue
                out = staging / rel
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                found[member] += 1
                count += 1
    except zipfile.BadZipFile as err:
        raise DataError(f"{archive}: not a readable zip archive ({err})") from None
    missing = [m for m, n in found.items() if n == 0]
    if missing:
        raise DataError(
            f"{archive} has no {', '.join(prefix + m for m in missing)}: the archive's layout is not the one the "
            f"'{source.name}' source describes (vfm_ablate/fetch/sources.py)"
        )
    return count
