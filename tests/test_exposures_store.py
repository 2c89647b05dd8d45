"""The exposure store behind the API: the attribution lookup (latest exposure per experiment
before the purchase; customer id before email), keyed email digests where orders store them,
and the CSV import (progress, bad rows by line number, nothing half-imported)."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from adapters import REGISTRY
from adapters.payload import email_digest
from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import body, shopify_order
from webhooks.attribution.chain import Absent, Found, NotYet
from webhooks.attribution.exposures import ExposureStore
from webhooks.cli import main
from webhooks.core.states import Reason
from webhooks.delivery.planner import subject_of
from webhooks.storage.database import make_engine
from webhooks.storage.digests import keyed_digest, stored_digest
from webhooks.storage.exposures import Exposure, store_exposures
from webhooks.storage.ingest import Delivery, _plain_email_digest, ingest
from webhooks.storage.migrations import migrate
from webhooks.storage.schema import deliveries, events, exposures

KEY = b"email-digest-key-for-tests-0123456789"
EMAIL = "Jon@Example.com"  # the Shopify sample order's, in another case
CUSTOMER = "115310627314723954"  # the Shopify sample order's customer
PURCHASE = 1640995200.0  # the sample's processed_at, 2021-12-31T19:00:00-05:00
HOUR = 3600.0


def exposure_settings() -> dict[str, Any]:
    return {
        "exposures": {"tokens": ["expo_token_0123456789abcdef"]},
        "privacy": {"email_key": KEY.decode()},
    }


@pytest.fixture
def shop(make_service: Any, db_url: str) -> Service:
    svc: Service = make_service(db_url, **exposure_settings())
    order = shopify_order(note_attributes=[])  # no pairs on the order itself
    assert svc.post_shopify("orders/paid", order).json["status"] == "accepted"
    return svc


def the_event(svc: Service) -> Any:
    with svc.runtime.engine.connect() as conn:
        return conn.execute(select(events)).one()


def by_customer(pair: str, at: float, visitor: str | None = None, source: str = "shop") -> Exposure:
    experiment, variation = pair.split("-")
    return Exposure(source, CUSTOMER, None, ((experiment, variation),), at, visitor)


def by_email(pair: str, at: float, address: str = EMAIL) -> Exposure:
    experiment, variation = pair.split("-")
    digest = keyed_digest(KEY, email_digest(address) or "")
    return Exposure(None, None, digest, ((experiment, variation),), at)


def lookup(svc: Service, max_pairs: int = 20) -> ExposureStore:
    return ExposureStore(svc.runtime.engine, svc.clock, KEY, max_pairs)


# -- the lookup ----------------------------------------------------------------------------------


def test_the_latest_exposure_per_experiment_before_the_purchase_wins(shop: Service) -> None:
    store_exposures(
        shop.runtime.engine,
        [
            by_customer("100-1", PURCHASE - HOUR, "v1"),
            by_customer("100-2", PURCHASE - 60, "v2"),
            by_customer("100-3", PURCHASE + 60, "v3"),  # after the purchase: not it
            by_customer("200-5", PURCHASE - 2 * HOUR, "v5"),
            by_customer("300-7", PURCHASE + HOUR),  # only after: no pair for 300
        ],
        shop.clock.now(),
    )
    answer = lookup(shop).find(subject_of(the_event(shop)))
    assert answer == Found(
        ("100-2", "200-5"),
        "exposure store (customer id)",
        "exposure",
        visitor_id="v2",
        note="experiment 100: variation 2 exposed 2021-12-31T23:59:00Z is the latest before "
        "the purchase (earlier: 1)",
    )


def test_an_exposure_at_the_purchase_second_counts(shop: Service) -> None:
    store_exposures(shop.runtime.engine, [by_customer("100-1", PURCHASE)], shop.clock.now())
    answer = lookup(shop).find(subject_of(the_event(shop)))
    assert isinstance(answer, Found) and answer.pairs == ("100-1",)


def test_the_customer_id_comes_before_the_email(shop: Service) -> None:
    engine, now = shop.runtime.engine, shop.clock.now()
    store_exposures(engine, [by_email("900-9", PURCHASE - 60)], now)
    # The same customer id under another source is another customer.
    store_exposures(engine, [by_customer("800-8", PURCHASE - 60, source="stripe")], now)
    subject = subject_of(the_event(shop))
    # The event stores the digest as its delivery gave it (plain today, keyed once the route
    # passes the key): the lookup keys it either way.
    plain = email_digest(EMAIL) or ""
    assert subject.email_digest in (plain, keyed_digest(KEY, plain))
    found = lookup(shop).find(subject)
    assert isinstance(found, Found)
    assert (found.pairs, found.place, found.visitor_id) == (
        ("900-9",),
        "exposure store (email)",
        None,
    )
    store_exposures(engine, [by_customer("100-1", PURCHASE - HOUR, "v1")], now)
    found = lookup(shop).find(subject)
    assert isinstance(found, Found)
    assert (found.pairs, found.place) == (("100-1",), "exposure store (customer id)")


def test_nothing_found_names_what_was_looked_up(shop: Service) -> None:
    store_exposures(
        shop.runtime.engine,
        [by_email("1-1", PURCHASE - 60, "someone@else.com"), by_customer("2-2", PURCHASE + 1)],
        shop.clock.now(),
    )
    answer = lookup(shop).find(subject_of(the_event(shop)))
    assert answer == Absent(
        Reason.NO_EXPERIMENT_DATA,
        "exposure store: no exposure before the purchase for its customer id or email",
    )
    no_key = ExposureStore(shop.runtime.engine, shop.clock, None, 20)
    assert no_key.find(subject_of(the_event(shop))) == Absent(
        Reason.NO_EXPERIMENT_DATA,
        "exposure store: no exposure before the purchase for its customer id",
    )


def test_at_most_max_pairs_the_most_recent_ones(shop: Service) -> None:
    reports = [by_customer(f"{n}-1", PURCHASE - n) for n in range(1, 6)]
    store_exposures(shop.runtime.engine, reports, shop.clock.now())
    answer = lookup(shop, max_pairs=2).find(subject_of(the_event(shop)))
    assert isinstance(answer, Found)
    assert answer.pairs == ("1-1", "2-1")
    assert answer.note == "kept the 2 most recent of 5 experiments"


def test_a_store_that_cannot_be_read_means_not_yet(shop: Service, tmp_path: Path) -> None:
    gone = make_engine(f"sqlite:///{tmp_path / 'missing' / 'x.db'}", 100)
    answer = ExposureStore(gone, shop.clock, KEY, 20).find(subject_of(the_event(shop)))
    assert isinstance(answer, NotYet)
    assert answer.at == shop.clock.now() + 60
    assert answer.reason.startswith("exposure store could not be read (")
    gone.dispose()


# -- keyed digests where orders store them -------------------------------------------------------


def shopify_delivery(svc: Service, key: bytes | None, email: str = EMAIL) -> Delivery:
    raw = body(shopify_order(email=email, contact_email=email))
    headers = {"x-shopify-topic": "orders/paid", "x-shopify-webhook-id": str(uuid.uuid4())}
    result = REGISTRY["shopify"].parse(headers, raw)
    source = svc.settings.sources["shop"]
    return Delivery(source, "2222", svc.settings.goals, headers, raw, result, email_key=key)


@pytest.mark.parametrize("key", [KEY, None])
def test_ingest_stores_the_keyed_digest_when_a_key_is_configured(
    service: Service, key: bytes | None
) -> None:
    ingest(service.runtime.engine, shopify_delivery(service, key), service.clock.now())
    plain = hashlib.sha256(EMAIL.lower().encode()).hexdigest()
    expected = keyed_digest(KEY, plain) if key else plain
    with service.runtime.engine.connect() as conn:
        assert conn.execute(select(deliveries.c.email_digest)).scalar() == expected
        assert conn.execute(select(events.c.email_digest)).scalar() == expected
    assert stored_digest(KEY, expected) == (expected if key else keyed_digest(KEY, plain))


@pytest.mark.parametrize(
    "address", ["a@b.co", " MiXeD@Example.COM\t", "ünïcode@exämple.de", "x@y\u2028"]
)
def test_storage_normalizes_an_address_as_the_adapters_do(address: str) -> None:
    assert _plain_email_digest(address) == email_digest(address)


# -- CSV import ----------------------------------------------------------------------------------


def cli_config(tmp_path: Path, url: str, recorder: ConvertRecorder) -> str:
    doc = config_document(url, recorder.base_url, **exposure_settings())
    return str(write_config(tmp_path / "cli.toml", doc))


def exposure_count(url: str) -> int:
    engine = make_engine(url)
    migrate(engine)  # a refused import never opened the database
    with engine.connect() as conn:
        count = conn.execute(select(func.count()).select_from(exposures)).scalar()
    engine.dispose()
    return int(count or 0)


HEADER = "source,customer_id,email,visitor_id,pairs,exposed_at\n"


def test_csv_import_stores_every_row_and_shows_progress(
    tmp_path: Path, db_url: str, recorder: ConvertRecorder, capsys: Any
) -> None:
    config = cli_config(tmp_path, db_url, recorder)
    rows = [
        "shop,191167,,v-1,100-1,2026-01-01T00:00:00Z",
        ',,Ada@Example.com,,"200-2,300-3",2026-01-02T00:00:00+01:00',
        "stripe,cus_9,,,400-4 500-5,",
    ] + [f"shop,{n},,,{n}-1,2026-01-03T00:00:00Z" for n in range(1000, 1998)]
    path = tmp_path / "exposures.csv"
    path.write_text(HEADER + "\n".join(rows) + "\n", encoding="utf-8")
    assert main(["--config", config, "exposures", "import", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == "imported 1001 row(s): 1003 new pair(s), 0 already known"
    assert "checked 1000 rows" in err
    assert "stored 1000/1001 rows" in err and "stored 1001/1001 rows" in err
    assert exposure_count(db_url) == 1003
    # Again: every pair already known, nothing added (the row without a time is "now" again).
    assert main(["--config", config, "exposures", "import", str(path)]) == 0
    assert "1 new pair(s)" not in capsys.readouterr().out
    assert exposure_count(db_url) in (1003, 1005)
    assert main(["--config", config, "exposures", "list", "--email", " ada@example.COM"]) == 0
    listing = capsys.readouterr().out
    assert "200-2" in listing and "300-3" in listing and "ada" not in listing.lower()
    forget = ["exposures", "forget", "--source", "shop", "--customer", "191167"]
    assert main(["--config", config, *forget]) == 0
    assert capsys.readouterr().out.strip() == "forgot 1 exposure(s)"


def test_csv_import_with_bad_rows_names_their_lines_and_imports_nothing(
    tmp_path: Path, sqlite_url: str, recorder: ConvertRecorder, capsys: Any
) -> None:
    config = cli_config(tmp_path, sqlite_url, recorder)
    path = tmp_path / "exposures.csv"
    path.write_text(
        HEADER
        + "shop,1,,,100-1,2026-01-01T00:00:00Z\n"  # line 2: fine
        + "shop,2,,,100-x,2026-01-01T00:00:00Z\n"  # line 3: bad pair
        + "shop,3,,,100-1,2026-01-01T00:00:00Z\n"  # line 4: fine
        + "nope,4,secret@example.com,,100-1,soon\n"  # line 5: source, time
        + "shop,5,,,100-1,2026-01-01T00:00:00Z,extra\n",  # line 6: a cell too many
        encoding="utf-8",
    )
    assert main(["--config", config, "exposures", "import", str(path)]) == 1
    err = capsys.readouterr().err
    assert "line 3: pairs.0: must be EXPERIMENT-VARIATION, both ids ASCII digits" in err
    assert "line 5: exposed_at: must be an ISO 8601 time" in err
    assert "line 5: " in err and "source: is not a configured source" in err
    assert "line 6: row: has more cells than the header" in err
    assert "error: 3 bad row(s); nothing imported" in err
    assert "line 2" not in err and "line 4" not in err
    assert "secret" not in err
    assert exposure_count(sqlite_url) == 0


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("who,pairs\nx,1-1\n", "the header must name columns of"),
        ("source,customer_id\nshop,1\n", "the header must name columns of"),
        (b"pairs\n\xff\xfe-1\n", "not a readable UTF-8 CSV file near line"),
    ],
)
def test_csv_import_refuses_a_file_it_cannot_read(
    tmp_path: Path,
    sqlite_url: str,
    recorder: ConvertRecorder,
    capsys: Any,
    content: str | bytes,
    problem: str,
) -> None:
    config = cli_config(tmp_path, sqlite_url, recorder)
    path = tmp_path / "exposures.csv"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["--config", config, "exposures", "import", str(path)]) == 2
    assert problem in capsys.readouterr().err
    assert main(["--config", config, "exposures", "import", str(tmp_path / "none.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err
