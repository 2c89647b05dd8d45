"""The dispatcher's worker: a thread in every gunicorn worker (woken at once by the request
that stored an event, so the happy path does not wait for a poll) or in its own process. It
runs rounds (round.py), pauses while Convert is down (breaker.py), lingers briefly under load
so one round serves many webhooks, and stops gracefully. A loop that fails is restarted
(`run_forever`, `ensure_running`).

What keeps it exact: no send starts later than half the lease after the claim, so a round
ends well within its lease (config refuses a lease shorter than that worst case,
`minimum_lease_seconds`); results are written while the round runs and retried until they
land, so a crash or a takeover repeats at most the requests whose outcome was not yet written.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from sqlalchemy import Engine

from webhooks.attribution.chain import Chain
from webhooks.attribution.customers import Backoff, PlatformApi
from webhooks.attribution.enrich import CheckoutItemCounts
from webhooks.convert.client import ConvertClient
from webhooks.core.clock import Clock
from webhooks.core.logs import describe
from webhooks.core.observe import DispatcherSeen, NullObserver, Observer
from webhooks.core.settings import ConvertFormat, Settings
from webhooks.delivery.breaker import Breaker
from webhooks.delivery.details import DetailsStep
from webhooks.delivery.planner import Planner, default_chain
from webhooks.delivery.recording import DATABASE_ERRORS, Writer
from webhooks.delivery.round import Round, RoundParts, claim_size
from webhooks.delivery.sending import Slots

log = logging.getLogger(__name__)
SEND_CONCURRENCY = 8
# Requests started and not yet durably recorded, per dispatcher: what a kill -9 can repeat.
# Twice the concurrency, so sending goes on while a group of results is being committed.
MAX_UNRECORDED = 2 * SEND_CONCURRENCY
RECORD_RESERVE = 1.0  # of a stop's timeout, kept for recording after in-flight sends
MAX_CRASH_PAUSE = 30.0


class Dispatcher:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        client: ConvertClient,
        clock: Clock,
        observer: Observer | None = None,
        chain: Chain | None = None,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.client = client
        self.clock = clock
        self.owner = f"{uuid.uuid4().hex[:12]}"
        self.breaker = Breaker()
        self._rounds = itertools.count(1)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._give_up_at: float | None = None  # time.monotonic(): a stopping round's last wait
        self._started = False
        self._crashes = 0
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        # The platforms' APIs (order details, customer records, item counts): one session and
        # one backoff per dispatcher, closed when it stops.
        self.api = PlatformApi()
        backoff = Backoff(clock)
        self.parts = RoundParts(
            engine=engine,
            settings=settings,
            client=client,
            clock=clock,
            planner=Planner(
                settings,
                client,
                chain or default_chain(settings, engine, clock, self.api, backoff),
                CheckoutItemCounts(settings.sources, self.api, clock, backoff=backoff),
                DetailsStep(settings.sources, self.api, backoff, settings.privacy.email_key),
            ),
            breaker=self.breaker,
            pool=ThreadPoolExecutor(SEND_CONCURRENCY, thread_name_prefix="convert-send"),
            slots=Slots(MAX_UNRECORDED),
            writer=Writer(engine, self._stop),
            observer=observer or NullObserver(),
            stop=self._stop,
            give_up_at=self._stopping_give_up_at,
            wake=self._wake.set,
        )

    # -- running ---------------------------------------------------------------------------
    def wake(self) -> None:
        self.ensure_running()
        self._wake.set()

    def start(self) -> None:
        self._started = True
        self.ensure_running()

    @property
    def running(self) -> bool:
        """Started, and its thread alive (for /readyz)."""
        thread = self._thread
        return self._started and thread is not None and thread.is_alive()

    def ensure_running(self) -> None:
        """Start a new thread if the dispatcher was started and its thread has died."""
        if not self._started or self._stop.is_set() or self.running:
            return
        with self._thread_lock:
            if self.running or self._stop.is_set():
                return
            if self._thread is not None:
                log.error("dispatcher thread had stopped; starting a new one")
            self._thread = threading.Thread(target=self.run_forever, name="dispatcher", daemon=True)
            self._thread.start()

    def request_stop(self) -> None:
        """Ask the loop to end after the current round (safe from a signal handler)."""
        self._stop.set()
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Start no new send, wait up to about `timeout` for those in flight, record what
        completed and release the events not sent (due at once, for another worker)."""
        end = time.monotonic() + timeout
        self._give_up_at = end - min(RECORD_RESERVE, timeout / 4)
        self.request_stop()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                log.warning("dispatcher did not stop within %.1f s", timeout)
        self.parts.pool.shutdown(wait=False, cancel_futures=True)
        self.api.close()

    def _stopping_give_up_at(self) -> float | None:
        return self._give_up_at if self._stop.is_set() else None

    def run_forever(self) -> None:
        """The loop, supervised: an unexpected error is logged in one line, and after a short
        pause the loop goes on (one bad round must not end sending for good)."""
        log.info("dispatcher %s started", self.owner)
        self._tell_alive(True)
        try:
            while not self._stop.is_set():
                try:
                    self._loop()
                except Exception as exc:
                    self._crashes += 1
                    pause = min(MAX_CRASH_PAUSE, 0.5 * 2 ** min(self._crashes - 1, 10))
                    log.error("dispatcher: unexpected %s; going on in %.1f s", describe(exc), pause)
                    self._stop.wait(pause)
        finally:
            self._tell_alive(False)

    def _tell_alive(self, alive: bool) -> None:
        try:
            self.parts.observer.dispatcher(DispatcherSeen(self.owner, alive))
        except Exception as exc:  # an observer never stops the dispatcher
            log.warning("observer failed: %s", describe(exc))

    def _loop(self) -> None:
        d = self.settings.dispatcher
        while not self._stop.is_set():
            try:
                busy = self.run_once()
                self._crashes = 0
            except DATABASE_ERRORS as exc:
                # The database is down or locked: keep the events where they are and retry.
                log.warning("dispatcher: database unavailable (%s); will retry", describe(exc))
                busy = 0
            if self.breaker.open:
                # Convert is unreachable: wait (new webhooks do not wake us), then probe.
                self._stop.wait(self.breaker.pause())
                continue
            if busy >= claim_size(self.settings):
                continue  # a backlog: keep going
            woken = self._wake.wait(d.poll_seconds)
            self._wake.clear()
            if woken:
                self._stop.wait(self._gather_seconds(busy))

    def _gather_seconds(self, busy: int) -> float:
        """How long a woken dispatcher waits before its round, so one round serves many
        webhooks. The JSON API batches: up to convert.v1.batch_wait_seconds, so purchases
        that come close together share a request. Else only under load (the last round found
        several events): the database then sees few commits per round instead of two per
        webhook, and a lone webhook goes out at once."""
        d = self.settings.dispatcher
        if self.settings.convert.format is ConvertFormat.V1:
            return max(self.settings.convert.v1.batch_wait_seconds, d.linger_seconds)
        return d.linger_seconds if busy > 1 else 0.0

    def run_once(self) -> int:
        """One round (round.py); the number of events it handled."""
        return Round(self.parts, f"{self.owner}-{next(self._rounds)}").run()

    def drain(self, max_rounds: int = 1000) -> int:
        """Run rounds until nothing is due; the number of events handled."""
        total = 0
        for _ in range(max_rounds):
            handled = self.run_once()
            if not handled or self._stop.is_set():
                break
            total += handled
        return total

    # -- circuit breaker (kept as attributes for operators and tests) ---------------------
    @property
    def outage_rounds(self) -> int:
        return self.breaker.failed_rounds

    def outage_pause(self) -> float:
        return self.breaker.pause()
