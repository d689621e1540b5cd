"""The MLflow tracking store: the one tracking-URI rule, a safe local SQLite default, clients and logging helpers.

Every call goes through an explicit `MlflowClient` and run id (no global active run), so several trials can
share one process. The local default store is a SQLite file; it is made safe for many concurrent trial
processes (schema created once under a file lock, WAL journal, retry with backoff on "database is locked").
A multi-node cluster needs an MLflow server (`--tracking-uri http://...`): see docs/tracking.md.

One module for now: the URI rule, the reachability wait, the request deadlines and the SQLite safety all decide
how a client is made, and every caller gets its client here. If it grows further, the request deadlines
(`DeadlineClient`) and the wait are the parts to move out first.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import re
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock

from ..errors import ConfigError, VfmAblateError

_log = logging.getLogger(__name__)

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"  # MLflow's own variable, e.g. the head node's MLflow server
TERMINAL_STATUSES = ("FINISHED", "FAILED", "KILLED")
SQLITE_DB_NAME = "mlflow.db"
ARTIFACT_DIR_NAME = "mlartifacts"

_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:+-]+$")
_MAX_TAG_VALUE = 8000  # mlflow.utils.validation.MAX_TAG_VAL_LENGTH
_PARAMS_PER_BATCH = 100  # mlflow.utils.validation.MAX_PARAMS_TAGS_PER_BATCH
_METRICS_PER_BATCH = 1000  # mlflow.utils.validation.MAX_METRICS_PER_BATCH
_LOCK_RETRY_SECONDS = 300.0
_SEARCH_PAGE = 1000

T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- store set-up


def resolve_tracking_uri(flag: str | None, sweep_uri: str | None, workdir: str | Path) -> str:
    """The one rule, for `run` and `report` alike: --tracking-uri, then the sweep file's tracking.uri, then
    $MLFLOW_TRACKING_URI (cluster.yaml exports it), then `<workdir>/mlflow.db`. Creates nothing; a URI this tool
    cannot use (`tracking_uri_problem`) is a ConfigError naming where it came from."""
    for uri, where in ((flag, "--tracking-uri"), (sweep_uri, "tracking.uri")):
        if uri is not None:  # given, even if empty: checked, never passed over for a default
            return check_tracking_uri(uri, where)
    from_env = os.environ.get(TRACKING_URI_ENV)
    if from_env:
        return check_tracking_uri(from_env, f"${TRACKING_URI_ENV}")
    return local_tracking_uri(workdir)


# the stores a tracking URI may name: an MLflow server, a SQLite file, a database server (SQLAlchemy's scheme, with
# an optional +driver), Databricks
TRACKING_SCHEMES = ("http", "https", "sqlite", "postgresql", "mysql", "mssql", "databricks")


def tracking_uri_problem(uri: str) -> str | None:
    """Why this tool cannot track into `uri` (None: it can): a plain path or file:// (MLflow's file store is in
    maintenance mode, and concurrent trials need a database), an unknown scheme, an in-memory SQLite database (gone
    with the process, and unseen by the trials' processes), a server URI without a host."""
    from urllib.parse import urlsplit

    text = uri.strip()
    if not text:
        return "empty; expected http(s)://HOST:PORT (an MLflow server) or sqlite:///ABSOLUTE/PATH/mlflow.db"
    parts = urlsplit(text)
    scheme = parts.scheme.lower().split("+", 1)[0]
    local = "sqlite:///ABSOLUTE/PATH/mlflow.db (a local file)"
    if not scheme or scheme == "file" or (len(scheme) == 1 and text[1:2] == ":"):  # a path (also C:\\...)
        return (
            "a plain path or file:// URI: MLflow's file store is in maintenance mode, and concurrent trials need a "
            f"database; use {local} or http://HOST:PORT (an MLflow server)"
        )
    if scheme not in TRACKING_SCHEMES:
        return (
            f"unknown scheme '{parts.scheme}'; expected http(s)://HOST:PORT (an MLflow server), {local}, or "
            "postgresql:// / mysql:// / mssql:// (a database)"
        )
    if scheme == "sqlite" and sqlite_path(text) is None:
        return f"an in-memory SQLite store ends with this process (and trials run in other processes); use {local}"
    if scheme in ("http", "https") and not parts.hostname:
        return "no host; expected http(s)://HOST:PORT"
    return None


def check_tracking_uri(uri: str, where: str) -> str:
    """`uri` as given, or a ConfigError naming `where` it came from and what was expected."""
    problem = tracking_uri_problem(uri)
    if problem is not None:
        raise ConfigError(f"{where} {uri!r}: {problem}")
    return uri


def default_tracking_uri(workdir: str | Path) -> str:
    """The local default store `sqlite:///<abs workdir>/mlflow.db`, created in WAL mode so concurrent trials can
    write."""
    uri = local_tracking_uri(workdir)
    db = sqlite_path(uri)
    assert db is not None
    db.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(db):
        _enable_wal(db)
    return uri


def local_tracking_uri(workdir: str | Path) -> str:
    """Where the local default store of `workdir` is (`sqlite:///<abs>/mlflow.db`), without creating anything."""
    folder = Path(workdir).expanduser().resolve()
    if any(ch in str(folder) for ch in "?#"):
        raise ConfigError(f"working folder '{folder}': '?' and '#' cannot appear in a SQLite tracking URI path")
    return f"sqlite:///{folder / SQLITE_DB_NAME}"


def sqlite_path(tracking_uri: str) -> Path | None:
    """The database file behind a `sqlite:///` URI (None for servers, other databases and in-memory SQLite)."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    raw = tracking_uri[len("sqlite:///") :].split("?", 1)[0]
    if raw in ("", ":memory:"):
        return None
    return Path(raw).expanduser().resolve()


def _file_lock(db: Path) -> FileLock:
    """An exclusive lock beside the database file, so only one process creates or migrates the schema."""
    lock_path = db.with_name(db.name + ".lock")
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(lock_path))


def _enable_wal(db: Path) -> None:
    """WAL lets readers (reports, the UI) work while trials write; it persists in the file."""
    con = sqlite3.connect(str(db), timeout=60)
    try:
        mode = con.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    except sqlite3.OperationalError as err:  # switching needs a moment without other connections; not fatal
        mode = f"unchanged ({err})"
    finally:
        con.close()
    if str(mode).lower() != "wal":
        _log.warning("%s: SQLite journal mode is %s, not WAL: readers may wait for writers", db, mode)


WAIT_ENV = "VFM_ABLATE_TRACKING_WAIT_S"  # how long `run` / `report` wait for the tracking store to answer
WAIT_S = 30.0  # the default: a server being started (a cluster job's head) answers within it; a typo fails in 30 s
REACH_TIMEOUT_S = 5.0  # the first attempt's limit (MLflow's own HTTP client would retry for minutes) ...
_MAX_ATTEMPT_S = 20.0  # ... doubled per attempt up to this: a busy server that answers slowly is still reached
_MAX_PAUSE_S = 8.0  # back-off between attempts: 1, 2, 4, 8, 8, ... s
_DB_PORTS = {"postgresql": 5432, "mysql": 3306, "mssql": 1433}
_RETRY_HTTP = (502, 503, 504)  # a proxy in front of a server that is not up yet


class _NotYet(Exception):
    """One attempt found the store not (yet) answering; the message says how."""


def tracking_wait_s() -> float:
    """The wait limit: $VFM_ABLATE_TRACKING_WAIT_S (seconds, >= 0; cluster recipes raise it while their server
    starts), else 30 s."""
    raw = os.environ.get(WAIT_ENV)
    if raw is None or not raw.strip():
        return WAIT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not math.isfinite(value) or value < 0:
        raise ConfigError(f"${WAIT_ENV}={raw!r}: expected a number of seconds >= 0 (e.g. 300)")
    return value


def check_tracking_store(
    tracking_uri: str, wait_s: float | None = None, say: Callable[[str], None] | None = None
) -> None:
    """Before anything starts, the tracking store must answer: a server `/health` (200) and its API with this
    process's credentials; a database host a connection; a SQLite file's folder must exist or be creatable.

    A server or database host that does not answer yet (refused, timed out, reset, HTTP 502-504) is tried again with
    exponential back-off, each attempt with its own timeout, until `wait_s` (default: `tracking_wait_s()`) has passed;
    `say` (default: stderr) tells what it waits for. A wrong answer (not MLflow, credentials refused) fails at once."""
    from urllib.parse import urlsplit

    parts = urlsplit(tracking_uri)
    scheme = parts.scheme.lower().split("+", 1)[0]
    if scheme in ("http", "https"):
        base = tracking_uri.rstrip("/")
        _until_answered(f"MLflow tracking server {base}", lambda t: _check_server(base, t), wait_s, say)
    elif scheme in _DB_PORTS and parts.hostname:
        address = (parts.hostname, parts.port or _DB_PORTS[scheme])
        _until_answered(f"tracking store {tracking_uri}: database host", lambda t: _connect(address, t), wait_s, say)
    elif (db := sqlite_path(tracking_uri)) is not None:
        folder = next(p for p in [db, *db.parents] if p.exists())
        if folder == db and not db.is_file():
            raise ConfigError(f"tracking store {tracking_uri}: {db} is not a file")
        if folder != db and (not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK)):
            raise ConfigError(f"tracking store {tracking_uri}: cannot create {db} ({folder} is not a writable folder)")


def _until_answered(
    what: str, attempt: Callable[[float], None], wait_s: float | None, say: Callable[[str], None] | None
) -> None:
    """Call `attempt(timeout_s)` until it returns, or raise a ConfigError naming `what` once `wait_s` has passed."""
    wait_s = tracking_wait_s() if wait_s is None else wait_s
    say = say or (lambda text: print(text, file=sys.stderr, flush=True))
    start = time.monotonic()
    deadline = start + wait_s
    timeout, pause, tries, said = REACH_TIMEOUT_S, 1.0, 0, ""
    while True:
        tries += 1
        try:
            attempt(max(1.0, min(timeout, deadline - time.monotonic())))
            return
        except _NotYet as err:
            reason = str(err)
        left = deadline - time.monotonic()
        if left <= 0:
            raise ConfigError(
                f"{what} is not reachable within {wait_s:g} s ({reason}; {tries} attempt{'s' * (tries > 1)}); "
                f"start it, pass another --tracking-uri, or wait longer (${WAIT_ENV}; see docs/tracking.md)"
            )
        if reason != said:  # the first miss, and whenever the reason changes
            say(f"waiting for {what} ({reason}): trying again for up to {left:.0f} s more")
            said = reason
        time.sleep(min(pause, left))
        pause, timeout = min(pause * 2, _MAX_PAUSE_S), min(timeout * 2, _MAX_ATTEMPT_S)


def _connect(address: tuple[str, int], timeout_s: float) -> None:
    import socket

    try:
        socket.create_connection(address, timeout=timeout_s).close()
    except OSError as err:
        raise _NotYet(str(err) or type(err).__name__) from None


def _check_server(base: str, timeout_s: float) -> None:
    """One attempt: `/health`, then one API call with this process's credentials (what every trial will send)."""
    import base64
    import http.client
    import ssl
    import urllib.error
    import urllib.request

    def get(path: str, headers: dict[str, str]) -> int:
        request = urllib.request.Request(base + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return int(response.status)
        except urllib.error.HTTPError as err:  # it answered
            return int(err.code)

    headers = {}
    user, password = os.environ.get("MLFLOW_TRACKING_USERNAME"), os.environ.get("MLFLOW_TRACKING_PASSWORD")
    if user and password:
        headers["Authorization"] = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    elif os.environ.get("MLFLOW_TRACKING_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['MLFLOW_TRACKING_TOKEN']}"
    try:
        health = get("/health", {})
        status = get("/api/2.0/mlflow/experiments/search?max_results=1", headers) if health == 200 else None
    except ValueError as err:  # not a URL urllib can use
        raise ConfigError(f"MLflow tracking server {base}: {err}") from None
    except (OSError, http.client.HTTPException) as err:  # refused, timed out, reset, no route, not HTTP
        reason = getattr(err, "reason", None) or err
        if isinstance(reason, ssl.SSLError):  # it answered; certificates are MLflow's business (MLFLOW_TRACKING_*)
            return
        raise _NotYet(str(reason) or type(reason).__name__) from None
    if health in _RETRY_HTTP or status in _RETRY_HTTP:
        raise _NotYet(f"HTTP {status if health == 200 else health}")
    if health != 200:  # MLflow answers 200 (also with basic-auth on); anything else is not an MLflow server
        raise ConfigError(
            f"{base} answered HTTP {health} at /health: not an MLflow tracking server (wrong host, port or proxy?)"
        )
    if status in (401, 403):
        raise ConfigError(
            f"MLflow tracking server {base} refused this process's credentials (HTTP {status}); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD in the environment (never on a command line)"
        )


_CLIENTS: dict[str, Any] = {}
# MLflow's HTTP client waits 120 s for each answer and retries 7 times with back-off: a stalled server held a
# command for minutes. Every request of this tool's clients gets these limits (the environment may set others):
# at most 3 tries of 7 s, 2 s of back-off between them: a stalled server is an error within ~25 s
HTTP_DEADLINES = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "7",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
}


def tracking_client(tracking_uri: str) -> Any:
    """One `MlflowClient` per URI and process; a SQLite store's schema is created once, under a file lock; a server
    gets deadlines (`HTTP_DEADLINES`), and a call it does not answer in time is a VfmAblateError naming the server,
    the call and the limit, not a traceback (`DeadlineClient`)."""
    client = _CLIENTS.get(tracking_uri)
    if client is not None:
        return client
    for name, value in HTTP_DEADLINES.items():
        os.environ.setdefault(name, value)  # read by MLflow at each request; inherited by trial processes
    from mlflow import MlflowClient

    client = None
    db = sqlite_path(tracking_uri)
    if db is not None:
        with _file_lock(db):
            _enable_wal(db)
            if not _schema_at_head(db):
                # The client builds the store, which creates/migrates the tables; concurrent first use races without
                # the lock (observed: "duplicate column name: step" from two processes migrating one fresh file).
                client = retry_locked(lambda: MlflowClient(tracking_uri=tracking_uri), "open tracking store")
    if client is None:  # schema ready (or a server): no need to serialise the slow store construction
        client = retry_locked(lambda: MlflowClient(tracking_uri=tracking_uri), "open tracking store")
    client = DeadlineClient(client, tracking_uri)
    _CLIENTS[tracking_uri] = client
    return client


class DeadlineClient:
    """An MlflowClient whose calls end in a VfmAblateError when the server does not answer within its deadline (or
    cannot be reached any more): the command says which server and call, instead of a traceback."""

    def __init__(self, client: Any, tracking_uri: str) -> None:
        self._client = client
        self._uri = tracking_uri

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr) or name.startswith("_"):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return attr(*args, **kwargs)
            except Exception as err:
                reason = unanswered(err)
                if reason is None:
                    raise
                raise VfmAblateError(
                    f"MLflow tracking server {self._uri} did not answer {name} ({reason}; limits: "
                    f"{os.environ.get('MLFLOW_HTTP_REQUEST_TIMEOUT')} s per request, "
                    f"{os.environ.get('MLFLOW_HTTP_REQUEST_MAX_RETRIES')} retries, set by $MLFLOW_HTTP_REQUEST_TIMEOUT "
                    "and $MLFLOW_HTTP_REQUEST_MAX_RETRIES): is it overloaded or stalled?"
                ) from None

        return call


def unanswered(err: BaseException) -> str | None:
    """Why a tracking call got no answer (timed out, connection refused or lost), else None: read from the
    requests / urllib3 errors MLflow wraps."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (requests.exceptions.Timeout, TimeoutError)):
            return "timed out"
        if isinstance(current, requests.exceptions.ConnectionError):
            text = str(current)
            return "timed out" if "timed out" in text.lower() else f"connection failed: {text[:160]}"
        current = current.__cause__ or current.__context__
    text = str(err)
    if "Read timed out" in text or ("timed out" in text and "API request to" in text):
        return "timed out"
    if "Max retries exceeded" in text:
        return "no answer after retries: " + text[text.find("Max retries exceeded") :][:160]
    return None


def _schema_at_head(db: Path) -> bool:
    """True when the file already holds MLflow's current schema (then opening it writes nothing)."""
    try:
        from mlflow.store.db.utils import _get_latest_schema_revision  # private: fall back to locking if it moves

        head = _get_latest_schema_revision()
        con = sqlite3.connect(str(db), timeout=60)
        try:
            rows = con.execute("SELECT version_num FROM alembic_version").fetchall()
        finally:
            con.close()
    except Exception:
        return False
    return [r[0] for r in rows] == [head]


def _is_lock_error(err: BaseException) -> bool:
    text = str(err).lower()
    return "database is locked" in text or "database table is locked" in text or "sqlite_busy" in text


def retry_locked(fn: Callable[[], T], what: str = "MLflow call") -> T:
    """Run `fn`, retrying with jittered exponential backoff while SQLite reports a lock (MLflow waits 20 s per try)."""
    deadline = time.monotonic() + _LOCK_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            return fn()
        except Exception as err:  # MlflowException wraps sqlite3.OperationalError
            if not _is_lock_error(err) or time.monotonic() > deadline:
                raise
            _log.warning("%s: database is locked, retrying in %.2f s", what, delay)
            time.sleep(delay * (0.5 + random.random()))
            delay = min(delay * 2, 5.0)


def check_id(value: str, what: str) -> str:
    """Sweep/trial ids go into MLflow filter strings: allow only characters that need no quoting."""
    if not isinstance(value, str) or not _ID_PATTERN.match(value):
        raise ConfigError(
            f"{what} {value!r}: expected letters, digits and . _ : + - only (it is used in MLflow filters)"
        )
    return value


def check_status(status: str) -> str:
    if status not in TERMINAL_STATUSES:
        raise ConfigError(f"run status {status!r}: expected one of {', '.join(TERMINAL_STATUSES)}")
    return status


def quote(value: str) -> str:
    return "'" + value.replace("'", "\\'") + "'"


def ensure_experiment(client: Any, experiment: str, tracking_uri: str) -> str:
    """Id of `experiment`, created if needed; a local store keeps artifacts beside the database, not in the CWD."""
    from mlflow.exceptions import MlflowException

    if not experiment or not experiment.strip():
        raise ConfigError("tracking experiment name is empty")
    found = retry_locked(lambda: client.get_experiment_by_name(experiment))
    if found is None:
        db = sqlite_path(tracking_uri)
        location = None
        if db is not None:
            safe = re.sub(r"[^A-Za-z0-9._-]+", "_", experiment)[:80]
            digest = hashlib.sha1(experiment.encode()).hexdigest()[:8]
            location = (db.parent / ARTIFACT_DIR_NAME / f"{safe}-{digest}").as_uri()
        try:
            return retry_locked(lambda: client.create_experiment(experiment, artifact_location=location))
        except MlflowException:
            found = client.get_experiment_by_name(experiment)  # created concurrently by another process
            if found is None:
                raise
    if found.lifecycle_stage != "active":
        raise VfmAblateError(
            f"MLflow experiment '{experiment}' exists but is deleted in {tracking_uri}; restore it "
            f"(mlflow experiments restore --experiment-id {found.experiment_id}) or choose another experiment name"
        )
    return found.experiment_id


def search_all_runs(
    client: Any, experiment_id: str, filter_string: str = "", order_by: list[str] | None = None
) -> list[Any]:
    """Every active run of an experiment matching `filter_string` (all pages)."""
    runs: list[Any] = []
    token = None
    while True:
        page = retry_locked(
            lambda: client.search_runs(
                [experiment_id],
                filter_string=filter_string,
                max_results=_SEARCH_PAGE,
                order_by=order_by,
                page_token=token,
            )
        )
        runs.extend(page)
        token = page.token
        if not token:
            return runs


def log_params(client: Any, run_id: str, params: dict[str, str]) -> None:
    from mlflow.entities import Param

    items = [Param(str(k), str(v)) for k, v in params.items()]
    for start in range(0, len(items), _PARAMS_PER_BATCH):
        chunk = items[start : start + _PARAMS_PER_BATCH]
        retry_locked(lambda: client.log_batch(run_id, params=chunk), "log params")


def set_tags(client: Any, run_id: str, tags: dict[str, str]) -> None:
    from mlflow.entities import RunTag

    items = [RunTag(str(k), str(v)[:_MAX_TAG_VALUE]) for k, v in tags.items()]
    for start in range(0, len(items), _PARAMS_PER_BATCH):
        chunk = items[start : start + _PARAMS_PER_BATCH]
        retry_locked(lambda: client.log_batch(run_id, tags=chunk), "set tags")


def log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    # None = "not computed here" (e.g. peak GPU memory on a CPU): left out rather than logged as a number
    items = [Metric(key, _as_float(key, value), now, step) for key, value in metrics.items() if value is not None]
    for start in range(0, len(items), _METRICS_PER_BATCH):
        chunk = items[start : start + _METRICS_PER_BATCH]
        retry_locked(lambda: client.log_batch(run_id, metrics=chunk), "log metrics")


def _as_float(key: str, value: Any) -> float:
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise VfmAblateError(f"metric '{key}': expected a number, got {value!r}") from None
    if math.isinf(out):
        _log.warning("metric '%s' is infinite", key)
    return out
