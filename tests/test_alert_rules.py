"""The alert rules (deploy/prometheus/alerts.yml) and the Grafana dashboard
(deploy/grafana/dashboard.json) people copy: checked by promtool where it is installed (its
rule check, its unit tests of every alert, the dashboard's queries as PromQL), their structure
always, and every metric they name against a real scrape of the service."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.payloads import experiments, shopify_order

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboard.json"
OUR_METRIC = re.compile(r"\bconvert_webhooks_[a-z_]+")
REQUIRED_ALERTS = {
    "ConvertWebhooksNoConvertDelivery",  # no delivery in N minutes while webhooks arrive
    "ConvertWebhooksDeadEvents",  # dead events > 0
    "ConvertWebhooksEventsStuck",  # oldest pending > 15 min
    "ConvertWebhooksDispatcherDown",
}
DURATION = re.compile(r"\d+[smh]")
# Grafana's variables, as Prometheus would see them once Grafana filled them in.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": ".+"}


@pytest.fixture(scope="module")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        reason = (
            "promtool is not installed (Debian: apt-get install prometheus); the rules' and "
            "the dashboard's structure are still checked"
        )
        if os.environ.get("CONVERT_WEBHOOKS_REQUIRE_PROMTOOL") == "1":
            pytest.fail(f"CONVERT_WEBHOOKS_REQUIRE_PROMTOOL=1 but {reason}")
        pytest.skip(reason)
    return found


def run(command: list[str], cwd: Path = ROOT) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    return output


def rules() -> list[dict[str, Any]]:
    document = yaml.safe_load(RULES.read_text())
    (group,) = document["groups"]
    assert group["name"] == "convert-webhooks"
    found: list[dict[str, Any]] = group["rules"]
    return found


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def dashboard_queries() -> list[str]:
    return [target["expr"] for panel in dashboard()["panels"] for target in panel["targets"]]


def as_prometheus_sees_it(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"an unknown Grafana variable in {expr}"
    return expr


# --- promtool -------------------------------------------------------------------------------


def test_promtool_accepts_the_rules(promtool: str) -> None:
    output = run([promtool, "check", "rules", str(RULES)])
    assert f"SUCCESS: {len(rules())} rules found" in output


def test_promtool_unit_tests_of_the_alerts_pass(promtool: str) -> None:
    output = run([promtool, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent)
    assert "SUCCESS" in output and "FAILED" not in output


def test_the_unit_tests_can_fail(promtool: str, tmp_path: Path) -> None:
    """A wrong expectation makes promtool fail: the suite above is not vacuous."""
    shutil.copy(RULES, tmp_path / RULES.name)
    wrong = RULE_TESTS.read_text().replace('"cw: 2 dead event(s)"', '"cw: 3 dead event(s)"')
    assert wrong != RULE_TESTS.read_text()
    (tmp_path / RULE_TESTS.name).write_text(wrong)
    done = subprocess.run(
        [promtool, "test", "rules", RULE_TESTS.name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "ConvertWebhooksDeadEvents" in done.stdout + done.stderr


def test_every_dashboard_query_is_valid_promql(promtool: str, tmp_path: Path) -> None:
    recorded = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": as_prometheus_sees_it(expr)}
                    for i, expr in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump(recorded))
    output = run([promtool, "check", "rules", str(path)])
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in output


# --- structure, without promtool ---------------------------------------------------------------


def test_the_rules_file_has_the_required_alerts_each_with_what_a_pager_needs() -> None:
    found = rules()
    names = [rule["alert"] for rule in found]
    assert len(names) == len(set(names))
    assert set(names) >= REQUIRED_ALERTS
    for rule in found:
        assert isinstance(rule["expr"], str) and rule["expr"].strip()
        assert DURATION.fullmatch(rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert set(rule["annotations"]) == {"summary", "description"}


def test_every_alert_has_a_unit_test_that_fires_it() -> None:
    tests = yaml.safe_load(RULE_TESTS.read_text())
    assert tests["rule_files"] == [RULES.name]
    fired = {
        case["alertname"]
        for test in tests["tests"]
        for case in test["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in rules()}


def test_the_dashboard_is_a_grafana_dashboard_with_sound_panels() -> None:
    board = dashboard()
    assert board["uid"] == "convert-webhooks" and board["title"]
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 36
    variables = {each["name"]: each for each in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert variables["job"]["type"] == "query"
    panels = board["panels"]
    assert len({panel["id"] for panel in panels}) == len(panels) >= 10
    taken: set[tuple[int, int]] = set()
    for panel in panels:
        assert panel["type"] in ("stat", "timeseries") and panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, f"panel {panel['title']!r} overlaps another"
        taken |= cells
        ref_ids = [target["refId"] for target in panel["targets"]]
        assert ref_ids and len(set(ref_ids)) == len(ref_ids)
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"]
            assert OUR_METRIC.search(target["expr"]), target["expr"]
            assert 'job=~"$job"' in target["expr"], target["expr"]


# --- against a real scrape ---------------------------------------------------------------------


def exported_names(service: Service, recorder: ConvertRecorder) -> set[str]:
    """Every sample name a scrape shows once the service has seen each kind of thing."""

    def order(order_id: int, event_id: str, pairs: str | None) -> None:
        attributes = experiments(pairs) if pairs else []
        payload = shopify_order(id=order_id, test=False, note_attributes=attributes)
        assert service.post_shopify("orders/paid", payload, event_id=event_id).status_code == 200

    order(1, "a", "1-2")
    order(1, "a", "1-2")  # the same delivery again
    order(1, "b", "1-2")  # the same purchase, another delivery
    order(2, "c", None)
    recorder.answer_next(503, 400)
    order(3, "d", "3-4")
    order(4, "e", "5-6")
    service.drain()
    assert service.post_shopify("orders/paid", shopify_order(), secret="q" * 32).status_code == 401
    dispatcher = service.runtime.dispatcher
    dispatcher.start()
    deadline = time.monotonic() + 10
    while "convert_webhooks_dispatcher_up" not in service.client.get("/metrics").get_data(
        as_text=True
    ):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    text = service.client.get("/metrics").get_data(as_text=True)
    dispatcher.stop(timeout=5)
    names = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    for must in ("convert_webhooks_events", "convert_webhooks_dead_events"):
        assert must in names  # the run made open events, so the gauges have samples
    return names


def test_rules_and_dashboard_name_only_metrics_the_service_exports(
    service: Service, recorder: ConvertRecorder
) -> None:
    names = exported_names(service, recorder)
    in_rules = {m for rule in rules() for m in OUR_METRIC.findall(rule["expr"])}
    in_dashboard = {m for expr in dashboard_queries() for m in OUR_METRIC.findall(expr)}
    assert in_rules - names == set()
    assert in_dashboard - names == set()
    # And the dashboard shows every metric family the service has.
    families = {re.sub(r"_(total|bucket|count|sum|created)$", "", name) for name in names}
    shown = {re.sub(r"_(total|bucket|count|sum)$", "", name) for name in in_dashboard}
    assert families - shown == set()
