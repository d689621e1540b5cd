"""Durable per-trial records of a sweep under `<storage>/<sweep name>`, on any filesystem pyarrow reaches.

The trial writes its own records (attempts, outputs, result.json); `--resume` trusts them over Ray's experiment
state, which is saved only every few seconds.
"""

from __future__ import annotations

import json
import os
import time
import traceback
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .spec import SweepSpec

STORAGE_ENV = "VFM_ABLATE_STORAGE_PATH"  # a cluster's shared results location (set once in cluster.yaml / sbatch)
DEFAULT_STORAGE = "./ray_results"


class TrialStore:
    """Per-trial records under `<storage>/<sweep>` on any filesystem pyarrow reaches (local, NFS, s3://, gs://)."""

    def __init__(self, root: str):
        import pyarrow.fs as pafs

        self.root = root
        if "://" in root:
            self._fs, self._base = pafs.FileSystem.from_uri(root)
        else:
            self._fs, self._base = pafs.LocalFileSystem(), str(Path(root).resolve())

    def __reduce__(self) -> tuple[Any, tuple[str]]:  # ship only the root to Ray workers
        return (TrialStore, (self.root,))

    def _path(self, rel: str) -> str:
        return f"{self._base.rstrip('/')}/{rel}" if rel else self._base

    def write_text(self, rel: str, text: str) -> None:
        self.write_bytes(rel, text.encode())

    def write_bytes(self, rel: str, data: bytes) -> None:
        """Write-then-rename, so a reader never sees half a file (rename is atomic on local/NFS stores; an
        object store's upload appears whole)."""
        path = self._path(rel)
        self._fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
        tmp = f"{path}.tmp-{os.getpid()}-{time.monotonic_ns()}"
        with self._fs.open_output_stream(tmp) as out:
            out.write(data)
        self._fs.move(tmp, path)

    def read_bytes(self, rel: str) -> bytes | None:
        """The file's content, or None when it does not exist (yet)."""
        try:
            with self._fs.open_input_stream(self._path(rel)) as src:
                return src.read()
        except FileNotFoundError:
            return None

    def delete(self, rel: str) -> None:
        try:
            self._fs.delete_file(self._path(rel))
        except FileNotFoundError:
            pass

    def write_json(self, rel: str, payload: Any) -> None:
        self.write_text(rel, json.dumps(payload, indent=2, sort_keys=True, default=str))

    def read_json(self, rel: str) -> Any | None:
        """A record's data, None when it does not exist; a damaged one (truncated, overwritten) is a ConfigError
        naming the file and how to recover. Records are written whole (`write_bytes`): damage comes from outside."""
        import pyarrow.fs as pafs

        path = self._path(rel)
        if self._fs.get_file_info(path).type != pafs.FileType.File:
            return None
        with self._fs.open_input_stream(path) as src:
            raw = src.read()
        try:
            return json.loads(raw.decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ConfigError(
                f"{self.root}/{rel}: a damaged record, not valid JSON ({err}; {len(raw)} bytes): {_recovery(rel)}"
            ) from None

    def check_records(self) -> None:
        """Every trial record readable, before a resume starts anything (a damaged one fails here, with the file
        named, instead of inside a trial or after the sweep)."""
        damaged = []
        for tid in self.list_names("trials"):
            for rel in [
                f"trials/{tid}/result.json",
                *(f"trials/{tid}/attempts/{n}" for n in self.list_names(f"trials/{tid}/attempts")),
            ]:
                try:
                    self.read_json(rel)
                except ConfigError as err:
                    damaged.append(str(err))
        if len(damaged) == 1:
            raise ConfigError(damaged[0])
        if damaged:
            raise ConfigError(f"{len(damaged)} damaged trial records:\n- " + "\n- ".join(damaged[:10]))

    def list_names(self, rel: str) -> list[str]:
        import pyarrow.fs as pafs

        infos = self._fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if ".tmp-" not in i.base_name)

    def upload_dir(self, local: Path, rel: str) -> None:
        import pyarrow.fs as pafs

        dest = self._path(rel)
        self._fs.create_dir(dest, recursive=True)
        pafs.copy_files(str(local), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self._fs)

    # ---- trial records

    def result(self, trial_id: str) -> dict[str, Any] | None:
        return self.read_json(f"trials/{trial_id}/result.json")

    def results(self) -> dict[str, dict[str, Any]]:
        out = {}
        for tid in self.list_names("trials"):
            record = self.result(tid)
            if record is not None:
                out[tid] = record
        return out

    def attempts(self, trial_id: str) -> list[dict[str, Any]]:
        names = self.list_names(f"trials/{trial_id}/attempts")
        return [a for a in (self.read_json(f"trials/{trial_id}/attempts/{n}") for n in names) if a is not None]

    def start_attempt(self, trial_id: str, info: dict[str, Any]) -> str:
        name = f"{time.time_ns()}-{os.getpid()}.json"
        self.write_json(f"trials/{trial_id}/attempts/{name}", {**info, "start": time.time(), "status": "RUNNING"})
        return name

    def end_attempt(
        self, trial_id: str, name: str, status: str, error: BaseException | None = None, **extra: Any
    ) -> None:
        rel = f"trials/{trial_id}/attempts/{name}"
        record = self.read_json(rel) or {}
        update: dict[str, Any] = {"end": time.time(), "status": status, **extra}
        if error is not None:
            update["error"] = error_summary(error)
            update["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))
        self.write_json(rel, {**record, **update})

    def close_running_attempts(self, trial_id: str, reason: str, keep: str | None = None) -> int:
        """End earlier attempts still marked RUNNING as KILLED: their process is gone (Ray runs one attempt of a trial
        at a time, and a launch only starts once the previous driver is gone). No `end` time: it is unknown."""
        closed = 0
        for name in self.list_names(f"trials/{trial_id}/attempts"):
            rel = f"trials/{trial_id}/attempts/{name}"
            record = self.read_json(rel) if name != keep else None
            if record is not None and record.get("status") == "RUNNING":
                self.write_json(rel, {**record, "status": "KILLED", "closed": time.time(), "closed_because": reason})
                closed += 1
        return closed

    def close_all_running_attempts(self, reason: str) -> int:
        return sum(self.close_running_attempts(tid, reason) for tid in self.list_names("trials"))

    def recorded_inputs(self) -> dict[str, set[str]]:
        """Trial id -> the inputs ids its attempts and result were made from (records of older versions have none)."""
        out: dict[str, set[str]] = {}
        for tid in self.list_names("trials"):
            records = [self.result(tid), *self.attempts(tid)]
            out[tid] = {r["inputs_id"] for r in records if r and r.get("inputs_id")}
        return out

    def supersede(self, trial_id: str, stamp: str) -> None:
        """Move a trial's records (result, outputs, attempts) to `trials/<id>/superseded/<stamp>/`: it starts over,
        and nothing it computed is lost."""
        for part in ("result.json", "outputs", "attempts"):
            self.move(f"trials/{trial_id}/{part}", f"trials/{trial_id}/superseded/{stamp}/{part}")

    def move(self, rel: str, new_rel: str) -> bool:
        """Rename a file or folder of the store (copy + delete where the filesystem cannot rename folders)."""
        import pyarrow.fs as pafs

        src, dst = self._path(rel), self._path(new_rel)
        kind = self._fs.get_file_info(src).type
        if kind == pafs.FileType.NotFound:
            return False
        self._fs.create_dir(dst.rsplit("/", 1)[0], recursive=True)
        try:
            self._fs.move(src, dst)
        except (OSError, NotImplementedError):  # object stores: no folder rename
            if kind == pafs.FileType.Directory:
                pafs.copy_files(src, dst, source_filesystem=self._fs, destination_filesystem=self._fs)
                self._fs.delete_dir(src)
            else:
                self._fs.copy_file(src, dst)
                self._fs.delete_file(src)
        return True

    def last_error(self, trial_id: str) -> str | None:
        errors = [a["error"] for a in self.attempts(trial_id) if a.get("error")]
        return errors[-1] if errors else None


def _recovery(rel: str) -> str:
    """How to go on from a damaged record `rel` (a path under the sweep's storage folder)."""
    parts = rel.split("/")
    if rel == "sweep.json":
        return (
            "it is the sweep's manifest (its trials and the execution id its MLflow runs carry), so this folder "
            "cannot be resumed: move it aside and run the sweep again, or run it with another --storage-path"
        )
    if len(parts) == 3 and parts[0] == "trials" and parts[2] == "result.json":
        return f"delete it and run --resume again; trial {parts[1]} then runs again (the other trials' results stay)"
    if len(parts) == 4 and parts[2] == "attempts":
        return "delete it (it records one start of the trial, nothing the trial computed) and run --resume again"
    return "delete it, or restore it from a copy"


def error_summary(err: BaseException) -> str:
    """`Type: message` on one line: what the progress view and the result table show for a failed trial."""
    text = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def resolve_storage_path(sweep: SweepSpec, given: str | None) -> str:
    """--storage-path, else the sweep file's run.storage_path, else $VFM_ABLATE_STORAGE_PATH, else ./ray_results."""
    return given or sweep.run.storage_path or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE


def check_storage_root(root: str) -> None:
    """The storage root must be creatable and writable before Ray starts; the check leaves nothing behind."""
    if "://" in root:
        import pyarrow.fs as pafs

        try:
            pafs.FileSystem.from_uri(root)
        except Exception as err:  # pyarrow: ArrowInvalid (unknown scheme), OSError (bad bucket URI), ...
            raise ConfigError(f"storage path {root}: {' '.join(str(err).split())}") from None
        return
    path = Path(root)
    missing = []
    existing = path
    while not existing.exists():
        missing.append(existing)
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"storage path {root}: {existing} is a file, not a folder")
    created: list[Path] = []
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        probe = path / f".vfm-write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"storage path {root}: cannot create or write it ({err.strerror or err})") from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass


def storage_root(storage_path: str, sweep_name: str, workdir: Path) -> str:
    """`<storage>/<sweep name>`: relative local paths resolve against the working folder; URIs stay as given."""
    if "://" in storage_path:
        return f"{storage_path.rstrip('/')}/{sweep_name}"
    base = Path(storage_path).expanduser()
    if not base.is_absolute():
        base = workdir / base
    return str((base / sweep_name).resolve())
