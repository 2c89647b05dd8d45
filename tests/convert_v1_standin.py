"""A real local HTTP server standing in for Convert's JSON tracking API (`POST /v1/track/...`).

Every request is checked as Convert would, then recorded: the body against a JSON Schema written
from the reference (tests/fixtures/convert/v1_track_request.schema.json), the Content-Type, and
the User-Agent (Convert's bot filter answers 200 to other agents and drops their events: the
stand-in does the same and marks the request `discarded`, so a test can see it). It can be told
to answer given statuses (and Retry-After), to refuse bodies holding chosen transaction ids with
a 400 (a hit Convert finds malformed), to require an SDK key's bearer secret, and to be slow.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema

SCHEMA = json.loads(
    (Path(__file__).parent / "fixtures/convert/v1_track_request.schema.json").read_text()
)
_VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)
MAX_BODY = 4 * 1024 * 1024


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    raw: bytes
    body: Any  # the parsed JSON (None when it was not JSON)
    status: int
    problems: tuple[str, ...] = ()  # why it was refused (schema, content type, auth)
    discarded: bool = False  # answered 200 but dropped (no ConvertAgent/ User-Agent)


@dataclass(frozen=True)
class Planned:
    status: int
    retry_after: str | None = None


def transactions(body: Any) -> list[str]:
    """The transaction ids in a body, one per revenue event."""
    found = []
    for visitor in body.get("visitors", []):
        for event in visitor.get("events", []):
            for item in event.get("data", {}).get("goalData", []):
                if item.get("key") == "transactionId":
                    found.append(str(item.get("value")))
    return found


@dataclass
class ConvertV1StandIn:
    received: list[Received] = field(default_factory=list)
    refused_transactions: set[str] = field(default_factory=set)
    bearer: str | None = None  # when set, requests must carry this SDK secret
    delay: float = 0.0
    arrivals: int = 0
    _planned: list[Planned] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def start(self) -> ConvertV1StandIn:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answer_next(self, *statuses: int, retry_after: str | None = None) -> None:
        with self._lock:
            self._planned.extend(Planned(status, retry_after) for status in statuses)

    def accepted(self) -> list[Received]:
        """Requests Convert took (200, valid, not discarded)."""
        with self._lock:
            return [r for r in self.received if r.status == 200 and not r.discarded]

    def visitors(self) -> list[dict[str, Any]]:
        return [visitor for r in self.accepted() for visitor in r.body["visitors"]]

    def transaction_counts(self) -> Counter[str]:
        return Counter(t for r in self.accepted() for t in transactions(r.body))

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(self.received) < count:
            time.sleep(0.02)
        with self._lock:
            return list(self.received)

    def _decide(self, headers: dict[str, str], raw: bytes) -> tuple[Received, dict[str, Any]]:
        problems: list[str] = []
        body: Any = None
        if headers.get("Content-Type", "").split(";")[0].strip() != "application/json":
            problems.append("Content-Type is not application/json")
        try:
            body = json.loads(raw)
        except ValueError:
            problems.append("the body is not JSON")
        else:
            problems += [
                f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}"
                for e in _VALIDATOR.iter_errors(body)
            ]
        status = 400 if problems else 200
        if self.bearer is not None and headers.get("Authorization") != f"Bearer {self.bearer}":
            status, problems = 401, ["the SDK key's secret is missing or wrong"]
        if status == 200 and set(transactions(body)) & self.refused_transactions:
            status, problems = 400, ["goalData: transactionId refused"]
        extra: dict[str, Any] = {}
        with self._lock:
            planned = self._planned.pop(0) if self._planned else None
        if status == 200 and planned is not None:
            status = planned.status
            if planned.retry_after is not None:
                extra["Retry-After"] = planned.retry_after
        discarded = not headers.get("User-Agent", "").startswith("ConvertAgent/")
        return Received("POST", "", headers, raw, body, status, tuple(problems), discarded), extra

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                with standin._lock:
                    standin.arrivals += 1
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(min(length, MAX_BODY))
                if standin.delay:
                    time.sleep(standin.delay)
                headers = dict(self.headers)
                if not self.path.startswith("/v1/track/"):
                    seen = Received("POST", self.path, headers, raw, None, 404, ("no such path",))
                    extra: dict[str, Any] = {}
                else:
                    seen, extra = standin._decide(headers, raw)
                    seen = Received(**{**seen.__dict__, "path": self.path})
                with standin._lock:
                    standin.received.append(seen)
                if seen.status == 200:
                    answer = {"code": 200, "message": "ok"}
                else:
                    answer = {"code": seen.status, "message": "; ".join(seen.problems) or "error"}
                data = json.dumps(answer).encode()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    self.send_response(seen.status)
                    for name, value in extra.items():
                        self.send_header(name, value)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler
