"""A fast stand-in for Convert's tracking endpoint: asyncio, keep-alive, its own process.

tests/convert_recorder.py (a thread per connection, in the caller's process) would share the
GIL and a core with the load generator; this one records only what the benchmarks need: the
arrival time (time.monotonic(), which is system-wide on Linux and so comparable with the load
generator's clock) and the request path. It can answer slowly (`delay`) or with another status.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import resource
import socket
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

_FORK = mp.get_context("fork")


@dataclass(frozen=True)
class Arrivals:
    times: list[float]
    paths: list[bytes]
    cpu_seconds: float
    hits: list[int]  # Convert hits per request: 1 for a legacy GET, the visitors of a v1 POST


class StandIn:
    def __init__(self, delay: float = 0.0, status: int = 200) -> None:
        self.delay = delay
        self.status = status
        self.port = 0
        self._pipe: Connection | None = None
        self._proc: mp.process.BaseProcess | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/track/"

    def start(self) -> StandIn:
        parent, child = _FORK.Pipe()
        self._proc = _FORK.Process(
            target=_serve, args=(child, self.delay, self.status), daemon=True
        )
        self._proc.start()
        child.close()
        self._pipe = parent
        self.port = int(parent.recv())
        return self

    def count(self) -> int:
        assert self._pipe is not None
        self._pipe.send("count")
        return int(self._pipe.recv())

    def collect(self) -> Arrivals:
        """Everything recorded since the last collect (and the process's CPU time so far)."""
        assert self._pipe is not None
        self._pipe.send("dump")
        arrivals: Arrivals = self._pipe.recv()
        return arrivals

    def wait_for(self, count: int, timeout: float, settle: float = 1.0) -> int:
        """Wait until `count` requests arrived, or none arrived for `settle` s, or `timeout`."""
        deadline = time.monotonic() + timeout
        seen, last_change = -1, time.monotonic()
        while time.monotonic() < deadline:
            now_count = self.count()
            if now_count >= count:
                return now_count
            if now_count != seen:
                seen, last_change = now_count, time.monotonic()
            elif time.monotonic() - last_change > settle:
                return now_count
            time.sleep(0.05)
        return self.count()

    def stop(self) -> None:
        if self._pipe is not None:
            self._pipe.send("stop")
            self._pipe.close()
            self._pipe = None
        if self._proc is not None:
            self._proc.join(5)
            if self._proc.is_alive():
                self._proc.kill()
            self._proc = None


def closed_port() -> int:
    """A loopback port nobody listens on (for "Convert is down")."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value.strip())
    return 0


def _serve(pipe: Connection, delay: float, status: int) -> None:
    try:
        asyncio.run(_main(pipe, delay, status))
    finally:
        pipe.close()
        os._exit(0)


async def _main(pipe: Connection, delay: float, status: int) -> None:
    times: list[float] = []
    paths: list[bytes] = []
    hits: list[int] = []
    body = b"{}"
    reply = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
        status,
        len(body),
        body,
    )
    stopped = asyncio.Event()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                times.append(time.monotonic())
                paths.append(head.split(b" ", 2)[1])
                length = _content_length(head)
                if length:  # a v1 POST: its body holds one visitor per purchase
                    body_in = await reader.readexactly(length)
                    hits.append(body_in.count(b'"visitorId":'))
                else:
                    hits.append(1)
                if delay:
                    await asyncio.sleep(delay)
                writer.write(reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=1024)
    pipe.send(server.sockets[0].getsockname()[1])
    loop = asyncio.get_running_loop()

    def on_command() -> None:
        try:
            command = pipe.recv()
        except EOFError:
            stopped.set()
            return
        if command == "count":
            pipe.send(len(times))
        elif command == "dump":
            usage = resource.getrusage(resource.RUSAGE_SELF)
            cpu = usage.ru_utime + usage.ru_stime
            pipe.send(Arrivals(list(times), list(paths), cpu, list(hits)))
            times.clear()
            paths.clear()
            hits.clear()
        else:
            stopped.set()

    loop.add_reader(pipe.fileno(), on_command)
    async with server:
        await stopped.wait()
