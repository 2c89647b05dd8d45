"""`convert-webhooks report`: per source and UTC day, what became of the orders, on SQLite and
PostgreSQL. Real signed webhooks go through the real app and dispatcher to every state (sent
with the pairs found on the order, on the Stripe customer record and in the exposure store;
skipped without pairs, in test mode and as not a purchase per the platform's API; dead after
Convert refused; pending), over two days of the fake clock and three currencies; the report's
numbers are then checked exactly in its three formats."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from adapters import bigcommerce
from tests.bigcommerce_api_standin import API_TOKEN, BigCommerceApiStandin
from tests.config_file import STRIPE_SECRET, config_document, write_config
from tests.conftest import START, Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import experiments, fixture, shopify_order, stripe_event
from tests.stripe_api_standin import API_KEY, StripeApiStandin
from webhooks.attribution.exposures import PLACE_BY_CUSTOMER, PLACE_BY_EMAIL
from webhooks.cli import main, since_time
from webhooks.core.places import place_class
from webhooks.storage.exposures import Exposure, store_exposures
from webhooks.storage.report import DayOf, build_report
from webhooks.storage.schema import deliveries, events

DAY1, DAY2 = "2027-01-15", "2027-01-16"  # START is 2027-01-15T08:00:00Z
BC_SECRET = "bc_client_secret_for_tests_0001"
SHOP_CUSTOMER = "115310627314723954"  # the customer of Shopify's sample order


@pytest.fixture
def stripe_api() -> Iterator[StripeApiStandin]:
    server = StripeApiStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def bc_api() -> Iterator[BigCommerceApiStandin]:
    server = BigCommerceApiStandin()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def shop_service(
    make_service: Any, db_url: str, stripe_api: StripeApiStandin, bc_api: BigCommerceApiStandin
) -> Service:
    """Stripe with its customer records readable, Shopify, and a BigCommerce source whose
    orders are read from the API (an order it does not have is not a purchase)."""
    stripe = {"platform": "stripe", "secrets": [STRIPE_SECRET]}
    bc = {"platform": "bigcommerce", "secrets": [BC_SECRET], "store_hash": "abcde"}
    sources = {
        "stripe": stripe | {"api_key": API_KEY, "api_base": stripe_api.base_url},
        "bc": bc | {"api_token": API_TOKEN, "api_base": bc_api.base_url},
    }
    svc: Service = make_service(db_url, sources=sources)
    return svc


def pay(
    svc: Service,
    event_id: str,
    cents: int,
    currency: str,
    pairs: str | None = None,
    live: bool = True,
    **changes: Any,
) -> None:
    metadata = {"convert_experiments": pairs} if pairs else {}
    event = stripe_event(
        "payment_intent_succeeded",
        f"evt_{event_id}",
        id=f"pi_{event_id}",
        amount=cents,
        amount_received=cents,
        currency=currency,
        metadata=metadata,
        **changes,
    )
    event["livemode"] = live
    answer = svc.post_stripe(event)
    assert answer.json["status"] == "accepted", answer.json


def shop(svc: Service, order_id: int, total: str, pairs: str | None = None) -> None:
    order = shopify_order(id=order_id, total_price=total, currency="EUR", test=False)
    order["note_attributes"] = experiments(pairs) if pairs else []
    answer = svc.post_shopify("orders/paid", order)
    assert answer.json["status"] == "accepted", answer.json


def bigcommerce_order(svc: Service, order_id: int) -> None:
    payload = fixture("bigcommerce", "store_order_statusUpdated")
    payload["data"]["id"] = order_id
    payload["hash"] = hashlib.sha1(str(order_id).encode()).hexdigest()
    raw = json.dumps(payload).encode()
    headers = bigcommerce.SCHEME.sign(raw, BC_SECRET, svc.clock.now())
    headers["Content-Type"] = "application/json"
    answer = svc.client.post("/webhooks/bc", data=raw, headers=headers)
    assert answer.status_code == 200 and answer.get_json()["status"] == "accepted"


def two_days(svc: Service, recorder: ConvertRecorder, stripe_api: StripeApiStandin) -> None:
    """Day 1: Stripe a (sent, EUR 12.50), b (no pairs), c (Convert refuses: dead, USD 9.99),
    d (test mode), g and h (sent, GBP 0.10 + 0.20) and a refund (not an order); Shopify 1001
    (sent, EUR 10.00); BigCommerce 404 (the store has no such order: not a purchase).
    Day 2: Stripe e (pairs on the customer record, sent, USD 5.00) and f (pending); Shopify
    1002 (pairs in the exposure store, sent, EUR 7.25); BigCommerce 251 (awaiting its API)."""
    store_exposures(
        svc.runtime.engine,
        [Exposure("shop", SHOP_CUSTOMER, None, (("4", "4"),), 1_600_000_000.0)],
        svc.clock.now(),
    )
    stripe_api.add_customer("cus_report1", {"convert_experiments": "3-3"})
    pay(svc, "a", 1250, "eur", "1-1")
    pay(svc, "b", 4000, "eur")
    svc.drain()
    pay(svc, "c", 999, "usd", "1-1")
    recorder.answer_next(400)
    svc.drain()
    pay(svc, "d", 700, "eur", "1-1", live=False)
    pay(svc, "g", 10, "gbp", "1-1")
    pay(svc, "h", 20, "gbp", "1-1")
    refund = stripe_event("charge_refunded", "evt_refund")
    refund["livemode"] = True
    assert svc.post_stripe(refund).json["status"] == "accepted"
    shop(svc, 1001, "10.00", "2-2")
    bigcommerce_order(svc, 404)
    svc.drain()
    svc.clock.advance(86_400)
    pay(svc, "e", 500, "usd", customer="cus_report1")
    shop(svc, 1002, "7.25")
    svc.drain()
    pay(svc, "f", 300, "usd", "1-1")
    bigcommerce_order(svc, 251)
    assert len(recorder.paths) == 7  # a, c (refused), g, h, 1001, e, 1002


def cli_config(tmp_path: Path, svc: Service, recorder: ConvertRecorder) -> str:
    doc = config_document(svc.settings.database_url, recorder.base_url)
    return str(write_config(tmp_path / "cli.toml", doc))


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def counts(**given: Any) -> dict[str, Any]:
    """A JSON tally: zeros unless given."""
    places = {"order": 0, "customer": 0, "exposures": 0, "other": 0}
    base: dict[str, Any] = {
        "received": 0,
        "paid": 0,
        "attributed": 0,
        "attributed_by_place": places,
        "sent": 0,
        "dry_run": 0,
        "pending": 0,
        "skipped": 0,
        "skipped_by_reason": {},
        "dead": 0,
        "revenue_sent": {},
    }
    if "places" in given:
        given["attributed_by_place"] = places | given.pop("places")
    return base | given


STRIPE_DAY1 = counts(
    received=6,
    paid=6,
    attributed=4,
    places={"order": 4},
    sent=3,
    skipped=2,
    skipped_by_reason={"no_experiment_data": 1, "test_mode": 1},
    dead=1,
    revenue_sent={"EUR": "12.50", "GBP": "0.30"},
)
STRIPE_DAY2 = counts(
    received=2,
    paid=2,
    attributed=1,
    places={"customer": 1},
    sent=1,
    pending=1,
    revenue_sent={"USD": "5.00"},
)
SHOP_DAY1 = counts(
    received=1, paid=1, attributed=1, places={"order": 1}, sent=1, revenue_sent={"EUR": "10.00"}
)
SHOP_DAY2 = counts(
    received=1, paid=1, attributed=1, places={"exposures": 1}, sent=1, revenue_sent={"EUR": "7.25"}
)
BC_DAY1 = counts(received=1, skipped=1, skipped_by_reason={"not_a_purchase": 1})
BC_DAY2 = counts(received=1, pending=1)
TOTAL = counts(
    received=12,
    paid=10,
    attributed=7,
    places={"order": 5, "customer": 1, "exposures": 1},
    sent=6,
    pending=2,
    skipped=3,
    skipped_by_reason={"no_experiment_data": 1, "not_a_purchase": 1, "test_mode": 1},
    dead=1,
    revenue_sent={"EUR": "29.75", "GBP": "0.30", "USD": "5.00"},
)


def test_the_json_report_counts_every_order_once_per_source_and_day(
    tmp_path: Path,
    shop_service: Service,
    recorder: ConvertRecorder,
    stripe_api: StripeApiStandin,
    capsys: Any,
) -> None:
    two_days(shop_service, recorder, stripe_api)
    config = cli_config(tmp_path, shop_service, recorder)
    code, out, err = run(
        capsys, "--config", config, "report", "--since", "2027-01-01", "--format", "json"
    )
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert report["since"] == "2027-01-01T00:00:00Z" and report["day_of"] == "received"
    assert report["days"] == [
        {"source": "bc", "day": DAY1, **BC_DAY1},
        {"source": "bc", "day": DAY2, **BC_DAY2},
        {"source": "shop", "day": DAY1, **SHOP_DAY1},
        {"source": "shop", "day": DAY2, **SHOP_DAY2},
        {"source": "stripe", "day": DAY1, **STRIPE_DAY1},
        {"source": "stripe", "day": DAY2, **STRIPE_DAY2},
    ]
    assert report["sources"]["stripe"] == counts(
        received=8,
        paid=8,
        attributed=5,
        places={"order": 4, "customer": 1},
        sent=4,
        pending=1,
        skipped=2,
        skipped_by_reason={"no_experiment_data": 1, "test_mode": 1},
        dead=1,
        revenue_sent={"EUR": "12.50", "GBP": "0.30", "USD": "5.00"},
    )
    assert list(report["sources"]) == ["bc", "shop", "stripe"]
    assert report["total"] == TOTAL
    # Every order is in exactly one of the outcomes.
    total = report["total"]
    outcomes = ("sent", "dry_run", "pending", "skipped", "dead")
    assert sum(total[name] for name in outcomes) == total["received"]


def test_since_and_source_narrow_the_report(
    tmp_path: Path,
    shop_service: Service,
    recorder: ConvertRecorder,
    stripe_api: StripeApiStandin,
    capsys: Any,
) -> None:
    two_days(shop_service, recorder, stripe_api)
    config = cli_config(tmp_path, shop_service, recorder)
    # Day 2 starts at midnight UTC: day 1's orders (received at 08:00) are left out.
    since = "2027-01-16T00:00:00Z"
    code, out, _ = run(capsys, "--config", config, "report", "--since", since, "--format", "json")
    assert code == 0
    days = json.loads(out)["days"]
    assert [(d["source"], d["day"]) for d in days] == [
        ("bc", DAY2),
        ("shop", DAY2),
        ("stripe", DAY2),
    ]
    # An offset is honoured: 01:00+01:00 is midnight UTC.
    code, out, _ = run(
        capsys,
        "--config",
        config,
        "report",
        "--since",
        "2027-01-16T01:00:00+01:00",
        "--format",
        "json",
        "--source",
        "stripe",
    )
    assert code == 0
    report = json.loads(out)
    assert report["days"] == [{"source": "stripe", "day": DAY2, **STRIPE_DAY2}]
    assert report["total"] == STRIPE_DAY2
    code, out, _ = run(capsys, "--config", config, "report", "--source", "nowhere")
    assert code == 0
    header, said = out.splitlines()
    assert header.startswith("day  source  received")
    assert said.startswith("no orders received since ")
    # --since 7d: seven days before the command's (system) clock.
    shown = datetime.strptime(said.rsplit(" ", 1)[1], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert abs(shown.timestamp() - (time.time() - 7 * 86_400)) < 60


def test_the_table_shows_each_day_then_totals(
    tmp_path: Path,
    shop_service: Service,
    recorder: ConvertRecorder,
    stripe_api: StripeApiStandin,
    capsys: Any,
) -> None:
    two_days(shop_service, recorder, stripe_api)
    config = cli_config(tmp_path, shop_service, recorder)
    code, out, _ = run(capsys, "--config", config, "report", "--since", "2027-01-01")
    assert code == 0
    rows = [line.split("  ") for line in out.splitlines()]
    cells = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    assert cells[0] == [
        "day",
        "source",
        "received",
        "paid",
        "attributed",
        "sent",
        "dry run",
        "pending",
        "skipped",
        "dead",
        "revenue sent",
        "attributed where",
        "skipped why",
    ]
    assert cells[1:] == [
        [DAY1, "bc", "1", "0", "0", "0", "0", "0", "1", "0", "-", "-", "not_a_purchase 1"],
        [DAY2, "bc", "1", "0", "0", "0", "0", "1", "0", "0", "-", "-", "-"],
        ["total", "bc", "2", "0", "0", "0", "0", "1", "1", "0", "-", "-", "not_a_purchase 1"],
        [DAY1, "shop", "1", "1", "1", "1", "0", "0", "0", "0", "10.00 EUR", "order 1", "-"],
        [DAY2, "shop", "1", "1", "1", "1", "0", "0", "0", "0", "7.25 EUR", "exposures 1", "-"],
        [
            "total",
            "shop",
            "2",
            "2",
            "2",
            "2",
            "0",
            "0",
            "0",
            "0",
            "17.25 EUR",
            "exposures 1, order 1",
            "-",
        ],
        [
            DAY1,
            "stripe",
            "6",
            "6",
            "4",
            "3",
            "0",
            "0",
            "2",
            "1",
            "12.50 EUR, 0.30 GBP",
            "order 4",
            "no_experiment_data 1, test_mode 1",
        ],
        [DAY2, "stripe", "2", "2", "1", "1", "0", "1", "0", "0", "5.00 USD", "customer 1", "-"],
        [
            "total",
            "stripe",
            "8",
            "8",
            "5",
            "4",
            "0",
            "1",
            "2",
            "1",
            "12.50 EUR, 0.30 GBP, 5.00 USD",
            "customer 1, order 4",
            "no_experiment_data 1, test_mode 1",
        ],
        [
            "total",
            "all sources",
            "12",
            "10",
            "7",
            "6",
            "0",
            "2",
            "3",
            "1",
            "29.75 EUR, 0.30 GBP, 5.00 USD",
            "customer 1, exposures 1, order 5",
            "no_experiment_data 1, not_a_purchase 1, test_mode 1",
        ],
    ]


def test_the_csv_has_a_column_per_reason_and_currency_and_total_rows(
    tmp_path: Path,
    shop_service: Service,
    recorder: ConvertRecorder,
    stripe_api: StripeApiStandin,
    capsys: Any,
) -> None:
    two_days(shop_service, recorder, stripe_api)
    config = cli_config(tmp_path, shop_service, recorder)
    code, out, _ = run(
        capsys, "--config", config, "report", "--since", "2027-01-01", "--format", "csv"
    )
    assert code == 0
    table = list(csv.reader(io.StringIO(out)))
    assert table[0] == [
        "day",
        "source",
        "received",
        "paid",
        "attributed",
        "attributed_order",
        "attributed_customer",
        "attributed_exposures",
        "attributed_other",
        "sent",
        "dry_run",
        "pending",
        "skipped",
        "skipped_no_experiment_data",
        "skipped_not_a_purchase",
        "skipped_test_mode",
        "dead",
        "revenue_sent_EUR",
        "revenue_sent_GBP",
        "revenue_sent_USD",
    ]
    by_key = {(row[0], row[1]): row[2:] for row in table[1:]}
    assert len(by_key) == len(table) - 1 == 10
    assert by_key[(DAY1, "stripe")] == [
        "6",
        "6",
        "4",
        "4",
        "0",
        "0",
        "0",
        "3",
        "0",
        "0",
        "2",
        "1",
        "0",
        "1",
        "1",
        "12.50",
        "0.30",
        "0",
    ]
    assert by_key[(DAY2, "shop")] == [
        "1",
        "1",
        "1",
        "0",
        "0",
        "1",
        "0",
        "1",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "0",
        "7.25",
        "0",
        "0",
    ]
    assert by_key[("total", "all sources")] == [
        "12",
        "10",
        "7",
        "5",
        "1",
        "1",
        "0",
        "6",
        "0",
        "2",
        "3",
        "1",
        "1",
        "1",
        "1",
        "29.75",
        "0.30",
        "5.00",
    ]


def test_by_order_time_puts_orders_on_the_platform_s_day(
    tmp_path: Path, any_db_service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    """Received on one day, ordered on others (a late delivery, a replay): --by ordered
    groups by the platform's order time, to compare with the platform's export."""
    svc = any_db_service
    pay(svc, "late", 1000, "eur", "1-1")  # ordered at the fixture's time (2009)
    svc.drain()
    for event_id, created in (("old1", START - 3 * 86_400), ("old2", START - 86_400 + 1)):
        event = stripe_event("payment_intent_succeeded", f"evt_{event_id}", id=f"pi_{event_id}")
        event["livemode"], event["created"] = True, int(created)
        event["data"]["object"]["metadata"] = {"convert_experiments": "1-1"}
        assert svc.post_stripe(event).json["status"] == "accepted"
    svc.drain()
    config = cli_config(tmp_path, svc, recorder)
    argv = ["--config", config, "report", "--format", "json", "--since", "2027-01-12"]
    code, out, _ = run(capsys, *argv, "--by", "ordered")
    assert code == 0
    days = json.loads(out)["days"]
    # "late" is ordered at the fixture's envelope time (2009): before --since, left out.
    assert [(d["day"], d["received"], d["sent"]) for d in days] == [
        ("2027-01-12", 1, 1),
        ("2027-01-14", 1, 1),
    ]
    code, out, _ = run(capsys, *argv)
    assert [(d["day"], d["received"]) for d in json.loads(out)["days"]] == [(DAY1, 3)]


def test_revenue_sums_exactly_never_through_float(any_db_service: Service) -> None:
    """0.1 + 0.2 as floats is 0.30000000000000004, and a float keeps 15 to 17 digits of the
    largest amounts: the stored text is summed as Decimal, exactly."""
    svc = any_db_service
    big = "999999999999.999999"  # the largest amount with six places (core/money.py)
    rows = [("0.1", "EUR"), ("0.2", "EUR")] + [(big, "KWD")] * 3
    insert_events(svc, [("stripe", "sent", None, amount, currency) for amount, currency in rows])
    report = build_report(svc.runtime.engine, 0.0)
    tally = report.total()
    assert tally.revenue == {"EUR": Decimal("0.3"), "KWD": Decimal(big) * 3}
    assert str(tally.revenue["KWD"]) == "2999999999999.999997"


def test_every_state_lands_in_exactly_one_column(any_db_service: Service) -> None:
    """States as stored, also a skip without a reason code (an old version) and a state of a
    later version (counted with dead: never dropped from the sum)."""
    rows = [
        ("stripe", "sent", None, "2.50", "EUR"),
        ("stripe", "sent", "pairs_capped", "1.25", "EUR"),
        ("stripe", "dry_run", "dry_run", "4.00", "EUR"),
        ("stripe", "pending", "retrying", "8.00", "EUR"),
        ("stripe", "skipped", None, "16.00", "EUR"),
        ("stripe", "dead", "retries_exhausted", "32.00", "EUR"),
        ("stripe", "archived", "later", "64.00", "EUR"),
    ]
    insert_events(any_db_service, rows)
    tally = build_report(any_db_service.runtime.engine, 0.0, source="stripe").total()
    assert (tally.received, tally.paid, tally.attributed_total) == (7, 7, 0)
    assert (tally.sent, tally.dry_run, tally.pending, tally.dead) == (2, 1, 1, 2)
    assert dict(tally.skipped) == {"none": 1}
    assert tally.revenue == {"EUR": Decimal("3.75")}
    assert build_report(any_db_service.runtime.engine, 0.0, source="shop").days == {}
    later = build_report(any_db_service.runtime.engine, any_db_service.clock.now() + 1)
    assert later.days == {}


@pytest.mark.parametrize(
    ("amount", "said"),
    [("abc", "a decimal"), ("NaN", "a finite"), ("Infinity", "a finite")],
)
def test_a_stored_amount_that_is_not_a_number_is_an_error_not_a_traceback(
    tmp_path: Path,
    service: Service,
    recorder: ConvertRecorder,
    capsys: Any,
    amount: str,
    said: str,
) -> None:
    insert_events(service, [("stripe", "sent", None, amount, "EUR")])
    config = cli_config(tmp_path, service, recorder)
    code, out, err = run(capsys, "--config", config, "report", "--since", "2027-01-01")
    assert (code, out) == (2, "")
    assert err == f"error: a stored amount is not {said} number\n"


def insert_events(svc: Service, rows: list[tuple[str, str, str | None, str, str]]) -> None:
    """Rows as an older version could have stored them: (source, state, reason code, amount,
    currency), each its own order, received now."""
    now = svc.clock.now()
    with svc.runtime.engine.begin() as conn:
        key = conn.execute(
            insert(deliveries).values(
                source="stripe",
                platform="stripe",
                delivery_key=f"evt_old_{now}",
                topic="payment_intent.succeeded",
                status="accepted",
                received_at=now,
                headers="{}",
                body=b"{}",
                redacted=False,
            )
        ).inserted_primary_key
        assert key is not None
        for n, (source, state, reason_code, amount, currency) in enumerate(rows):
            conn.execute(
                insert(events).values(
                    delivery_id=key[0],
                    source=source,
                    platform="stripe",
                    project_id="2222",
                    kind="purchase",
                    order_id=f"old_{n}",
                    amount=amount,
                    currency=currency,
                    item_count=1,
                    attributes="{}",
                    test_mode=False,
                    occurred_at=now,
                    state=state,
                    reason_code=reason_code,
                    attempts=0,
                    revision=0,
                    created_at=now,
                    horizon_start=now,
                    next_attempt_at=now,
                    updated_at=now,
                )
            )


HOSTILE_SOURCE = '=HYPERLINK("http://x")\x1b[2J'
HOSTILE_REASON = "+cmd\x1b]0;owned\x07\nfake"


def test_stored_values_are_escaped_and_csv_cells_cannot_be_formulas(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    insert_events(
        service,
        [
            (HOSTILE_SOURCE, "skipped", HOSTILE_REASON, "1.00", "EUR"),
            ("-src", "skipped", "@reason", "1.00", "EUR"),
        ],
    )
    config = cli_config(tmp_path, service, recorder)
    argv = ["--config", config, "report", "--since", "2027-01-01"]
    code, out, _ = run(capsys, *argv, "--format", "csv")
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    table = list(csv.reader(io.StringIO(out)))
    assert len(table) == 6  # header, two days, two source totals, the total of all
    # A reason's column title starts with "skipped_": escaped, not prefixed.
    assert table[0][13:15] == ["skipped_+cmd\\x1b]0;owned\\x07\\nfake", "skipped_@reason"]
    sources = [row[1] for row in table[1:]]
    assert sources == [
        "'-src",
        "'-src",
        '\'=HYPERLINK("http://x")\\x1b[2J',
        '\'=HYPERLINK("http://x")\\x1b[2J',
        "all sources",
    ]
    assert all(not cell.startswith(("=", "+", "-", "@")) for row in table for cell in row)
    code, out, _ = run(capsys, *argv)
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out
    assert len(out.splitlines()) == 6  # the header and five rows: no forged line
    assert "+cmd\\x1b]0;owned\\x07\\nfake 1" in out
    code, out, _ = run(capsys, *argv, "--format", "json")
    assert json.loads(out)["total"]["skipped_by_reason"] == {"@reason": 1, HOSTILE_REASON: 1}
    assert "\x1b" not in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("7d", START - 7 * 86_400),
        ("24h", START - 86_400),
        ("90m", START - 5_400),
        ("0m", START),
        ("2027-01-15", START - 8 * 3_600),
        ("2027-01-15T08:00:00Z", START),
        ("2027-01-15T09:00:00+01:00", START),
        ("2027-01-15 08:00", START),
    ],
)
def test_since_takes_durations_and_iso_times(text: str, expected: float) -> None:
    assert since_time(text, START) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "7",
        "7w",
        "-7d",
        "1e3d",
        "7 d",
        "\u0663d",  # an Arabic-Indic digit: a digit to Python, not to us
        "1234567d",  # more than six digits
        "2027-13-01",
        "yesterday",
        "2027-01-15T08:00:00Z" + " " * 30,
        "x" * 10_000,
        "\x1b[2J",
    ],
)
def test_bad_since_is_a_usage_error_that_does_not_echo_the_value(
    tmp_path: Path, text: str, capsys: Any
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", str(tmp_path / "unused.toml"), "report", f"--since={text}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --since: must be a duration (7d, 24h, 90m) or an ISO date" in err
    assert "\x1b" not in err and "x" * 100 not in err and "yesterday" not in err


def test_places_found_by_every_lookup_are_classed() -> None:
    """The strings webhooks/attribution writes into attributed_from."""
    assert place_class("order attribute 'convert_experiments'") == "order"
    assert place_class("order attribute '__data'") == "order"
    assert place_class("Stripe customer metadata 'convert_experiments'") == "customer"
    assert place_class("Shopify customer metafield 'convert.experiments'") == "customer"
    assert place_class(PLACE_BY_CUSTOMER) == "exposures"
    assert place_class(PLACE_BY_EMAIL) == "exposures"
    assert place_class("a lookup of a later version") == "other"
    assert place_class("the order attribute") == "other"  # the prefix, not anywhere


def test_an_empty_database_reports_zero(service: Service) -> None:
    report = build_report(service.runtime.engine, 0.0, DayOf.ORDERED)
    assert report.days == {} and report.by_source() == {}
    assert report.total().received == 0 and report.total().revenue == {}
