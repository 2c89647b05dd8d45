"""A real local HTTP server standing in for Convert's tracking endpoint.

It records every request it receives (path with query, headers) and can be told to answer
with given statuses and headers (Retry-After, Location), to be slow, to hold chosen requests until
released, or to call a hook as each request arrives. Used by tests and by the benchmarks.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MISBEHAVE_SECONDS = 8.0  # how long a misbehaving answer goes on if the client never gives up


@dataclass(frozen=True)
class Recorded:
    path: str
    headers: dict[str, str]
    status: int


@dataclass
class Arrival:
    """A request as it reached the server, answered or not (a killed client never reads it)."""

    index: int
    path: str
    arrived_at: float  # time.monotonic()
    answered_at: float | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str] = field(default_factory=dict)


class ConvertRecorder:
    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.arrivals: list[Arrival] = []
        self._answers: list[Answer] = []
        self.default_status = 200
        self.delay = 0.0
        # Called (in the server's thread) with each request's arrival index, before it is
        # answered: tests use it to move a fake clock or to act in the middle of a round.
        self.on_arrival: Callable[[int], None] | None = None
        self._held: range = range(0)
        # Arrival index -> "trickle" (headers one byte at a time, defeating the read timeout)
        # or "endless" (a 200 whose body never ends): a broken server, for a while.
        self.misbehave: dict[int, str] = {}
        self._release = threading.Event()
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
        self._release.set()
        self.server.shutdown()
        self.server.server_close()

    def answer_next(
        self,
        *statuses: int,
        retry_after: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        """The next requests get these statuses (and this Retry-After, and these headers,
        e.g. a redirect's Location), in order; then `default_status`."""
        headers = dict(headers or {})
        if retry_after is not None:
            headers["Retry-After"] = retry_after
        with self._lock:
            self._answers.extend(Answer(status, headers) for status in statuses)

    def hold(self, first: int, count: int) -> None:
        """Requests number `first` .. `first + count - 1` (0-based, in order of arrival) wait
        until `release()` before they are answered."""
        self._held = range(first, first + count)
        self._release.clear()

    def release(self) -> None:
        self._release.set()

    @property
    def paths(self) -> list[str]:
        with self._lock:
            return [r.path for r in self.requests]

    def arrived_paths(self) -> list[str]:
        """Every request that reached the server, answered or not."""
        with self._lock:
            return [a.path for a in self.arrivals]

    def in_flight_at(self, moment: float) -> int:
        """Requests that had arrived by `moment` (time.monotonic()) and were not answered."""
        with self._lock:
            return sum(
                1
                for a in self.arrivals
                if a.arrived_at <= moment and (a.answered_at is None or a.answered_at > moment)
            )

    def wait_for(self, count: int, timeout: float = 10.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.requests) >= count:
                break
            time.sleep(0.02)
        return self.paths

    def wait_for_arrivals(self, count: int, timeout: float = 10.0) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.arrivals) < count:
            time.sleep(0.01)
        return len(self.arrivals)

    def _next_answer(self) -> Answer:
        with self._lock:
            return self._answers.pop(0) if self._answers else Answer(self.default_status)

    def _arrive(self, path: str) -> Arrival:
        with self._lock:
            arrival = Arrival(len(self.arrivals), path, time.monotonic())
            self.arrivals.append(arrival)
            return arrival

    def _answered(self, arrival: Arrival, recorded: Recorded) -> None:
        with self._lock:
            self.requests.append(recorded)
            arrival.answered_at = time.monotonic()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                arrival = recorder._arrive(self.path)
                if recorder.on_arrival is not None:
                    recorder.on_arrival(arrival.index)
                if arrival.index in recorder._held:
                    recorder._release.wait(30)
                if recorder.delay:
                    time.sleep(recorder.delay)
                mode = recorder.misbehave.get(arrival.index)
                if mode is not None:
                    self._misbehave(mode)
                    return
                answer = recorder._next_answer()
                recorder._answered(arrival, Recorded(self.path, dict(self.headers), answer.status))
                # A client that is gone (a killed worker) did send it: it counts all the same.
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self._answer(answer)

            def _misbehave(self, mode: str) -> None:
                until = time.monotonic() + MISBEHAVE_SECONDS
                try:
                    if mode == "trickle":
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                        while time.monotonic() < until:
                            self.wfile.write(b"a")
                            self.wfile.flush()
                            time.sleep(0.1)
                    else:
                        self.wfile.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
                        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
                        while time.monotonic() < until:
                            self.wfile.write(chunk)
                            time.sleep(0.01)  # about 6 MB/s: a client that reads it all is slow
                except OSError:
                    pass  # the client gave up: what a bounded client does
                self.close_connection = True

            def _answer(self, answer: Answer) -> None:
                body = b"{}"
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


def order_counts(paths: list[str]) -> Counter[str]:
    """How many requests each order got (the transaction id in `t=100|<id>|...`)."""
    return Counter(path.split("t=100%7C")[1].split("%7C")[0] for path in paths)
