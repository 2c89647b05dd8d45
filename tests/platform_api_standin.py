"""What the local stand-ins for platform APIs share (tests/stripe_api_standin.py,
tests/shopify_api_standin.py): a real HTTP server on a free port that records each request,
refuses a wrong credential the way the platform does, and can be told to answer the next
requests with given statuses, to be slow, or to hang past any client timeout."""

from __future__ import annotations

import contextlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any  # JSON-able, or bytes sent as they are
    headers: dict[str, str] = field(default_factory=dict)


class ApiStandin:
    def __init__(self) -> None:
        self.requests: list[Seen] = []
        self.delay = 0.0  # seconds before each answer (a slow API; past the timeout: a hang)
        # An answer whose body comes a byte at a time, each within any read timeout.
        self.trickle = False
        self._next: list[Reply] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        # A short poll: shutdown() waits for it, once per test.
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> ApiStandin:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()  # a hanging answer ends now
        self.server.shutdown()
        self.server.server_close()

    def answer_next(self, *replies: Reply) -> None:
        """The next requests get these answers, in order, whatever they ask."""
        with self._lock:
            self._next.extend(replies)

    def count(self) -> int:
        with self._lock:
            return len(self.requests)

    # --- for the platform modules -----------------------------------------------------------

    def route(self, seen: Seen) -> Reply:
        raise NotImplementedError

    def _reply(self, seen: Seen) -> Reply:
        with self._lock:
            self.requests.append(seen)
            planned = self._next.pop(0) if self._next else None
        return planned or self.route(seen)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def handle(self) -> None:
                # A client that gives up (a timeout, a failure it does not read) drops the
                # connection: what the real APIs see too, not an error of the stand-in.
                with contextlib.suppress(ConnectionResetError, BrokenPipeError):
                    super().handle()

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve()

            def do_POST(self) -> None:  # noqa: N802
                self._serve()

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = standin._reply(Seen(self.command, self.path, headers, body))
                if standin.delay and standin._stop.wait(standin.delay):
                    return
                raw = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body)
                data = raw if isinstance(raw, bytes) else raw.encode()
                if standin.trickle:
                    self._trickle(data)
                    return
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(reply.status)
                    for name, value in reply.headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def _trickle(self, data: bytes) -> None:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    for n in range(len(data)):  # a Customer: about 4 s
                        self.wfile.write(data[n : n + 1])
                        self.wfile.flush()
                        if standin._stop.wait(0.005):
                            return
                self.close_connection = True

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
