"""The status page at /admin: plain server-rendered HTML (no script), off unless
`admin.password` is set (then every /admin URL answers 404, like an unknown one).

Sign-in is a form; the session is a signed cookie (itsdangerous), HttpOnly, SameSite=Strict,
Secure over https. Its key is an HMAC of the password, so every gunicorn worker agrees
without shared state, and changing the password ends every session. Each POST must come from
this site (Origin, else Referer) and carry the session's CSRF token; retrying dead events also
needs the confirmation page's `confirm` field. Wrong passwords are throttled per client and
overall (in each worker process).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
import secrets
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ParamSpec
from urllib.parse import urlsplit

from flask import (
    Blueprint,
    Response,
    current_app,
    redirect,
    render_template,
    request,
    url_for,
)
from flask.sansio.blueprints import BlueprintSetupState
from itsdangerous import BadData, TimestampSigner, URLSafeTimedSerializer
from sqlalchemy import Engine
from werkzeug.exceptions import HTTPException, NotFound
from werkzeug.wrappers import Response as AnyResponse

from webhooks.core.clock import Clock
from webhooks.core.errors import ConvertWebhooksError
from webhooks.core.hits import SendOutcome
from webhooks.core.logs import describe
from webhooks.core.observe import DispatcherSeen, IngestSeen, Observer, RoundSeen
from webhooks.core.states import EventState
from webhooks.storage.status import MAX_ID, count_dead, read_event, read_status
from webhooks.wiring.replay import resend_events
from webhooks.wiring.runtime import Runtime

log = logging.getLogger(__name__)

bp = Blueprint(
    "admin",
    __name__,
    url_prefix="/admin",
    template_folder="templates",
    static_folder="static",
    static_url_path="/static",
)

EXTENSION = "convert_webhooks_admin"
COOKIE = "cw_admin"
SESSION_SECONDS = 8 * 3600
LIST_LIMIT = 20  # rows per list on the page
MAX_FORM_BYTES = 8192  # an admin form is a password or a token: anything larger is refused
MAX_PASSWORD_CHARS = 1024
THROTTLE_WINDOW = 900.0  # seconds
THROTTLE_PER_CLIENT = 5  # wrong passwords per client per window
THROTTLE_OVERALL = 50  # wrong passwords per window from all clients together
REFUSALS_WINDOW = 3600.0  # "signature failures in the last hour"
_SESSION_KEY_LABEL = b"convert-webhooks admin session v1"
_LOOPBACK = frozenset({"127.0.0.1", "::1"})

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


# --- per-process state ----------------------------------------------------------------------


class LoginThrottle:
    """Wrong passwords per client and overall within a sliding window. Kept per process:
    with several workers a client gets at most that many tries in each."""

    def __init__(
        self,
        per_client: int = THROTTLE_PER_CLIENT,
        overall: int = THROTTLE_OVERALL,
        window: float = THROTTLE_WINDOW,
        max_clients: int = 4096,
    ) -> None:
        self.per_client = per_client
        self.window = window
        self.max_clients = max_clients
        self._clients: dict[str, deque[float]] = {}
        self._overall: deque[float] = deque(maxlen=overall)
        self._lock = threading.Lock()

    def wait(self, client: str, now: float) -> float:
        """Seconds until `client` may try again; 0 when it may now."""
        with self._lock:
            mine = self._clients.get(client, deque())
            until = max(
                self._full_until(mine, self.per_client),
                self._full_until(self._overall, self._overall.maxlen or 0),
            )
            return max(until - now, 0.0)

    def failed(self, client: str, now: float) -> None:
        with self._lock:
            mine = self._clients.pop(client, None) or deque(maxlen=self.per_client)
            mine.append(now)
            self._clients[client] = mine  # re-inserted: the dict keeps clients by last failure
            self._overall.append(now)
            self._forget(now)

    def succeeded(self, client: str) -> None:
        with self._lock:
            self._clients.pop(client, None)

    def _full_until(self, times: deque[float], limit: int) -> float:
        return times[0] + self.window if len(times) >= limit else 0.0

    def _forget(self, now: float) -> None:
        while self._clients:
            oldest = next(iter(self._clients))
            stale = self._clients[oldest][-1] <= now - self.window
            if not stale and len(self._clients) <= self.max_clients:
                break
            del self._clients[oldest]


class RecentCounts:
    """Counts per key over the last `window` seconds, in one-minute buckets (bounded)."""

    def __init__(self, window: float = REFUSALS_WINDOW) -> None:
        self.minutes = int(window // 60)
        self._buckets: dict[str, deque[list[int]]] = {}
        self._lock = threading.Lock()

    def add(self, key: str, now: float) -> None:
        minute = int(now // 60)
        with self._lock:
            buckets = self._buckets.setdefault(key, deque())
            if buckets and buckets[-1][0] == minute:
                buckets[-1][1] += 1
            else:
                buckets.append([minute, 1])
            while buckets and buckets[0][0] <= minute - self.minutes:
                buckets.popleft()

    def count(self, key: str, now: float) -> int:
        oldest = int(now // 60) - self.minutes
        with self._lock:
            return sum(n for minute, n in self._buckets.get(key, ()) if minute > oldest)


@dataclass
class RefusalTap:
    """Passes every observation on, and counts refused signatures per source for the page
    (a refused request stores nothing, so the database cannot tell)."""

    inner: Observer
    counts: RecentCounts
    clock: Clock

    def ingest(self, seen: IngestSeen) -> None:
        if seen.status == "refused":
            self.counts.add(seen.source, self.clock.now())
        self.inner.ingest(seen)

    def round(self, seen: RoundSeen) -> None:
        self.inner.round(seen)

    def sends(self, outcomes: Sequence[SendOutcome]) -> None:
        self.inner.sends(outcomes)

    def dispatcher(self, seen: DispatcherSeen) -> None:
        self.inner.dispatcher(seen)

    def __getattr__(self, name: str) -> Any:  # anything else the wrapped observer offers
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)


class _ClockSigner(TimestampSigner):
    """Session timestamps from the service's clock (tests move it)."""

    def __init__(self, *args: Any, clock: Clock, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.clock = clock

    def get_timestamp(self) -> int:
        return int(self.clock.now())


@dataclass
class Admin:
    password_digest: bytes
    session_key: bytes
    serializer: URLSafeTimedSerializer
    throttle: LoginThrottle = field(default_factory=LoginThrottle)
    refusals: RecentCounts = field(default_factory=RecentCounts)

    @classmethod
    def from_password(cls, password: str, clock: Clock) -> Admin:
        secret = password.encode("utf-8", "surrogatepass")
        key = hmac.new(secret, _SESSION_KEY_LABEL, hashlib.sha256).digest()
        serializer = URLSafeTimedSerializer(
            key,
            salt="convert-webhooks.admin.session",
            signer=_ClockSigner,
            signer_kwargs={"clock": clock},
        )
        return cls(hashlib.sha256(secret).digest(), key, serializer)

    def password_matches(self, given: str) -> bool:
        digest = hashlib.sha256(given.encode("utf-8", "replace")).digest()
        return hmac.compare_digest(digest, self.password_digest)

    def csrf_token(self, session_id: str) -> str:
        message = b"csrf:" + session_id.encode()
        return hmac.new(self.session_key, message, hashlib.sha256).hexdigest()

    def new_session(self) -> tuple[str, str]:
        """(session id, cookie value)."""
        session_id = secrets.token_urlsafe(16)
        return session_id, self.serializer.dumps({"sid": session_id})

    def session_id(self, cookie: str | None) -> str | None:
        if not cookie or len(cookie) > 512:
            return None
        try:
            data = self.serializer.loads(cookie, max_age=SESSION_SECONDS)
        except BadData:
            return None
        sid = data.get("sid") if isinstance(data, dict) else None
        return sid if isinstance(sid, str) else None


@bp.record_once
def _setup(state: BlueprintSetupState) -> None:
    app = state.app
    rt: Runtime = app.extensions["convert_webhooks"]
    password = rt.settings.admin.password
    if password is None:
        return
    admin = Admin.from_password(password, rt.clock)
    rt.observer = RefusalTap(rt.observer, admin.refusals, rt.clock)
    app.extensions[EXTENSION] = admin


def _admin() -> Admin | None:
    found: Admin | None = current_app.extensions.get(EXTENSION)
    return found


def _runtime() -> Runtime:
    rt: Runtime = current_app.extensions["convert_webhooks"]
    return rt


def _engine(rt: Runtime) -> Engine:
    """The database, migrated (a service that started while it was down migrates on first
    use); StorageError while it is unavailable."""
    rt.ensure_schema()
    return rt.engine


# --- every request --------------------------------------------------------------------------


@bp.before_request
def _gate() -> Response | None:
    if _admin() is None:
        raise NotFound()
    if request.method == "POST":
        request.max_content_length = MAX_FORM_BYTES
        if not _same_origin():
            return _page("admin/message.html", 403, title="Refused", message=_FOREIGN)
    return None


@bp.after_request
def _headers(response: Response) -> Response:
    if _admin() is not None:
        response.headers.update(SECURITY_HEADERS)
    return response


@bp.context_processor
def _helpers() -> dict[str, Callable[..., str]]:
    now = _runtime().clock.now()
    return {"when": _when, "iso": _iso, "ago": lambda ts: _ago(ts, now)}


_FOREIGN = "This form was not sent from this site. Open the status page and try again."
_STALE = "This form has expired or does not belong to your session. Reload the page and try again."


def _same_origin() -> bool:
    """The POST came from a page of this site: its Origin (else its Referer) names this
    host. A TLS-terminating proxy may make an https page's POST reach us as http; a page
    served over http is never trusted for a request that came over https."""
    source = request.headers.get("Origin") or request.headers.get("Referer")
    if not source or len(source) > 2048:
        return False
    try:
        theirs = urlsplit(source)
        ours = urlsplit(f"//{request.host}")
        their_port, our_port = theirs.port, ours.port
    except ValueError:
        return False
    allowed = ("https",) if request.is_secure else ("http", "https")
    if theirs.scheme not in allowed or not theirs.hostname or theirs.hostname != ours.hostname:
        return False
    if our_port is None:  # a proxy that passes the host without its port
        return True
    if their_port is None:
        their_port = 443 if theirs.scheme == "https" else 80
    return their_port == our_port


def _client() -> str:
    """Who is guessing: the peer, or the address a local proxy reports (deploy/nginx.conf
    sets X-Real-IP; only a peer on this machine is believed)."""
    peer = request.remote_addr or "-"
    if peer in _LOOPBACK:
        reported = request.headers.get("X-Real-IP", "")
        if 0 < len(reported) <= 64:
            return reported
    return peer


def _signed_in(admin: Admin) -> str | None:
    return admin.session_id(request.cookies.get(COOKIE))


def _token_ok(admin: Admin, session_id: str) -> bool:
    given = request.form.get("csrf_token", "")
    if len(given) > 256:
        return False
    expected = admin.csrf_token(session_id).encode()
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected)


def _page(template: str, http_status: int = 200, /, **context: Any) -> Response:
    admin = _admin()
    session_id = _signed_in(admin) if admin is not None else None
    if session_id is not None and admin is not None:
        context.setdefault("csrf_token", admin.csrf_token(session_id))
    context.setdefault("signed_in", session_id is not None)
    response = Response(render_template(template, **context), status=http_status)
    response.mimetype = "text/html"
    return response


def _to_login() -> AnyResponse:
    return redirect(url_for("admin.login"), 303)


# --- sign in and out ------------------------------------------------------------------------


@bp.get("/login")
def login() -> AnyResponse:
    admin = _require()
    if _signed_in(admin) is not None:
        return redirect(url_for("admin.status"), 303)
    return _page("admin/login.html")


@bp.post("/login")
def login_post() -> AnyResponse:
    admin = _require()
    client, now = _client(), _runtime().clock.now()
    wait = admin.throttle.wait(client, now)
    if wait > 0:
        return _throttled(wait)
    given = request.form.get("password", "")
    if len(given) > MAX_PASSWORD_CHARS or not admin.password_matches(given):
        admin.throttle.failed(client, now)
        log.warning("admin: wrong password")
        return _page("admin/login.html", 403, error="Wrong password.")
    admin.throttle.succeeded(client)
    log.info("admin: signed in")
    return _signed_in_response(admin)


def _throttled(wait: float) -> AnyResponse:
    minutes = max(1, round(wait / 60))
    plural = "s" if minutes != 1 else ""
    message = f"Too many wrong passwords. Try again in {minutes} minute{plural}."
    response = _page("admin/login.html", 429, error=message)
    response.headers["Retry-After"] = str(int(wait) + 1)
    return response


def _signed_in_response(admin: Admin) -> AnyResponse:
    """To the status page, with a new session. Secure when the browser is on https: the
    request says so, or (behind a proxy that ends TLS) the form's Origin does."""
    _, cookie = admin.new_session()
    response = redirect(url_for("admin.status"), 303)
    secure = request.is_secure or request.headers.get("Origin", "").startswith("https://")
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/admin",
        secure=secure,
        httponly=True,
        samesite="Strict",
    )
    return response


@bp.post("/logout")
def logout() -> AnyResponse:
    admin = _require()
    session_id = _signed_in(admin)
    if session_id is not None and not _token_ok(admin, session_id):
        return _page("admin/message.html", 403, title="Refused", message=_STALE)
    response = redirect(url_for("admin.login"), 303)
    response.delete_cookie(COOKIE, path="/admin", httponly=True, samesite="Strict")
    return response


def _require() -> Admin:
    admin = _admin()
    if admin is None:  # _gate answered already; kept for the type checker
        raise NotFound()
    return admin


# --- the pages ------------------------------------------------------------------------------

P = ParamSpec("P")


def _reading(view: Callable[P, AnyResponse]) -> Callable[P, AnyResponse]:
    """A page for a signed-in session (else the sign-in page); 503 while the database
    cannot be read."""

    @functools.wraps(view)
    def page(*args: P.args, **kwargs: P.kwargs) -> AnyResponse:
        if _signed_in(_require()) is None:
            return _to_login()
        try:
            return view(*args, **kwargs)
        except ConvertWebhooksError as exc:
            return _unavailable(exc)

    return page


def _acting(view: Callable[P, AnyResponse]) -> Callable[P, AnyResponse]:
    """A form that changes something: it needs a session, its CSRF token and the
    confirmation (the origin is checked for every POST by `_gate`)."""

    @functools.wraps(view)
    def action(*args: P.args, **kwargs: P.kwargs) -> AnyResponse:
        refused = _check_post()
        if refused is not None:
            return refused
        try:
            return view(*args, **kwargs)
        except ConvertWebhooksError as exc:
            return _unavailable(exc)

    return action


@bp.get("", strict_slashes=False)
@_reading
def status() -> AnyResponse:
    rt = _runtime()
    now = rt.clock.now()
    platforms = {name: source.platform for name, source in rt.settings.sources.items()}
    found = read_status(_engine(rt), platforms, now, LIST_LIMIT)
    refusals = {name: _require().refusals.count(name, now) for name in platforms}
    return _page(
        "admin/status.html",
        status=found,
        refusals=refusals,
        dispatcher=_dispatcher_state(rt),
        dry_run=rt.settings.convert.dry_run,
        limit=LIST_LIMIT,
    )


@bp.get(f"/events/<int(min=1, max={MAX_ID}):event_id>")
@_reading
def event(event_id: int) -> AnyResponse:
    detail = read_event(_engine(_runtime()), event_id, LIST_LIMIT)
    if detail is None:
        return _no_event(event_id)
    dead = detail.event.state == EventState.DEAD
    return _page("admin/event.html", detail=detail, dead=dead, limit=LIST_LIMIT)


@bp.get(f"/events/<int(min=1, max={MAX_ID}):event_id>/retry")
@_reading
def confirm_retry(event_id: int) -> AnyResponse:
    detail = read_event(_engine(_runtime()), event_id, 0)
    if detail is None:
        return _no_event(event_id)
    return _page("admin/confirm.html", detail=detail, dead=detail.event.state == EventState.DEAD)


@bp.post(f"/events/<int(min=1, max={MAX_ID}):event_id>/retry")
@_acting
def retry(event_id: int) -> AnyResponse:
    rt = _runtime()
    detail = read_event(_engine(rt), event_id, 0)
    if detail is None:
        return _no_event(event_id)
    state = detail.event.state
    if state != EventState.DEAD:
        message = f"Event {event_id} is {state}, not dead: there is nothing to retry."
        return _page("admin/message.html", 409, title="Not dead", message=message)
    resend_events(rt.engine, [event_id], rt.clock.now())
    rt.dispatcher.wake()
    log.info("admin: event %s queued again", event_id)
    return redirect(url_for("admin.event", event_id=event_id), 303)


@bp.get("/dead/retry")
@_reading
def confirm_retry_all() -> AnyResponse:
    return _page("admin/confirm_all.html", dead=count_dead(_engine(_runtime())))


@bp.post("/dead/retry")
@_acting
def retry_all() -> AnyResponse:
    rt = _runtime()
    queued = resend_events(_engine(rt), None, rt.clock.now())
    if queued:
        rt.dispatcher.wake()
    log.info("admin: %d dead events queued again", len(queued))
    return redirect(url_for("admin.status"), 303)


def _no_event(event_id: int) -> AnyResponse:
    return _page("admin/message.html", 404, title="Not found", message=f"No event {event_id}.")


def _check_post() -> AnyResponse | None:
    """The refusal of a form without a session, its token or the confirmation; else None."""
    admin = _require()
    session_id = _signed_in(admin)
    if session_id is None:
        message = "Your session has ended. Sign in and try again."
        return _page("admin/message.html", 403, title="Signed out", message=message)
    if not _token_ok(admin, session_id):
        return _page("admin/message.html", 403, title="Refused", message=_STALE)
    if request.form.get("confirm") != "yes":
        message = "Nothing was retried: confirm on the confirmation page."
        return _page("admin/message.html", 400, title="Not confirmed", message=message)
    return None


def _dispatcher_state(rt: Runtime) -> str:
    if not rt.settings.dispatcher.enabled:
        return "disabled"
    return "running" if rt.dispatcher.running else "not running"


def _unavailable(exc: ConvertWebhooksError) -> Response:
    log.warning("admin: database unavailable: %s", describe(exc))
    response = _page(
        "admin/message.html",
        503,
        title="Database unavailable",
        message="The database cannot be read right now. Try again shortly.",
    )
    response.headers["Retry-After"] = "30"
    return response


@bp.errorhandler(400)
@bp.errorhandler(413)
def _bad_form(exc: HTTPException) -> Response:
    code = exc.code or 400
    message = "The form was too large." if code == 413 else "The form could not be read."
    return _page("admin/message.html", code, title="Refused", message=message)


# --- formatting -----------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if ts is None:
        return "never"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ago(ts: float | None, now: float) -> str:
    if ts is None:
        return ""
    seconds = max(0, int(now - ts))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size} {unit} ago"
    return f"{seconds} s ago"
