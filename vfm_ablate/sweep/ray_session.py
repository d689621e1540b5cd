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
