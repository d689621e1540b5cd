"""The tracking pre-flight waits for a store that does not answer yet, with back-off up to a stated deadline, and
says what it waits for; a wrong answer fails at once. (A real MLflow server started while `vfm-ablate run` already
waits: tests/test_cluster_two_nodes.py.)"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from vfm_ablate.errors import ConfigError
from vfm_ablate.tracking.store import WAIT_ENV, WAIT_S, check_tracking_store, tracking_wait_s


class Answering:
    """A plain HTTP endpoint on 127.0.0.1 that answers every request with the next status of `statuses` (the last one
    repeats), as a proxy in front of a server that is still starting does (502/503), then as the server (200)."""

    def __init__(self, statuses: list[int], listen_after_s: float = 0.0):
        self.statuses = list(statuses)
        self.requests: list[str] = []
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self.port = int(self._sock.getsockname()[1])
        self.uri = f"http://127.0.0.1:{self.port}"
        self._stop = threading.Event()
        self._delay = listen_after_s
        if not listen_after_s:
            self._sock.listen(8)
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        if self._delay:
            if self._stop.wait(self._delay):  # nothing listens before: connections are refused
                return
            self._sock.listen(8)
        self._sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                request = conn.recv(4096).decode(errors="replace")
                self.requests.append(request.split(" ", 2)[1] if " " in request else request)
                status = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
                conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}".encode())

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def endpoints() -> Iterator[list[Answering]]:
    made: list[Answering] = []
    yield made
    for endpoint in made:
        endpoint.close()


def test_a_server_that_comes_up_late_is_waited_for(endpoints: list[Answering]) -> None:
    server = Answering([200], listen_after_s=2.5)
    endpoints.append(server)
    said: list[str] = []
    start = time.monotonic()
    check_tracking_store(server.uri, wait_s=20, say=said.append)
    took = time.monotonic() - start
    assert 2.5 <= took < 10 and server.requests[:2] == ["/health", "/api/2.0/mlflow/experiments/search?max_results=1"]
    assert len(said) == 1 and said[0].startswith(f"waiting for MLflow tracking server {server.uri} (")
    assert "refused" in said[0].lower()


def test_a_proxy_answering_503_is_waited_for(endpoints: list[Answering]) -> None:
    server = Answering([503, 503, 200])
    endpoints.append(server)
    said: list[str] = []
    check_tracking_store(server.uri, wait_s=20, say=said.append)
    assert server.requests.count("/health") == 3 and len(said) == 1 and "(HTTP 503)" in said[0]


@pytest.mark.parametrize("kind", ["refused", "silent"])
def test_the_wait_ends_at_its_deadline_naming_the_uri(kind: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        if kind == "silent":  # accepts connections into its backlog, never answers
            sock.listen(8)
        uri = f"http://127.0.0.1:{sock.getsockname()[1]}"
        said: list[str] = []
        start = time.monotonic()
        with pytest.raises(ConfigError) as err:
            check_tracking_store(uri, wait_s=3, say=said.append)
        took = time.monotonic() - start
    assert 3 <= took < 5.5, took  # the deadline, plus at most one attempt's floor of 1 s
    text = str(err.value)
    assert text.startswith(f"MLflow tracking server {uri} is not reachable within 3 s (") and WAIT_ENV in text
    assert ("timed out" in text) == (kind == "silent") and re.search(r"; \d+ attempts?\)", text)


def test_a_wrong_answer_fails_at_once(endpoints: list[Answering]) -> None:
    server = Answering([404])
    endpoints.append(server)
    start = time.monotonic()
    with pytest.raises(ConfigError, match=r"answered HTTP 404 at /health: not an MLflow tracking server"):
        check_tracking_store(server.uri, wait_s=30, say=lambda _: None)
    assert time.monotonic() - start < 3


def test_the_deadline_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WAIT_ENV, raising=False)
    assert tracking_wait_s() == WAIT_S == 30
    monkeypatch.setenv(WAIT_ENV, "300")
    assert tracking_wait_s() == 300
    for bad in ("soon", "-1", "inf", "nan"):
        monkeypatch.setenv(WAIT_ENV, bad)
        with pytest.raises(ConfigError, match=rf"\${WAIT_ENV}='{bad}': expected a number of seconds >= 0"):
            tracking_wait_s()
    monkeypatch.setenv(WAIT_ENV, "0")  # one attempt, no waiting
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        start = time.monotonic()
        with pytest.raises(ConfigError, match="not reachable within 0 s"):
            check_tracking_store(f"http://127.0.0.1:{sock.getsockname()[1]}", say=lambda _: None)
    assert time.monotonic() - start < 2
