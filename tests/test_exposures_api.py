"""The exposure API (POST/GET/DELETE /api/exposures) through the real app on a real database:
bearer tokens (several, rotation), a message per bad field, idempotency, bulk all-or-nothing
and its limit, the size cap, reading back and forgetting, and no email in clear anywhere."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from tests.config_file import config_document
from tests.conftest import START, Service
from webhooks.core.errors import ConfigError
from webhooks.storage.schema import exposures, metadata
from webhooks.wiring.config import settings_from_mapping

TOKEN = "expo_token_new_0123456789abcdef"
OLD_TOKEN = "expo_token_old_0123456789abcdef"
EMAIL_KEY = "email-digest-key-for-tests-0123456789"
EMAIL = "Ada.Lovelace@Example.com"
NOW_ISO = "2027-01-15T08:00:00Z"  # START
EARLIER = "2027-01-15T07:00:00Z"


def exposure_service(make_service: Any, db: str, **exposure_settings: Any) -> Service:
    settings = {"tokens": [TOKEN, OLD_TOKEN]} | exposure_settings
    svc: Service = make_service(db, exposures=settings, privacy={"email_key": EMAIL_KEY})
    return svc


@pytest.fixture
def api(make_service: Any, sqlite_url: str) -> Service:
    return exposure_service(make_service, sqlite_url)


def post(svc: Service, payload: Any, token: str | None = TOKEN, raw: bytes | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    data = raw if raw is not None else json.dumps(payload).encode()
    return svc.client.post("/api/exposures", data=data, headers=headers)


def auth(token: str = TOKEN) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def report(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "source": "shop",
        "customer_id": "191167",
        "visitor_id": "1718000000000-0.51",
        "pairs": ["100-1", "200-2"],
        "exposed_at": EARLIER,
    }
    return {k: v for k, v in (base | changes).items() if v is not ...}


def stored_rows(svc: Service) -> list[Any]:
    with svc.runtime.engine.connect() as conn:
        return list(conn.execute(select(exposures).order_by(exposures.c.id)))


# -- authentication ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"Basic {TOKEN}",
        TOKEN,
        "Bearer expo_token_gone_0123456789abcd",
    ],
)
def test_a_request_without_a_valid_bearer_token_is_refused(
    api: Service, header: str | None
) -> None:
    headers = {} if header is None else {"Authorization": header}
    for answer in (
        api.client.post("/api/exposures", json=report(), headers=headers),
        api.client.get("/api/exposures?source=shop&customer=191167", headers=headers),
        api.client.delete("/api/exposures?source=shop&customer=191167", headers=headers),
    ):
        assert answer.status_code == 401
        assert answer.json == {"error": "a valid bearer token is required"}
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert stored_rows(api) == []


def test_every_configured_token_is_accepted_during_a_rotation(api: Service) -> None:
    assert post(api, report(), token=TOKEN).status_code == 201
    assert post(api, report(pairs=["300-3"]), token=OLD_TOKEN).status_code == 201
    assert api.client.get(
        "/api/exposures?source=shop&customer=191167", headers=auth(" " + TOKEN + " ")
    ).status_code == 200
    assert len(stored_rows(api)) == 3


def test_without_tokens_the_api_is_off(make_service: Any, sqlite_url: str) -> None:
    svc = make_service(sqlite_url)
    answer = post(svc, report())
    assert answer.status_code == 404
    assert "exposures.tokens" in answer.json["error"]


def test_the_token_is_checked_before_the_size(make_service: Any, sqlite_url: str) -> None:
    svc = exposure_service(make_service, sqlite_url, max_body_bytes=1024)
    assert post(svc, None, token=None, raw=b" " * 5000).status_code == 401
    assert post(svc, None, raw=b" " * 5000).status_code == 413


# -- validation ----------------------------------------------------------------------------------


FUTURE = "2027-01-15T08:10:00Z"  # START + 10 minutes


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"pairs": ...}, {"pairs": "Missing data for required field."}),
        ({"pairs": []}, {"pairs": "must list 1 to 100 pairs"}),
        ({"pairs": "100-1"}, {"pairs": "Not a valid list."}),
        (
            {"pairs": ["100-1", "1e2-3", "100-", " 7-8", "١-2"]},
            {
                f"pairs.{i}": "must be EXPERIMENT-VARIATION, both ids ASCII digits"
                for i in (1, 2, 3, 4)
            },
        ),
        ({"pairs": [100]}, {"pairs.0": "Not a valid string."}),
        ({"source": "nope"}, {"source": "is not a configured source (configured: shop, stripe)"}),
        ({"source": ...}, {"source": "is required with customer_id (ids are per platform)"}),
        (
            {"source": ..., "customer_id": ...},
            {"customer_id": "give source and customer_id, or email (or both)"},
        ),
        ({"customer_id": ""}, {"customer_id": "the id must be a non-empty string"}),
        ({"customer_id": "x" * 256}, {"customer_id": "the id is longer than 255 characters"}),
        (
            {"customer_id": "a\x00b"},
            {"customer_id": "the id holds a control character or an unpaired surrogate"},
        ),
        ({"customer_id": -4}, {"customer_id": "must be a positive 64-bit integer or a string"}),
        ({"customer_id": True}, {"customer_id": "the id must be a non-empty string"}),
        ({"email": "not an address"}, {"email": "must be an email address"}),
        ({"email": "a@" + "b" * 400}, {"email": "must be an email address"}),
        ({"email": "\ud800@x.io"}, {"email": "must be an email address"}),
        (
            {"visitor_id": "has space"},
            {"visitor_id": "must be 1 to 255 printable ASCII characters, no spaces"},
        ),
        (
            {"exposed_at": "2027-01-15 07:00"},
            {
                "exposed_at": "has no time zone: must be an ISO 8601 time with a time zone, "
                "e.g. 2027-01-15T08:00:00Z"
            },
        ),
        (
            {"exposed_at": "yesterday"},
            {"exposed_at": "must be an ISO 8601 time with a time zone, e.g. 2027-01-15T08:00:00Z"},
        ),
        ({"exposed_at": 1800000000}, {"exposed_at": "Not a valid string."}),
        ({"exposed_at": FUTURE}, {"exposed_at": "is in the future"}),
        ({"exposed_at": "1969-12-31T23:00:00Z"}, {"exposed_at": "is before 1970"}),
        ({"expose_at": EARLIER}, {"expose_at": "Unknown field."}),
        ({"x" * 100: 1}, {"(unknown field)": "Unknown field."}),
    ],
)
def test_each_bad_field_gets_its_own_message(
    api: Service, changes: dict[str, Any], expected: dict[str, str]
) -> None:
    answer = post(api, report(**changes))
    assert answer.status_code == 400
    assert answer.json == {"error": "invalid exposure", "fields": expected}
    assert stored_rows(api) == []


def test_messages_never_quote_the_value(api: Service) -> None:
    secret = "ada@secret.example"
    answer = post(api, report(email=secret + "\n" * 400, customer_id=secret * 20))
    assert answer.status_code == 400
    assert "secret" not in answer.get_data(as_text=True)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"not json",
        b"[]",
        b'"a string"',
        b"null",
        b'{"pairs": NaN}',
        b"\xff\xfe{}",
        b"[" * 100_000,
        b'{"pairs": ["1-2"], "customer_id": 1' + b"0" * 5000 + b"}",
        b'{"exposures": {}}',
        b'{"exposures": null}',
        b'{"exposures": [null, 1, "x", []]}',
    ],
)
def test_a_body_that_is_not_a_report_is_a_400_never_a_500(api: Service, raw: bytes) -> None:
    answer = post(api, None, raw=raw)
    assert answer.status_code == 400, answer.json
    assert stored_rows(api) == []


def test_the_customer_id_may_be_a_platform_integer_and_pairs_are_normalized(api: Service) -> None:
    answer = post(api, report(customer_id=191167, pairs=["0100-01", "100-1", "200-2"]))
    assert answer.status_code == 201
    assert answer.json == {"status": "stored", "records": 1, "stored": 2, "known": 0}
    rows = stored_rows(api)
    assert [(r.customer_id, r.experiment_id, r.variation_id) for r in rows] == [
        ("191167", "100", "1"),
        ("191167", "200", "2"),
    ]


# -- idempotency, defaults -----------------------------------------------------------------------


def test_the_same_report_twice_is_stored_once(any_db_service: Service, make_service: Any) -> None:
    svc = exposure_service(make_service, any_db_service.settings.database_url)
    first = post(svc, report())
    assert (first.status_code, first.json["stored"]) == (201, 2)
    again = post(svc, report())
    assert again.status_code == 200
    assert again.json == {"status": "known", "records": 1, "stored": 0, "known": 2}
    # One more pair in the same report: only it is new.
    more = post(svc, report(pairs=["100-1", "200-2", "300-3"]))
    assert (more.status_code, more.json["stored"], more.json["known"]) == (201, 1, 2)
    # The same pair at another time is another exposure.
    later = post(svc, report(exposed_at="2027-01-15T07:30:00+00:00", pairs=["100-1"]))
    assert later.status_code == 201
    assert len(stored_rows(svc)) == 4


def test_exposed_at_defaults_to_now_and_other_offsets_become_utc(api: Service) -> None:
    assert post(api, report(exposed_at=..., pairs=["1-1"])).status_code == 201
    east = report(exposed_at="2027-01-15T09:00:00+02:00", pairs=["2-2"])
    assert post(api, east).status_code == 201
    assert post(api, report(exposed_at=None, pairs=["3-3"])).status_code == 201
    times = {r.experiment_id: r.exposed_at for r in stored_rows(api)}
    assert times == {"1": START, "2": START - 3600, "3": START}
    assert {r.recorded_at for r in stored_rows(api)} == {START}


# -- bulk ----------------------------------------------------------------------------------------


def test_bulk_is_all_or_nothing_and_names_the_bad_record(api: Service) -> None:
    records = [report(customer_id=str(i), pairs=[f"{i}-1"]) for i in range(1, 6)]
    records[3]["pairs"] = ["100-1", "bad"]
    records[1]["email"] = "nope"
    answer = post(api, {"exposures": records})
    assert answer.status_code == 400
    assert answer.json["fields"] == {
        "exposures.1.email": "must be an email address",
        "exposures.3.pairs.1": "must be EXPERIMENT-VARIATION, both ids ASCII digits",
    }
    assert stored_rows(api) == []
    records[3]["pairs"], records[1]["email"] = ["4-1"], EMAIL
    answer = post(api, {"exposures": records})
    assert answer.status_code == 201
    assert answer.json == {"status": "stored", "records": 5, "stored": 5, "known": 0}


def test_bulk_limit(make_service: Any, sqlite_url: str) -> None:
    svc = exposure_service(make_service, sqlite_url, max_records=3)
    records = [report(customer_id=str(i)) for i in range(4)]
    answer = post(svc, {"exposures": records})
    assert answer.status_code == 400
    assert answer.json["fields"] == {"exposures": "must hold 1 to 3 records"}
    assert post(svc, {"exposures": []}).json["fields"] == {"exposures": "must hold 1 to 3 records"}
    assert stored_rows(svc) == []
    assert post(svc, {"exposures": records[:3]}).status_code == 201
    assert post(svc, {"exposures": records[:3], "extra": 1}).json["fields"] == {
        "extra": "Unknown field."
    }


def test_size_cap(make_service: Any, sqlite_url: str) -> None:
    svc = exposure_service(make_service, sqlite_url, max_body_bytes=1024)
    data = json.dumps(report()).encode()
    exact = data[:-1] + b" " * (1024 - len(data)) + b"}"
    assert len(exact) == 1024
    assert post(svc, None, raw=exact).status_code == 201
    over = exact[:-1] + b" }"
    answer = post(svc, None, raw=over)
    assert answer.status_code == 413
    assert "1024" in answer.json["error"]
    assert len(stored_rows(svc)) == 2  # the first one only


# -- reading back, forgetting --------------------------------------------------------------------


def test_get_and_delete_by_customer_or_email(any_db_service: Service, make_service: Any) -> None:
    svc = exposure_service(make_service, any_db_service.settings.database_url)
    post(svc, report(pairs=["100-1"], exposed_at=EARLIER))
    post(svc, report(pairs=["100-2"], exposed_at="2027-01-15T07:30:00Z", visitor_id=...))
    post(svc, report(source=..., customer_id=..., email=EMAIL, pairs=["300-3"]))
    post(svc, report(customer_id="42", pairs=["400-4"]))

    got = svc.client.get("/api/exposures?source=shop&customer=191167", headers=auth())
    assert got.status_code == 200
    assert got.json == {
        "exposures": [
            {
                "source": "shop",
                "customer_id": "191167",
                "by_email": False,
                "visitor_id": None,
                "pair": "100-2",
                "exposed_at": "2027-01-15T07:30:00Z",
                "recorded_at": "2027-01-15T08:00:00Z",
            },
            {
                "source": "shop",
                "customer_id": "191167",
                "by_email": False,
                "visitor_id": "1718000000000-0.51",
                "pair": "100-1",
                "exposed_at": "2027-01-15T07:00:00Z",
                "recorded_at": "2027-01-15T08:00:00Z",
            },
        ]
    }
    # The address in another case and with spaces names the same customer.
    query = "/api/exposures?email=%20ada.lovelace@EXAMPLE.com%20"
    by_email = svc.client.get(query, headers=auth()).json["exposures"]
    assert [(e["pair"], e["by_email"], e["source"]) for e in by_email] == [("300-3", True, None)]

    gone = svc.client.delete("/api/exposures?source=shop&customer=191167", headers=auth())
    assert (gone.status_code, gone.json) == (200, {"status": "forgotten", "forgotten": 2})
    assert svc.client.delete(query, headers=auth()).json["forgotten"] == 1
    assert [r.customer_id for r in stored_rows(svc)] == ["42"]
    assert svc.client.get(query, headers=auth()).json == {"exposures": []}


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?source=shop",
        "?customer=1",
        "?source=nope&customer=1",
        "?email=not-an-address",
        "?email=a@b.co&source=shop&customer=1",
        "?source=shop&customer=" + "1" * 400,
    ],
)
def test_get_and_delete_need_one_customer(api: Service, query: str) -> None:
    post(api, report())
    for method in (api.client.get, api.client.delete):
        answer = method(f"/api/exposures{query}", headers=auth())
        assert answer.status_code == 400
        assert "error" in answer.json
    assert len(stored_rows(api)) == 2


# -- privacy -------------------------------------------------------------------------------------


def every_stored_text(svc: Service) -> list[str]:
    """Every value of every table, as text (bytes decoded), except the raw delivery bodies."""
    texts: list[str] = []
    with svc.runtime.engine.connect() as conn:
        for table in metadata.sorted_tables:
            for row in conn.execute(select(table)):
                for column, value in row._mapping.items():
                    if table.name == "deliveries" and column == "body":
                        continue
                    if isinstance(value, bytes):
                        value = value.decode("utf-8", "replace")
                    texts.append(str(value))
    return texts


def test_no_table_holds_the_address_or_its_plain_digest(
    any_db_service: Service, make_service: Any
) -> None:
    svc = exposure_service(make_service, any_db_service.settings.database_url)
    assert post(svc, report(email=EMAIL)).status_code == 201
    bulk = {"exposures": [report(source=..., customer_id=..., email=EMAIL)]}
    assert post(svc, bulk).status_code == 201
    plain = hashlib.sha256(EMAIL.lower().encode()).hexdigest()
    texts = every_stored_text(svc)
    assert texts  # the scan read the rows
    for text in texts:
        assert EMAIL.lower() not in text.lower()
        assert "lovelace" not in text.lower()
        assert plain not in text
    with svc.runtime.engine.connect() as conn:
        digests = set(conn.execute(select(exposures.c.email_digest)).scalars())
        count = conn.execute(select(func.count()).select_from(exposures)).scalar()
    assert count == 4 and len(digests) == 1
    (digest,) = digests
    assert digest.startswith("k:") and len(digest) == 64


def test_the_exposure_time_is_shown_as_given(api: Service) -> None:
    post(api, report(exposed_at="2027-01-15T07:00:00.250Z"))
    shown = api.client.get("/api/exposures?source=shop&customer=191167", headers=auth())
    assert {e["exposed_at"] for e in shown.json["exposures"]} == {"2027-01-15T07:00:00.250000Z"}
    assert datetime.fromisoformat(NOW_ISO).astimezone(UTC).timestamp() == START


# -- configuration -------------------------------------------------------------------------------


def config_problems(**sections: Any) -> dict[str, str]:
    doc = config_document("sqlite:///unused.db", "http://127.0.0.1:9/", **sections)
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(doc, {"SHORT": "too-short", "SPACED": EMAIL_KEY + "\n"})
    return caught.value.problems


def test_the_api_needs_an_email_key_and_good_tokens() -> None:
    assert config_problems(exposures={"tokens": [TOKEN]}) == {
        "privacy.email_key": "is required while the exposure API is on (exposures.tokens): "
        'emails are stored only as keyed digests; set it from the environment, e.g. '
        '"${EMAIL_DIGEST_KEY}"'
    }
    assert config_problems(
        exposures={"tokens": ["short"], "max_records": 0, "max_body_bytes": 10, "x": 1},
        privacy={"email_key": "${SHORT}"},
    ) == {
        "exposures.tokens[0]": "is shorter than 16 characters",
        "exposures.max_records": "Must be greater than or equal to 1 and less than or equal "
        "to 10000.",
        "exposures.max_body_bytes": "Must be greater than or equal to 1024 and less than or "
        "equal to 67108864.",
        "exposures.x": "Unknown field.",
        "privacy.email_key": "is shorter than 32 characters",
    }
    assert config_problems(privacy={"email_key": "${SPACED}"}) == {
        "privacy.email_key": "has leading or trailing whitespace (a pasted newline?)"
    }


def test_tokens_and_key_come_from_the_environment_and_stay_out_of_repr() -> None:
    doc = config_document(
        "sqlite:///unused.db",
        "http://127.0.0.1:9/",
        exposures={"tokens": ["${TOKEN_A}", "${TOKEN_B}"]},
        privacy={"email_key": "${KEY}"},
    )
    env = {"TOKEN_A": TOKEN, "TOKEN_B": OLD_TOKEN, "KEY": EMAIL_KEY}
    settings = settings_from_mapping(doc, env)
    assert settings.exposures.tokens == (TOKEN, OLD_TOKEN)
    assert settings.privacy.email_key == EMAIL_KEY.encode()
    assert (settings.exposures.max_records, settings.exposures.max_body_bytes) == (500, 1_048_576)
    shown = repr(settings)
    assert TOKEN not in shown and EMAIL_KEY not in shown
    off = settings_from_mapping(config_document("sqlite:///u.db", "http://127.0.0.1:9/"), {})
    assert (off.exposures.tokens, off.privacy.email_key) == ((), None)


# -- anything a client sends ---------------------------------------------------------------------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
_field = st.sampled_from(
    ["source", "customer_id", "email", "visitor_id", "pairs", "exposed_at", "exposures"]
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(changes=st.dictionaries(_field, _json, max_size=3), bulk=st.booleans())
def test_any_json_gets_an_answer_never_a_500(
    api: Service, changes: dict[str, Any], bulk: bool
) -> None:
    record = report(**changes)
    answer = post(api, {"exposures": [record]} if bulk else record)
    assert answer.status_code in (200, 201, 400), answer.json
    if answer.status_code == 400:
        assert answer.json["error"]
