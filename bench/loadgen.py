"""The load generator: raw non-blocking sockets on epoll, in several forked processes.

gunicorn's sync workers answer `Connection: close` and close every connection, so each request
is connect, write, read to EOF, close. Requests are built (and signed) in each process before
the common start time, so nothing but socket work is timed.

Two models:
- closed: `concurrency` connections per process, each starts the next request when its reply
  ends, until `duration` is over (throughput) or the requests run out (fixed-count runs);
- open: requests start on a fixed schedule (`rate` per second over all processes) whether or
  not earlier ones were answered; latency runs from the *scheduled* start, so a stalled server
  or a late generator shows up in the figures (no coordinated omission).
"""

from __future__ import annotations

import errno
import multiprocessing as mp
import os
import resource
import select
import socket
import time
from array import array
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from multiprocessing.process import BaseProcess

_FORK = mp.get_context("fork")
_ERR = select.EPOLLERR | select.EPOLLHUP


@dataclass
class WorkerResult:
    ids: array[int] = field(default_factory=lambda: array("q"))
    scheduled: array[float] = field(default_factory=lambda: array("d"))
    started: array[float] = field(default_factory=lambda: array("d"))
    done: array[float] = field(default_factory=lambda: array("d"))
    status: array[int] = field(default_factory=lambda: array("H"))  # 0: no HTTP answer
    errors: Counter[str] = field(default_factory=Counter)
    cpu_seconds: float = 0.0


@dataclass
class LoadResult:
    start: float
    duration: float  # planned (closed) or schedule length (open)
    workers: list[WorkerResult]
    generator_cpu_seconds: float

    @property
    def completed(self) -> int:
        return sum(len(w.done) for w in self.workers)

    def statuses(self) -> Counter[int]:
        out: Counter[int] = Counter()
        for w in self.workers:
            out.update(w.status)
        return out

    def errors(self) -> Counter[str]:
        out: Counter[str] = Counter()
        for w in self.workers:
            out.update(w.errors)
        return out

    def ok_within(self, end: float) -> int:
        """Requests answered 2xx by `end` (monotonic)."""
        return sum(
            1
            for w in self.workers
            for status, done in zip(w.status, w.done, strict=True)
            if 200 <= status < 300 and done <= end
        )

    def latencies(self, since_scheduled: bool = True) -> list[float]:
        """Seconds from scheduled (open model) or actual start to the end of the reply, 2xx only."""
        out: list[float] = []
        for w in self.workers:
            origin = w.scheduled if since_scheduled else w.started
            for t0, t1, status in zip(origin, w.done, w.status, strict=True):
                if 200 <= status < 300:
                    out.append(t1 - t0)
        return out

    def max_start_lag(self) -> float:
        """How late the generator itself started a request (open model), seconds."""
        return max(
            (s - p for w in self.workers for p, s in zip(w.scheduled, w.started, strict=True)),
            default=0.0,
        )


def run(
    address: tuple[str, int],
    build: Callable[[int], bytes],
    ids: Sequence[Sequence[int]],
    *,
    concurrency: int = 4,
    duration: float | None = None,
    rate: float | None = None,
    give_up_after: float = 60.0,
    tick: Callable[[], None] | None = None,
    tick_every: float = 0.5,
    lazy: bool = False,
) -> LoadResult:
    """One process per element of `ids` (the order ids it sends, built with `build`).

    closed model unless `rate` is given; `duration` stops a closed run early. `tick` is called
    in this process about every `tick_every` seconds while the load runs (e.g. to sample RSS).
    `lazy` builds each request when it starts, for runs whose requests would not fit in memory
    (it costs the generator one HMAC of the body, about 20 us of CPU, per request).
    """
    procs: list[tuple[BaseProcess, Connection]] = []
    n = len(ids)
    for index, chunk in enumerate(ids):
        parent, child = _FORK.Pipe()
        per_rate = None if rate is None else rate / n
        phase = 0.0 if rate is None else index / rate
        args = (
            child,
            address,
            build,
            chunk,
            concurrency,
            duration,
            per_rate,
            phase,
            give_up_after,
            lazy,
        )
        proc = _FORK.Process(target=_child, args=args, daemon=True)
        proc.start()
        child.close()
        procs.append((proc, parent))
    for _, conn in procs:
        if conn.recv() != "ready":
            raise RuntimeError("load generator process failed to start")
    start = time.monotonic() + 0.05
    for _, conn in procs:
        conn.send(start)
    results: dict[int, WorkerResult] = {}
    waiting = {id(conn): (i, conn) for i, (_, conn) in enumerate(procs)}
    next_tick = time.monotonic()
    while waiting:
        for ready in wait([conn for _, conn in waiting.values()], timeout=tick_every):
            assert isinstance(ready, Connection)
            i, conn = waiting.pop(id(ready))
            results[i] = conn.recv()
        if tick is not None and time.monotonic() >= next_tick:
            tick()
            next_tick = time.monotonic() + tick_every
    for process, pipe in procs:
        process.join(10)
        pipe.close()
    workers = [results[i] for i in range(n)]
    if rate is not None:
        planned = max(len(chunk) for chunk in ids) / (rate / n)
    else:
        planned = duration if duration is not None else 0.0
    return LoadResult(start, planned, workers, sum(w.cpu_seconds for w in workers))


def _child(
    pipe: Connection,
    address: tuple[str, int],
    build: Callable[[int], bytes],
    ids: Sequence[int],
    concurrency: int,
    duration: float | None,
    rate: float | None,
    phase: float,
    give_up_after: float,
    lazy: bool,
) -> None:
    try:
        if lazy:
            requests: Callable[[int], bytes] = lambda k: build(ids[k])  # noqa: E731
        else:
            requests = [build(i) for i in ids].__getitem__
        pipe.send("ready")
        start: float = pipe.recv()
        cpu0 = _cpu()
        result = _loop(
            address, requests, ids, start, concurrency, duration, rate, phase, give_up_after
        )
        result.cpu_seconds = _cpu() - cpu0
        pipe.send(result)
    finally:
        pipe.close()
        os._exit(0)  # no atexit handlers inherited from the parent


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _Request:
    """One request in flight."""

    __slots__ = ("sock", "index", "scheduled", "started", "data", "written", "status")

    def __init__(
        self, sock: socket.socket, index: int, scheduled: float, started: float, data: bytes
    ) -> None:
        self.sock = sock
        self.index = index
        self.scheduled = scheduled
        self.started = started
        self.data = data
        self.written = 0
        self.status = 0


def _loop(
    address: tuple[str, int],
    requests: Callable[[int], bytes],
    ids: Sequence[int],
    start: float,
    concurrency: int,
    duration: float | None,
    rate: float | None,
    phase: float,
    give_up_after: float,
) -> WorkerResult:
    res = WorkerResult()
    ep = select.epoll()
    live: dict[int, _Request] = {}
    total = len(ids)
    interval = 0.0 if rate is None else 1.0 / rate
    first = start + phase
    stop_launching = start + duration if duration is not None else float("inf")
    if rate is not None:
        hard_end = first + total * interval + give_up_after
    else:
        hard_end = stop_launching + give_up_after
    launched = 0

    def finish(fd: int, status: int, error: str | None) -> None:
        req = live.pop(fd)
        ep.unregister(fd)
        req.sock.close()
        res.ids.append(ids[req.index])
        res.scheduled.append(req.scheduled)
        res.started.append(req.started)
        res.done.append(time.monotonic())
        res.status.append(status)
        if error is not None:
            res.errors[error] += 1

    def launch(scheduled: float) -> None:
        nonlocal launched
        index = launched
        launched += 1
        data = requests(index)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        started = time.monotonic()
        rc = sock.connect_ex(address)
        fd = sock.fileno()
        live[fd] = _Request(sock, index, scheduled, started, data)
        ep.register(fd, select.EPOLLOUT)
        if rc not in (0, errno.EINPROGRESS):
            finish(fd, 0, errno.errorcode.get(rc, str(rc)))

    wait_until = first if rate is not None else start
    while time.monotonic() < wait_until:
        time.sleep(max(0.0, wait_until - time.monotonic()))
    if rate is None:
        for _ in range(min(concurrency, total)):
            launch(time.monotonic())

    while True:
        now = time.monotonic()
        if rate is not None:
            while launched < total and first + launched * interval <= now:
                launch(first + launched * interval)
        if not live and (launched >= total or (rate is None and now >= stop_launching)):
            break
        if now >= hard_end:
            for fd in list(live):
                finish(fd, 0, "timeout")
            break
        if rate is not None and launched < total:
            timeout = max(0.0, first + launched * interval - now)
        else:
            timeout = max(0.0, hard_end - now)
        for fd, mask in ep.poll(min(timeout, 1.0)):
            req = live.get(fd)
            if req is None:
                continue
            if mask & select.EPOLLOUT:
                if mask & _ERR:
                    code = req.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    finish(fd, 0, errno.errorcode.get(code, "connect failed"))
                    continue
                try:
                    req.written += req.sock.send(memoryview(req.data)[req.written :])
                except OSError as exc:
                    finish(fd, 0, errno.errorcode.get(exc.errno or 0, "send failed"))
                    continue
                if req.written >= len(req.data):
                    ep.modify(fd, select.EPOLLIN)
                continue
            try:
                chunk = req.sock.recv(65536)
            except OSError as exc:
                finish(fd, 0, errno.errorcode.get(exc.errno or 0, "recv failed"))
                continue
            if chunk:
                if not req.status and chunk[:5] == b"HTTP/":
                    req.status = int(chunk[9:12])
                continue
            status = req.status
            finish(fd, status, None if status else "closed without answer")
            if rate is None and launched < total and time.monotonic() < stop_launching:
                launch(time.monotonic())
    ep.close()
    return res


def split(first_id: int, count: int, processes: int) -> list[range]:
    """`count` consecutive ids from `first_id`, interleaved over `processes`."""
    return [range(first_id + p, first_id + count, processes) for p in range(processes)]
