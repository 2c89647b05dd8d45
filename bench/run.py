"""Run the convert-webhooks benchmarks and print the figures against the design's targets.

    .venv/bin/python bench/run.py            # full suite, about 10 minutes
    .venv/bin/python bench/run.py --quick    # about 2 minutes, smaller and shorter runs
    .venv/bin/python bench/run.py --only ingest,latency --profile

Everything runs on loopback: the service and the bare Flask app under gunicorn (2 sync workers),
a stand-in for Convert (bench/standin.py) and a load generator (bench/loadgen.py). Raw figures,
gunicorn logs and the summary go to bench/results/<time>/ (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `bench` and `webhooks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import loadgen
from bench.prefill import Templates, capture_templates, count_states, prefill
from bench.servers import ROOT, VENV_BIN, Gunicorn, Product, cpu_seconds, write_config
from bench.standin import StandIn, closed_port
from bench.stats import CPUS, MachineCpu, median, percentile
from bench.webhook import ShopifyWebhooks, order_id_of

SNAPSHOT_COMMIT: list[str] = []  # set by --snapshot
# CPU (% of one core) used by processes outside the benchmark above which a run is flagged;
# loopback TCP work done in kernel threads alone shows up as 15-30% during bare-app runs.
NOISY_PCT = 50.0
BENCHES = ("ingest", "latency", "drain", "memory", "table")
CONNECTIONS = (8, 32)  # closed-loop connections of the ingest benchmark
# wrk sends a different signed webhook on each request (read from a file, one a line); past
# the end of the file it starts over and says so (the service would see duplicates).
WRK_SCRIPT = """
local requests, n, i = {}, 0, 0
for line in io.lines("@REQUESTS@") do
  local tab = line:find("\\t", 1, true)
  n = n + 1
  requests[n] = {line:sub(1, tab - 1), line:sub(tab + 1)}
end
local wrapped = false
request = function()
  i = i + 1
  if i > n then i = 1; wrapped = true end
  local headers = {}
  @HEADERS@
  headers["X-Shopify-Hmac-Sha256"] = requests[i][1]
  headers["X-Shopify-Event-Id"] = "wrk-" .. i
  return wrk.format("POST", nil, headers, requests[i][2])
end
done = function(summary, latency, requests_done)
  if wrapped then io.write("WRAPPED\\n") end
end
"""


def pg_admin_url() -> str | None:
    """PostgreSQL for the benchmark (CONVERT_WEBHOOKS_BENCH_PG, default the local server's
    `postgres` database); None when nothing answers."""
    url = os.environ.get("CONVERT_WEBHOOKS_BENCH_PG", "postgresql://root@127.0.0.1:5432/postgres")
    try:
        import psycopg

        with psycopg.connect(url, connect_timeout=2):
            return url
    except Exception:
        return None


RATE = 300.0  # requests/s of the latency benchmark
LIGHT_RATE = 50.0  # requests/s of the warm-up and of the light-load end-to-end run


@dataclass(frozen=True)
class Figure:
    bench: str
    name: str
    measured: str
    target: str
    met: bool | None  # None: informational


@dataclass
class Plan:
    """Sizes and durations; --quick shrinks them."""

    quick: bool
    ingest_seconds: float
    ingest_rounds: int
    latency_seconds: float
    light_seconds: float
    drain_events: int
    memory_webhooks: int
    table_events: int
    table_seconds: float

    @classmethod
    def make(cls, quick: bool) -> Plan:
        if quick:
            return cls(True, 4, 2, 8, 4, 5_000, 10_000, 200_000, 4)
        return cls(False, 10, 3, 30, 10, 20_000, 100_000, 1_000_000, 10)


@dataclass
class Run:
    """One load run against one server, with where the CPU went meanwhile."""

    label: str
    load: loadgen.LoadResult
    elapsed: float
    server_cpu: float
    standin_cpu: float
    machine_cpu: float
    open_model: bool = False

    @property
    def ok(self) -> int:
        return sum(n for status, n in self.load.statuses().items() if 200 <= status < 300)

    @property
    def rps(self) -> float:
        return self.ok / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> dict[str, Any]:
        lat = self.load.latencies()
        other = self.machine_cpu - self.server_cpu - self.standin_cpu
        other -= self.load.generator_cpu_seconds
        return {
            "label": self.label,
            "requests": self.load.completed,
            "ok": self.ok,
            "statuses": {str(k): v for k, v in sorted(self.load.statuses().items())},
            "errors": dict(self.load.errors()),
            "seconds": round(self.elapsed, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(percentile(lat, 50) * 1000, 2),
            "p90_ms": round(percentile(lat, 90) * 1000, 2),
            "p99_ms": round(percentile(lat, 99) * 1000, 2),
            "p999_ms": round(percentile(lat, 99.9) * 1000, 2),
            "max_ms": round(max(lat, default=float("nan")) * 1000, 2),
            "generator_late_max_ms": round(self.load.max_start_lag() * 1000, 2),
            # CPU as % of one core; the machine has CPUS cores
            "cpu_server_pct": round(100 * self.server_cpu / self.elapsed, 1),
            "cpu_generator_pct": round(100 * self.load.generator_cpu_seconds / self.elapsed, 1),
            "cpu_standin_pct": round(100 * self.standin_cpu / self.elapsed, 1),
            "cpu_machine_pct": round(100 * self.machine_cpu / self.elapsed, 1),
            "cpu_other_pct": round(100 * other / self.elapsed, 1),
            "generator_cpu_us_per_request": round(
                1e6 * self.load.generator_cpu_seconds / max(1, self.load.completed), 1
            ),
        } | ({"timeline": self.timeline()} if self.open_model else {})

    def timeline(self) -> list[list[float]]:
        """Per second of the schedule: [second, requests, p50 ms, p99 ms, max ms] (2xx only)."""
        buckets: dict[int, list[float]] = {}
        for w in self.load.workers:
            for t0, t1, status in zip(w.scheduled, w.done, w.status, strict=True):
                if 200 <= status < 300:
                    buckets.setdefault(int(t0 - self.load.start), []).append(t1 - t0)
        return [
            [
                sec,
                len(v),
                round(percentile(v, 50) * 1000, 1),
                round(percentile(v, 99) * 1000, 1),
                round(max(v) * 1000, 1),
            ]
            for sec, v in sorted(buckets.items())
        ]


@dataclass
class Suite:
    plan: Plan
    out: Path
    work: Path
    profile: bool
    figures: list[Figure] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict)
    product_at_start: str = ""
    noisy: list[str] = field(default_factory=list)
    _next_id: int = 5_000_000_000_000
    _dbs: int = 0
    _pg_databases: list[str] = field(default_factory=list)

    # -- helpers -------------------------------------------------------------------------
    def ids(self, count: int) -> int:
        """First of `count` order ids never used before in this suite."""
        first = self._next_id
        self._next_id += count
        return first

    def fresh_db(self, name: str) -> Path:
        self._dbs += 1
        return self.work / f"{self._dbs:02d}-{name}.db"

    def config(
        self,
        name: str,
        endpoint: str,
        db: Path | str | None = None,
        dispatch: bool = True,
        fmt: str = "legacy",
    ) -> Path:
        db = db or self.fresh_db(name)
        if fmt == "legacy":
            return write_config(self.work / f"{name}.toml", db, endpoint, dispatch)
        # The JSON API at the same stand-in (it reads either); its key from the environment.
        base = endpoint.removesuffix("/track/") + "/v1"
        return write_config(
            self.work / f"{name}.toml",
            db,
            endpoint,
            dispatch,
            convert_extra=f'format = "v1"\n\n[convert.v1]\nbase_url = "{base}"',
            extra='[privacy]\nemail_key = "${BENCH_EMAIL_KEY}"',
        )

    def service(self, name: str, config: Path) -> Gunicorn:
        return Gunicorn.service(config, self.out / f"{name}.log")

    def add(self, bench: str, name: str, measured: str, target: str, met: bool | None) -> None:
        self.figures.append(Figure(bench, name, measured, target, met))
        mark = {True: "met", False: "MISSED", None: "-"}[met]
        print(f"  => {name}: {measured}  (target {target}: {mark})", flush=True)

    def say(self, text: str) -> None:
        print(f"[{datetime.now().strftime('%H:%M:%S')}] {text}", flush=True)

    def measure(
        self,
        label: str,
        server: Gunicorn,
        standin: StandIn | None,
        ids: list[range],
        *,
        concurrency: int = 8,
        duration: float | None = None,
        rate: float | None = None,
        tick: Callable[[], None] | None = None,
        lazy: bool = False,
    ) -> Run:
        hooks = ShopifyWebhooks(*server.address)
        standin_pid = standin.pid if standin is not None else None
        s0 = cpu_seconds(standin_pid) if standin_pid else 0.0
        c0, m0 = server.cpu_seconds(), MachineCpu.now()
        result = loadgen.run(
            server.address,
            hooks.raw,
            ids,
            concurrency=concurrency,
            duration=duration,
            rate=rate,
            tick=tick,
            lazy=lazy,
        )
        end = max(max(w.done, default=result.start) for w in result.workers)
        elapsed = end - result.start
        c1, m1 = server.cpu_seconds(), MachineCpu.now()
        s1 = cpu_seconds(standin_pid) if standin_pid else 0.0
        run = Run(label, result, elapsed, c1 - c0, s1 - s0, m1.busy - m0.busy, rate is not None)
        summary = run.summary()
        if summary["cpu_other_pct"] > NOISY_PCT:
            self.noisy.append(f"{label} ({summary['cpu_other_pct']:.0f}%)")
        print(
            f"  {label}: {summary['ok']} ok in {summary['seconds']} s = {summary['rps']} req/s,"
            f" p50 {summary['p50_ms']} ms p99 {summary['p99_ms']} ms; non-2xx/errors "
            f"{run.load.completed - run.ok}; CPU% server {summary['cpu_server_pct']} generator "
            f"{summary['cpu_generator_pct']} stand-in {summary['cpu_standin_pct']} other "
            f"{summary['cpu_other_pct']} (of {CPUS * 100})",
            flush=True,
        )
        return run

    def closed(
        self,
        label: str,
        server: Gunicorn,
        standin: StandIn | None,
        seconds: float,
        expected_rps: float,
        processes: int = 1,
        concurrency: int = 8,
    ) -> Run:
        count = int(expected_rps * seconds) + 1000
        ids = loadgen.split(self.ids(count), count, processes)
        return self.measure(label, server, standin, ids, concurrency=concurrency, duration=seconds)

    def warm(self, server: Gunicorn, seconds: float = 1.5) -> None:
        count = 3000
        ids = loadgen.split(self.ids(count), count, 1)
        hooks = ShopifyWebhooks(*server.address)
        loadgen.run(server.address, hooks.raw, ids, concurrency=4, duration=seconds)

    # -- 1. ingest throughput --------------------------------------------------------------
    def bench_ingest(self) -> None:
        """Closed loops at 8 and 32 connections, A/B/A/B: the bare app and the service on
        SQLite and on PostgreSQL take turns (order reversed every round), each service run
        paired with the bare run of its round; then wrk as a cross-check of the generator."""
        plan = self.plan
        backends = ["sqlite"] + (["postgres"] if pg_admin_url() else [])
        self.say(
            "1. ingest throughput: service (" + ", ".join(backends) + ") vs bare Flask app, "
            "same gunicorn settings"
        )
        names = ["bare", *backends]
        runs: dict[tuple[str, int], list[Run]] = {(n, c): [] for n in names for c in CONNECTIONS}
        expected = dict.fromkeys(names, 8000.0)
        with StandIn() as standin, ExitStack() as stack:
            configs = {
                b: self.config(f"ingest-{b}", standin.base_url, self.database(b)) for b in backends
            }
            servers: dict[str, Gunicorn] = {
                "bare": stack.enter_context(Gunicorn.bare(self.out / "bare.log"))
            }
            for b in backends:
                servers[b] = stack.enter_context(self.service(f"ingest-{b}", configs[b]))
            for server in servers.values():
                self.warm(server)
            for connections in CONNECTIONS:
                for rnd in range(plan.ingest_rounds):
                    order = names if rnd % 2 == 0 else names[::-1]
                    for name in order:
                        run = self.closed(
                            f"{name} {connections} conn, round {rnd + 1}",
                            servers[name],
                            standin,
                            plan.ingest_seconds,
                            expected[name],
                            concurrency=connections,
                        )
                        runs[(name, connections)].append(run)
                        expected[name] = max(run.rps * 1.5, 500.0)
            if self.profile:
                with self.profiling(servers["sqlite"], plan.ingest_seconds):
                    self.closed(
                        "service (sqlite), profiled (not counted)",
                        servers["sqlite"],
                        standin,
                        plan.ingest_seconds,
                        expected["sqlite"],
                        concurrency=CONNECTIONS[-1],
                    )
            gen_check = self.generator_check(servers, standin, expected)
            self.raw["ingest_dispatch"] = {
                b: self.dispatch_progress(configs[b], standin) for b in backends if b == "sqlite"
            }
        self.raw["ingest"] = {
            f"{name} {c}": [r.summary() for r in rs] for (name, c), rs in runs.items()
        } | {"generator_check": gen_check}
        for b in backends:
            for connections in CONNECTIONS:
                pairs = [
                    s.rps / bare.rps
                    for s, bare in zip(
                        runs[(b, connections)], runs[("bare", connections)], strict=True
                    )
                ]
                ratio = median(pairs)
                svc = median([r.rps for r in runs[(b, connections)]])
                bare_rps = median([r.rps for r in runs[("bare", connections)]])
                self.raw["ingest"][f"ratio {b} {connections}"] = {"pairs": pairs, "median": ratio}
                self.add(
                    "1",
                    f"ingest throughput, {b}, {connections} connections (service / bare)",
                    f"{ratio:.2f}x (pairs {', '.join(f'{p:.2f}' for p in pairs)}; "
                    f"{svc:.0f} vs {bare_rps:.0f} req/s)",
                    ">= 0.6x",
                    ratio >= 0.6,
                )

    def drop_pg_databases(self) -> None:
        admin = pg_admin_url()
        if admin is None or not self._pg_databases:
            return
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            for name in self._pg_databases:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def database(self, backend: str) -> Path | str:
        """A new, empty database for one server: a SQLite file, or a PostgreSQL database."""
        if backend == "sqlite":
            return self.fresh_db("ingest")
        admin = pg_admin_url()
        assert admin is not None
        self._dbs += 1
        name = f"cw_bench_{os.getpid()}_{self._dbs}"
        import psycopg

        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
            conn.execute(f"CREATE DATABASE {name}")
        self._pg_databases.append(name)
        return (
            admin.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + "/" + name
        )

    def generator_check(
        self, servers: dict[str, Gunicorn], standin: StandIn, expected: dict[str, float]
    ) -> dict[str, Any]:
        """Is the generator the bottleneck? The bare app under 2 generator processes, then
        wrk against every server with unique signed requests (a repeated body would be a
        duplicate for the service: less work than an ingest)."""
        seconds = self.plan.ingest_seconds
        out: dict[str, Any] = {}
        two = self.closed(
            "bare, generator 2 processes x 4",
            servers["bare"],
            standin,
            seconds,
            expected["bare"],
            processes=2,
            concurrency=4,
        )
        out["python_2x4"] = two.summary()
        wrk = shutil.which("wrk")
        if wrk is None:
            out["wrk"] = "not installed (apt-get install wrk): skipped"
            return out
        for name, server in servers.items():
            for connections in CONNECTIONS:
                out[f"wrk {name} {connections}"] = self.wrk_run(
                    wrk, name, server, connections, int(expected[name] * seconds)
                )
        return out

    def wrk_run(
        self, wrk: str, name: str, server: Gunicorn, connections: int, count: int
    ) -> dict[str, Any]:
        seconds = self.plan.ingest_seconds
        hooks = ShopifyWebhooks(*server.address)
        first = self.ids(count)
        requests = self.work / f"wrk-{name}-{connections}.txt"
        with requests.open("wb") as f:  # one request a line: signature, tab, body
            for order in range(first, first + count):
                body = hooks.body(order)
                signature = hooks.headers(order, body)["X-Shopify-Hmac-Sha256"]
                f.write(signature.encode() + b"\t" + body + b"\n")
        fixed = {k: v for k, v in hooks.headers(first, hooks.body(first)).items()}
        fixed.pop("X-Shopify-Hmac-Sha256")
        fixed.pop("X-Shopify-Event-Id", None)
        fixed.pop("Content-Length", None)
        lua = WRK_SCRIPT.replace("@REQUESTS@", str(requests)).replace(
            "@HEADERS@",
            "\n".join(f'headers["{k}"] = "{v}"' for k, v in fixed.items()),
        )
        script = self.work / f"wrk-{name}-{connections}.lua"
        script.write_text(lua)
        c0, m0 = server.cpu_seconds(), MachineCpu.now()
        started = os.times()
        proc = subprocess.run(
            [
                wrk,
                "-t1",
                f"-c{connections}",
                f"-d{int(seconds)}s",
                "-s",
                str(script),
                f"http://127.0.0.1:{server.port}/webhooks/shop",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        ended = os.times()
        requests.unlink()
        wrk_cpu = (ended.children_user - started.children_user) + (
            ended.children_system - started.children_system
        )
        server_cpu, machine = server.cpu_seconds() - c0, MachineCpu.now().busy - m0.busy
        rps = next(
            (
                float(line.split()[1])
                for line in proc.stdout.splitlines()
                if line.startswith("Requests/sec")
            ),
            float("nan"),
        )
        wrapped = "WRAPPED" in proc.stdout
        non2xx = next(
            (int(line.split()[-1]) for line in proc.stdout.splitlines() if "Non-2xx" in line),
            0,
        )
        result = {
            "rps": rps,
            "non_2xx": non2xx,
            "wrapped_to_duplicates": wrapped,
            "cpu_server_pct": round(100 * server_cpu / seconds, 1),
            "cpu_generator_pct": round(100 * wrk_cpu / seconds, 1),
            "cpu_machine_pct": round(100 * machine / seconds, 1),
            "output": proc.stdout[-600:],
        }
        print(
            f"  {name}, wrk -t1 -c{connections}: {rps:.0f} req/s, non-2xx {non2xx}"
            f"{' (ran out of unique requests)' if wrapped else ''}; wrk CPU "
            f"{result['cpu_generator_pct']}%, server CPU {result['cpu_server_pct']}%",
            flush=True,
        )
        return result

    def dispatch_progress(self, config: Path, standin: StandIn) -> dict[str, Any]:
        """How far the in-worker dispatchers got while the load ran."""
        db = Path(_db_of(config))
        return {"convert_requests_received": standin.count(), "event_states": count_states(db)}

    @contextmanager
    def profiling(self, server: Gunicorn, seconds: float) -> Iterator[None]:
        spy = shutil.which("py-spy") or str(VENV_BIN / "py-spy")
        if not Path(spy).exists():
            print("  py-spy not installed (pip install -r bench/requirements.txt): no profile")
            yield
            return
        pid = server.worker_pids[0]
        raw = self.out / "profile-service-worker.txt"
        proc = subprocess.Popen(
            [
                spy,
                "record",
                "-p",
                str(pid),
                "-d",
                str(int(seconds)),
                "-r",
                "200",
                "--nonblocking",
                "--idle",
                "-f",
                "raw",
                "-o",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            yield
        finally:
            proc.wait(seconds + 30)
            if raw.exists():
                self.raw["profile"] = summarize_profile(raw, self.out / "profile-summary.txt")
                print(f"  profile of worker {pid}: {self.out / 'profile-summary.txt'}")

    # -- 2/3. ack latency at a fixed rate, end-to-end latency ------------------------------
    def bench_latency(self) -> None:
        plan = self.plan
        self.say(
            f"2. ack latency at {RATE:.0f} req/s (open model), Convert fast / slow / down;"
            " 3. webhook -> Convert request latency"
        )
        results: dict[str, dict[str, Any]] = {}
        for scenario in ("fast", "slow", "down"):
            standin = (
                None
                if scenario == "down"
                else StandIn(delay=2.0 if scenario == "slow" else 0.0).start()
            )
            try:
                endpoint = (
                    standin.base_url
                    if standin is not None
                    else f"http://127.0.0.1:{closed_port()}/track/"
                )
                config = self.config(f"latency-{scenario}", endpoint)
                with self.service(f"latency-{scenario}", config) as service:
                    warm = int(LIGHT_RATE * 2)
                    self.measure(
                        "warm-up",
                        service,
                        standin,
                        loadgen.split(self.ids(warm), warm, 1),
                        rate=LIGHT_RATE,
                    )
                    light: dict[str, Any] | None = None
                    if standin is not None and scenario == "fast":
                        count = int(LIGHT_RATE * plan.light_seconds)
                        standin.wait_for(warm, timeout=10)
                        standin.collect()
                        run = self.measure(
                            f"Convert fast, light load {LIGHT_RATE:.0f} req/s",
                            service,
                            standin,
                            loadgen.split(self.ids(count), count, 1),
                            rate=LIGHT_RATE,
                        )
                        light = run.summary() | {"end_to_end": self.end_to_end(run, standin)}
                    time.sleep(1.0)
                    count = int(RATE * plan.latency_seconds)
                    run = self.measure(
                        f"Convert {scenario}",
                        service,
                        standin,
                        loadgen.split(self.ids(count), count, 1),
                        rate=RATE,
                    )
                    results[scenario] = run.summary()
                    if light is not None:
                        results[scenario]["light_load"] = light
                    if standin is not None and scenario == "fast":
                        results[scenario]["end_to_end"] = self.end_to_end(run, standin)
                    if standin is not None:
                        results[scenario]["convert_requests_during_run"] = standin.count()
                    results[scenario]["event_states_after"] = count_states(Path(_db_of(config)))
            finally:
                if standin is not None:
                    standin.stop()
        self.raw["latency"] = results
        fast = results["fast"]
        for scenario in ("fast", "slow", "down"):
            r = results[scenario]
            bad = r["requests"] - r["ok"]
            met = r["p99_ms"] < 25 and bad == 0
            extra = f", {bad} not 2xx" if bad else ""
            if scenario != "fast":
                met = met and r["p99_ms"] <= max(fast["p99_ms"] * 1.5, fast["p99_ms"] + 5)
            self.add(
                "2",
                f"ack latency at {RATE:.0f} req/s, Convert {scenario}",
                f"p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms{extra}",
                "p99 < 25 ms" + ("" if scenario == "fast" else ", unchanged vs fast"),
                met,
            )
        light = fast.get("light_load", {})
        if light:
            self.add(
                "2",
                f"(info) ack latency at {LIGHT_RATE:.0f} req/s, Convert fast",
                f"p50 {light['p50_ms']:.1f} ms, p99 {light['p99_ms']:.1f} ms",
                "-",
                None,
            )
        for label, data in (
            (f"{RATE:.0f} req/s", fast),
            (f"{LIGHT_RATE:.0f} req/s", fast.get("light_load", {})),
        ):
            e2e = data.get("end_to_end", {})
            p50 = e2e.get("p50_ms", float("nan"))
            self.add(
                "3",
                f"webhook -> Convert request at {label}",
                f"p50 {p50:.1f} ms, p99 {e2e.get('p99_ms', float('nan')):.1f} ms "
                f"({e2e.get('matched', 0)}/{e2e.get('sent', 0)} matched)",
                "p50 < 100 ms",
                p50 < 100,
            )

    def end_to_end(self, run: Run, standin: StandIn) -> dict[str, Any]:
        accepted = run.ok
        standin.wait_for(accepted, timeout=30)
        arrivals = standin.collect()
        first_seen: dict[int, float] = {}
        for t, path in zip(arrivals.times, arrivals.paths, strict=True):
            order = order_id_of(path)
            if order is not None and order not in first_seen:
                first_seen[order] = t
        delays: list[float] = []
        for w in run.load.workers:
            for order, started, status in zip(w.ids, w.started, w.status, strict=True):
                if 200 <= status < 300 and order in first_seen:
                    delays.append(first_seen[order] - started)
        return {
            "sent": accepted,
            "matched": len(delays),
            "p50_ms": round(percentile(delays, 50) * 1000, 2),
            "p90_ms": round(percentile(delays, 90) * 1000, 2),
            "p99_ms": round(percentile(delays, 99) * 1000, 2),
            "max_ms": round(max(delays, default=float("nan")) * 1000, 2),
        }

    # -- 4. backlog drain, in both Convert formats ----------------------------------------
    def bench_drain(self) -> None:
        """The same backlog drained in the legacy GET format and in the JSON tracking API
        (v1, batched), A/B/A/B in one run; hits per second, and their ratio."""
        n = self.plan.drain_events
        self.say(f"4. backlog drain: {n} stored events, dispatcher run on its own, both formats")
        runs: dict[str, list[dict[str, Any]]] = {"legacy": [], "v1": []}
        for i, fmt in enumerate(("legacy", "v1", "legacy", "v1")):
            runs[fmt].append(self._drain_once(f"drain-{fmt}-{i}", fmt, n))
        self.raw["drain"] = runs
        legacy = median([r["hits_per_s"] for r in runs["legacy"]])
        v1 = median([r["hits_per_s"] for r in runs["v1"]])
        ok = all(r["ok"] for rs in runs.values() for r in rs)

        def rates(fmt: str) -> str:
            return ", ".join(f"{r['hits_per_s']:.0f}" for r in runs[fmt])

        walls = ", ".join(f"{r['wall_seconds_incl_start']:.1f}" for r in runs["legacy"])
        self.add(
            "4",
            "backlog drain, legacy GET",
            f"{legacy:.0f} Convert hits/s (median of {rates('legacy')}; {n} events, "
            f"{walls} s wall incl. start-up)",
            ">= 1,000/s",
            ok and legacy >= 1000,
        )
        ratio = v1 / legacy if legacy else float("nan")
        per_post = median([r["hits_per_request"] for r in runs["v1"]])
        self.add(
            "4",
            "backlog drain, JSON API (v1)",
            f"{v1:.0f} Convert hits/s (median of {rates('v1')}; {per_post:.1f} hits per POST) "
            f"= {ratio:.1f}x the legacy format in the same run",
            ">= 5x legacy",
            ok and ratio >= 5,
        )

    def _drain_once(self, name: str, fmt: str, n: int) -> dict[str, Any]:
        os.environ.setdefault("BENCH_EMAIL_KEY", "b" * 40)  # the v1 config reads it
        with StandIn() as standin:
            db = self.fresh_db(name)
            config = self.config(name, standin.base_url, db, dispatch=False, fmt=fmt)
            templates = capture_templates(config)
            standin.collect()
            took = prefill(db, templates, n, "pending", self.ids(n))
            due = count_states(db).get("pending", 0)
            print(f"  {fmt}: prefilled {due} pending events in {took:.1f} s", flush=True)
            started = time.monotonic()
            proc = subprocess.run(
                [str(VENV_BIN / "convert-webhooks"), "--config", str(config), "dispatch", "--once"],
                cwd=Product.root,
                env={**os.environ, **Product.env()},
                capture_output=True,
                text=True,
                check=False,
            )
            wall = time.monotonic() - started
            standin.wait_for(1, timeout=10)
            arrivals = standin.collect()
        (self.out / f"{name}.log").write_text(proc.stdout + proc.stderr)
        states = count_states(db)
        requests = len(arrivals.times)
        hits = sum(arrivals.hits)
        window = (max(arrivals.times) - min(arrivals.times)) if requests > 1 else float("nan")
        rate = hits / window if requests > 1 else 0.0
        print(
            f"  {fmt}: {hits} Convert hits in {requests} requests in {window:.2f} s "
            f"({rate:.0f} hits/s); CLI {wall:.1f} s wall, exit {proc.returncode}; states after "
            f"{states}",
            flush=True,
        )
        return {
            "format": fmt,
            "events": due,
            "convert_requests": requests,
            "convert_hits": hits,
            "hits_per_request": hits / requests if requests else 0.0,
            "seconds_first_to_last": window,
            "hits_per_s": rate,
            "wall_seconds_incl_start": wall,
            "cli_exit": proc.returncode,
            "states_after": states,
            "prefill_seconds": took,
            "ok": proc.returncode == 0 and hits >= due and states.get("sent", 0) >= due,
        }

    # -- 5. memory, and the cost of a large table --------------------------------------------
    def bench_memory(self) -> None:
        n = self.plan.memory_webhooks
        self.say(f"5a. memory per worker over {n} webhooks")
        samples: list[tuple[float, list[float]]] = []
        with StandIn() as standin:
            config = self.config("memory", standin.base_url)
            with self.service("memory", config) as service:
                self.warm(service)
                t0 = time.monotonic()

                def sample() -> None:
                    samples.append((round(time.monotonic() - t0, 2), service.rss_mb()))

                sample()
                run = self.measure(
                    "memory run",
                    service,
                    standin,
                    loadgen.split(self.ids(n), n, 1),
                    concurrency=8,
                    tick=sample,
                    lazy=True,
                )
                sample()
                standin.wait_for(run.ok, timeout=30)
                sample()
                states = count_states(Path(_db_of(config)))
        per_worker = list(zip(*[rss for _, rss in samples], strict=False))
        start = [w[0] for w in per_worker]
        end = [w[-1] for w in per_worker]
        peak = [max(w) for w in per_worker]
        fifth = max(1, len(samples) // 5)
        growth = [w[-1] - w[fifth] for w in per_worker]  # after the first 20% of the run
        self.raw["memory"] = {
            "webhooks": n,
            "run": run.summary(),
            "rss_samples": samples,
            "start_mb": start,
            "end_mb": end,
            "max_mb": peak,
            "growth_after_20pct_mb": growth,
            "event_states_after": states,
        }
        fmt = "/".join
        worst = max(peak, default=float("nan"))
        flat = max(growth, default=0.0) < 5.0
        self.add(
            "5",
            f"RSS per worker over {n} webhooks",
            f"start {fmt(f'{v:.0f}' for v in start)} MB, end "
            f"{fmt(f'{v:.0f}' for v in end)} MB, max {fmt(f'{v:.0f}' for v in peak)} MB "
            f"(growth after 20%: {fmt(f'{v:+.1f}' for v in growth)} MB)",
            "< 80 MB, flat",
            worst < 80 and flat,
        )

    def bench_table(self) -> None:
        plan = self.plan
        n = plan.table_events
        self.say(f"5b. ingest rate with {n} events stored vs an empty database")
        with StandIn() as standin:
            empty_db, full_db = self.fresh_db("table-empty"), self.fresh_db("table-full")
            template_cfg = self.config("table-template", standin.base_url, full_db, dispatch=False)
            templates: Templates = capture_templates(template_cfg)
            took = prefill(full_db, templates, n, "sent", self.ids(n))
            size = full_db.stat().st_size / 1e6
            print(
                f"  prefilled {n} sent events (+ deliveries, sends, attempts) in {took:.0f} s;"
                f" {size:.0f} MB",
                flush=True,
            )
            standin.collect()
            empty = self.service(
                "table-empty", self.config("table-empty", standin.base_url, empty_db)
            )
            full = self.service("table-full", self.config("table-full", standin.base_url, full_db))
            runs: dict[str, list[Run]] = {"empty": [], "full": []}
            with empty, full:
                servers = {"empty": empty, "full": full}
                for server in servers.values():
                    self.warm(server, seconds=3.0)
                expected = 8000.0
                for name in ("empty", "full", "full", "empty", "empty", "full"):
                    run = self.closed(
                        f"{name} db", servers[name], standin, plan.table_seconds, expected
                    )
                    expected = max(run.rps * 1.5, 500.0)
                    runs[name].append(run)
        empty_rps = median([r.rps for r in runs["empty"]])
        full_rps = median([r.rps for r in runs["full"]])
        slower = 1 - full_rps / empty_rps
        self.raw["table"] = {
            "events": n,
            "prefill_seconds": took,
            "db_mb": size,
            "runs": {name: [r.summary() for r in rs] for name, rs in runs.items()},
            "empty_rps": empty_rps,
            "full_rps": full_rps,
            "slower": slower,
        }
        self.add(
            "5",
            f"ingest with {n:,} events stored vs empty",
            f"{100 * slower:+.1f}% slower ({full_rps:.0f} vs {empty_rps:.0f} req/s, medians of 3)",
            "<= 10% slower",
            slower <= 0.10,
        )

    # -- report ----------------------------------------------------------------------------
    def report(self, started: float) -> str:
        lines = [
            f"convert-webhooks benchmarks, {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}"
            f" ({'quick' if self.plan.quick else 'full'} run, {time.monotonic() - started:.0f} s)",
            f"machine: {machine()}",
            f"product: {self.product_at_start}"
            + (
                ""
                if product_version() == self.product_at_start
                else f" at the start, {product_version()} at the end"
            ),
            "",
            "| # | figure | measured | target | met |",
            "|---|---|---|---|---|",
        ]
        for f in self.figures:
            mark = {True: "yes", False: "**no**", None: "-"}[f.met]
            lines.append(f"| {f.bench} | {f.name} | {f.measured} | {f.target} | {mark} |")
        if self.noisy:
            lines += [
                "",
                f"WARNING: processes outside the benchmark used more than {NOISY_PCT}% of a core"
                " during: " + "; ".join(self.noisy) + ". Those figures are unreliable: rerun"
                " on a quiet machine.",
            ]
        return "\n".join(lines) + "\n"


def _db_of(config: Path) -> str:
    for line in config.read_text().splitlines():
        if line.startswith("url = "):
            return line.split('"')[1].removeprefix("sqlite:///")
    raise ValueError(f"no database url in {config}")


_ROLES = (
    ("SyncWorker", "request thread"),
    ("run_forever", "dispatcher thread"),
    ("_WorkItem.run", "sender pool threads"),
)


def summarize_profile(raw: Path, out: Path, top: int = 12) -> dict[str, dict[str, float]]:
    """Where each thread of a worker spends its wall time, from py-spy's collapsed stacks
    recorded with --idle (so time blocked in C, e.g. SQLite's busy wait or fsync, shows):
    share of that thread's samples per (leaf function, nearest product frames)."""

    def name(frame: str) -> str:
        return frame.split(" (")[0]

    by_role: dict[str, Counter[str]] = {role: Counter() for _, role in _ROLES}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f for f in stack.split(";") if f]
        role = next((r for marker, r in _ROLES if marker in stack), None)
        if not count.isdigit() or not frames or role is None:
            continue  # idle pool threads waiting for work, gunicorn's master loop
        ours = [name(f) for f in frames if "webhooks/" in f or "adapters/" in f]
        where = " < ".join(reversed(ours[-2:])) or "(outside the product)"
        by_role[role][f"{name(frames[-1])}  in  {where}"] += int(count)
    result: dict[str, dict[str, float]] = {}
    text = []
    for role, shares in by_role.items():
        total = max(1, sum(shares.values()))
        result[role] = {k: round(100 * n / total, 1) for k, n in shares.most_common(top)}
        text.append(f"{role} ({total} samples, share of its wall time):\n")
        text += [f"  {share:5.1f}%  {key}\n" for key, share in result[role].items()]
    out.write_text("".join(text))
    return result


def export_head(target: Path, revision: str = "HEAD") -> None:
    """Export a commit (HEAD by default) and make it the code that runs (service, CLI,
    templates): the baseline of a before/after comparison is measured the same way."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    target.mkdir(parents=True)
    archive = subprocess.run(
        ["git", "archive", "--format=tar", revision], cwd=ROOT, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    Product.root = target
    SNAPSHOT_COMMIT.append(commit)
    sys.path.insert(0, str(target))  # templates are captured in-process from the same code
    for name in [m for m in sys.modules if m.split(".")[0] in ("webhooks", "adapters")]:
        del sys.modules[name]


def product_version() -> str:
    """The commit measured, and whether the product's files differ from it."""
    if Product.root != ROOT:
        return f"commit {SNAPSHOT_COMMIT[0]} (exported snapshot, work tree ignored)"

    def git(*args: str) -> str:
        proc = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return proc.stdout.strip()

    commit = git("rev-parse", "--short", "HEAD") or "unknown"
    dirty = git(
        "status", "--porcelain", "--", "webhooks", "adapters", "wsgi.py", "gunicorn.conf.py"
    )
    return f"commit {commit}" + (" + uncommitted changes" if dirty else "")


def machine() -> str:
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{CPUS} CPU ({model}), Linux {platform.release()}, Python "
        f"{platform.python_version()}, SQLite {sqlite3.sqlite_version}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="about 2 minutes instead of ~10")
    parser.add_argument("--only", help=f"comma-separated subset of: {','.join(BENCHES)}")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="py-spy one service worker during an extra ingest run",
    )
    parser.add_argument("--keep", action="store_true", help="keep the databases")
    parser.add_argument(
        "--snapshot",
        action="store_true",
        help="measure the committed HEAD (exported to a temporary folder), not the work tree",
    )
    parser.add_argument(
        "--commit",
        metavar="REV",
        help="with --snapshot: measure this commit instead of HEAD (e.g. a baseline)",
    )
    args = parser.parse_args(argv)
    chosen = BENCHES if not args.only else tuple(b.strip() for b in args.only.split(","))
    unknown = set(chosen) - set(BENCHES)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out = ROOT / "bench" / "results" / stamp
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="convert-webhooks-bench-"))
    if args.snapshot or args.commit:
        export_head(work / "product", args.commit or "HEAD")
    suite = Suite(
        Plan.make(args.quick), out, work, args.profile, product_at_start=product_version()
    )
    started = time.monotonic()
    print(f"results in {out}; databases in {work}; {machine()}", flush=True)
    try:
        for name in BENCHES:
            if name in chosen:
                getattr(suite, f"bench_{name}")()
    finally:
        report = suite.report(started)
        (out / "summary.md").write_text(report)
        (out / "results.json").write_text(
            json.dumps(
                {
                    "figures": [f.__dict__ for f in suite.figures],
                    "raw": suite.raw,
                    "machine": machine(),
                    "product": product_version(),
                    "quick": args.quick,
                },
                indent=1,
                default=str,
            )
        )
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
            suite.drop_pg_databases()
    print()
    print(report)
    return 0 if all(f.met is not False for f in suite.figures) else 1


if __name__ == "__main__":
    sys.exit(main())
