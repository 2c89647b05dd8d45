"""Reason codes: the machine-readable cause of an event's state (the text says it for people)."""

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

# An event skipped for one of these is woken again when a later delivery of the same
# purchase brings the experiment data (e.g. payment_intent.succeeded before the session).
WAITING_FOR_PAIRS = frozenset({NO_EXPERIMENT_DATA, MALFORMED_EXPERIMENT_DATA})
