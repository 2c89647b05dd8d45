"""Run the real service under gunicorn for process-level tests (workers, kills, restarts)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.config_file import config_document, write_config

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def service_config(path: Path, db_url: str, endpoint: str, dispatcher: bool = True) -> Path:
    """The test config with its Shopify secret read from ${SHOP_SECRET}, as in production."""
    doc = config_document(
        db_url,
        endpoint,
        sources={"shop": {"platform": "shopify", "secrets": ["${SHOP_SECRET}"]}},
        dispatcher={"enabled": dispatcher, "poll_seconds": 0.2},
    )
    return write_config(path, doc)


class GunicornService:
    def __init__(self, config: Path, workers: int = 2, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.config = config
        self.workers = workers
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None
        self.log = config.with_suffix(f".{self.port}.log")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> GunicornService:
        env = {
            **os.environ,
            **self.env,
            "CONVERT_WEBHOOKS_CONFIG": str(self.config),
            "CONVERT_WEBHOOKS_BIND": f"127.0.0.1:{self.port}",
            "CONVERT_WEBHOOKS_WORKERS": str(self.workers),
        }
        gunicorn = Path(sys.executable).parent / "gunicorn"
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [str(gunicorn), "-c", "gunicorn.conf.py", "wsgi:app"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{self.url}/readyz", timeout=1) as response:
                    if response.status == 200:
                        time.sleep(0.3)  # let every worker boot and start its dispatcher
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not become ready; log:\n{self.log.read_text()}")

    def kill(self) -> None:
        """SIGKILL the whole process group: no shutdown code runs, like a power cut."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)

    def post(self, path: str, data: bytes, headers: dict[str, str]) -> tuple[int, bytes]:
        request = urllib.request.Request(f"{self.url}{path}", data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
