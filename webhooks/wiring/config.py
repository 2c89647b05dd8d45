"""Configuration: a TOML file with `${VAR}` references, validated at start-up.

Every problem is reported with the dotted key it belongs to, so `check-config` can name each
bad key at once instead of failing on the first.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from marshmallow import (
    INCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    validate,
    validates_schema,
)

from adapters import REGISTRY
from webhooks.core.errors import ConfigError
from webhooks.core.events import SENDABLE_KINDS, EventKind
from webhooks.core.settings import (
    MIN_KEEP_DAYS,
    AdminSettings,
    AttributionSettings,
    ConvertFormat,
    ConvertSettings,
    DispatcherSettings,
    ExposureSettings,
    GoalSet,
    LogFormat,
    LoggingSettings,
    MetricsSettings,
    PrivacySettings,
    RetentionSettings,
    Settings,
    SourceSettings,
    V1Settings,
)

CONFIG_ENV = "CONVERT_WEBHOOKS_CONFIG"
DATABASE_ENV = "CONVERT_WEBHOOKS_DATABASE_URL"
DEFAULT_DATABASE_URL = "sqlite:///var/convert-webhooks.db"
LEGACY_ENDPOINT = "https://{project_id}.track.convertexperiments.com/track/"
REVENUE_BASES = ("total", "presentment_total", "subtotal")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")  # ${NAME} or ${NAME:-default}
# ASCII digits, whole string: `\d` also takes "²" and Arabic-Indic digits, and `$` allows a
# trailing newline (which went into the Convert URL as %0A).
_DIGITS = validate.Regexp(r"\A[0-9]{1,20}\Z", error="must be ASCII digits only")
MIN_SECRET_LENGTH = 16
DEFAULT_TOLERANCE_SECONDS = 300
# The secrets config/example.toml falls back to: fine for a dry run, never for real sending.
EXAMPLE_SECRETS = frozenset(
    {
        "whsec_example_secret",
        "shpss_example_secret",
        "wc_example_secret_0001",
        "pdl_ntfset_example_secret",
        "lemonsqueezy_example_secret",
    }
)


def _fail(message: str) -> bool:
    raise ValidationError(message)


def _key_text(minimum: int) -> Callable[[str], None]:
    """A check for a secret written into the config: no stray whitespace, `minimum` characters."""

    def check(value: str) -> None:
        if value != value.strip():
            raise ValidationError("has leading or trailing whitespace (a pasted newline?)")
        if len(value) < minimum:
            raise ValidationError(f"is shorter than {minimum} characters")

    return check


_secret = _key_text(MIN_SECRET_LENGTH)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


def _defaults(schema: type[Schema]) -> Any:
    """A section left out of the file gets every default of its schema."""
    return schema().load({})


class _V1Schema(_Strict):
    base_url = fields.String(
        load_default=V1Settings.base_url, validate=validate.Regexp(r"\Ahttps?://[^\s]+\Z")
    )
    # An SDK key (projects that require one) and its secret (write it as "${VAR}").
    sdk_key = fields.String(
        load_default=None, validate=validate.Regexp(r"\A[A-Za-z0-9_./-]{1,200}\Z")
    )
    sdk_secret = fields.String(load_default=None, validate=_key_text(8))
    enrich_data = fields.Boolean(load_default=False)
    source = fields.String(
        load_default=None, validate=validate.Regexp(r"\A[\x21-\x7e][\x20-\x7e]{0,99}\Z")
    )
    batch_size = fields.Integer(load_default=50, validate=validate.Range(min=1, max=500))
    batch_wait_seconds = fields.Float(load_default=0.2, validate=validate.Range(min=0, max=10))
    bucketing_events = fields.Boolean(load_default=False)

    @validates_schema
    def _key_and_secret(self, data: Mapping[str, Any], **_: Any) -> None:
        if data.get("sdk_secret") is not None and data.get("sdk_key") is None:
            raise ValidationError("an SDK secret needs its sdk_key", "sdk_secret")


class _ConvertSchema(_Strict):
    account_id = fields.String(required=True, validate=_DIGITS)
    project_id = fields.String(required=True, validate=_DIGITS)
    endpoint = fields.String(load_default=LEGACY_ENDPOINT, validate=validate.Regexp(r"^https?://"))
    dry_run = fields.Boolean(load_default=False)
    connect_timeout_seconds = fields.Float(load_default=3.05, validate=validate.Range(min=0.1))
    read_timeout_seconds = fields.Float(load_default=10.0, validate=validate.Range(min=0.1))
    # "legacy" (the GET push) or "v1" (the JSON tracking API); fixed per event when stored.
    format = fields.Enum(ConvertFormat, by_value=True, load_default=ConvertFormat.LEGACY)
    v1 = fields.Nested(_V1Schema, load_default=lambda: _defaults(_V1Schema))


class _GoalSetSchema(_Strict):
    conversion = fields.List(fields.String(validate=_DIGITS), load_default=list)
    transaction = fields.List(fields.String(validate=_DIGITS), load_default=list)


class _GoalsSchema(_Strict):
    purchase = fields.Nested(_GoalSetSchema, required=True)
    subscription_renewal = fields.Nested(
        _GoalSetSchema, load_default=lambda: _defaults(_GoalSetSchema)
    )


def _as_dict(messages: Any) -> dict[str, Any]:
    return messages if isinstance(messages, dict) else {"_schema": messages}


def _known_platform(value: str) -> None:
    # Read at load time, not import time: the registry is the one list of platforms.
    if value not in REGISTRY:
        raise ValidationError(f"Must be one of: {', '.join(sorted(REGISTRY))}.")


class _SourceSchema(Schema):
    """The keys every source has; any other key belongs to the platform and is validated by
    its spec's options schema (a platform without one takes no other key)."""

    class Meta:
        unknown = INCLUDE  # handed to the platform's options schema below, never kept as is

    platform = fields.String(required=True, validate=_known_platform)
    secrets = fields.List(
        fields.String(validate=_secret),
        required=True,
        validate=validate.Length(min=1, error="needs at least one secret"),
    )
    # None: the platform scheme's own window (Stripe style: 300 s, Paddle style: 5 s).
    tolerance_seconds = fields.Integer(load_default=None, validate=validate.Range(min=1))
    allow_test_events = fields.Boolean(load_default=False)
    experiments_key = fields.String(load_default="convert_experiments")
    revenue = fields.String(load_default="total", validate=validate.OneOf(REVENUE_BASES))
    # The URL the platform calls, for schemes that sign it (required for those).
    url = fields.String(
        load_default=None,
        validate=validate.Regexp(r"\Ahttps?://\S+\Z", error="must be an http(s) URL"),
    )

    def _options(self, data: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in data.items() if k not in self.load_fields}

    @validates_schema(skip_on_field_errors=False)
    def _check_platform_keys(self, data: Mapping[str, Any], **_: Any) -> None:
        """The platform's options and the secrets' format, named by their dotted keys."""
        spec = REGISTRY.get(data.get("platform", ""))
        problems: dict[str, Any] = {}
        extra = self._options(data)
        options: Mapping[str, Any] | None = None
        if spec is None or spec.options is None:
            problems.update({key: ["Unknown field."] for key in extra})
            options = {}
        else:
            try:
                options = spec.options(unknown=RAISE).load(extra)
            except ValidationError as exc:
                problems.update(_as_dict(exc.messages))
        if spec is not None and options is not None:
            scheme = spec.scheme_of(options)
            bad = {
                i: [problem]
                for i, secret in enumerate(data.get("secrets") or ())
                if (problem := scheme.secret_problem(secret))
            }
            if bad:
                problems["secrets"] = bad
            if scheme.needs_url and data.get("url") is None:
                problems["url"] = ["is required: this platform signs the URL it calls"]
        if problems:
            raise ValidationError(problems)

    @post_load
    def _split_options(self, data: dict[str, Any], **_: Any) -> dict[str, Any]:
        spec = REGISTRY[data["platform"]]
        loaded = spec.options(unknown=RAISE).load(self._options(data)) if spec.options else {}
        common = {k: v for k, v in data.items() if k in self.load_fields}
        return {**common, "options": loaded}


class _AttributionSchema(_Strict):
    # The pairs come from the buyer's cart (Shopify attributes): each one is a Convert request.
    max_pairs_per_order = fields.Integer(load_default=20, validate=validate.Range(min=1, max=200))
    # Late data: how long an event without pairs waits for them, and how often it looks.
    grace_seconds = fields.Float(load_default=900.0, validate=validate.Range(min=0, max=7 * 86400))
    recheck_seconds = fields.Float(load_default=60.0, validate=validate.Range(min=1, max=86400))


class _RetentionSchema(_Strict):
    # Longer than any platform's retry window (Stripe: 3 days), so idempotency holds inside it.
    keep_days = fields.Float(load_default=30.0, validate=validate.Range(min=MIN_KEEP_DAYS))
    prune_interval_seconds = fields.Float(
        load_default=3600.0, validate=lambda v: v == 0 or v >= 60 or _fail("0 (off) or >= 60")
    )


class _ExposuresSchema(_Strict):
    # Bearer tokens for /api/exposures (none: the API is off). Write them as "${VAR}".
    tokens = fields.List(fields.String(validate=_secret), load_default=list)
    max_records = fields.Integer(load_default=500, validate=validate.Range(min=1, max=10_000))
    max_body_bytes = fields.Integer(
        load_default=1_048_576, validate=validate.Range(min=1024, max=64 * 1_048_576)
    )


MIN_EMAIL_KEY_LENGTH = 32
MIN_ADMIN_PASSWORD_LENGTH = 12


class _PrivacySchema(_Strict):
    # The HMAC key of email digests, from the environment ("${VAR}"); it must never change
    # (digests made with another key no longer match).
    email_key = fields.String(load_default=None, validate=_key_text(MIN_EMAIL_KEY_LENGTH))


class _MetricsSchema(_Strict):
    enabled = fields.Boolean(load_default=True)
    token = fields.String(load_default=None, validate=_secret)  # write it as "${VAR}"


class _AdminSchema(_Strict):
    # The status page (/admin) is off while no password is set; write it as "${VAR}".
    password = fields.String(load_default=None, validate=_key_text(MIN_ADMIN_PASSWORD_LENGTH))


class _LoggingSchema(_Strict):
    format = fields.Enum(LogFormat, by_value=True, load_default=LogFormat.AUTO)
    level = fields.String(
        load_default="INFO", validate=validate.OneOf(("DEBUG", "INFO", "WARNING", "ERROR"))
    )


class _DatabaseSchema(_Strict):
    url = fields.String(load_default=DEFAULT_DATABASE_URL)
    busy_timeout_ms = fields.Integer(load_default=5000, validate=validate.Range(min=0))


class _DispatcherSchema(_Strict):
    enabled = fields.Boolean(load_default=True)
    batch_size = fields.Integer(load_default=50, validate=validate.Range(min=1, max=1000))
    lease_seconds = fields.Integer(load_default=300, validate=validate.Range(min=10))
    poll_seconds = fields.Float(load_default=1.0, validate=validate.Range(min=0.01))
    linger_seconds = fields.Float(load_default=0.01, validate=validate.Range(min=0, max=1))
    # Upper bounds: a typo (an extra zero or three) must not park events for months.
    retry_base_seconds = fields.Float(
        load_default=10.0, validate=validate.Range(min=0.01, max=86_400)
    )
    retry_max_delay_seconds = fields.Float(
        load_default=3600.0, validate=validate.Range(min=0.01, max=7 * 86_400)
    )
    retry_horizon_seconds = fields.Float(load_default=259200.0, validate=validate.Range(min=1))


class _ServerSchema(_Strict):
    max_body_bytes = fields.Integer(load_default=1_048_576, validate=validate.Range(min=1024))


class _ConfigSchema(_Strict):
    convert = fields.Nested(_ConvertSchema, required=True)
    goals = fields.Nested(_GoalsSchema, required=True)
    sources = fields.Dict(
        keys=fields.String(
            validate=validate.Regexp(
                r"\A[A-Za-z0-9_-]{1,64}\Z",
                error="use letters, digits, - and _ only (it is a URL part)",
            )
        ),
        values=fields.Nested(_SourceSchema),
        required=True,
        validate=validate.Length(min=1, error="needs at least one source"),
    )
    database = fields.Nested(_DatabaseSchema, load_default=lambda: _defaults(_DatabaseSchema))
    dispatcher = fields.Nested(_DispatcherSchema, load_default=lambda: _defaults(_DispatcherSchema))
    server = fields.Nested(_ServerSchema, load_default=lambda: _defaults(_ServerSchema))
    attribution = fields.Nested(
        _AttributionSchema, load_default=lambda: _defaults(_AttributionSchema)
    )
    retention = fields.Nested(_RetentionSchema, load_default=lambda: _defaults(_RetentionSchema))
    exposures = fields.Nested(_ExposuresSchema, load_default=lambda: _defaults(_ExposuresSchema))
    privacy = fields.Nested(_PrivacySchema, load_default=lambda: _defaults(_PrivacySchema))
    metrics = fields.Nested(_MetricsSchema, load_default=lambda: _defaults(_MetricsSchema))
    admin = fields.Nested(_AdminSchema, load_default=lambda: _defaults(_AdminSchema))
    logging = fields.Nested(_LoggingSchema, load_default=lambda: _defaults(_LoggingSchema))


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Read, expand and validate the config file (default: $CONVERT_WEBHOOKS_CONFIG)."""
    env = os.environ if env is None else env
    path = path or env.get(CONFIG_ENV)
    if not path:
        raise ConfigError({CONFIG_ENV: "not set: point it at your TOML config file"})
    try:
        document = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError({str(path): f"cannot read: {exc.strerror}"}) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError({str(path): f"not valid TOML: {exc}"}) from exc
    return settings_from_mapping(document, env)


def settings_from_mapping(document: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    problems: dict[str, str] = {}
    expanded = _expand(document, env, "", problems)
    try:
        data = _ConfigSchema().load(expanded)
    except ValidationError as exc:
        # A missing ${VAR} explains a value better than the validation it then fails.
        problems = {**_flatten(exc.messages), **problems}
        data = None
    if problems or data is None:
        raise ConfigError(problems)
    settings = _build(data, env)
    problems.update(_cross_checks(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def _cross_checks(settings: Settings) -> dict[str, str]:
    """Rules that read more than one key."""
    problems: dict[str, str] = {}
    if not settings.convert.dry_run:
        for name, source in settings.sources.items():
            for i, secret in enumerate(source.secrets):
                if secret in EXAMPLE_SECRETS:
                    problems[f"sources.{name}.secrets[{i}]"] = (
                        "is the example secret: set your own (allowed only with dry_run = true)"
                    )
    if settings.exposures.tokens and settings.privacy.email_key is None:
        problems["privacy.email_key"] = (
            "is required while the exposure API is on (exposures.tokens): emails are stored "
            'only as keyed digests; set it from the environment, e.g. "${EMAIL_DIGEST_KEY}"'
        )
    if settings.convert.format is ConvertFormat.V1 and settings.privacy.email_key is None:
        problems["privacy.email_key"] = (
            'is required with convert.format = "v1": a purchase whose visitor id is not known '
            "is sent under a keyed digest of its source and customer, made with this key; set "
            'it from the environment, e.g. "${EMAIL_DIGEST_KEY}"'
        )
    needed = minimum_lease_seconds(settings)
    if settings.dispatcher.lease_seconds < needed:
        problems["dispatcher.lease_seconds"] = (
            f"must be at least {needed} s: a round may send for half its lease, plus one "
            "request's connect and read timeouts and the database waits to record it"
        )
    return problems


def minimum_lease_seconds(settings: Settings) -> int:
    """The shortest lease under which a round always finishes before its lease runs out.

    The dispatcher starts no send later than half the lease after its claim (the rest waits
    for the next round), so the worst round is half the lease, one request at its full
    timeouts, and two bounded database waits (claim and record), with a margin.
    """
    convert = settings.convert
    request = convert.connect_timeout + convert.read_timeout
    database = 2 * settings.busy_timeout_ms / 1000
    return int(2 * (request + database) + 10)


def _expand(value: Any, env: Mapping[str, str], key: str, problems: dict[str, str]) -> Any:
    if isinstance(value, str):

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            problems[key] = f"environment variable {name} is not set"
            return ""

        return _VAR.sub(substitute, value)
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{key}.{k}" if key else k, problems) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v, env, f"{key}[{i}]", problems) for i, v in enumerate(value)]
    return value


def _flatten(messages: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(messages, list):
        if all(isinstance(m, str) for m in messages):
            return {prefix or "(root)": " ".join(messages)}
        out: dict[str, str] = {}
        for item in messages:
            out.update(_flatten(item, prefix))
        return out
    if not isinstance(messages, dict):
        return {prefix or "(root)": str(messages)}
    out = {}
    for key, value in messages.items():
        if key == "key" and isinstance(value, list):  # marshmallow's message for a bad dict key
            out[f"{prefix} (name)"] = " ".join(map(str, value))
            continue
        if key == "value" and isinstance(value, dict):
            out.update(_flatten(value, prefix))
            continue
        name = f"{prefix}[{key}]" if isinstance(key, int) else f"{prefix}.{key}" if prefix else key
        out.update(_flatten(value, str(name)))
    return out


def _tolerance(source: Mapping[str, Any]) -> int:
    """The configured window, else the scheme's; 300 s for a scheme without one (unused)."""
    if source["tolerance_seconds"] is not None:
        tolerance: int = source["tolerance_seconds"]
        return tolerance
    scheme = REGISTRY[source["platform"]].scheme_of(source["options"])
    return scheme.window_seconds or DEFAULT_TOLERANCE_SECONDS


def _build(data: Mapping[str, Any], env: Mapping[str, str]) -> Settings:
    convert = data["convert"]
    goals = {
        EventKind(kind): GoalSet(tuple(g["conversion"]), tuple(g["transaction"]))
        for kind, g in data["goals"].items()
        if EventKind(kind) in SENDABLE_KINDS
    }
    sources = {
        name: SourceSettings(
            name=name,
            platform=s["platform"],
            secrets=tuple(s["secrets"]),
            tolerance_seconds=_tolerance(s),
            allow_test_events=s["allow_test_events"],
            experiments_key=s["experiments_key"],
            revenue=s["revenue"],
            url=s["url"],
            options=s["options"],
        )
        for name, s in data["sources"].items()
    }
    d = data["dispatcher"]
    retention = data["retention"]
    return Settings(
        convert=ConvertSettings(
            account_id=convert["account_id"],
            project_id=convert["project_id"],
            endpoint=convert["endpoint"],
            dry_run=convert["dry_run"],
            connect_timeout=convert["connect_timeout_seconds"],
            read_timeout=convert["read_timeout_seconds"],
            format=convert["format"],
            v1=V1Settings(**convert["v1"]),
        ),
        goals=goals,
        sources=sources,
        database_url=env.get(DATABASE_ENV) or data["database"]["url"],
        busy_timeout_ms=data["database"]["busy_timeout_ms"],
        max_body_bytes=data["server"]["max_body_bytes"],
        dispatcher=DispatcherSettings(
            enabled=d["enabled"],
            batch_size=d["batch_size"],
            lease_seconds=d["lease_seconds"],
            poll_seconds=d["poll_seconds"],
            linger_seconds=d["linger_seconds"],
            retry_base_seconds=d["retry_base_seconds"],
            retry_max_delay_seconds=d["retry_max_delay_seconds"],
            retry_horizon_seconds=d["retry_horizon_seconds"],
        ),
        attribution=AttributionSettings(
            data["attribution"]["max_pairs_per_order"],
            data["attribution"]["grace_seconds"],
            data["attribution"]["recheck_seconds"],
        ),
        retention=RetentionSettings(retention["keep_days"], retention["prune_interval_seconds"]),
        exposures=ExposureSettings(
            tokens=tuple(data["exposures"]["tokens"]),
            max_records=data["exposures"]["max_records"],
            max_body_bytes=data["exposures"]["max_body_bytes"],
        ),
        privacy=PrivacySettings(_email_key(data["privacy"]["email_key"])),
        metrics=MetricsSettings(**data["metrics"]),
        admin=AdminSettings(**data["admin"]),
        logging=LoggingSettings(**data["logging"]),
    )


def _email_key(value: str | None) -> bytes | None:
    # surrogateescape: an environment value that is not UTF-8 keeps its own bytes.
    return None if value is None else value.encode("utf-8", "surrogateescape")
