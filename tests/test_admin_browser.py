"""The status page in a real headless browser (Debian's chromium, driven by Playwright) with
JavaScript off, against the app served by a real HTTP server: sign in, see a dead event, retry
it through the confirmation page, drain the dispatcher, see it sent. The page's screenshot is
kept as test-artifacts/admin-status.png.

Skipped, saying why, when chromium or Playwright is missing; CI sets
CONVERT_WEBHOOKS_REQUIRE_BROWSER=1 and then that is a failure."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from werkzeug.serving import make_server

from tests.conftest import Service
from tests.convert_recorder import ConvertRecorder
from tests.test_admin_page import PASSWORD, event_row, make_dead, paid_intent

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
SCREENSHOT = ARTIFACTS / "admin-status.png"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# What the page must keep for people using assistive technology or low vision: one h1, a
# language, a label for every input, column headers for every table, and text at a contrast of
# 4.5:1 or more against its background (WCAG 2 AA). Runs in the page with its own scripts off.
AUDIT = """() => {
  const problems = [];
  if (!document.documentElement.lang) problems.push("no lang attribute");
  if (document.querySelectorAll("h1").length !== 1) problems.push("not exactly one h1");
  for (const input of document.querySelectorAll("input:not([type=hidden]), select, textarea")) {
    if (!input.labels.length) problems.push(`input ${input.name} has no label`);
  }
  for (const table of document.querySelectorAll("table")) {
    if (!table.querySelector("thead th[scope=col]")) problems.push("a table without headers");
  }
  const rgba = (text) => {
    const p = text.match(/rgba?\\(([^)]+)\\)/)[1].split(",").map(Number);
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const lum = (c) => [c.r, c.g, c.b]
    .map((v) => v / 255)
    .map((v) => (v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4))
    .reduce((sum, v, i) => sum + v * [0.2126, 0.7152, 0.0722][i], 0);
  const background = (element) => {
    for (let node = element; node; node = node.parentElement) {
      const c = rgba(getComputedStyle(node).backgroundColor);
      if (c.a > 0) return c;
    }
    return { r: 255, g: 255, b: 255, a: 1 };
  };
  for (const element of document.querySelectorAll("body *")) {
    if (element.closest(".visually-hidden")) continue;
    const text = [...element.childNodes].filter((n) => n.nodeType === 3 && n.textContent.trim());
    if (!text.length) continue;
    const [hi, lo] = [lum(rgba(getComputedStyle(element).color)), lum(background(element))]
      .sort((x, y) => y - x);
    const ratio = (hi + 0.05) / (lo + 0.05);
    if (ratio < 4.5) problems.push(`contrast ${ratio.toFixed(2)}: ${element.textContent.trim()}`);
  }
  return problems;
}"""


def _browser_problem() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -e '.[dev]')"
    return None


def _skip_or_fail(problem: str | None) -> None:
    if problem is None:
        return
    if os.environ.get("CONVERT_WEBHOOKS_REQUIRE_BROWSER") == "1":
        pytest.fail(f"CONVERT_WEBHOOKS_REQUIRE_BROWSER=1 but {problem}")
    pytest.skip(problem)


@pytest.fixture
def browser() -> Iterator[Any]:
    _skip_or_fail(_browser_problem())
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def served(make_service: Any, sqlite_url: str) -> Iterator[tuple[Service, str]]:
    """The app with an admin password, on a free port of a real (threaded) HTTP server."""
    svc: Service = make_service(sqlite_url, admin={"password": PASSWORD})
    server = make_server("127.0.0.1", 0, svc.app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield svc, f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()
    thread.join(10)


def _fill_the_store(svc: Service, recorder: ConvertRecorder) -> int:
    """A realistic mix: purchases sent, one without experiment data, two Convert refused, one
    refused signature. Returns the id of the first dead event."""
    for n in range(3):
        svc.post_stripe(paid_intent(f"pi_3Ok{n}Sent{n:02}", f"evt_sent_{n}", pairs="100-200"))
    svc.post_stripe(paid_intent("pi_3OkNoPairs", "evt_nopairs", pairs=None))
    svc.drain()
    svc.clock.advance(300)
    dead = make_dead(svc, recorder, "pi_3OkDead01", "evt_dead_1")
    svc.clock.advance(60)
    make_dead(svc, recorder, "pi_3OkDead02", "evt_dead_2")
    svc.post_stripe(paid_intent("pi_forged", "evt_forged"), secret="whsec_forged")
    svc.clock.advance(90)
    return dead


def test_sign_in_see_a_dead_event_retry_it_and_see_it_sent(
    browser: Any, served: tuple[Service, str], recorder: ConvertRecorder
) -> None:
    svc, base = served
    dead = _fill_the_store(svc, recorder)
    sent_before = len(recorder.requests)
    problems: list[str] = []
    context = browser.new_context(
        java_script_enabled=False, viewport={"width": 1280, "height": 900}
    )
    page = context.new_page()
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    page.goto(f"{base}/admin/")
    assert page.url == f"{base}/admin/login"
    assert page.evaluate(AUDIT) == []
    page.get_by_label("Admin password").fill("not the password")
    page.get_by_role("button", name="Sign in").click()
    assert page.get_by_role("alert").inner_text() == "Wrong password."
    page.get_by_label("Admin password").fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    assert page.url == f"{base}/admin"
    assert page.get_by_role("heading", level=1).inner_text() == "Status"
    assert page.evaluate(AUDIT) == []
    # The stylesheet loaded under the page's Content-Security-Policy.
    header = page.locator("header.top")
    assert header.evaluate("e => getComputedStyle(e).backgroundColor") == "rgb(31, 41, 51)"

    dead_rows = page.locator("section[aria-labelledby=dead] tbody tr")
    assert dead_rows.count() == 2
    row = dead_rows.filter(has_text="pi_3OkDead01")
    assert "Convert answered HTTP 400 for pair 100-200" in row.inner_text()
    row.get_by_role("link", name=f"Retry event {dead}…").click()
    assert page.get_by_role("heading", level=1).inner_text() == f"Retry event {dead}?"
    assert page.evaluate(AUDIT) == []
    page.get_by_role("button", name=f"Yes, retry event {dead}").click()
    assert page.url == f"{base}/admin/events/{dead}"
    assert page.locator("h1 .state").inner_text() == "pending"
    assert event_row(svc, "pi_3OkDead01").state == "pending"

    svc.drain()
    page.reload()
    assert page.locator("h1 .state").inner_text() == "sent"
    assert page.evaluate(AUDIT) == []
    assert len(recorder.requests) == sent_before + 1
    assert recorder.requests[-1].status == 200
    assert "%7Cpi_3OkDead01%7C" in recorder.requests[-1].path

    page.get_by_role("link", name="Status", exact=True).click()
    assert page.locator("section[aria-labelledby=dead] tbody tr").count() == 1
    requests = page.locator("section[aria-labelledby=requests] tbody tr")
    assert "pi_3OkDead01" in requests.first.inner_text()
    assert "sent" in requests.first.inner_text()
    # Only the wrong password's 403 (and the browser's own /favicon.ico 404) failed to load;
    # nothing broke the Content-Security-Policy.
    assert not [p for p in problems if "Content Security Policy" in p or "Refused" in p]
    assert [p for p in problems if "status of 403" in p] == [
        "Failed to load resource: the server responded with a status of 403 (FORBIDDEN)"
    ]

    ARTIFACTS.mkdir(exist_ok=True)
    SCREENSHOT.unlink(missing_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)
    context.close()
    data = SCREENSHOT.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    width, height = struct.unpack(">II", data[16:24])  # the IHDR chunk
    assert (width, height >= 900) == (1280, True)
    assert 20_000 < len(data) < 5_000_000


def test_a_missing_browser_is_a_skip_but_a_failure_where_ci_requires_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(f"{__name__}.CHROMIUM", str(tmp_path / "chromium"))
    problem = _browser_problem()
    assert problem == f"Debian's chromium is not installed at {tmp_path / 'chromium'} " + (
        "(apt-get install chromium)"
    )
    monkeypatch.delenv("CONVERT_WEBHOOKS_REQUIRE_BROWSER", raising=False)
    with pytest.raises(pytest.skip.Exception, match="chromium is not installed"):
        _skip_or_fail(problem)
    monkeypatch.setenv("CONVERT_WEBHOOKS_REQUIRE_BROWSER", "1")
    with pytest.raises(pytest.fail.Exception, match="REQUIRE_BROWSER=1 but Debian's chromium"):
        _skip_or_fail(problem)
    _skip_or_fail(None)  # nothing missing: neither
