"""Run the real nginx from Debian's package with the deployed config (deploy/nginx.conf),
templated to a free port and a given upstream, in a temp prefix (pid, temp files, logs)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.gunicorn_process import ROOT, free_port

TEMPLATE = ROOT / "deploy" / "nginx.conf"
PLACEHOLDERS = ("NGINX_LISTEN", "NGINX_UPSTREAM", "NGINX_ACCESS_LOG")
REQUIRE_ENV = "CONVERT_WEBHOOKS_REQUIRE_NGINX"


def nginx_binary() -> str | None:
    found = shutil.which("nginx")
    if found:
        return found
    # /usr/sbin is not on every user's PATH.
    return "/usr/sbin/nginx" if os.access("/usr/sbin/nginx", os.X_OK) else None


def require_nginx() -> str:
    """The nginx binary; skip the test without one, or fail when CI says nginx must run."""
    binary = nginx_binary()
    if binary is None:
        reason = "nginx not installed (apt-get install nginx); .ci/run installs it"
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{reason}, and {REQUIRE_ENV} is set")
        pytest.skip(reason)
    return binary


def render(values: dict[str, str]) -> str:
    """The deploy config with its placeholders replaced verbatim, as deploy/entrypoint.sh does."""
    text = TEMPLATE.read_text()
    for name in PLACEHOLDERS:
        text = text.replace("${" + name + "}", values[name])
    if "${NGINX_" in text:
        raise ValueError("deploy/nginx.conf has a placeholder this helper does not fill")
    return text


class NginxProxy:
    """nginx on 127.0.0.1:<free port> in front of `upstream` (host:port of gunicorn)."""

    def __init__(self, prefix: Path, upstream: str) -> None:
        self.binary = require_nginx()
        self.prefix = prefix
        self.port = free_port()
        self.upstream = upstream
        self.log = prefix / "nginx.log"
        self.access_log = prefix / "access.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NginxProxy:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(
            render(
                {
                    "NGINX_LISTEN": f"127.0.0.1:{self.port}",
                    "NGINX_UPSTREAM": self.upstream,
                    "NGINX_ACCESS_LOG": str(self.access_log),
                }
            )
        )
        command = [self.binary, "-p", f"{self.prefix}/", "-c", str(conf), "-e", "stderr"]
        if os.geteuid() == 0:
            # Workers would drop to `nobody`, who cannot enter pytest's private temp dirs.
            command += ["-g", "user root;"]
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        self._wait_answering()
        return self

    def _wait_answering(self, timeout: float = 10.0) -> None:
        """Until nginx itself answers (any HTTP status: the upstream may not be up yet)."""
        assert self.process is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/healthz", timeout=1):
                    return
            except urllib.error.HTTPError as exc:
                exc.close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"nginx did not start; log:\n{self.log.read_text()}")

    def stop(self) -> None:
        """Fast stop (SIGTERM) of the master, then SIGKILL of the group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(10)

    def connect(self, timeout: float = 5.0) -> socket.socket:
        return socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
