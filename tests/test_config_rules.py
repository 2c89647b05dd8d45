"""check-config refuses what would fail quietly in production: short or padded secrets, the
example secrets when sending for real, ids that are not plain ASCII digits, and a lease that
a dispatch round could outlive."""

from __future__ import annotations

from typing import Any

import pytest

from tests.config_file import config_document
from webhooks.core.errors import ConfigError
from webhooks.wiring.config import minimum_lease_seconds, settings_from_mapping

ENDPOINT = "http://127.0.0.1:9/track/"


def problems_of(**sections: Any) -> dict[str, str]:
    try:
        settings_from_mapping(config_document("sqlite:///x.db", ENDPOINT, **sections), {})
    except ConfigError as exc:
        return exc.problems
    return {}


def stripe_secrets(*secrets: str, dry_run: bool = False) -> dict[str, str]:
    return problems_of(
        convert={"account_id": "1111", "project_id": "2222", "dry_run": dry_run},
        sources={"stripe": {"platform": "stripe", "secrets": list(secrets)}},
    )


def test_the_test_config_itself_is_valid() -> None:
    assert problems_of() == {}


@pytest.mark.parametrize(
    ("secret", "message"),
    [
        ("whsec_short", "shorter than 16"),
        ("whsec_0123456789abcdef\n", "whitespace"),
        (" whsec_0123456789abcdef", "whitespace"),
    ],
)
def test_short_or_padded_secrets_are_refused(secret: str, message: str) -> None:
    problems = stripe_secrets(secret)
    assert message in problems["sources.stripe.secrets[0]"]


@pytest.mark.parametrize("secret", ["whsec_example_secret", "shpss_example_secret"])
def test_example_secrets_only_in_dry_run(secret: str) -> None:
    assert "example secret" in stripe_secrets(secret)["sources.stripe.secrets[0]"]
    assert stripe_secrets(secret, dry_run=True) == {}


@pytest.mark.parametrize("value", ["1111\n", "١١١١", "11²", "+1111", " 1111", "", "1" * 21])
def test_ids_are_ascii_digits_only(value: str) -> None:
    problems = problems_of(convert={"account_id": value, "project_id": "2222"})
    assert "ASCII digits" in problems["convert.account_id"]
    goals = problems_of(goals={"purchase": {"conversion": [value]}})
    assert "goals.purchase.conversion[0]" in goals


def test_a_lease_a_round_could_outlive_is_refused() -> None:
    doc = config_document("sqlite:///x.db", ENDPOINT)
    needed = minimum_lease_seconds(settings_from_mapping(doc, {}))
    problems = problems_of(dispatcher={"lease_seconds": needed - 1})
    assert f"at least {needed} s" in problems["dispatcher.lease_seconds"]
    assert problems_of(dispatcher={"lease_seconds": needed}) == {}
    # Longer Convert timeouts need a longer lease.
    slow = problems_of(
        convert={"account_id": "1", "project_id": "2", "read_timeout_seconds": 120},
        dispatcher={"lease_seconds": needed},
    )
    assert "dispatcher.lease_seconds" in slow


def test_retention_and_pair_cap_have_safe_bounds() -> None:
    assert "retention.keep_days" in problems_of(retention={"keep_days": 2})
    assert "retention.prune_interval_seconds" in problems_of(
        retention={"prune_interval_seconds": 5}
    )
    assert problems_of(retention={"prune_interval_seconds": 0}) == {}
    assert "attribution.max_pairs_per_order" in problems_of(
        attribution={"max_pairs_per_order": 0}
    )


def test_retry_delays_have_an_upper_bound() -> None:
    # A typo (an extra zero or three) must not park events for months.
    assert "dispatcher.retry_max_delay_seconds" in problems_of(
        dispatcher={"retry_max_delay_seconds": 7 * 86_400 + 1}
    )
    assert "dispatcher.retry_base_seconds" in problems_of(
        dispatcher={"retry_base_seconds": 86_401}
    )
    assert problems_of(dispatcher={"retry_max_delay_seconds": 7 * 86_400}) == {}


def test_source_names_with_a_trailing_newline_are_refused() -> None:
    source = {"platform": "stripe", "secrets": ["whsec_0123456789abcdef"]}
    problems = problems_of(sources={"stripe\n": source})
    assert "sources.stripe\n (name)" in problems
