"""Keyed email digests: emails are never stored, and neither is anything that reverses to one.

A customer's address becomes the plain SHA-256 of the normalized address
(adapters.payload.email_digest: pure, no key), then, for storage, a keyed digest:
HMAC-SHA256(key, plain hex). Keying the plain digest, not the address, lets the digests
stored before a key was configured be re-keyed without their addresses
(`rekey_email_digests`). A keyed digest says so: "k:" and 62 hex digits (248 bits, fits the
64-character columns), so each row tells which form it holds and re-keying is idempotent row
by row.
"""

from __future__ import annotations

import hashlib
import hmac
import logging

from sqlalchemy import Engine, Table, bindparam, select, text, update

from webhooks.storage.database import transaction
from webhooks.storage.schema import deliveries, events, storage_settings

log = logging.getLogger(__name__)

KEYED_PREFIX = "k:"
_KEY_SETTING = "email_digest_key"
REKEY_BATCH = 500
_RECORD_KEY = text(
    "INSERT INTO storage_settings (name, value, updated_at) VALUES (:name, :value, :now) "
    "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)


def keyed_digest(key: bytes, plain: str) -> str:
    """The stored form of a plain email digest (idempotent: a keyed one is returned as is)."""
    if plain.startswith(KEYED_PREFIX):
        return plain
    mac = hmac.new(key, plain.encode("ascii", "replace"), hashlib.sha256).hexdigest()
    return KEYED_PREFIX + mac[:62]


def stored_digest(key: bytes | None, digest: str | None) -> str | None:
    """What is written for an email digest: keyed when a key is configured, else as given
    (the plain digest, as before keys existed)."""
    if digest is None or key is None:
        return digest
    return keyed_digest(key, digest)


def key_fingerprint(key: bytes) -> str:
    """Names a key without revealing it (stored to tell whether the key changed)."""
    return hmac.new(key, b"convert-webhooks email digest key", hashlib.sha256).hexdigest()[:16]


def rekey_email_digests(engine: Engine, key: bytes, now: float) -> int:
    """Replace the plain email digests stored in deliveries and events by keyed ones.

    Run at start-up with the configured key (migrations do not have it): in batches of
    short transactions, each row on its own (a row already keyed is left alone, so several
    processes may run it at once, and a stop half-way resumes). Marked done for the key in
    `storage_settings`, so later starts skip the scan. A key other than the one recorded is
    logged: digests made with the old key no longer match new ones (email lookups and the
    redaction of guest copies miss them). Returns the number of rows re-keyed.
    """
    fingerprint = key_fingerprint(key)
    with transaction(engine) as conn:
        recorded = conn.execute(
            select(storage_settings.c.value).where(storage_settings.c.name == _KEY_SETTING)
        ).scalar()
    if recorded == fingerprint:
        return 0
    if recorded is not None:
        log.error(
            "privacy.email_key differs from the key the stored email digests were made with: "
            "email lookups will not match digests made before the change"
        )
    changed = sum(_rekey_table(engine, table, key) for table in (deliveries, events))
    with transaction(engine) as conn:
        conn.execute(_RECORD_KEY, {"name": _KEY_SETTING, "value": fingerprint, "now": now})
    return changed


def _rekey_table(engine: Engine, table: Table, key: bytes) -> int:
    changed, after = 0, 0
    statement = (
        update(table)
        .where(table.c.id == bindparam("row_id"), table.c.email_digest == bindparam("old"))
        .values(email_digest=bindparam("new"))
    )
    while True:
        with transaction(engine) as conn:
            rows = conn.execute(
                select(table.c.id, table.c.email_digest)
                .where(
                    table.c.id > after,
                    table.c.email_digest.is_not(None),
                    table.c.email_digest.not_like(f"{KEYED_PREFIX}%"),
                )
                .order_by(table.c.id)
                .limit(REKEY_BATCH)
            ).all()
            if not rows:
                return changed
            after = rows[-1].id
            params = [
                {"row_id": row.id, "old": row.email_digest, "new": _rekeyed(key, row.email_digest)}
                for row in rows
            ]
            conn.execute(statement, params)
            changed += len(params)


def _rekeyed(key: bytes, digest: str) -> str:
    # Something that is not a plain digest (stored by hand?) is keyed all the same: nothing
    # stored should stay reversible.
    return keyed_digest(key, digest)
