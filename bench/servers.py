"""Starting and watching the servers under test: the service and the bare app, both under
gunicorn with the same settings, on loopback only."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from pathlib import Path

from bench.webhook import SECRET, SOURCE

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
GUNICORN = str(VENV_BIN / "gunicorn")
WORKERS = 2
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def write_config(
    path: Path,
    db_path: Path | str,
    endpoint: str,
    dispatcher: bool = True,
    *,
    convert_extra: str = "",
    database_extra: str = "",
    dispatcher_extra: str = "",
    extra: str = "",
) -> Path:
    """The service config: one Shopify source, goals like the tests'. `db_path` is a SQLite
    file or a database URL; the *_extra lines go into their sections (bench/chaos.py tunes
    timeouts and the lease)."""
    url = db_path if isinstance(db_path, str) else f"sqlite:///{db_path}"
    path.write_text(
        f"""
[convert]
account_id = "1111"
project_id = "2222"
endpoint = "{endpoint}"
{convert_extra}

[goals.purchase]
conversion = ["100", "101"]
transaction = ["100"]

[sources.{SOURCE}]
platform = "shopify"
secrets = ["{SECRET}"]

[database]
url = "{url}"
{database_extra}

[dispatcher]
enabled = {"true" if dispatcher else "false"}
{dispatcher_extra}
{extra}
""",
        encoding="utf-8",
    )
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Product:
    """Where the service's code is run from: this work tree, or (bench/run.py --snapshot) an
    exported commit, so that edits made meanwhile do not change what is measured."""

    root: Path = ROOT

    @classmethod
    def env(cls) -> dict[str, str]:
        """Environment for a process that must import the product from `root`."""
        if cls.root == ROOT:
            return {}
        return {
            "PYTHONPATH": os.pathsep.join(
                filter(None, [str(cls.root), os.environ.get("PYTHONPATH")])
            ),
            "BENCH_GUNICORN_CONF": str(cls.root / "gunicorn.conf.py"),
        }


class Gunicorn:
    """One gunicorn master we started (and only those processes are ever signalled)."""

    def __init__(
        self, name: str, app: str, conf: str, log: Path, env: dict[str, str], cwd: Path = ROOT
    ) -> None:
        self.name = name
        self.port = free_port()
        self.log = log
        self.cwd = cwd
        self._cmd = [GUNICORN, "-c", conf, app]
        self._env = {
            **os.environ,
            **Product.env(),
            **env,
            "CONVERT_WEBHOOKS_BIND": f"127.0.0.1:{self.port}",
            "CONVERT_WEBHOOKS_WORKERS": str(WORKERS),
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self._workers: list[int] = []

    @classmethod
    def service(cls, config: Path, log: Path) -> Gunicorn:
        env = {"CONVERT_WEBHOOKS_CONFIG": str(config)}
        return cls("service", "wsgi:app", "gunicorn.conf.py", log, env, Product.root)

    @classmethod
    def bare(cls, log: Path) -> Gunicorn:
        conf = str(ROOT / "bench" / "gunicorn_bare_conf.py")
        return cls("bare", "bench.bare_app:app", conf, log, {"PYTHONPATH": str(ROOT)})

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def __enter__(self) -> Gunicorn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> Gunicorn:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                self._cmd, cwd=self.cwd, env=self._env, stdout=out, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start; see {self.log}")
            workers = self._children()
            if len(workers) >= WORKERS and self._healthy():
                self._workers = workers
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.name} did not start within {timeout}s; see {self.log}")

    def _healthy(self) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
        try:
            conn.request("GET", "/healthz")
            return conn.getresponse().status == 200
        except OSError:
            return False
        finally:
            conn.close()

    def _children(self) -> list[int]:
        assert self.proc is not None
        pid = self.proc.pid
        try:
            text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    @property
    def worker_pids(self) -> list[int]:
        current = self._children()
        if set(current) != set(self._workers):
            self._workers = current  # a worker was replaced (it should not be)
        return list(self._workers)

    def rss_mb(self) -> list[float]:
        """VmRSS of each worker, MB."""
        out = []
        for pid in self.worker_pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out.append(int(line.split()[1]) / 1024)
            except OSError:
                continue
        return out

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of the master and its workers so far."""
        assert self.proc is not None
        return sum(cpu_seconds(pid) for pid in [self.proc.pid, *self.worker_pids])

    def stop(self, timeout: float = 15.0) -> None:
        if self.proc is None:
            return
        workers = self._children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in workers:  # only if gunicorn could not reap its own workers
            try:
                if b"gunicorn" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(pid, signal.SIGKILL)
            except (OSError, ProcessLookupError):
                pass
        self.proc = None


def cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICKS
