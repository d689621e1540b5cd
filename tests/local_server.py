"""A small HTTP server on 127.0.0.1 for the fetch tests: serves dataset archives (what pooch downloads) and a
Hugging Face hub endpoint (`/<repo>/resolve/<revision>/<file>`, what huggingface_hub downloads with HF_ENDPOINT
pointed here). It can cut a transfer off half-way, honours Range requests (huggingface_hub resumes with them) and
records every request. Started and stopped by the `local_server` fixture."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

import pytest

COMMIT = "0123456789abcdef0123456789abcdef01234567"  # the one revision the fake hub serves


@dataclass
class LocalServer:
    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    cut_off: dict[str, int] = field(default_factory=dict)  # path -> how many more GETs to cut off half-way
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)  # (method, path, Range header)

    def serve(self, path: str, data: bytes) -> str:
        """Serve `data` at `path`; its URL."""
        self.files[path] = data
        return self.url + path

    def serve_hub_file(self, repo_id: str, filename: str, data: bytes) -> None:
        self.files[f"/{repo_id}/resolve/main/{filename}"] = data

    def gets(self, path_part: str = "") -> list[tuple[str, str, str | None]]:
        return [r for r in self.requests if r[0] == "GET" and path_part in r[1]]


def _handler(server: LocalServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:  # quiet
            pass

        def do_HEAD(self) -> None:
            self._answer(body=False)

        def do_GET(self) -> None:
            self._answer(body=True)

        def _answer(self, body: bool) -> None:
            path = unquote(urlparse(self.path).path)
            server.requests.append((self.command, path, self.headers.get("Range")))
            data = server.files.get(path)
            hub = "/resolve/" in path
            if data is None:
                self.send_response(404)
                if hub:
                    self.send_header("X-Error-Code", "EntryNotFound")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start = 0
            ranged = self.headers.get("Range")
            if ranged and ranged.startswith("bytes=") and body:
                start = int(ranged[len("bytes=") :].split("-")[0] or 0)
            part = data[start:]
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(part)))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
            if hub:
                self.send_header("X-Repo-Commit", COMMIT)
            self.end_headers()
            if not body:
                return
            if server.cut_off.get(path, 0) > 0:
                server.cut_off[path] -= 1
                self.wfile.write(part[: len(part) // 2])  # then the connection closes: a transfer cut off
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(part)

    return Handler


@pytest.fixture
def local_server() -> Iterator[LocalServer]:
    state = LocalServer()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    httpd.daemon_threads = True
    state.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
