"""Slow clients against the deployment: gunicorn's threaded workers behind the real nginx with
deploy/nginx.conf. Bare gunicorn stops answering when one connection per thread sends its
headers a byte a second; behind nginx, 200 such connections cost nothing and webhooks are
answered at once. Also: nginx's 413, the raw body reaching the service byte for byte, and the Docker
entrypoint (deploy/entrypoint.sh) serving through nginx and stopping cleanly."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import resource
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.config_file import STRIPE_SECRET
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import ROOT, GunicornService, free_port, service_config
from tests.nginx_process import REQUIRE_ENV, NginxProxy, require_nginx
from tests.payloads import body, experiments, shopify_order, stripe_event
from tests.signing import shopify_hmac, stripe_signature_header

GUNICORN_WORKERS = 2
GUNICORN_THREADS = 16  # gunicorn.conf.py's default, set explicitly
SECRET = "shpss_slow_clients_test_secret"
MAX_BODY = 1_048_576  # the service's default max_body_bytes, and nginx's client_max_body_size
SLOW_CLIENTS = 200
BODY_TRICKLERS = 40  # of the slow clients: whole headers with a Content-Length, then the body
ANSWER_WITHIN = 2.0  # seconds, the bound for a webhook while slow clients are open


# --- the stack -------------------------------------------------------------------------------


@dataclass
class Stack:
    gunicorn: GunicornService
    nginx: NginxProxy
    recorder: ConvertRecorder
    db: Path


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    require_nginx()  # skip (or fail in CI) before starting anything
    tmp = tmp_path_factory.mktemp("slow-clients")
    db = tmp / "webhooks.db"
    with contextlib.ExitStack() as cleanup:
        recorder = ConvertRecorder().start()
        cleanup.callback(recorder.stop)
        config = service_config(tmp / "config.toml", f"sqlite:///{db}", recorder.base_url)
        gunicorn = GunicornService(
            config,
            workers=GUNICORN_WORKERS,
            env={"SHOP_SECRET": SECRET, "CONVERT_WEBHOOKS_THREADS": str(GUNICORN_THREADS)},
        )
        cleanup.callback(gunicorn.stop)
        gunicorn.start()
        nginx = NginxProxy(tmp / "nginx", f"127.0.0.1:{gunicorn.port}")
        cleanup.callback(nginx.stop)
        nginx.start()
        yield Stack(gunicorn, nginx, recorder, db)


@pytest.fixture(scope="module", autouse=True)
def enough_file_descriptors() -> None:
    """200 slow sockets plus the test's own files fit a default 1024, but not every limit."""
    needed = SLOW_CLIENTS + 200
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        if hard != resource.RLIM_INFINITY and hard < needed:
            reason = f"open-file limit {hard} is below the {needed} these tests need"
            if os.environ.get(REQUIRE_ENV):
                pytest.fail(f"{reason}, and {REQUIRE_ENV} is set")
            pytest.skip(reason)
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


# --- slow clients ----------------------------------------------------------------------------


class SlowClients:
    """Connections that each send a request a byte a second and never finish it: most trickle
    their headers, the first `body_tricklers` send whole headers and then trickle the body."""

    HEADERS = (
        b"POST /webhooks/shop HTTP/1.1\r\nHost: localhost\r\nX-Shopify-Topic: orders/paid\r\n"
        b"X-Shopify-Hmac-Sha256: c2xvdyBjbGllbnQgbmV2ZXIgZmluaXNoZXM=\r\n"
        b"Content-Type: application/json\r\nUser-Agent: slow-client\r\n"
    )
    BODY_HEADERS = HEADERS + b"Content-Length: 5000\r\n\r\n"
    MAX_SECONDS = 30  # the trickle stops by itself after this, whatever happens

    def __init__(self, port: int) -> None:
        self.port = port
        self.sockets: list[socket.socket] = []
        self.remaining: list[bytes] = []
        self.send_errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def __enter__(self) -> SlowClients:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, count: int, body_tricklers: int = 0) -> None:
        for i in range(count):
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
            self.sockets.append(sock)
            if i < body_tricklers:
                sock.sendall(self.BODY_HEADERS)
                self.remaining.append(b"{" + b" " * 4998 + b"}")
            else:
                self.remaining.append(self.HEADERS)
        self._send_one_byte_each()  # every connection has started its request
        self._thread.start()

    def _trickle(self) -> None:
        for _ in range(self.MAX_SECONDS):
            if self._stop.wait(1.0):
                return
            self._send_one_byte_each()

    def _send_one_byte_each(self) -> None:
        for i, sock in enumerate(self.sockets):
            data = self.remaining[i]
            if len(data) <= 1:  # keep the last byte back: the request never completes
                continue
            try:
                sock.send(data[:1])
            except OSError as exc:
                self.send_errors.append(f"connection {i}: {exc}")
                self.remaining[i] = b""
            else:
                self.remaining[i] = data[1:]

    def stop_trickling(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def still_open(self) -> int:
        """Connections the server has neither closed nor answered (call after stopping)."""
        open_count = 0
        for sock in self.sockets:
            sock.setblocking(False)
            try:
                sock.recv(1)  # b"" is a close, bytes are an answer (408, 400, ...)
            except BlockingIOError:
                open_count += 1
            except OSError:
                pass
        return open_count

    def close(self) -> None:
        self.stop_trickling()
        for sock in self.sockets:
            sock.close()


# --- requests --------------------------------------------------------------------------------


def paid_order(order_id: int) -> dict[str, Any]:
    """A live, paid orders/paid body carrying an experiment pair: one purchase to send."""
    return shopify_order(
        id=order_id, test=False, financial_status="paid", note_attributes=experiments("10-20")
    )


def signed_order(order_id: int) -> tuple[bytes, dict[str, str]]:
    data = body(paid_order(order_id))
    return data, shopify_headers(data, f"ev-slow-{order_id}")


def shopify_headers(data: bytes, event_id: str) -> dict[str, str]:
    return {
        "X-Shopify-Topic": "orders/paid",
        "X-Shopify-Event-Id": event_id,
        "X-Shopify-Hmac-Sha256": shopify_hmac(data, SECRET),
        "Content-Type": "application/json",
    }


def post(url: str, data: bytes, headers: dict[str, str], timeout: float) -> tuple[int, bytes]:
    """Status and body; 0 when no answer came within `timeout`."""
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.read()
    except TimeoutError:
        return 0, b""
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            return 0, b""
        raise


def stored_bodies(db: Path) -> list[bytes]:
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return [bytes(row[0]) for row in conn.execute("SELECT body FROM deliveries")]


def wait_sent_to_convert(recorder: ConvertRecorder, order_ids: range, timeout: float) -> bool:
    """Until the dispatcher has sent a Convert request for every one of these orders."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        paths = recorder.paths
        if all(any(f"%7C{order}%7C" in path for path in paths) for order in order_ids):
            return True
        time.sleep(0.1)
    return False


def wait_answering(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise AssertionError(f"{url} did not answer 200 within {timeout} s")


# --- the tests -------------------------------------------------------------------------------


def test_control_one_slow_client_per_thread_starves_bare_gunicorn(stack: Stack) -> None:
    """Why nginx is there: straight at gunicorn, slow clients hold every thread (2 workers x
    16 threads; three per thread, so that however the workers share them out, each has all
    its threads held). (Also proves the slow clients below are real ones.)"""
    data, headers = signed_order(9001)
    with SlowClients(stack.gunicorn.port) as slow:
        slow.open(3 * GUNICORN_WORKERS * GUNICORN_THREADS)
        time.sleep(1.0)  # every thread has taken one and is blocked reading it
        status, _ = post(f"{stack.gunicorn.url}/webhooks/shop", data, headers, ANSWER_WITHIN)
        assert status == 0, "bare gunicorn answered although every thread was held"
    # Closing them frees the workers (each reads EOF); the queued webhook is then handled.
    wait_answering(f"{stack.gunicorn.url}/healthz", timeout=10)


def test_webhooks_answered_within_two_seconds_while_200_slow_clients_hold_nginx(
    stack: Stack,
) -> None:
    sent: list[bytes] = []
    with SlowClients(stack.nginx.port) as slow:
        slow.open(SLOW_CLIENTS, body_tricklers=BODY_TRICKLERS)
        time.sleep(1.5)  # a couple of bytes in: every one of them is mid-request
        for order_id in range(1, 11):
            data, headers = signed_order(order_id)
            started = time.monotonic()
            status, answer = post(f"{stack.nginx.url}/webhooks/shop", data, headers, timeout=10)
            elapsed = time.monotonic() - started
            assert status == 200, answer
            assert json.loads(answer)["status"] == "accepted"
            assert elapsed < ANSWER_WITHIN, f"webhook {order_id} took {elapsed:.2f} s"
            sent.append(data)
            time.sleep(0.25)
        slow.stop_trickling()
        assert slow.send_errors == []
        assert slow.still_open() == SLOW_CLIENTS  # all held open the whole time
    stored = stored_bodies(stack.db)
    assert all(data in stored for data in sent)
    assert wait_sent_to_convert(stack.recorder, range(1, 11), timeout=10)


def test_body_over_one_mib_gets_413_from_nginx_and_one_mib_passes(stack: Stack) -> None:
    order = body(paid_order(777))
    exactly = order[:-1] + b" " * (MAX_BODY - len(order)) + b"}"  # still valid JSON
    assert len(exactly) == MAX_BODY
    url = f"{stack.nginx.url}/webhooks/shop"
    status, answer = post(url, exactly, shopify_headers(exactly, "ev-exactly-1mib"), 10)
    assert (status, json.loads(answer)["status"]) == (200, "accepted")
    assert exactly in stored_bodies(stack.db)

    over = exactly + b" "
    status, answer = post(url, over, shopify_headers(over, "ev-over-1mib"), 10)
    assert status == 413
    assert "error" in json.loads(answer)
    assert over not in stored_bodies(stack.db)


def test_raw_body_reaches_the_service_byte_for_byte(stack: Stack) -> None:
    """Signatures are HMACs over the raw bytes: send bodies any re-encoding would change
    (tabs, CRLF, non-ASCII, escapes, key order, a trailing newline), with Content-Length and
    chunked, and find the very bytes stored."""
    data = odd_bytes_order(4242)
    status, answer = post(f"{stack.nginx.url}/webhooks/shop", data, shopify_headers(data, "e1"), 10)
    assert (status, json.loads(answer)["status"]) == (200, "accepted")

    chunked = odd_bytes_order(4243)
    status, answer = post_chunked(stack.nginx.port, chunked, shopify_headers(chunked, "e2"))
    assert (status, json.loads(answer)["status"]) == (200, "accepted")

    event = stripe_event("checkout_session_completed", event_id="evt_slow_raw_bytes")
    stripe_body = json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode()
    signature = stripe_signature_header(stripe_body, STRIPE_SECRET, int(time.time()))
    stripe_headers = {"Stripe-Signature": signature, "Content-Type": "application/json"}
    status, answer = post(f"{stack.nginx.url}/webhooks/stripe", stripe_body, stripe_headers, 10)
    assert status == 200, answer  # verified: the bytes that were signed arrived

    stored = stored_bodies(stack.db)
    assert data in stored and chunked in stored and stripe_body in stored


def odd_bytes_order(order_id: int) -> bytes:
    order = paid_order(order_id)
    order["note"] = "Crème brûlée \u2603 \\/ \U0001f600"
    text = json.dumps(order, indent="\t", ensure_ascii=False) + "\r\n"
    text = text.replace("Crème", "Cr\\u00e8me", 1)  # an escape next to raw UTF-8
    return text.replace(f'"id": {order_id}', f'"id":\t {order_id}').encode()


def post_chunked(port: int, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
    """POST with Transfer-Encoding: chunked (nginx buffers it and passes a Content-Length)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        pieces = [data[i : i + 1000] for i in range(0, len(data), 1000)]
        conn.request("POST", "/webhooks/shop", body=iter(pieces), headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


# --- the Docker entrypoint -------------------------------------------------------------------


class Entrypoint:
    """deploy/entrypoint.sh as the image runs it, with the repo's venv on PATH."""

    def __init__(self, tmp: Path, recorder: ConvertRecorder) -> None:
        self.nginx_port = free_port()
        self.gunicorn_port = free_port()
        config = service_config(tmp / "config.toml", f"sqlite:///{tmp / 'e.db'}", recorder.base_url)
        nginx = require_nginx()
        self.env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "NGINX": nginx,
            "NGINX_LISTEN": f"127.0.0.1:{self.nginx_port}",
            "NGINX_RUNTIME_DIR": str(tmp / "nginx"),
            "CONVERT_WEBHOOKS_BIND": f"127.0.0.1:{self.gunicorn_port}",
            "CONVERT_WEBHOOKS_CONFIG": str(config),
            "SHOP_SECRET": SECRET,
        }
        self.log = tmp / "entrypoint.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.nginx_port}"

    def start(self) -> Entrypoint:
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                ["bash", str(ROOT / "deploy" / "entrypoint.sh")],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_answering(f"{self.url}/readyz", timeout=20)
        return self

    def session(self) -> list[int]:
        """Every process of the entrypoint's session (its children have their own groups)."""
        assert self.process is not None
        sid = self.process.pid
        pids = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError, IndexError, ValueError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and fields[0] != "Z":  # session id, not a zombie
                    pids.append(int(stat.parent.name))
        return pids

    def child(self, name: str) -> int:
        """The pid of the entrypoint's direct child whose command line holds `name`."""
        assert self.process is not None
        for pid in self.session():
            with contextlib.suppress(OSError):
                stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if int(stat[1]) == self.process.pid and name.encode() in cmdline:
                    return pid
        raise AssertionError(f"no {name} under the entrypoint; log:\n{self.log.read_text()}")

    def kill_all(self) -> None:
        for pid in self.session():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.process is not None:
            self.process.wait(10)


@pytest.fixture
def entrypoint(tmp_path: Path) -> Iterator[Entrypoint]:
    recorder = ConvertRecorder().start()
    started = Entrypoint(tmp_path, recorder)
    try:
        yield started
    finally:
        started.kill_all()
        recorder.stop()


def wait_gone(entry: Entrypoint, timeout: float) -> int:
    assert entry.process is not None
    code = entry.process.wait(timeout)
    deadline = time.monotonic() + 5  # the last children may be a moment behind their parent
    while entry.session() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert entry.session() == [], f"left running; log:\n{entry.log.read_text()}"
    return code


def test_entrypoint_serves_through_nginx_and_stops_on_sigterm(entrypoint: Entrypoint) -> None:
    entrypoint.start()
    data, headers = signed_order(5150)
    status, answer = post(f"{entrypoint.url}/webhooks/shop", data, headers, 10)
    assert (status, json.loads(answer)["status"]) == (200, "accepted")
    assert entrypoint.process is not None
    entrypoint.process.send_signal(signal.SIGTERM)
    assert wait_gone(entrypoint, timeout=15) == 0
    for port in (entrypoint.nginx_port, entrypoint.gunicorn_port):
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_entrypoint_exits_with_failure_when_nginx_dies(entrypoint: Entrypoint) -> None:
    entrypoint.start()
    os.kill(entrypoint.child("nginx"), signal.SIGKILL)
    assert wait_gone(entrypoint, timeout=15) != 0  # and gunicorn is gone with it
