"""Config validation (each bad key named) and the operator's command line."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.config_file import config_document, write_config
from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import stripe_event
from webhooks.cli import main
from webhooks.core.errors import ConfigError
from webhooks.wiring.config import load_settings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "example.toml"


def test_example_config_is_valid_and_dry_run() -> None:
    settings = load_settings(EXAMPLE, env={})
    assert settings.convert.dry_run is True
    assert set(settings.sources) == {"stripe", "shopify", "woocommerce", "paddle", "lemonsqueezy"}


def test_secrets_come_from_environment_references(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(EXAMPLE.read_text())
    settings = load_settings(config, env={"STRIPE_WEBHOOK_SECRET": "whsec_from_env_0123456789"})
    assert settings.sources["stripe"].secrets == ("whsec_from_env_0123456789",)


def test_database_url_from_environment_wins(tmp_path: Path) -> None:
    settings = load_settings(EXAMPLE, env={"CONVERT_WEBHOOKS_DATABASE_URL": "sqlite:///x.db"})
    assert settings.database_url == "sqlite:///x.db"


BAD = """
[convert]
account_id = "11a"
project_id = "2222"
colour = "blue"

[goals.purchase]
conversion = ["x"]

[sources.stripe]
platform = "stripe"
secrets = ["${MISSING_SECRET}"]
tolerance_seconds = 0

[sources."bad name"]
platform = "paypal"
secrets = []
"""


def test_check_config_names_each_bad_key(tmp_path: Path, capsys: Any) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(BAD)
    assert main(["--config", str(config), "check-config"]) == 2
    err = capsys.readouterr().err
    for key in (
        "convert.account_id",
        "convert.colour",
        "goals.purchase.conversion[0]",
        "sources.stripe.secrets[0]: environment variable MISSING_SECRET is not set",
        "sources.stripe.tolerance_seconds",
        "sources.bad name (name)",
        "sources.bad name.platform",
        "sources.bad name.secrets",
    ):
        assert key in err


@pytest.mark.parametrize(
    ("text", "problem"), [("not [toml", "not valid TOML"), (None, "cannot read")]
)
def test_unreadable_config_is_reported(tmp_path: Path, text: str | None, problem: str) -> None:
    config = tmp_path / "c.toml"
    if text is not None:
        config.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        load_settings(config, env={})


def test_missing_config_variable_is_reported() -> None:
    with pytest.raises(ConfigError, match="CONVERT_WEBHOOKS_CONFIG"):
        load_settings(None, env={})


def test_check_config_ok(capsys: Any) -> None:
    assert main(["--config", str(EXAMPLE), "check-config"]) == 0
    out = capsys.readouterr().out
    assert "/webhooks/stripe" in out and "dry run" in out


@pytest.fixture(autouse=True)
def real_time(clock: Any) -> None:
    """The CLI runs on the system clock; store events on the same one."""
    clock.current = time.time()


def cli_config(tmp_path: Path, service: Service, recorder: ConvertRecorder) -> str:
    """A config file pointing at the service's database and the Convert stand-in."""
    doc = config_document(service.settings.database_url, recorder.base_url)
    return str(write_config(tmp_path / "cli.toml", doc))


def live_intent(event_id: str = "evt_cli") -> dict[str, Any]:
    event = stripe_event(
        "payment_intent_succeeded", event_id, metadata={"convert_experiments": "1-2"}
    )
    event["livemode"] = True
    return event


def test_events_list_show_and_replay_dead(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    recorder.answer_next(404)
    service.post_stripe(live_intent())
    service.drain()
    config = cli_config(tmp_path, service, recorder)

    assert main(["--config", config, "events", "--state", "dead"]) == 0
    listing = capsys.readouterr().out
    assert "dead" in listing and "Convert answered HTTP 404" in listing
    (row,) = [line for line in listing.splitlines() if line.lstrip().startswith("1 ")]
    assert " plain " in row  # the format the pairs were found in

    assert main(["--config", config, "events", "show", "1"]) == 0
    detail = json.loads(capsys.readouterr().out)
    assert detail["event"]["state"] == "dead"
    assert (
        detail["event"]["attributed_from"],
        detail["event"]["attribution_format"],
        detail["event"]["visitor_id"],
    ) == ("order attribute 'convert_experiments'", "plain", None)
    assert detail["sends"][0]["format"] == "legacy_get"
    assert detail["sends"][0]["payload"].startswith(recorder.base_url)
    assert [a["status_code"] for a in detail["attempts"]] == [404]

    assert main(["--config", config, "replay", "--dead"]) == 0
    assert "queued 1 event(s): 1" in capsys.readouterr().out
    assert [r.status for r in recorder.requests] == [404, 200]
    assert main(["--config", config, "replay", "--dead"]) == 0
    assert "queued 0 event(s)" in capsys.readouterr().out
    assert len(recorder.requests) == 2


def test_replay_delivery_keeps_idempotency(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    service.post_stripe(live_intent())
    service.drain()
    config = cli_config(tmp_path, service, recorder)
    assert main(["--config", config, "replay", "--delivery", "1"]) == 0
    assert json.loads(capsys.readouterr().out.split("dispatched")[0])["status"] == "duplicate"
    assert len(recorder.requests) == 1
    assert main(["--config", config, "replay", "--delivery", "99"]) == 2
    assert "no delivery 99" in capsys.readouterr().err


def test_rejected_delivery_is_listed_and_replay_says_why_it_still_fails(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    """A body rejected as unreadable is kept and listed; replaying it re-runs the parser,
    which still names what is missing (after a fix, the same command would store it)."""
    service.post_stripe({}, raw=b'{"id": "evt_r", "type": "payment_intent.succeeded"}')
    config = cli_config(tmp_path, service, recorder)
    assert main(["--config", config, "deliveries", "--status", "rejected"]) == 0
    assert "rejected" in capsys.readouterr().out
    assert main(["--config", config, "replay", "--delivery", "1"]) == 2
    assert capsys.readouterr().err == (
        "error: delivery 1 still cannot be read: field 'data' must be an object\n"
    )


def test_dispatch_once_sends_what_is_due(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    service.post_stripe(live_intent())
    config = cli_config(tmp_path, service, recorder)
    assert main(["--config", config, "dispatch", "--once"]) == 0
    assert "dispatched 1 event(s)" in capsys.readouterr().out
    assert len(recorder.paths) == 1


def test_replay_event_sends_a_test_mode_event_on_request(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    """An operator can send one skipped event on purpose; a sent one is not sent again."""
    event = live_intent()
    event["livemode"] = False
    service.post_stripe(event)
    service.drain()
    assert recorder.paths == []
    config = cli_config(tmp_path, service, recorder)
    assert main(["--config", config, "replay", "--event", "1"]) == 0
    assert "queued 1 event(s): 1" in capsys.readouterr().out
    assert len(recorder.paths) == 1
    assert main(["--config", config, "replay", "--event", "1"]) == 0
    assert "queued 0 event(s)" in capsys.readouterr().out
    assert len(recorder.paths) == 1


def test_events_can_be_found_by_order_id(
    tmp_path: Path, service: Service, recorder: ConvertRecorder, capsys: Any
) -> None:
    service.post_stripe(live_intent())
    service.post_stripe(
        live_intent("evt_other")
        | {"data": {"object": {**live_intent()["data"]["object"], "id": "pi_other"}}}
    )
    config = cli_config(tmp_path, service, recorder)
    order = live_intent()["data"]["object"]["id"]
    assert main(["--config", config, "events", "--order", order]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and order in lines[1]
