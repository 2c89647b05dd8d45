"""`convert-webhooks send-test`: a sample delivery signed with the source's own secret, posted
to a real running service (gunicorn, tests/gunicorn_process.py) that stores it and dispatches
it, in dry-run and to the Convert stand-in; the command prints the answer and the Convert
request read back from the database. Stripe and Shopify (body HMACs) and Square (signs the
configured URL), a refused request, a dead and a pending event, and every error the operator
can meet (unknown source, nothing listening, another secret, a bad URL) as one line with a
non-zero exit code. Also: `events show` prints a v1 JSON payload as JSON, and
scripts/send_sample.py still posts a signed sample."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from sqlalchemy import insert, select

from tests.config_file import SHOPIFY_SECRET, STRIPE_SECRET, config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.gunicorn_process import ROOT, GunicornService, free_port
from webhooks.cli import main
from webhooks.core.errors import ConvertWebhooksError
from webhooks.storage.database import make_engine
from webhooks.storage.schema import deliveries, events, sends
from webhooks.wiring.send_test import Answer, NamedEvent, check_url, default_url

SQUARE_KEY = "square_signature_key_for_tests_0001"
SQUARE_URL = "https://hooks.example.com/webhooks/sq"  # what Square signs: never the host's URL
LEMON_SECRET = "lemonsqueezy_test_secret_01"
WOO_SECRET = "wc_test_secret_for_send_test_01"
TRACEBACK = "Traceback"


def service_document(db_url: str, endpoint: str, dry_run: bool) -> dict[str, Any]:
    doc = config_document(
        db_url,
        endpoint,
        dispatcher={"enabled": True, "poll_seconds": 0.2},
        sources={
            # The samples are test-mode orders (Stripe's livemode false, Shopify's test true).
            "stripe": {"platform": "stripe", "secrets": [STRIPE_SECRET], "allow_test_events": True},
            "shop": {"platform": "shopify", "secrets": [SHOPIFY_SECRET], "allow_test_events": True},
            "sq": {
                "platform": "square",
                "secrets": [SQUARE_KEY],
                "url": SQUARE_URL,
                "experiments_key": "note",
            },
            "lemon": {"platform": "lemonsqueezy", "secrets": [LEMON_SECRET]},
            "woo": {"platform": "woocommerce", "secrets": [WOO_SECRET]},
        },
    )
    doc["convert"]["dry_run"] = dry_run
    return doc


class Instance:
    """A running service, the config file it and the CLI read, and its database."""

    def __init__(self, root: Path, name: str, endpoint: str, dry_run: bool, **convert: Any) -> None:
        self.db_url = f"sqlite:///{root / f'{name}.db'}"
        self.doc = service_document(self.db_url, endpoint, dry_run)
        self.doc["convert"].update(convert)
        if convert.get("format") == "v1":
            self.doc["privacy"] = {"email_key": "send-test-email-digest-key-0123456789"}
        self.config = write_config(root / f"{name}.toml", self.doc)
        self.gunicorn = GunicornService(self.config, workers=1).start()

    def url(self, source: str) -> str:
        return f"{self.gunicorn.url}/webhooks/{source}"

    def send_row(self, event_id: int) -> Any:
        engine = make_engine(self.db_url)
        try:
            with engine.connect() as conn:
                return conn.execute(select(sends).where(sends.c.event_id == event_id)).one()
        finally:
            engine.dispose()


@pytest.fixture(scope="module")
def convert() -> Iterator[ConvertRecorder]:
    server = ConvertRecorder().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, convert: ConvertRecorder) -> Iterator[Instance]:
    instance = Instance(tmp_path_factory.mktemp("live"), "live", convert.base_url, dry_run=False)
    yield instance
    instance.gunicorn.stop()


@pytest.fixture(scope="module")
def dry(tmp_path_factory: pytest.TempPathFactory, convert: ConvertRecorder) -> Iterator[Instance]:
    instance = Instance(tmp_path_factory.mktemp("dry"), "dry", convert.base_url, dry_run=True)
    yield instance
    instance.gunicorn.stop()


@pytest.fixture(scope="module")
def v1_dry(
    tmp_path_factory: pytest.TempPathFactory, convert: ConvertRecorder
) -> Iterator[Instance]:
    root = tmp_path_factory.mktemp("v1")
    instance = Instance(root, "v1", convert.base_url, dry_run=True, format="v1")
    yield instance
    instance.gunicorn.stop()


def send_test(capsys: Any, instance: Instance, *argv: str) -> tuple[int, str, str]:
    code = main(["--config", str(instance.config), "send-test", *argv])
    out, err = capsys.readouterr()
    assert TRACEBACK not in out + err
    return code, out, err


def answer_of(out: str) -> dict[str, Any]:
    line = next(line for line in out.splitlines() if line.startswith("answer: "))
    status, _, body = line.removeprefix("answer: ").partition(" ")
    answer: dict[str, Any] = json.loads(body)
    answer["http_status"] = int(status)
    return answer


def request_lines(out: str) -> list[str]:
    """The printed Convert requests (the indented payload lines)."""
    return [line.strip() for line in out.splitlines() if line.startswith("    ")]


# Per platform: the sample's order id and amount as stored.
SAMPLES = {
    "stripe": ("pi_3RopAi08MTe1bJmc1MMrv98y", "30.00 USD"),
    "shop": ("820982911946154508", "404.95 USD"),
    "sq": ("bP9mAsEMYPUGjjGNaNO5ZDVyLhSZY", "5.55 USD"),
}


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_a_sample_reaches_the_stand_in_and_the_request_sent_is_printed(
    live: Instance, convert: ConvertRecorder, capsys: Any, source: str
) -> None:
    before = len(convert.paths)
    code, out, err = send_test(capsys, live, source, "--url", live.url(source))
    assert (code, err) == (0, ""), out
    answer = answer_of(out)
    assert (answer["http_status"], answer["status"]) == (200, "accepted")
    event_id = answer["events"][0]["id"]
    order, amount = SAMPLES[source]
    lines = out.splitlines()
    assert lines[0].startswith(f"posting the {live.doc['sources'][source]['platform']} sample (")
    assert lines[0].endswith(f"to {live.url(source)}, signed with sources.{source}.secrets[0]")
    assert f"event {event_id} (purchase, order {order}, {amount}): sent" in lines
    assert "  Convert request (legacy_get, pair 100-200): sent, HTTP 200" in lines
    # What the command printed is what Convert's stand-in received, and what is stored.
    assert len(convert.paths) == before + 1
    (printed,) = request_lines(out)
    parts = urlsplit(printed)
    assert f"{parts.path}?{parts.query}" == convert.paths[-1]
    assert printed == live.send_row(event_id).payload
    assert f"%7C{order}%7C{amount.split()[0]}%7C" in printed


@pytest.mark.parametrize("source", sorted(SAMPLES))
def test_in_dry_run_the_request_it_would_send_is_printed_and_nothing_is_sent(
    dry: Instance, convert: ConvertRecorder, capsys: Any, source: str
) -> None:
    before = len(convert.arrived_paths())
    code, out, err = send_test(capsys, dry, source, "--url", dry.url(source))
    assert (code, err) == (0, ""), out
    event_id = answer_of(out)["events"][0]["id"]
    order, amount = SAMPLES[source]
    lines = out.splitlines()
    assert f"event {event_id} (purchase, order {order}, {amount}): dry_run" in lines
    dry_line = "  Convert request (legacy_get, pair 100-200): dry_run (dry run: logged, not sent)"
    assert dry_line in lines
    (printed,) = request_lines(out)
    assert printed == dry.send_row(event_id).payload
    assert printed.startswith(f"{convert.base_url}?c=1111&p=2222&e=100-200&g=100%2C101&ga=2&t=")
    assert len(convert.arrived_paths()) == before


def test_a_v1_request_body_is_printed_as_the_json_document_it_is(
    v1_dry: Instance, capsys: Any
) -> None:
    code, out, err = send_test(capsys, v1_dry, "shop", "--url", v1_dry.url("shop"))
    assert (code, err) == (0, ""), out
    event_id = answer_of(out)["events"][0]["id"]
    assert "  Convert request (v1_json, pair *): dry_run (dry run: logged, not sent)" in out
    payload = out.split("(dry run: logged, not sent)\n", 1)[1]
    assert payload.startswith("    {\n      ")  # indented, one key a line
    assert json.loads(payload) == json.loads(v1_dry.send_row(event_id).payload)


def test_the_default_url_is_the_bind_address(
    dry: Instance, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sent twice: the sample's order is counted once; the second run says so and shows it."""
    monkeypatch.setenv("CONVERT_WEBHOOKS_BIND", f"0.0.0.0:{dry.gunicorn.port}")
    code, out, _ = send_test(capsys, dry, "woo")
    assert code == 0, out
    assert f"to http://127.0.0.1:{dry.gunicorn.port}/webhooks/woo," in out.splitlines()[0]
    first = answer_of(out)["events"][0]["id"]
    assert f"event {first} (purchase, order 727, " in out
    code, out, _ = send_test(capsys, dry, "woo")
    assert code == 0
    answer = answer_of(out)
    assert (answer["status"], answer["events"][0]["id"]) == ("duplicate", first)
    assert "the sample order was counted before (an earlier send-test); as stored then:" in out
    assert len(request_lines(out)) == 1


def test_scripts_send_sample_posts_through_the_same_code(dry: Instance) -> None:
    done = subprocess.run(
        [sys.executable, "scripts/send_sample.py", "lemonsqueezy", dry.gunicorn.url, "lemon"],
        cwd=ROOT,
        env={"LEMONSQUEEZY_WEBHOOK_SECRET": LEMON_SECRET, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stderr) == (0, "")
    status, _, body = done.stdout.strip().partition(" ")
    assert (status, json.loads(body)["status"]) == ("200", "accepted")


def test_a_config_with_another_database_says_where_to_look(
    dry: Instance, tmp_path: Path, capsys: Any
) -> None:
    doc = json.loads(json.dumps(dry.doc))
    doc["database"]["url"] = f"sqlite:///{tmp_path / 'another.db'}"
    other = str(write_config(tmp_path / "another.toml", doc))
    argv = ["--config", other, "send-test", "lemon", "--url", dry.url("lemon")]
    assert main(argv) == 1  # an empty file: no tables
    out, err = capsys.readouterr()
    event_id = answer_of(out)["events"][0]["id"]
    assert err == (
        "error: the service stored it, but this config's database (database.url) cannot be "
        "read (OperationalError): is it the service's? Look there with `convert-webhooks "
        f"events show {event_id}`\n"
    )
    assert main(["--config", other, "migrate"]) == 0
    capsys.readouterr()
    assert main(argv) == 1  # a database of the service's kind, without the event
    out, err = capsys.readouterr()
    event_id = answer_of(out)["events"][0]["id"]
    assert out.splitlines()[-1] == (
        f"event {event_id}: not in this config's database (database.url): the service uses "
        f"another one; look there with `convert-webhooks events show {event_id}`"
    )


def test_a_refused_request_shows_the_dead_event_and_fails(
    live: Instance, convert: ConvertRecorder, capsys: Any
) -> None:
    convert.answer_next(400)
    code, out, _ = send_test(capsys, live, "lemon", "--url", live.url("lemon"))
    assert code == 1
    event_id = answer_of(out)["events"][0]["id"]
    assert re.search(
        rf"^event {event_id} \(purchase, order [0-9]+, 11\.99 USD\): dead \(convert_rejected: "
        r"Convert answered HTTP 400 for pair 100-200\)$",
        out,
        re.MULTILINE,
    ), out
    assert "  Convert request (legacy_get, pair 100-200): dead, HTTP 400" in out


def test_another_secret_is_a_one_line_401_error(
    live: Instance, tmp_path: Path, capsys: Any
) -> None:
    doc = json.loads(json.dumps(live.doc))
    doc["sources"]["stripe"]["secrets"] = ["whsec_not_the_running_instance_s"]
    other = write_config(tmp_path / "other.toml", doc)
    code = main(["--config", str(other), "send-test", "stripe", "--url", live.url("stripe")])
    out, err = capsys.readouterr()
    assert code == 1
    assert answer_of(out)["http_status"] == 401
    assert err.startswith("error: the service refused the signature (401: ")
    assert "another secret for source 'stripe' than this config's sources.stripe.secrets" in err
    assert len(err.splitlines()) == 1 and TRACEBACK not in err


def test_a_source_the_instance_does_not_have_is_a_404(live: Instance, capsys: Any) -> None:
    code, out, err = send_test(capsys, live, "stripe", "--url", live.url("elsewhere"))
    assert code == 1
    assert answer_of(out) == {"error": "unknown source 'elsewhere'", "http_status": 404}
    assert err == (
        f"error: the service at {live.url('elsewhere')} answered 404: unknown source "
        "'elsewhere': it has no source 'stripe' (is it running with this config?)\n"
    )


def test_nothing_listening_is_a_one_line_error(live: Instance, capsys: Any) -> None:
    url = f"http://127.0.0.1:{free_port()}/webhooks/stripe"
    code, out, err = send_test(capsys, live, "stripe", "--url", url)
    assert (code, err) == (
        1,
        f"error: cannot connect to {url}: connection refused (is the service running there?)\n",
    )
    assert "answer" not in out


def test_an_unknown_source_names_the_configured_ones(live: Instance, capsys: Any) -> None:
    code, out, err = send_test(capsys, live, "nope\x1b[2J")
    assert (code, out) == (2, "")
    assert (
        err == "error: no source 'nope\\x1b[2J' in the config (sources: lemon, shop, sq, "
        "stripe, woo)\n"
    )


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/webhooks/stripe",
        "http://",
        "127.0.0.1:8000/webhooks/stripe",
        "http://127.0.0.1:99999/webhooks/stripe",
        "http://exa mple/webhooks/stripe",
        "http://127.0.0.1/\x1b[2J",
        "http://" + "a" * 3000,
    ],
)
def test_a_bad_url_is_refused_before_anything_is_sent(
    live: Instance, capsys: Any, url: str
) -> None:
    code, out, err = send_test(capsys, live, "stripe", "--url", url)
    assert (code, out) == (2, "")
    assert err.startswith("error: --url ") and len(err.splitlines()) == 1
    assert "\x1b" not in err and "aaaa" not in err


def test_a_socket_bind_asks_for_the_url(
    live: Instance, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONVERT_WEBHOOKS_BIND", "unix:/run/convert-webhooks.sock")
    code, out, err = send_test(capsys, live, "stripe")
    assert (code, out) == (2, "")
    assert err == (
        "error: CONVERT_WEBHOOKS_BIND is not a host:port (a socket?): give the webhook URL "
        "with --url\n"
    )


def test_an_event_still_pending_says_how_to_look(
    live: Instance, convert: ConvertRecorder, capsys: Any
) -> None:
    """Last in the module: the event is retried (and sent) after the test."""
    convert.answer_next(503)
    code, out, _ = send_test(capsys, live, "lemon", "--url", live.url("lemon"), "--wait", "1")
    assert code == 3
    event_id = answer_of(out)["events"][0]["id"]
    assert "): pending (retrying: will retry; last error: HTTP 503)" in out
    assert "  Convert request (legacy_get, pair 100-200): pending, HTTP 503" in out
    assert out.splitlines()[-1] == (
        "  still pending after 1 s: the dispatcher has not finished it; look with "
        f"`convert-webhooks events show {event_id}`"
    )


# --- the parts, without a service ------------------------------------------------------------


@pytest.mark.parametrize(
    ("bind", "url"),
    [
        (None, "http://127.0.0.1:8000/webhooks/s"),
        ("0.0.0.0:9000", "http://127.0.0.1:9000/webhooks/s"),
        ("[::]:9000", "http://[::1]:9000/webhooks/s"),
        ("[::1]", "http://[::1]:8000/webhooks/s"),
        ("localhost", "http://localhost:8000/webhooks/s"),
        (" 10.1.2.3:80 ", "http://10.1.2.3:80/webhooks/s"),
    ],
)
def test_the_default_url_follows_gunicorn_s_bind(bind: str | None, url: str) -> None:
    assert default_url("s", bind) == url


@pytest.mark.parametrize("bind", ["unix:/tmp/s.sock", "fd://3", "host:port", "host:", ":80"])
def test_a_bind_that_is_not_host_and_port_is_an_error(bind: str) -> None:
    with pytest.raises(ConvertWebhooksError):
        default_url("s", bind)


def test_check_url_keeps_a_good_url() -> None:
    assert check_url("https://hooks.example.com:8443/webhooks/s") == (
        "https://hooks.example.com:8443/webhooks/s"
    )


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (b'{"events": [{"id": 3, "order_id": "o"}, {"id": 3}, {"id": 4, "duplicate": true}]}',
         [NamedEvent(3, "o", False), NamedEvent(4, None, True)]),
        (b'{"events": [{"id": true}, {"id": -1}, {"id": "5"}, {"id": 1.0}, 7, null]}', []),
        (b'{"events": {"id": 3}}', []),
        (b'[{"id": 3}]', []),
        (b"not json \xff", []),
        (b"", []),
    ],
)  # fmt: skip
def test_only_event_ids_the_service_could_have_written_are_read(
    body: bytes, named: list[NamedEvent]
) -> None:
    assert Answer(200, body).events() == named


# --- events show: a v1 JSON payload as JSON ---------------------------------------------------


def test_events_show_prints_a_v1_payload_as_json_and_a_url_as_it_is(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    now = service.clock.now()
    with service.runtime.engine.begin() as conn:
        delivery = conn.execute(
            insert(deliveries).values(
                source="stripe",
                platform="stripe",
                delivery_key="evt_v1",
                topic="t",
                status="accepted",
                received_at=now,
                headers="{}",
                body=b"{}",
                redacted=False,
            )
        ).inserted_primary_key
        assert delivery is not None
        event = conn.execute(
            insert(events).values(
                delivery_id=delivery[0],
                source="stripe",
                platform="stripe",
                project_id="2222",
                kind="purchase",
                order_id="pi_v1",
                amount="1.00",
                currency="EUR",
                item_count=1,
                attributes="{}",
                test_mode=False,
                occurred_at=now,
                state="sent",
                attempts=1,
                revision=0,
                created_at=now,
                horizon_start=now,
                next_attempt_at=now,
                updated_at=now,
            )
        ).inserted_primary_key
        assert event is not None
        url = "https://2222.track.convertexperiments.com/track/?c=1111&p=2222&e=1-2"
        for pair, hit_format, payload in (
            ("*", "v1_json", '{"visitors":[]}'),
            ("1-2", "legacy_get", url),
            ("3-4", "v1_json", "{not json"),
        ):
            conn.execute(
                insert(sends).values(
                    event_id=event[0],
                    pair=pair,
                    format=hit_format,
                    payload=payload,
                    state="sent",
                    attempts=1,
                    last_status=200,
                    sent_at=now,
                )
            )
    config = write_config(
        tmp_path / "cli.toml", config_document(service.settings.database_url, recorder.base_url)
    )
    assert main(["--config", str(config), "events", "show", str(event[0])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [s["payload"] for s in shown["sends"]] == [{"visitors": []}, url, "{not json"]
