"""A real local HTTP server standing in for Convert's tracking endpoint.

It records every request it receives (path with query, headers) and can be told to answer
with given statuses, or to be slow. Used by tests and by the benchmarks.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    status: int


class ConvertRecorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self._statuses: deque[int] = deque()
        self.default_status = 200
        self.delay = 0.0
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/track/"

    def start(self) -> ConvertRecorder:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer_next(self, *statuses: int) -> None:
        """The next requests get these statuses, in order; then `default_status`."""
        with self._lock:
            self._statuses.extend(statuses)

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                break
            time.sleep(0.02)
        return self.paths

    def _next_status(self) -> int:
        with self._lock:
            return self._statuses.popleft() if self._statuses else self.default_status

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                if recorder.delay:
                    time.sleep(recorder.delay)
                status = recorder._next_status()
                with recorder._lock:
                    recorder.requests.append(Recorded(self.path, dict(self.headers), status))
                body = b"{}"
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
