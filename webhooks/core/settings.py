"""The settings every layer reads: plain values, built and validated by wiring/config.py from
the TOML file (which is the only place that knows the file's shape)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from webhooks.core.events import EventKind

MIN_KEEP_DAYS = 7.0  # longer than any platform retries (Stripe: 3 days, Shopify: 48 hours)


@dataclass(frozen=True)
class SourceSettings:
    name: str
    platform: str
    secrets: tuple[str, ...]
    tolerance_seconds: int
    allow_test_events: bool
    experiments_key: str
    revenue: str
    # The URL the platform calls, as entered in its dashboard: for schemes that sign the URL
    # (never rebuilt from the request's Host header). None when not configured.
    url: str | None = None
    # The platform's own keys under `sources.<name>`, loaded by its spec's options schema.
    options: Mapping[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class GoalSet:
    conversion: tuple[str, ...]
    transaction: tuple[str, ...]


class ConvertFormat(StrEnum):
    """How purchases are sent to Convert: fixed per event when it is stored, so a change of
    format applies to new events only and no purchase goes out in both."""

    LEGACY = "legacy"  # the GET push the product was specified from: one request per pair
    V1 = "v1"  # the JSON tracking API (/v1/track): one visitor per purchase, many per POST


@dataclass(frozen=True)
class V1Settings:
    """The JSON tracking API (`POST {base_url}/track/{account}/{project}`, or
    `/track/{sdk_key}` with a bearer secret)."""

    base_url: str = "https://metrics.convertexperiments.com/v1"
    sdk_key: str | None = None
    sdk_secret: str | None = field(default=None, repr=False)
    enrich_data: bool = False
    source: str | None = None  # None: "convert-webhooks/<version>"
    batch_size: int = 50  # hits (purchases) per POST
    batch_wait_seconds: float = 0.2  # how long a woken dispatcher gathers hits before a round
    bucketing_events: bool = False  # also send a bucketing event per experience


@dataclass(frozen=True)
class ConvertSettings:
    account_id: str
    project_id: str
    endpoint: str
    dry_run: bool
    connect_timeout: float
    read_timeout: float
    format: ConvertFormat = ConvertFormat.LEGACY
    v1: V1Settings = V1Settings()


@dataclass(frozen=True)
class DispatcherSettings:
    enabled: bool
    batch_size: int
    lease_seconds: int
    poll_seconds: float
    linger_seconds: float
    retry_base_seconds: float
    retry_max_delay_seconds: float
    retry_horizon_seconds: float


@dataclass(frozen=True)
class AttributionSettings:
    max_pairs_per_order: int
    # An event with no pairs is looked up again every `recheck_seconds` for `grace_seconds`
    # after it was stored (the back end may record the exposure a moment after the order),
    # then settles as unattributed.
    grace_seconds: float = 900.0
    recheck_seconds: float = 60.0


@dataclass(frozen=True)
class RetentionSettings:
    keep_days: float
    prune_interval_seconds: float  # 0: no schedule, `convert-webhooks prune` only


@dataclass(frozen=True)
class ExposureSettings:
    """The exposure API (`POST /api/exposures`): off while no token is configured."""

    # Bearer tokens; several during a rotation. Secrets: kept out of repr (and so of logs).
    tokens: tuple[str, ...] = field(default=(), repr=False)
    max_records: int = 500  # per bulk request, all-or-nothing
    max_body_bytes: int = 1_048_576


@dataclass(frozen=True)
class PrivacySettings:
    # The HMAC key email digests are made with (exposures, orders). None: orders keep the
    # plain SHA-256 digest and nothing can be stored or looked up by email.
    email_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class MetricsSettings:
    """`GET /metrics` (Prometheus). With a token, a scrape must send `Authorization: Bearer`."""

    enabled: bool = True
    token: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AdminSettings:
    """The status page at `/admin`: off unless a password is configured."""

    password: str | None = field(default=None, repr=False)


class LogFormat(StrEnum):
    AUTO = "auto"  # JSON lines unless stderr is a terminal
    JSON = "json"
    TEXT = "text"


@dataclass(frozen=True)
class LoggingSettings:
    format: LogFormat = LogFormat.AUTO
    level: str = "INFO"


@dataclass(frozen=True)
class Settings:
    convert: ConvertSettings
    goals: Mapping[EventKind, GoalSet]
    sources: Mapping[str, SourceSettings]
    database_url: str
    busy_timeout_ms: int
    max_body_bytes: int
    dispatcher: DispatcherSettings
    attribution: AttributionSettings = AttributionSettings(20)
    retention: RetentionSettings = RetentionSettings(30.0, 3600.0)
    exposures: ExposureSettings = ExposureSettings()
    privacy: PrivacySettings = PrivacySettings()
    metrics: MetricsSettings = MetricsSettings()
    admin: AdminSettings = AdminSettings()
    logging: LoggingSettings = LoggingSettings()
