"""Database tables (SQLAlchemy Core). Times are Unix seconds (float) on every backend.

Idempotency lives here as unique constraints, not in memory:
- delivery level: (source, delivery_key), the platform's id of the webhook event;
- business level: (project_id, platform, order_id, kind), so two topics describing one
  purchase count once;
- one Convert request per (event, experiment pair), so a retry after partial success resends
  only what did not succeed.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

Id = BigInteger().with_variant(Integer, "sqlite")  # SQLite autoincrements INTEGER keys only

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True),
    Column("applied_at", Float, nullable=False),
)

deliveries = Table(
    "deliveries",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("platform", String(32), nullable=False),
    Column("delivery_key", String(255), nullable=False),
    Column("topic", String(128), nullable=False),
    # core.states.DeliveryStatus
    Column("status", String(16), nullable=False),
    Column("reason", Text),
    Column("received_at", Float, nullable=False),
    Column("headers", Text, nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("redacted", Boolean, nullable=False, default=False),
    # Who the delivery is about, kept for every status (duplicates and rejected ones too), so
    # a customer redaction finds every copy of the body. Added in schema version 2.
    Column("customer_id", String(255)),
    Column("email_digest", String(64)),
    UniqueConstraint("source", "delivery_key", name="uq_delivery"),
)
Index("ix_deliveries_received", deliveries.c.received_at)
Index("ix_deliveries_customer", deliveries.c.source, deliveries.c.customer_id)
Index("ix_deliveries_email", deliveries.c.source, deliveries.c.email_digest)

events = Table(
    "events",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("delivery_id", Id, ForeignKey("deliveries.id"), nullable=False),
    Column("source", String(64), nullable=False),
    Column("platform", String(32), nullable=False),
    Column("project_id", String(32), nullable=False),
    Column("kind", String(32), nullable=False),
    Column("order_id", String(255), nullable=False),
    Column("refund_of", String(255)),
    Column("amount", String(40), nullable=False),  # Decimal as text: exact on every backend
    Column("currency", String(3), nullable=False),
    Column("item_count", Integer, nullable=False),
    Column("customer_id", String(255)),
    Column("email_digest", String(64)),
    Column("attributes", Text, nullable=False),  # JSON object of the order's string metadata
    Column("test_mode", Boolean, nullable=False),
    Column("occurred_at", Float, nullable=False),
    # core.states.EventState
    Column("state", String(16), nullable=False),
    Column("reason_code", String(32)),  # machine-readable cause of the state, see store.py
    Column("reason", Text),
    Column("attempts", Integer, nullable=False, default=0),
    Column("revision", Integer, nullable=False, default=0),
    Column("created_at", Float, nullable=False),
    Column("horizon_start", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("lease_owner", String(64)),
    Column("lease_until", Float),
    Column("updated_at", Float, nullable=False),
    # Where the experiment pairs were found (the place, the format) and the Convert visitor id
    # when that place gave one; set by the dispatcher. Version 4.
    Column("attributed_from", String(255)),
    Column("attribution_format", String(32)),
    Column("visitor_id", String(255)),
    # Details from the platform's API (version 6): NULL when the webhook carried everything,
    # else DETAILS_PENDING until the dispatcher fetched them (the amount, count, attributes
    # and customer then stored are the API's), then DETAILS_FETCHED. `details_ref` is what
    # the platform's details step reads to find the order.
    Column("details", String(16)),
    Column("details_ref", String(255)),
    # How the event goes to Convert (core.settings.ConvertFormat), fixed when it is stored so a
    # change of format applies to new events only; NULL (stored before version 7): legacy.
    Column("convert_format", String(16)),
    UniqueConstraint("project_id", "platform", "order_id", "kind", name="uq_business"),
)
Index("ix_events_due", events.c.state, events.c.next_attempt_at)
# Open events by source and reason, and their age: what /metrics reads at every scrape (a scan
# of all events otherwise). Version 7.
Index(
    "ix_events_open", events.c.state, events.c.source, events.c.reason_code, events.c.created_at
)
Index("ix_events_customer", events.c.platform, events.c.customer_id)
# Deleting a delivery checks the events' foreign key: without this, a scan of all events.
Index("ix_events_delivery", events.c.delivery_id)

sends = Table(
    "sends",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", Id, ForeignKey("events.id"), nullable=False),
    Column("pair", String(64), nullable=False),  # "experiment-variation"
    # What was sent, in the format the client speaks (core.hits.HitFormat): the legacy GET's
    # URL. Version 3 (it was `url`, always a legacy GET).
    Column("format", String(32), nullable=False),
    Column("payload", Text, nullable=False),
    # core.states.SendState
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_status", Integer),
    Column("last_error", Text),
    Column("sent_at", Float),
    UniqueConstraint("event_id", "pair", name="uq_send"),
)

attempts = Table(
    "attempts",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("event_id", Id, ForeignKey("events.id"), nullable=False),
    Column("pair", String(64), nullable=False),
    Column("at", Float, nullable=False),
    Column("outcome", String(16), nullable=False),  # core.states.Outcome
    Column("status_code", Integer),
    Column("detail", Text),
)
Index("ix_attempts_event", attempts.c.event_id)

# One row per writer that proved the database writable (/readyz); version 2.
readiness = Table(
    "readiness",
    metadata,
    Column("owner", String(64), primary_key=True),
    Column("checked_at", Float, nullable=False),
)

# The exposure store (version 5): one row per experiment pair a customer was shown, as the
# shop's back end reported it (POST /api/exposures). The customer is `source` + `customer_id`
# and/or `email_digest` (keyed HMAC, never the address); an absent part is '' rather than NULL
# so the unique key makes a repeated report a no-op on every backend (NULLs never collide).
exposures = Table(
    "exposures",
    metadata,
    Column("id", Id, primary_key=True, autoincrement=True),
    Column("source", String(64), nullable=False),
    Column("customer_id", String(255), nullable=False),
    Column("email_digest", String(64), nullable=False),
    Column("experiment_id", String(20), nullable=False),
    Column("variation_id", String(20), nullable=False),
    Column("visitor_id", String(255)),
    Column("exposed_at", Float, nullable=False),
    Column("recorded_at", Float, nullable=False),
    UniqueConstraint(
        "source",
        "customer_id",
        "email_digest",
        "experiment_id",
        "variation_id",
        "exposed_at",
        name="uq_exposure",
    ),
)
Index("ix_exposures_customer", exposures.c.source, exposures.c.customer_id)
Index("ix_exposures_email", exposures.c.email_digest)

# Settings that change what is stored (version 5): e.g. which email key the stored digests
# were re-keyed with, so the re-keying runs once per key, not at every start.
storage_settings = Table(
    "storage_settings",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", String(255), nullable=False),
    Column("updated_at", Float, nullable=False),
)

# Columns each migration adds to a table that already existed (see migrations.MIGRATIONS).
V2_COLUMNS = {"deliveries": ("customer_id", "email_digest")}
V4_COLUMNS = {"events": ("attributed_from", "attribution_format", "visitor_id")}
V6_COLUMNS = {"events": ("details", "details_ref")}
V7_COLUMNS = {"events": ("convert_format",)}
V7_INDEXES = ("ix_events_open",)
DETAILS_PENDING = "pending"
DETAILS_FETCHED = "fetched"
V2_INDEXES = (
    "ix_deliveries_received",
    "ix_deliveries_customer",
    "ix_deliveries_email",
    "ix_events_delivery",
)
