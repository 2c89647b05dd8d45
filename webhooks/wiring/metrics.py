"""Prometheus metrics (prometheus-client): the counters the observer keeps, and the database's
gauges read when /metrics is scraped.

Under gunicorn every worker is its own process, so the counters live in prometheus-client's
multiprocess mode: each process writes its values to files in `PROMETHEUS_MULTIPROC_DIR`
(set by gunicorn.conf.py before any worker starts) and a scrape, served by whichever worker,
sums every process's files. gunicorn.conf.py empties the directory at start
(`prepare_directory`) and forgets each dead worker's live gauges (`forget_process`); the
counters of a dead worker stay, so totals never go down. Without that variable (tests, a
single process) the counters are kept in this process's own registry.

Label values are bounded: sources are the configured names, states, reasons, outcomes and
formats are the service's enums, and free text (where experiment pairs were found, why a
signature was refused) is mapped to a short class. Anything else is "other".
"""

from __future__ import annotations

import collections
import logging
import os
import re
import stat
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from sqlalchemy import Engine

from webhooks.core.clock import Clock
from webhooks.core.errors import ConfigError
from webhooks.core.hits import HitFormat, SendOutcome
from webhooks.core.logs import describe
from webhooks.core.observe import DispatcherSeen, FinishSeen, IngestSeen, RoundSeen
from webhooks.core.places import place_class
from webhooks.core.states import WAITING_FOR_PAIRS, EventState, Outcome, Reason
from webhooks.storage.gauges import QueueGauges, read_gauges

log = logging.getLogger(__name__)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "convert_webhooks_"
OTHER = "other"
# What IngestSeen.status can be (core.states.DeliveryStatus and the route's refusals).
INGEST_OUTCOMES = frozenset(
    {
        "accepted",
        "duplicate",
        "ignored",
        "rejected",
        "refused",
        "unreadable",
        "too_large",
        "unavailable",
        "error",
    }
)
# A signature refusal's message (adapters/schemes.py, web/routes.py) -> its class.
SIGNATURE_CLASSES = (
    ("not_configured", re.compile(r"no url configured")),
    ("missing", re.compile(r"^missing |has no |does not hold ")),
    ("timestamp", re.compile(r" s old$| s in the future$")),
    ("mismatch", re.compile(r"does not match|matches a configured")),
    ("malformed", re.compile(r"malformed|too long")),
    ("error", re.compile(r"could not be read|neither a ping nor signed")),
)
NOT_ATTRIBUTED = "none"
_SOURCE = re.compile(r"[A-Za-z0-9_-]{1,64}")  # what a configured source name can be
_STATES = frozenset(str(state) for state in EventState)
_REASONS = frozenset(str(reason) for reason in Reason)
_OUTCOMES = frozenset(str(outcome) for outcome in Outcome)
_FORMATS = frozenset(str(each) for each in HitFormat)
_FINAL = frozenset(_STATES - {str(EventState.PENDING)})
_PRO_FILE = re.compile(r"(?:counter|histogram|summary|gauge_[a-z]+)_\d+\.db")
INGEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
CONVERT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0)
GAUGE_MAX_AGE = 5.0  # seconds a database reading is reused: a flood of scrapes costs no more


class ServiceMetrics:
    """The counters, histograms and the liveness gauge the observer updates. Each call is a
    few in-memory (or memory-mapped) increments: no I/O, no database."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.deliveries = Counter(
            f"{PREFIX}deliveries",
            "Webhook requests to a configured source, by how they ended (accepted, duplicate, "
            "ignored, rejected, refused, unreadable, too_large, unavailable, error).",
            ["source", "outcome"],
            registry=r,
        )
        self.ingest_seconds = Histogram(
            f"{PREFIX}ingest_seconds",
            "Time from reading a webhook's body to its answer.",
            ["source"],
            buckets=INGEST_BUCKETS,
            registry=r,
        )
        self.signature_failures = Counter(
            f"{PREFIX}signature_failures",
            "Webhooks refused (401), by reason: missing, malformed, timestamp, mismatch, "
            "not_configured, error.",
            ["source", "reason"],
            registry=r,
        )
        self.duplicates = Counter(
            f"{PREFIX}duplicates",
            "Duplicates: a delivery received again (level=delivery), or an event of a new "
            "delivery whose purchase was already counted (level=purchase).",
            ["source", "level"],
            registry=r,
        )
        self.events = Counter(
            f"{PREFIX}events_processed",
            "Events by the state and reason they were given: when stored (pending/queued, or "
            "skipped at once, e.g. test_mode) and each time they leave a dispatcher round "
            "(pending: to be tried again).",
            ["source", "state", "reason"],
            registry=r,
        )
        self.attribution = Counter(
            f"{PREFIX}attribution",
            "Purchases settled by the dispatcher, by where their experiment pairs were found "
            "(order, customer, exposures, other) or none.",
            ["source", "place"],
            registry=r,
        )
        self.convert_requests = Counter(
            f"{PREFIX}convert_requests",
            "Convert hits sent, by format, outcome (sent, retry, permanent, dry_run, error) and "
            "status class (2xx, 3xx, 4xx, 429, 5xx, none: no answer).",
            ["format", "outcome", "status"],
            registry=r,
        )
        self.convert_seconds = Histogram(
            f"{PREFIX}convert_request_seconds",
            "Duration of the Convert request each hit went out in.",
            ["format"],
            buckets=CONVERT_BUCKETS,
            registry=r,
        )
        # Made when a dispatcher first reports: a worker without one (dispatcher.enabled =
        # false) shows none, rather than a 0 that would look like a dispatcher down.
        self.dispatcher_up: Gauge | None = None
        self._lock = threading.Lock()

    def ingest(self, seen: IngestSeen) -> None:
        source = source_label(seen.source)
        self.deliveries.labels(source, bounded(seen.status, INGEST_OUTCOMES)).inc()
        self.ingest_seconds.labels(source).observe(max(0.0, seen.seconds))
        if seen.status == "refused":
            self.signature_failures.labels(source, signature_class(seen.reason)).inc()
        if seen.replay:
            self.duplicates.labels(source, "delivery").inc()
        if seen.duplicates > 0:
            self.duplicates.labels(source, "purchase").inc(seen.duplicates)
        for state, reason in seen.stored:
            self._event(source, state, reason)

    def round(self, seen: RoundSeen) -> None:
        for finished in seen.finished:
            source = source_label(finished.source)
            self._event(source, finished.state, finished.reason_code)
            place = attribution_class(finished)
            if place is not None:
                self.attribution.labels(source, place).inc()

    def _event(self, source: str, state: str, reason: str | None) -> None:
        reason_label = "" if reason is None else bounded(reason, _REASONS)
        self.events.labels(source, bounded(state, _STATES), reason_label).inc()

    def sends(self, outcomes: Sequence[SendOutcome]) -> None:
        # Counted per label set, not per hit: a JSON API batch is many hits with one result.
        counts: collections.Counter[tuple[str, str, str]] = collections.Counter()
        for outcome in outcomes:
            result = outcome.result
            hit_format = bounded(str(outcome.hit.format), _FORMATS)
            outcome_label = bounded(str(result.outcome), _OUTCOMES)
            counts[(hit_format, outcome_label, status_class(result.status_code))] += 1
            if result.seconds is not None and result.outcome is not Outcome.DRY_RUN:
                self.convert_seconds.labels(hit_format).observe(max(0.0, result.seconds))
        for labels, count in counts.items():
            self.convert_requests.labels(*labels).inc(count)

    def dispatcher(self, seen: DispatcherSeen) -> None:
        with self._lock:
            if self.dispatcher_up is None:
                self.dispatcher_up = Gauge(
                    f"{PREFIX}dispatcher_up",
                    "1 while this worker's dispatcher loop runs, 0 once it has ended "
                    "(under gunicorn one series per live worker, labelled pid).",
                    multiprocess_mode="liveall",
                    registry=self.registry,
                )
        self.dispatcher_up.set(1 if seen.alive else 0)


def bounded(value: str, known: Iterable[str]) -> str:
    return value if value in known else OTHER


def source_label(name: str) -> str:
    return name if _SOURCE.fullmatch(name) else OTHER


def signature_class(reason: str | None) -> str:
    for name, pattern in SIGNATURE_CLASSES:
        if reason is not None and pattern.search(reason):
            return name
    return OTHER


def attribution_class(finished: FinishSeen) -> str | None:
    """Where a settled purchase's pairs came from, `none` when it settled without them; None
    when it says nothing about attribution (still pending, or skipped for another reason:
    test mode, not a purchase, ...). A pending event is counted when it settles, once."""
    if finished.state not in _FINAL:
        return None
    if finished.place is not None:
        return place_class(finished.place)
    if finished.reason_code in WAITING_FOR_PAIRS:
        return NOT_ATTRIBUTED
    return None


def status_class(code: int | None) -> str:
    if code is None:
        return "none"
    if code == 429:
        return "429"
    return f"{code // 100}xx" if 100 <= code <= 599 else OTHER


@dataclass
class _Reading:
    gauges: QueueGauges | None  # None: the database could not be read
    at: float  # clock.monotonic() when read


class DatabaseGauges(Collector):
    """Collector of the database's gauges, read at scrape time (at most every
    GAUGE_MAX_AGE seconds). The database being down never fails a scrape: its gauges are left
    out and `convert_webhooks_database_up` says 0."""

    def __init__(self, engine: Engine, clock: Clock, max_age: float = GAUGE_MAX_AGE) -> None:
        self.engine = engine
        self.clock = clock
        self.max_age = max_age
        self._last: _Reading | None = None
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Metric]:
        gauges = self._reading()
        up = GaugeMetricFamily(
            f"{PREFIX}database_up",
            "1 when this scrape could read the database's gauges, 0 when it could not.",
            value=0 if gauges is None else 1,
        )
        yield up
        if gauges is not None:
            yield from self._families(gauges)

    def _reading(self) -> QueueGauges | None:
        with self._lock:  # concurrent scrapes share one reading
            last = self._last
            if last is not None and self.clock.monotonic() - last.at < self.max_age:
                return last.gauges
            try:
                gauges: QueueGauges | None = read_gauges(self.engine)
            except Exception as exc:  # down, locked, not migrated yet: the rest is served
                log.warning("metrics: database gauges unavailable (%s)", describe(exc))
                gauges = None
            self._last = _Reading(gauges, self.clock.monotonic())
            return gauges

    def _families(self, gauges: QueueGauges) -> Iterator[Metric]:
        open_events = GaugeMetricFamily(
            f"{PREFIX}events",
            "Open events (pending, dead) now, by source, state and reason.",
            labels=["source", "state", "reason"],
        )
        for each in gauges.open_events:
            reason = "" if each.reason is None else bounded(each.reason, _REASONS)
            open_events.add_metric([source_label(each.source), each.state, reason], each.count)
        yield open_events
        yield GaugeMetricFamily(
            f"{PREFIX}pending_events",
            "Queue depth: events waiting to be sent (due now, backing off, or waiting for data).",
            value=gauges.count(EventState.PENDING),
        )
        yield GaugeMetricFamily(
            f"{PREFIX}dead_events",
            "Events given up on (kept and replayable: `convert-webhooks replay --dead`).",
            value=gauges.count(EventState.DEAD),
        )
        oldest = gauges.oldest_pending_at
        age = 0.0 if oldest is None else max(0.0, self.clock.now() - oldest)
        yield GaugeMetricFamily(
            f"{PREFIX}oldest_pending_age_seconds",
            "Age of the oldest pending event (0 when none is pending).",
            value=age,
        )


class _Registered(Collector):
    """A registry's metrics, collected as part of another registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        return iter(list(self.registry.collect()))


def exposition(metrics: ServiceMetrics | None, gauges: DatabaseGauges) -> bytes:
    """The scrape, in Prometheus' text format. Never raises: if the counters cannot be read
    (the multiprocess directory gone), the database's gauges are served alone."""
    try:
        return generate_latest(_registry(metrics, gauges))
    except Exception as exc:
        log.error("metrics: counters unavailable (%s); serving the database's only", describe(exc))
        only = CollectorRegistry(auto_describe=False)
        only.register(gauges)
        return generate_latest(only)


def _registry(metrics: ServiceMetrics | None, gauges: DatabaseGauges) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    if metrics is not None:
        path = multiprocess_dir()
        if path is not None:
            MultiProcessCollector(registry, path)  # type: ignore[no-untyped-call]
        else:
            registry.register(_Registered(metrics.registry))
    registry.register(gauges)
    return registry


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROCESS_ENV) or None


def prepare_directory(path: str) -> int:
    """At the server's start: make the multiprocess directory (0700, ours) or empty it of
    prometheus-client's files (left by an earlier run, they would be summed in). Only those
    files are removed, whatever else the directory holds. Returns how many were removed."""
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
        info = os.lstat(path)
    except OSError as exc:
        raise ConfigError({MULTIPROCESS_ENV: f"cannot create {path} ({exc.strerror})"}) from exc
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        # A directory someone else made in a shared /tmp could feed us counts, or a symlink
        # could point our clean-up elsewhere.
        raise ConfigError(
            {MULTIPROCESS_ENV: f"{path} is not a directory owned by this user (uid {os.getuid()})"}
        )
    return clean_directory(path)


def clean_directory(path: str) -> int:
    removed = 0
    for name in os.listdir(path):
        if _PRO_FILE.fullmatch(name):
            try:
                os.remove(os.path.join(path, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def forget_process(pid: int) -> None:
    """A worker has exited: its live gauges (dispatcher_up) go; its counters stay summed."""
    path = multiprocess_dir()
    if path is not None:
        mark_process_dead(pid, path)  # type: ignore[no-untyped-call]


def make_metrics() -> ServiceMetrics | None:
    """This process's metrics, or None (logged) if the multiprocess directory is unusable:
    the service runs on without counters rather than not at all."""
    path = multiprocess_dir()
    try:
        if path is not None:
            os.makedirs(path, mode=0o700, exist_ok=True)
        return ServiceMetrics()
    except (OSError, ValueError) as exc:
        log.error("metrics: counters disabled (%s)", describe(exc))
        return None
