"""States and reason codes, as enums: the values stored in the database and shown to people.

StrEnum members compare equal to their strings, so rows read back compare with them directly.
"""

from __future__ import annotations

from enum import StrEnum


class EventState(StrEnum):
    PENDING = "pending"  # due for the dispatcher (now or after a backoff)
    SENT = "sent"
    DRY_RUN = "dry_run"  # Convert URLs logged, not sent
    SKIPPED = "skipped"  # recorded, not sent (see the reason); some are woken by later data
    DEAD = "dead"  # given up on; kept and replayable


class SendState(StrEnum):
    """One Convert hit (one purchase x one experiment pair)."""

    PENDING = "pending"
    SENT = "sent"
    DRY_RUN = "dry_run"
    DEAD = "dead"


class DeliveryStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    IGNORED = "ignored"  # a topic that carries no purchase
    REJECTED = "rejected"  # signed, but unreadable or unstorable: kept for replay


class Outcome(StrEnum):
    """What one attempt to send a hit came to."""

    SENT = "sent"
    RETRY = "retry"  # network error, 5xx, 429: try again later
    PERMANENT = "permanent"  # any other 4xx (or 3xx after redirects): retrying cannot help
    DRY_RUN = "dry_run"
    ERROR = "error"  # our own failure while sending (a bug): the event is dead, replayable


class Reason(StrEnum):
    """The machine-readable cause of an event's state (the text says it for people)."""

    QUEUED = "queued"
    TEST_MODE = "test_mode"
    NOT_SENT_KIND = "not_sent_kind"
    NO_GOALS = "no_goals"
    NO_EXPERIMENT_DATA = "no_experiment_data"
    MALFORMED_EXPERIMENT_DATA = "malformed_experiment_data"
    CONVERT_REJECTED = "convert_rejected"
    RETRIES_EXHAUSTED = "retries_exhausted"
    RETRYING = "retrying"
    DRY_RUN = "dry_run"
    # The dispatcher failed on this one event (bad stored data, a bug): it is dead, kept and
    # replayable, and the others go on. The text names the error's type and place, never values.
    INTERNAL_ERROR = "internal_error"
    # Sent, but only the first `attribution.max_pairs_per_order` experiment pairs of the order.
    PAIRS_CAPPED = "pairs_capped"
    # An attribution lookup asked to be tried again later (an API timed out, data may still
    # arrive): pending, due then, and not counted as an attempt.
    LOOKUP_LATER = "lookup_later"
    # The platform's API says the order the webhook named is not a paid purchase (yet): not
    # sent; a later delivery for the same order reads it again.
    NOT_A_PURCHASE = "not_a_purchase"


# An event skipped for one of these is woken again when a later delivery of the same
# purchase brings the experiment data (e.g. payment_intent.succeeded before the session).
WAITING_FOR_PAIRS = frozenset({Reason.NO_EXPERIMENT_DATA, Reason.MALFORMED_EXPERIMENT_DATA})
# A hit in one of these is not sent again in a retry.
DONE_SEND_STATES = frozenset({SendState.SENT, SendState.DRY_RUN, SendState.DEAD})
SEND_STATE_OF = {
    Outcome.SENT: SendState.SENT,
    Outcome.DRY_RUN: SendState.DRY_RUN,
    Outcome.PERMANENT: SendState.DEAD,
    Outcome.RETRY: SendState.PENDING,
    Outcome.ERROR: SendState.DEAD,
}
