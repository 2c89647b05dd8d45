"""The status page (/admin) through Flask's test client, on a real SQLite file (and
PostgreSQL where the queries are the point), with real signed webhooks and the local Convert
stand-in: off without a password, sign-in and its throttle, the session cookie, CSRF and
origin checks, retrying a dead event until Convert has it, escaping, headers, bounds."""

from __future__ import annotations

import http.client
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import GunicornService
from tests.payloads import stripe_event
from webhooks.storage.database import transaction
from webhooks.storage.schema import events
from webhooks.web.admin import COOKIE, SECURITY_HEADERS, SESSION_SECONDS

PASSWORD = "correct horse battery staple"
ORIGIN = {"Origin": "http://localhost"}
HOSTILE_ORDER = 'pi_<script>alert("order")</script>'
HOSTILE_REASON = "<img src=x onerror=alert(1)> & \"quoted\" 'single'"


def paid_intent(order: str, event_id: str, pairs: str | None = "100-200") -> dict[str, Any]:
    """Stripe's payment_intent.succeeded sample, live, for `order`, with its pairs."""
    event = stripe_event("payment_intent_succeeded", event_id=event_id, id=order)
    event["livemode"] = True
    event["data"]["object"]["metadata"] = {"convert_experiments": pairs} if pairs else {}
    return event


def make_dead(svc: Service, recorder: ConvertRecorder, order: str, event_id: str) -> int:
    """A purchase Convert refused (400): dead, with its reason."""
    recorder.answer_next(400)
    assert svc.post_stripe(paid_intent(order, event_id)).status_code == 200
    svc.drain()
    row = event_row(svc, order)
    assert (row.state, row.reason_code) == ("dead", "convert_rejected")
    return int(row.id)


def event_row(svc: Service, order: str) -> Any:
    with svc.runtime.engine.connect() as conn:
        return conn.execute(select(events).where(events.c.order_id == order)).one()


def sign_in(svc: Service, password: str = PASSWORD, **kwargs: Any) -> Any:
    headers = kwargs.pop("headers", ORIGIN)
    return svc.client.post("/admin/login", data={"password": password}, headers=headers, **kwargs)


def token_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([0-9a-f]{64})"', html)
    assert found is not None, "no CSRF token on the page"
    return found.group(1)


def retry_form(svc: Service, event_id: int) -> str:
    page = svc.client.get(f"/admin/events/{event_id}/retry")
    assert page.status_code == 200
    assert f'action="/admin/events/{event_id}/retry"' in page.text
    return token_of(page.text)


@pytest.fixture
def admin(make_service: Any, sqlite_url: str) -> Service:
    svc: Service = make_service(sqlite_url, admin={"password": PASSWORD})
    return svc


class Tables(HTMLParser):
    """The text of each table row, per section (by its heading's id), and the summary cards."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, list[list[str]]] = {}
        self.cards: dict[str, list[str]] = {}
        self._section = ""
        self._cell: list[str] | None = None
        self._row: list[str] | None = None
        self._card: str | None = None
        self._field: list[str] | None = None
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "section":
            self._section = values.get("aria-labelledby") or ""
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = []
        elif tag in ("dt", "dd") and self._section == "summary":
            self._field = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self._section, []).append(self._row)
            self._row = None
        elif tag in ("dt", "dd") and self._field is not None:
            text = " ".join("".join(self._field).split())
            if tag == "dt":
                self._card = text
                self.cards[text] = []
            elif self._card is not None:
                self.cards[self._card].append(text)
            self._field = None

    def handle_data(self, data: str) -> None:
        for part in (self._cell, self._field):
            if part is not None:
                part.append(data)

    def body(self, section: str) -> list[list[str]]:
        return self.rows.get(section, [])[1:]  # without the header row


# --- off unless configured ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/admin"),
        ("GET", "/admin/login"),
        ("POST", "/admin/login"),
        ("POST", "/admin/logout"),
        ("GET", "/admin/events/1"),
        ("GET", "/admin/events/1/retry"),
        ("POST", "/admin/events/1/retry"),
        ("GET", "/admin/dead/retry"),
        ("POST", "/admin/dead/retry"),
        ("GET", "/admin/static/admin.css"),
    ],
)
def test_without_a_password_every_admin_url_answers_404_like_an_unknown_one(
    service: Service, method: str, path: str
) -> None:
    unknown = service.client.get("/no-such-page")
    answer = service.client.open(path, method=method, data={"password": ""}, headers=ORIGIN)
    assert answer.status_code == 404
    assert answer.json == unknown.json
    assert "Set-Cookie" not in answer.headers
    assert "Content-Security-Policy" not in answer.headers  # nothing tells it apart


# --- signing in ---------------------------------------------------------------------------


def test_the_status_page_asks_to_sign_in_first(admin: Service) -> None:
    answer = admin.client.get("/admin")
    assert (answer.status_code, answer.headers["Location"]) == (303, "/admin/login")
    login = admin.client.get("/admin/login")
    assert login.status_code == 200
    assert '<html lang="en">' in login.text
    assert '<label for="password">Admin password</label>' in login.text
    assert 'id="password" name="password" type="password"' in login.text


def test_a_wrong_password_is_refused_and_the_right_one_signs_in(admin: Service) -> None:
    wrong = sign_in(admin, "correct horse battery stapl")
    assert wrong.status_code == 403
    assert "Wrong password." in wrong.text
    assert "Set-Cookie" not in wrong.headers
    assert admin.client.get("/admin").status_code == 303

    right = sign_in(admin)
    assert (right.status_code, right.headers["Location"]) == (303, "/admin")
    cookie = right.headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    attributes = {part.strip().split("=")[0] for part in cookie.split(";")[1:]}
    assert attributes == {"Expires", "Max-Age", "HttpOnly", "Path", "SameSite"}  # no Secure
    assert "Path=/admin" in cookie and "SameSite=Strict" in cookie
    assert f"Max-Age={SESSION_SECONDS}" in cookie
    assert PASSWORD not in cookie
    page = admin.client.get("/admin")
    assert page.status_code == 200
    assert "<h1>Status</h1>" in page.text


def test_the_cookie_is_secure_when_the_browser_is_on_https(admin: Service) -> None:
    direct = sign_in(admin, base_url="https://localhost", headers={"Origin": "https://localhost"})
    assert direct.status_code == 303
    assert "; Secure" in direct.headers["Set-Cookie"]
    # Behind a proxy that ends TLS the request is http, but the browser's Origin is https.
    proxied = sign_in(admin, headers={"Origin": "https://localhost"})
    assert proxied.status_code == 303
    assert "; Secure" in proxied.headers["Set-Cookie"]


def test_sign_in_from_another_site_is_refused(admin: Service) -> None:
    for headers in ({"Origin": "https://evil.example"}, {}, {"Origin": "null"}):
        answer = sign_in(admin, headers=headers)
        assert answer.status_code == 403
        assert "Set-Cookie" not in answer.headers


def test_sign_out_removes_the_session_cookie(admin: Service) -> None:
    sign_in(admin)
    token = token_of(admin.client.get("/admin").text)
    out = admin.client.post("/admin/logout", data={"csrf_token": token}, headers=ORIGIN)
    assert (out.status_code, out.headers["Location"]) == (303, "/admin/login")
    assert f"{COOKIE}=;" in out.headers["Set-Cookie"]
    assert admin.client.get("/admin").status_code == 303


def test_sign_out_without_the_token_is_refused(admin: Service) -> None:
    sign_in(admin)
    out = admin.client.post("/admin/logout", data={"csrf_token": "0" * 64}, headers=ORIGIN)
    assert out.status_code == 403
    assert admin.client.get("/admin").status_code == 200


def test_a_session_expires_and_a_forged_cookie_is_refused(admin: Service) -> None:
    sign_in(admin)
    cookie = admin.client.get_cookie(COOKIE, path="/admin")
    assert cookie is not None
    payload, stamp, signature = cookie.value.split(".")
    # The first character: the last one's low bits are base64 padding, which decoding drops,
    # so changing it can leave the same signature.
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    bare = admin.app.test_client(use_cookies=False)
    for value in (
        f"{payload}.{stamp}.{flipped}",
        f"{payload}.{stamp}",
        "x" * 5000,
        "e30.AAAAAA.bad",
        '"\\u00e9"',
        "",
    ):
        answer = bare.get("/admin/", headers={"Cookie": f"{COOKIE}={value}"})
        assert answer.status_code == 303, value[:20]
    assert bare.get("/admin/", headers={"Cookie": f"{COOKIE}={cookie.value}"}).status_code == 200
    admin.clock.advance(SESSION_SECONDS - 1)
    assert admin.client.get("/admin").status_code == 200
    admin.clock.advance(2)
    assert admin.client.get("/admin").status_code == 303


def test_every_worker_accepts_the_session_and_a_new_password_ends_it(
    make_service: Any, sqlite_url: str
) -> None:
    """The session key is derived from the password: two workers (two apps) agree."""
    one = make_service(sqlite_url, admin={"password": PASSWORD})
    two = make_service(sqlite_url, admin={"password": PASSWORD})
    other = make_service(sqlite_url, admin={"password": PASSWORD + "!"})
    sign_in(one)
    cookie = one.client.get_cookie(COOKIE, path="/admin")
    assert cookie is not None
    two.client.set_cookie(COOKIE, cookie.value, path="/admin")
    other.client.set_cookie(COOKIE, cookie.value, path="/admin")
    assert two.client.get("/admin").status_code == 200
    assert other.client.get("/admin").status_code == 303


def test_under_gunicorn_every_worker_takes_the_session(
    tmp_path: Path, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    """The real service, two workers: sign in over HTTP, then page after page is served
    with that cookie by whichever worker takes the request."""
    doc = config_document(sqlite_url, recorder.base_url, admin={"password": "${ADMIN_PW}"})
    config = write_config(tmp_path / "admin.toml", doc)
    service = GunicornService(config, workers=2, env={"ADMIN_PW": PASSWORD}).start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
        headers = {"Origin": service.url, "Content-Type": "application/x-www-form-urlencoded"}
        conn.request("POST", "/admin/login", body=f"password={PASSWORD}", headers=headers)
        answer = conn.getresponse()
        answer.read()
        conn.close()  # threaded workers keep connections alive: close ours
        assert (answer.status, answer.getheader("Location")) == (303, "/admin")
        cookie = (answer.getheader("Set-Cookie") or "").split(";")[0]
        assert cookie.startswith(f"{COOKIE}=")
        statuses = []
        for _ in range(12):
            fresh = http.client.HTTPConnection("127.0.0.1", service.port, timeout=10)
            fresh.request("GET", "/admin", headers={"Cookie": cookie})
            page = fresh.getresponse()
            text = page.read().decode()
            statuses.append(
                (page.status, "<h1>Status</h1>" in text, page.getheader("Cache-Control"))
            )
            fresh.close()
        assert statuses == [(200, True, "no-store")] * 12
    finally:
        service.stop()


# --- throttling ---------------------------------------------------------------------------


def test_wrong_passwords_are_throttled_per_client(admin: Service) -> None:
    guesser = {**ORIGIN, "X-Real-IP": "203.0.113.5"}
    for n in range(5):
        assert sign_in(admin, f"guess number {n}", headers=guesser).status_code == 403
    # Now even the right password is not tried: no answer tells a right guess apart.
    held = sign_in(admin, headers=guesser)
    assert held.status_code == 429
    assert held.headers["Retry-After"] == "901"
    assert "Too many wrong passwords. Try again in 15 minutes." in held.text
    assert "Set-Cookie" not in held.headers
    other = sign_in(admin, headers={**ORIGIN, "X-Real-IP": "203.0.113.6"})
    assert other.status_code == 303
    admin.clock.advance(899)
    assert sign_in(admin, headers=guesser).status_code == 429
    admin.clock.advance(1)
    assert sign_in(admin, headers=guesser).status_code == 303


def test_only_a_local_proxy_may_name_the_client(admin: Service) -> None:
    """A peer that is not on this machine cannot dodge the throttle with X-Real-IP."""
    far = {"REMOTE_ADDR": "198.51.100.7"}
    for n in range(5):
        headers = {**ORIGIN, "X-Real-IP": f"192.0.2.{n}"}
        assert sign_in(admin, "wrong", headers=headers, environ_base=far).status_code == 403
    headers = {**ORIGIN, "X-Real-IP": "192.0.2.99"}
    assert sign_in(admin, headers=headers, environ_base=far).status_code == 429


def test_many_clients_together_are_throttled_too(admin: Service) -> None:
    for n in range(50):
        headers = {**ORIGIN, "X-Real-IP": f"10.0.{n // 250}.{n % 250}"}
        assert sign_in(admin, "wrong", headers=headers).status_code == 403
    fresh = sign_in(admin, headers={**ORIGIN, "X-Real-IP": "10.9.9.9"})
    assert fresh.status_code == 429


def test_odd_sign_in_forms_are_answered_not_crashed(admin: Service) -> None:
    assert sign_in(admin, "x" * 5000).status_code == 403  # over the cap: wrong, never hashed
    big = admin.client.post("/admin/login", data={"password": "x" * 20_000}, headers=ORIGIN)
    assert big.status_code == 413
    assert "The form was too large." in big.text
    raw = admin.client.post(
        "/admin/login",
        data=b"password=%ff%fe%00",
        headers={**ORIGIN, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert raw.status_code == 403
    empty = admin.client.post("/admin/login", headers=ORIGIN)
    assert empty.status_code == 403


# --- retrying a dead event ----------------------------------------------------------------


def test_retry_puts_a_dead_event_back_and_the_dispatcher_sends_it(
    make_service: Any, db_url: str, recorder: ConvertRecorder
) -> None:
    svc: Service = make_service(db_url, admin={"password": PASSWORD})
    event_id = make_dead(svc, recorder, "pi_dead_retry", "evt_dead_retry")
    sign_in(svc)
    status = Tables(svc.client.get("/admin").text)
    assert status.cards["Dead"][0] == "1"
    assert status.body("dead")[0][:5] == ["1", "0 s ago", "stripe", "purchase", "pi_dead_retry"]

    token = retry_form(svc, event_id)
    answer = svc.client.post(
        f"/admin/events/{event_id}/retry",
        data={"csrf_token": token, "confirm": "yes"},
        headers=ORIGIN,
    )
    assert (answer.status_code, answer.headers["Location"]) == (303, f"/admin/events/{event_id}")
    row = event_row(svc, "pi_dead_retry")
    assert (row.state, row.reason_code) == ("pending", "queued")
    svc.drain()
    assert event_row(svc, "pi_dead_retry").state == "sent"
    first, second = recorder.requests
    assert (first.status, second.status) == (400, 200)
    assert second.path == first.path
    assert "e=100-200&" in second.path and "%7Cpi_dead_retry%7C" in second.path
    page = svc.client.get(f"/admin/events/{event_id}")
    assert '<span class="state sent">sent</span>' in page.text
    requests = Tables(page.text).body("requests")
    assert [r[5:] for r in requests] == [["sent", "200"], ["permanent", "400"]]
    assert "Retry this event" not in page.text


def test_retry_all_dead_events(admin: Service, recorder: ConvertRecorder) -> None:
    for n in range(3):
        make_dead(admin, recorder, f"pi_all_{n}", f"evt_all_{n}")
    sign_in(admin)
    page = admin.client.get("/admin/dead/retry")
    assert "<h1>Retry all dead events?</h1>" in page.text
    assert "Yes, retry 3 events" in page.text
    answer = admin.client.post(
        "/admin/dead/retry",
        data={"csrf_token": token_of(page.text), "confirm": "yes"},
        headers=ORIGIN,
    )
    assert (answer.status_code, answer.headers["Location"]) == (303, "/admin")
    admin.drain()
    assert [event_row(admin, f"pi_all_{n}").state for n in range(3)] == ["sent"] * 3
    assert [r.status for r in recorder.requests] == [400, 400, 400, 200, 200, 200]
    assert "There are no dead events." in admin.client.get("/admin/dead/retry").text


def test_an_event_that_is_not_dead_is_not_retried(
    admin: Service, recorder: ConvertRecorder
) -> None:
    admin.post_stripe(paid_intent("pi_sent_once", "evt_sent_once"))
    admin.drain()
    event_id = int(event_row(admin, "pi_sent_once").id)
    sign_in(admin)
    confirm = admin.client.get(f"/admin/events/{event_id}/retry")
    assert "This event is not dead: there is nothing to retry." in confirm.text
    assert 'name="confirm"' not in confirm.text
    answer = admin.client.post(
        f"/admin/events/{event_id}/retry",
        data={"csrf_token": token_of(confirm.text), "confirm": "yes"},
        headers=ORIGIN,
    )
    assert answer.status_code == 409
    admin.drain()
    assert len(recorder.requests) == 1
    assert event_row(admin, "pi_sent_once").state == "sent"


@pytest.mark.parametrize("path", ["/admin/events/999", "/admin/events/999/retry"])
def test_an_unknown_event_is_a_404_page(admin: Service, path: str) -> None:
    sign_in(admin)
    answer = admin.client.get(path)
    assert answer.status_code == 404
    assert "No event 999." in answer.text


@pytest.mark.parametrize(
    "path",
    [
        "/admin/events/0",
        "/admin/events/-1",
        "/admin/events/9223372036854775808",
        "/admin/events/" + "9" * 5000,
        "/admin/events/1e3",
        "/admin/events/abc/retry",
    ],
)
def test_event_ids_out_of_range_name_nothing(admin: Service, path: str) -> None:
    sign_in(admin)
    assert admin.client.get(path).status_code == 404


TOKEN = "<the page's token>"
REFUSED_POSTS = [
    pytest.param({"confirm": "yes"}, ORIGIN, 403, id="no token"),
    pytest.param({"csrf_token": "0" * 64, "confirm": "yes"}, ORIGIN, 403, id="wrong token"),
    pytest.param({"csrf_token": "\u00e9" * 64, "confirm": "yes"}, ORIGIN, 403, id="non-ascii"),
    pytest.param({"csrf_token": "a" * 5000, "confirm": "yes"}, ORIGIN, 403, id="huge token"),
    pytest.param({"csrf_token": TOKEN, "confirm": "no"}, ORIGIN, 400, id="not confirmed"),
    pytest.param({"csrf_token": TOKEN}, ORIGIN, 400, id="no confirm field"),
]
FOREIGN_ORIGINS = [
    pytest.param({"Origin": "https://evil.example"}, id="other origin"),
    pytest.param({"Origin": "http://localhost.evil.example"}, id="suffix origin"),
    pytest.param({"Origin": "http://evil.example/localhost"}, id="host in path"),
    pytest.param({"Origin": "null"}, id="null origin"),
    pytest.param({"Origin": "http://[::1"}, id="unparsable origin"),
    pytest.param({"Origin": "http://localhost:99999"}, id="bad port"),
    pytest.param({"Origin": "http://" + "a" * 3000}, id="huge origin"),
    pytest.param({"Referer": "https://evil.example/admin/"}, id="other referer"),
    pytest.param({}, id="no origin nor referer"),
]


@pytest.mark.parametrize(("form", "headers", "status"), REFUSED_POSTS)
def test_a_retry_needs_the_sessions_token_and_the_confirmation(
    admin: Service,
    recorder: ConvertRecorder,
    form: dict[str, str],
    headers: dict[str, str],
    status: int,
) -> None:
    event_id = make_dead(admin, recorder, "pi_csrf", "evt_csrf")
    sign_in(admin)
    token = retry_form(admin, event_id)
    data = {name: token if value == TOKEN else value for name, value in form.items()}
    answer = admin.client.post(f"/admin/events/{event_id}/retry", data=data, headers=headers)
    assert answer.status_code == status
    assert "Set-Cookie" not in answer.headers
    admin.drain()
    assert event_row(admin, "pi_csrf").state == "dead"
    assert len(recorder.requests) == 1


@pytest.mark.parametrize("headers", FOREIGN_ORIGINS)
def test_a_retry_from_another_site_is_refused_even_with_the_token(
    admin: Service, recorder: ConvertRecorder, headers: dict[str, str]
) -> None:
    event_id = make_dead(admin, recorder, "pi_foreign", "evt_foreign")
    sign_in(admin)
    token = retry_form(admin, event_id)
    answer = admin.client.post(
        f"/admin/events/{event_id}/retry",
        data={"csrf_token": token, "confirm": "yes"},
        headers=headers,
    )
    assert answer.status_code == 403
    assert "This form was not sent from this site." in answer.text
    admin.drain()
    assert event_row(admin, "pi_foreign").state == "dead"
    assert len(recorder.requests) == 1


def test_a_token_from_another_session_is_refused(admin: Service, recorder: ConvertRecorder) -> None:
    event_id = make_dead(admin, recorder, "pi_other_session", "evt_other_session")
    sign_in(admin)
    theirs = retry_form(admin, event_id)
    sign_in(admin)  # a new session replaces the cookie
    mine = retry_form(admin, event_id)
    assert mine != theirs
    answer = admin.client.post(
        f"/admin/events/{event_id}/retry",
        data={"csrf_token": theirs, "confirm": "yes"},
        headers=ORIGIN,
    )
    assert answer.status_code == 403
    assert event_row(admin, "pi_other_session").state == "dead"


def test_a_retry_without_a_session_is_refused(admin: Service, recorder: ConvertRecorder) -> None:
    event_id = make_dead(admin, recorder, "pi_no_session", "evt_no_session")
    answer = admin.client.post(
        f"/admin/events/{event_id}/retry", data={"confirm": "yes"}, headers=ORIGIN
    )
    assert answer.status_code == 403
    assert "Your session has ended." in answer.text
    assert event_row(admin, "pi_no_session").state == "dead"


@pytest.mark.parametrize(
    ("base_url", "headers", "status"),
    [
        ("http://localhost", {"Referer": "http://localhost/admin/events/1/retry"}, 303),
        ("https://localhost", {"Origin": "https://localhost"}, 303),
        ("https://localhost", {"Origin": "http://localhost"}, 403),  # an http page, never
        ("http://localhost:5000", {"Origin": "http://localhost:5000"}, 303),
        ("http://localhost:5000", {"Origin": "http://localhost:6000"}, 403),
        ("http://localhost:5000", {"Origin": "http://localhost"}, 403),
    ],
)
def test_origin_rules(
    admin: Service,
    recorder: ConvertRecorder,
    base_url: str,
    headers: dict[str, str],
    status: int,
) -> None:
    event_id = make_dead(admin, recorder, "pi_origin", "evt_origin")
    sign_in(admin)
    token = retry_form(admin, event_id)
    cookie = admin.client.get_cookie(COOKIE, path="/admin")
    assert cookie is not None
    client = admin.app.test_client()
    host = base_url.split("//")[1].split(":")[0]
    client.set_cookie(COOKIE, cookie.value, domain=host, path="/admin")
    answer = client.post(
        f"/admin/events/{event_id}/retry",
        data={"csrf_token": token, "confirm": "yes"},
        headers=headers,
        base_url=base_url,
    )
    assert answer.status_code == status
    assert event_row(admin, "pi_origin").state == ("pending" if status == 303 else "dead")


# --- what the page shows --------------------------------------------------------------------


def test_the_page_shows_health_counts_attribution_failures_and_requests(
    make_service: Any, db_url: str, recorder: ConvertRecorder
) -> None:
    svc: Service = make_service(db_url, admin={"password": PASSWORD})
    svc.post_stripe(paid_intent("pi_sent", "evt_sent"))  # sent, pairs found on the order
    svc.post_stripe(paid_intent("pi_nopairs", "evt_nopairs", pairs=None))  # skipped: no data
    svc.post_stripe(stripe_event("charge_refunded", event_id="evt_refund"))  # recorded only
    recorder.answer_next(200, 400)
    svc.drain()
    make_dead(svc, recorder, "pi_dead", "evt_dead")
    svc.clock.advance(120)
    assert svc.post_stripe(paid_intent("pi_x", "evt_bad"), secret="whsec_wrong").status_code == 401
    assert svc.post_stripe(paid_intent("pi_x", "evt_bad2"), secret="whsec_no").status_code == 401
    sign_in(svc)

    page = Tables(svc.client.get("/admin").text)
    assert page.body("sources") == [
        ["shop", "shopify", "never", "0", "0", "0"],
        ["stripe", "stripe", "2 min ago", "4", "0", "2"],
    ]
    assert page.body("states") == [
        ["pending", "0", ""],
        ["sent", "1", ""],
        ["dry_run", "0", ""],
        ["skipped", "2", "no_experiment_data 1 not_sent_kind 1"],
        ["dead", "1", "convert_rejected 1"],
    ]
    assert page.cards["Dead"][0] == "1"
    assert page.cards["Attribution, 7 days"] == ["67%", "2 of 3 with experiment data"]
    (attribution,) = page.body("attribution")
    assert attribution[:4] == ["stripe", "3", "2", "67%"]
    assert attribution[4] == "order attribute 'convert_experiments' 2"
    dead = page.body("dead")
    assert [row[4] for row in dead] == ["pi_dead"]
    assert dead[0][5] == "convert_rejected Convert answered HTTP 400 for pair 100-200"
    skipped = page.body("skipped")
    assert [(row[4], row[5].split()[0]) for row in skipped] == [
        ("pi_nopairs", "no_experiment_data")
    ]  # the refund is recorded by design: not listed as a failure
    requests = page.body("requests")
    assert [(r[3], r[4], r[5], r[6]) for r in requests] == [
        ("pi_dead", "100-200", "permanent", "400"),
        ("pi_sent", "100-200", "sent", "200"),
    ]
    svc.clock.advance(3600)
    later = Tables(svc.client.get("/admin").text)
    assert later.body("sources")[1][-1] == "0"  # refused signatures: the last hour only


def test_dry_run_and_a_dispatcher_run_elsewhere_are_said(
    make_service: Any, sqlite_url: str, recorder: ConvertRecorder
) -> None:
    svc: Service = make_service(
        sqlite_url,
        admin={"password": PASSWORD},
        convert={"dry_run": True},
        dispatcher={"enabled": False},
    )
    svc.post_stripe(paid_intent("pi_dry", "evt_dry"))
    svc.drain()
    sign_in(svc)
    text = svc.client.get("/admin").text
    assert "Dry run: Convert requests are logged, not sent" in text
    page = Tables(text)
    assert page.cards["Sent"] == ["0", "1 dry run"]
    assert page.cards["Dispatcher"] == ["disabled", "dispatcher.enabled is false"]
    assert ["dry_run", "1", "dry_run 1"] in page.body("states")
    assert recorder.requests == []


def test_lists_are_bounded(admin: Service, recorder: ConvertRecorder) -> None:
    recorder.answer_next(*[400] * 25)
    for n in range(25):
        admin.post_stripe(paid_intent(f"pi_many_{n:02}", f"evt_many_{n}"))
    admin.drain()
    sign_in(admin)
    text = admin.client.get("/admin").text
    page = Tables(text)
    assert page.cards["Dead"][0] == "25"
    assert len(page.body("dead")) == 20
    assert len(page.body("requests")) == 20
    assert "Latest 20 of 25." in text


def test_values_from_the_database_are_escaped(admin: Service, recorder: ConvertRecorder) -> None:
    event_id = make_dead(admin, recorder, HOSTILE_ORDER, "evt_hostile")
    with transaction(admin.runtime.engine) as conn:
        conn.execute(update(events).where(events.c.id == event_id).values(reason=HOSTILE_REASON))
    sign_in(admin)
    for path in ("/admin/", f"/admin/events/{event_id}", f"/admin/events/{event_id}/retry"):
        text = admin.client.get(path).text
        assert "<script>" not in text and "<img" not in text, path
        assert "pi_&lt;script&gt;alert(&#34;order&#34;)&lt;/script&gt;" in text, path
        assert (
            "&lt;img src=x onerror=alert(1)&gt; &amp; &#34;quoted&#34; &#39;single&#39;" in text
        ), path


def test_no_email_body_or_secret_reaches_the_page(
    admin: Service, recorder: ConvertRecorder
) -> None:
    event = paid_intent("pi_private", "evt_private")
    event["data"]["object"]["receipt_email"] = "buyer@example.com"
    admin.post_stripe(event)
    admin.drain()
    sign_in(admin)
    event_id = int(event_row(admin, "pi_private").id)
    for path in ("/admin/", f"/admin/events/{event_id}"):
        text = admin.client.get(path).text
        for secret in ("buyer@example.com", "whsec_", PASSWORD, '"object"', "receipt_email"):
            assert secret not in text, (path, secret)


def test_the_page_reads_while_a_webhook_holds_the_write_lock(
    admin: Service, recorder: ConvertRecorder
) -> None:
    """The page's reads never wait for (nor hold up) the writers: this thread holds the
    SQLite write lock, and the page still answers, from the last committed state."""
    make_dead(admin, recorder, "pi_locked", "evt_locked")
    sign_in(admin)
    with transaction(admin.runtime.engine) as conn:
        conn.execute(update(events).values(state="sent"))
        page = admin.client.get("/admin")
        assert page.status_code == 200
        assert Tables(page.text).cards["Dead"][0] == "1"


def test_an_unreadable_database_is_a_503_page(admin: Service, sqlite_url: str) -> None:
    sign_in(admin)
    path = sqlite_url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(path + suffix):
            os.remove(path + suffix)
    for url in ("/admin/", "/admin/events/1", "/admin/dead/retry"):
        answer = admin.client.get(url)
        assert answer.status_code == 503, url
        assert answer.headers["Retry-After"] == "30"
        assert "The database cannot be read right now." in answer.text
    assert not os.path.exists(path)  # the page never creates an empty database


# --- headers ------------------------------------------------------------------------------


def test_every_admin_answer_sets_the_security_headers(
    admin: Service, recorder: ConvertRecorder
) -> None:
    event_id = make_dead(admin, recorder, "pi_headers", "evt_headers")
    answers = [admin.client.get("/admin/login"), sign_in(admin, "wrong")]
    sign_in(admin)
    answers += [
        admin.client.get("/admin"),
        admin.client.get(f"/admin/events/{event_id}"),
        admin.client.get(f"/admin/events/{event_id}/retry"),
        admin.client.get("/admin/events/999"),
        admin.client.post(f"/admin/events/{event_id}/retry", headers=ORIGIN),
    ]
    with admin.client.get("/admin/static/admin.css") as css:
        assert b".state.dead" in css.get_data()
        answers.append(css)
    assert [a.status_code for a in answers] == [200, 403, 200, 200, 200, 404, 403, 200]
    for answer in answers:
        for name, value in SECURITY_HEADERS.items():
            assert answer.headers[name] == value, (answer.request.path, name)
    csp = SECURITY_HEADERS["Content-Security-Policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp
    assert SECURITY_HEADERS["Cache-Control"] == "no-store"
    assert answers[-1].mimetype == "text/css"
    for answer in answers[:-1]:
        assert answer.mimetype == "text/html"
        assert "<script" not in answer.text and "<style" not in answer.text
        assert re.search(r"<[^>]*\s(on\w+|style)=", answer.text) is None  # nothing inline
