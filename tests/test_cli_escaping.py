"""The CLI never lets a stored value drive the operator's terminal: control characters (ESC
sequences, newlines, C1, DEL, bidi overrides) are escaped in tables, JSON and error messages,
and table columns stay aligned however long a value is."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert

from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import stripe_event
from webhooks.cli import main
from webhooks.storage.schema import deliveries, events

# What a terminal acts on: C0 controls (ESC, BEL, CR, LF inside a value), DEL, C1 controls
# (CSI 0x9b works like ESC [ on some terminals), and bidi overrides that reorder the line.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
HOSTILE = "\x1b[2J\x1b]0;owned\x07\nfake line\r\x9b31m\u202eevil\x7f"


@pytest.fixture(autouse=True)
def real_time(clock: Any) -> None:
    """The CLI runs on the system clock; store events on the same one."""
    clock.current = time.time()


def cli_config(tmp_path: Path, service: Service, recorder: ConvertRecorder) -> str:
    doc = config_document(service.settings.database_url, recorder.base_url)
    return str(write_config(tmp_path / "cli.toml", doc))


def store_from_older_version(service: Service) -> None:
    """Rows as a version before the edge validated ids and topics could have stored them
    (today's parsers refuse such values, so they are written here directly)."""
    now = time.time()
    with service.runtime.engine.begin() as conn:
        key = conn.execute(
            insert(deliveries).values(
                source="stripe",
                platform="stripe",
                delivery_key="evt_old",
                topic=f"payment.{HOSTILE}",
                status="accepted",
                reason=f"why {HOSTILE}",
                received_at=now,
                headers="{}",
                body=b"{}",
                redacted=False,
            )
        ).inserted_primary_key
        assert key is not None
        delivery_id = key[0]
        conn.execute(
            insert(events).values(
                delivery_id=delivery_id,
                source="stripe",
                platform="stripe",
                project_id="2222",
                kind="purchase",
                order_id=f"ord{HOSTILE}",
                amount="1.00",
                currency="EUR",
                item_count=1,
                attributes=json.dumps({"convert_experiments": HOSTILE}),
                test_mode=False,
                occurred_at=now,
                state="skipped",
                reason_code="no_experiment_data",
                reason=f"no pairs in {HOSTILE}",
                attempts=0,
                revision=0,
                created_at=now,
                horizon_start=now,
                next_attempt_at=now,
                updated_at=now,
            )
        )


def run(capsys: Any, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_tables_escape_control_characters_from_stored_values(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    store_from_older_version(service)
    config = cli_config(tmp_path, service, recorder)
    for command in ("deliveries", "events"):
        code, out, _ = run(capsys, "--config", config, command)
        assert code == 0
        assert UNSAFE.search(out) is None, repr(out)
        lines = out.splitlines()
        assert len(lines) == 2, lines  # the header and one row: no forged line
        assert "\\x1b[2J" in lines[1] and "\\n" in lines[1]


def test_event_detail_json_escapes_every_control_character(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    """Through the real edge: Stripe metadata is stored as the order's attributes. (JSON was
    already written with ensure_ascii; this keeps it that way.)"""
    event = stripe_event(
        "payment_intent_succeeded", "evt_meta", metadata={"convert_experiments": HOSTILE}
    )
    event["livemode"] = True
    assert service.post_stripe(event).json["status"] == "accepted"
    config = cli_config(tmp_path, service, recorder)
    code, out, _ = run(capsys, "--config", config, "events", "show", "1")
    assert code == 0
    assert UNSAFE.search(out.replace("\n", " ")) is None, repr(out)
    detail = json.loads(out)  # escaped, not altered: the exact value comes back
    assert detail["event"]["attributes"]["convert_experiments"] == HOSTILE


def test_columns_stay_aligned_for_long_values(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    for event_id, order in (("evt_short", "pi_short"), ("evt_long", "pi_" + "x" * 200)):
        event = stripe_event("payment_intent_succeeded", event_id, id=order)
        event["livemode"] = True
        assert service.post_stripe(event).json["status"] == "accepted"
    store_from_older_version(service)
    config = cli_config(tmp_path, service, recorder)
    code, out, _ = run(capsys, "--config", config, "events")
    assert code == 0
    header, *rows = out.splitlines()
    column = header.index("reason")
    assert len(rows) == 3
    assert [row[column:].split(" ")[0] for row in rows] == ["no", "queued:", "queued:"]
    assert "pi_xxxx" in rows[1] and "x" * 60 not in rows[1]  # cut, marked with '~'
    assert "~" in rows[1]


def test_error_messages_are_escaped(tmp_path: Path, capsys: Any) -> None:
    doc = config_document("sqlite:///unused.db", "http://127.0.0.1:1/track/")
    doc["sources"] = {f"bad{HOSTILE}": {"platform": "stripe", "secrets": ["whsec_long_enough_x"]}}
    config = write_config(tmp_path / "bad.toml", doc)
    code, _, err = run(capsys, "--config", str(config), "check-config")
    assert code == 2
    assert UNSAFE.search(err.replace("\n", " ")) is None, repr(err)
    assert "\\x1b[2J" in err


def test_numbers_out_of_range_get_a_message_not_a_traceback(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    config = cli_config(tmp_path, service, recorder)
    code, _, err = run(capsys, "--config", config, "events", "show", str(2**70))
    assert (code, err.strip()) == (1, f"error: no event {2**70}")
    with pytest.raises(SystemExit) as exit_info:
        main(["--config", config, "events", "--limit", "-1"])
    assert exit_info.value.code == 2
    assert "must be 1 or more" in capsys.readouterr().err
