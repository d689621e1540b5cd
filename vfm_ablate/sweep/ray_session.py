"""The driver's Ray session: start a local Ray of our own or join a cluster (`--address`, also a `ray://` client),
with clear errors naming the address, and Ray Tune / MLflow log noise kept out of the terminal unless verbose."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import ConfigError

CLIENT_ATTEMPTS = 3
# joining a cluster: seconds to reach its address (TCP), then for its GCS to answer. Ray's own connect waits minutes
# for an address where nothing or something else listens, in C++ calls that Ctrl-C and SIGTERM cannot interrupt
REACH_TIMEOUT_S = 5.0
GCS_TIMEOUT_S = 10.0


def _summary(err: BaseException) -> str:
    """One line of a Ray connection error: its message, or the last line of a server-side traceback it carries."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    return (lines[-1] if any(line.startswith("Traceback") for line in lines) else lines[0])[:300]


def _client_token_mode() -> None:
    """A Ray Client sends the cluster's token only in token mode, else it retries for a minute and times out: turn
    token mode on when a token is at hand and RAY_AUTH_MODE is unset, as a local `ray.init` does (Ray >= 2.52)."""
    if os.environ.get("RAY_AUTH_MODE"):
        return
    os.environ.pop("RAY_AUTH_MODE", None)  # set but empty: unset
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
    except ImportError:  # a Ray without token authentication
        return
    maybe_enable_token_auth_if_token_available(warn_if_disabled=False)


@contextmanager
def quiet_ray_logs(verbose: bool) -> Iterator[None]:
    """Ray Tune logs every trial error with its full traceback and its own summaries; the progress view and the
    result table already say which trial failed and why (full tracebacks: trials/<id>/attempts, MLflow)."""
    import logging

    if verbose:
        yield
        return
    # the two that repeat trial errors; warnings (e.g. "insufficient resources" on a cluster) stay visible
    loggers = {name: logging.getLogger(name) for name in ("ray.tune.execution.tune_controller", "ray.tune.tune")}
    loggers["mlflow"] = logging.getLogger("mlflow")  # "Creating initial MLflow database tables..." and the like
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")  # read when mlflow is first imported (here, later)
    levels = {name: lg.level for name, lg in loggers.items()}
    for name, lg in loggers.items():
        lg.setLevel(logging.WARNING if name == "mlflow" else logging.CRITICAL)
    try:
        yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])


def check_address(address: str) -> None:
    """Before `ray.init` joins `address`: something must accept a connection there within REACH_TIMEOUT_S, and a
    cluster's own address (not a ray:// client's) must answer as a gRPC server (Ray's GCS) within GCS_TIMEOUT_S.
    Plain sockets, so Ctrl-C and SIGTERM end the wait at once. A ConfigError names the address and what was found."""
    client = address.startswith("ray://")
    if client:
        bootstrap: str | None = address[len("ray://") :].split("/", 1)[0]
    elif address in ("auto", "local"):  # the cluster this machine records (ray start), or a new local one
        from ray._private.services import canonicalize_bootstrap_address

        try:
            bootstrap = canonicalize_bootstrap_address(address)
        except Exception as err:
            raise ConfigError(f"--address {address}: {_summary(err)}") from None
    else:
        bootstrap = address  # as given (Ray swaps 127.0.0.1 for this node's address; its GCS listens on both)
    if bootstrap is None:  # no cluster recorded on this machine: ray.init says so itself, at once
        return
    host, _, port = bootstrap.rpartition(":")
    if not host or not port.isdigit():
        host, port = bootstrap, "10001" if client else "6379"
    problem = _reach(host.strip("[]"), int(port), grpc=not client)
    if problem is not None:
        raise ConfigError(f"--address {address}: {problem}")


_HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
_EMPTY_SETTINGS = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])  # an HTTP/2 frame: length 0, type SETTINGS, stream 0
_SETTINGS = 4


def _reach(host: str, port: int, grpc: bool) -> str | None:
    """None when `host:port` accepts a connection (and, with `grpc`, answers an HTTP/2 preface with its SETTINGS
    frame, as every gRPC server such as Ray's GCS does at once); else what happened."""
    import socket
    import time

    try:
        sock = socket.create_connection((host, port), timeout=REACH_TIMEOUT_S)
    except OSError as err:
        reason = "timed out" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        return (
            f"nothing answers at {host}:{port} ({reason}); start the cluster there (`ray start --head`), or give its "
            "head node's address"
        )
    with sock:
        if not grpc:
            return None
        deadline = time.monotonic() + GCS_TIMEOUT_S
        head = b""
        try:
            sock.sendall(_HTTP2_PREFACE + _EMPTY_SETTINGS)
            sock.settimeout(0.2)  # short waits: the main thread runs Python between them, so Ctrl-C ends it at once
            while len(head) < len(_EMPTY_SETTINGS) and time.monotonic() < deadline:
                try:
                    chunk = sock.recv(len(_EMPTY_SETTINGS) - len(head))
                except TimeoutError:
                    continue
                if not chunk:
                    break
                head += chunk
        except OSError as err:
            return f"{host}:{port} accepted, then failed ({err.strerror or err})"
        if len(head) < len(_EMPTY_SETTINGS) and time.monotonic() >= deadline:
            return (
                f"{host}:{port} accepts connections but did not answer within {GCS_TIMEOUT_S:g} s as a Ray cluster "
                "does (a hung service, or something else on that port?)"
            )
    if len(head) < len(_EMPTY_SETTINGS) or head[3] != _SETTINGS:
        return f"{host}:{port} is not a Ray cluster (it answered {head[:16]!r} to a gRPC greeting)"
    return None


def init_ray(address: str | None, num_cpus: int | None, num_gpus: int | None, verbose: bool) -> None:
    import logging

    import ray

    kwargs: dict[str, Any] = {"log_to_driver": verbose, "logging_level": logging.INFO if verbose else logging.ERROR}
    if address:
        client = address.startswith("ray://")
        if client:
            _client_token_mode()
        for attempt in range(1, CLIENT_ATTEMPTS + 1):
            try:
                ray.init(address=address, **kwargs)
                return
            except ConnectionAbortedError as err:  # the client server answered, but its per-client server died
                if not client or attempt == CLIENT_ATTEMPTS:  # (seen under load with Ray 2.60): try again
                    raise ConfigError(f"--address {address}: {_summary(err)}") from None
                print(f"Ray Client: {_summary(err)}; connecting again", file=sys.stderr)
                ray.shutdown()
            except ConnectionError as err:
                raise ConfigError(f"--address {address}: cannot connect ({_summary(err)})") from None
    else:
        # "local": a Ray of our own even when another one runs on this machine (else ray.init joins it, and
        # refuses num_cpus: "When connecting to an existing cluster, num_cpus and num_gpus must not be provided")
        ray.init(address="local", num_cpus=num_cpus, num_gpus=num_gpus, include_dashboard=False, **kwargs)
