"""Schema migrations: append-only steps, each moving the schema one version forward without
losing stored data; `migrate` is safe to run from several processes at once."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import Connection, Engine, insert, inspect, select, text

from webhooks.core.hits import HitFormat
from webhooks.storage.database import is_postgres, transaction
from webhooks.storage.schema import (
    V2_COLUMNS,
    V2_INDEXES,
    V4_COLUMNS,
    V6_COLUMNS,
    V7_COLUMNS,
    V7_INDEXES,
    events,
    exposures,
    metadata,
    readiness,
    schema_version,
    storage_settings,
)


def _create_v1(conn: Connection) -> None:
    metadata.create_all(conn, checkfirst=True)


def _v2_customer_refs_readiness_pruning(conn: Connection) -> None:
    """Customer references on deliveries, the readiness table, indexes for pruning.

    Written to run on a version-1 database and on one that `_create_v1` just made from the
    current metadata (which already has everything): each part checks before it adds.
    """
    _add_columns(conn, V2_COLUMNS)
    readiness.create(conn, checkfirst=True)
    for each in metadata.sorted_tables:
        for index in each.indexes:
            if index.name in V2_INDEXES:
                index.create(conn, checkfirst=True)


def _v3_send_format_and_payload(conn: Connection) -> None:
    """A send records its format and payload (a Convert client may speak another format than
    the legacy GET): `sends.url` becomes `payload`, and the rows so far are legacy GETs."""
    present = {c["name"] for c in inspect(conn).get_columns("sends")}
    if "url" in present:
        conn.execute(text("ALTER TABLE sends RENAME COLUMN url TO payload"))
    if "format" not in present:
        conn.execute(
            text(
                "ALTER TABLE sends ADD COLUMN format VARCHAR(32) NOT NULL"
                f" DEFAULT '{HitFormat.LEGACY_GET}'"
            )
        )


def _v4_attribution_on_events(conn: Connection) -> None:
    """Each event records where its experiment pairs were found and the visitor id."""
    _add_columns(conn, V4_COLUMNS)


def _v5_exposure_store(conn: Connection) -> None:
    """The exposure store and the small table that records which key the email digests were
    re-keyed with (the re-keying needs the key, which migrations do not have: it runs at
    start-up, see `webhooks.storage.exposures.rekey_email_digests`)."""
    exposures.create(conn, checkfirst=True)
    for index in exposures.indexes:
        index.create(conn, checkfirst=True)
    storage_settings.create(conn, checkfirst=True)


def _v6_details_on_events(conn: Connection) -> None:
    """Events whose webhook is thin record whether their details were fetched from the
    platform's API and what finds them there (both NULL for every event stored so far)."""
    _add_columns(conn, V6_COLUMNS)


def _v7_convert_format_on_events(conn: Connection) -> None:
    """Each event records the Convert format it goes out in (NULL for the events stored so
    far: they were stored under the legacy GET, the only format there was); an index for the
    open events the metrics read at each scrape."""
    _add_columns(conn, V7_COLUMNS)
    for index in events.indexes:
        if index.name in V7_INDEXES:
            index.create(conn, checkfirst=True)


def _add_columns(conn: Connection, added: Mapping[str, Sequence[str]]) -> None:
    """Add the columns (nullable, as in the metadata) a table does not have yet."""
    inspector = inspect(conn)
    for table, columns in added.items():
        present = {c["name"] for c in inspector.get_columns(table)}
        for name in columns:
            if name not in present:
                column = metadata.tables[table].c[name]
                kind = column.type.compile(conn.dialect)
                conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {kind}"))


MIGRATIONS: Sequence[Callable[[Connection], None]] = (
    _create_v1,
    _v2_customer_refs_readiness_pruning,
    _v3_send_format_and_payload,
    _v4_attribution_on_events,
    _v5_exposure_store,
    _v6_details_on_events,
    _v7_convert_format_on_events,
)


def migrate(engine: Engine) -> int:
    """Bring the schema to the newest version; safe to run from several processes at once."""
    with transaction(engine) as conn:
        if is_postgres(engine):
            conn.execute(text("SELECT pg_advisory_xact_lock(7351020)"))
        if not inspect(conn).has_table(schema_version.name):
            schema_version.create(conn)
        current = (
            conn.execute(
                select(schema_version.c.version).order_by(schema_version.c.version.desc()).limit(1)
            ).scalar()
            or 0
        )
        if current < len(MIGRATIONS) and is_postgres(engine):
            # Building an index on a large table may take longer than a request's budget.
            conn.execute(text("SET LOCAL statement_timeout = 0"))
        for version, step in enumerate(MIGRATIONS[current:], start=current + 1):
            step(conn)
            conn.execute(insert(schema_version).values(version=version, applied_at=time.time()))
        return len(MIGRATIONS)


