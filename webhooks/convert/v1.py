"""Convert's JSON tracking API, `/v1/track` (reference: convert-tracking.md sections 2 and 9).

    POST {base_url}/track/{account_id}/{project_id}      (or /track/{sdk_key}, with
    Content-Type: application/json                        Authorization: Bearer <sdk secret>)
    User-Agent: ConvertAgent/...  (set on the session)
    {"accountId": "1111", "projectId": "2222", "enrichData": false,
     "source": "convert-webhooks/0.1.0", "visitors": [
        {"visitorId": "...", "events": [
            {"eventType": "conversion",
             "data": {"goalId": "100", "bucketingData": {"10": "20"}}},
            {"eventType": "conversion",
             "data": {"goalId": "100", "bucketingData": {"10": "20"},
                      "goalData": [{"key": "amount", "value": 49.99},
                                   {"key": "productsCount", "value": 2},
                                   {"key": "transactionId", "value": "ord_123"}]}}]}]}

One hit per purchase (one visitors[] entry: bucketingData carries every pair); a request
carries up to `batch_size` of them. The hit's payload is the body for its purchase alone; a
batch is the same body with every hit's visitor. Only HTTP 200 is a success (Convert's SDKs
resend on anything else); a 4xx other than 429 is split in halves until the hit Convert refuses
is alone, so one malformed purchase cannot sink the others.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from webhooks import __version__
from webhooks.convert.http import Answer, Sender
from webhooks.convert.legacy import format_value
from webhooks.core.hits import WHOLE_PURCHASE, Hit, HitFormat, HitResult, Purchase
from webhooks.core.settings import ConvertSettings, GoalSet
from webhooks.core.states import Outcome

DEFAULT_SOURCE = f"convert-webhooks/{__version__}"
_SUFFIX = "]}"


def track_url(settings: ConvertSettings) -> str:
    v1 = settings.v1
    base = v1.base_url.rstrip("/")
    for template in ("{project_id}", "[project_id]"):  # the SDKs' per-project host
        base = base.replace(template, settings.project_id)
    key = v1.sdk_key or f"{settings.account_id}/{settings.project_id}"
    return f"{base}/track/{key}"


def body_prefix(settings: ConvertSettings) -> str:
    """Everything of a body before its visitors, with the visitors array opened."""
    v1 = settings.v1
    head = {
        "accountId": settings.account_id,
        "projectId": settings.project_id,
        "enrichData": v1.enrich_data,
        "source": v1.source or DEFAULT_SOURCE,
    }
    return _dumps(head)[:-1] + ',"visitors":['


def visitor_entry(
    goals: GoalSet, purchase: Purchase, pairs: Sequence[str], bucketing_events: bool
) -> str:
    """One visitors[] entry as JSON text. Written by hand around json.dumps for the amount:
    a JSON number with exactly two decimals ("10.10"), which a float would print as 10.1
    and, past 2**53 cents, round."""
    if not purchase.visitor_id:
        raise ValueError("the purchase has no visitor id")
    bucketing = dict(pair.split("-", 1) for pair in pairs)
    events = []
    if bucketing_events:
        events += [
            _dumps({"eventType": "bucketing", "data": {"experienceId": e, "variationId": v}})
            for e, v in bucketing.items()
        ]
    for goal in goals.conversion:
        events.append(_conversion(goal, bucketing, None))
    for goal in goals.transaction:
        events.append(_conversion(goal, bucketing, _goal_data(purchase)))
    return f'{{"visitorId":{_dumps(purchase.visitor_id)},"events":[{",".join(events)}]}}'


def _conversion(goal: str, bucketing: dict[str, str], goal_data: str | None) -> str:
    data = _dumps({"goalId": goal, "bucketingData": bucketing})
    if goal_data is not None:
        data = f'{data[:-1]},"goalData":{goal_data}}}'
    return f'{{"eventType":"conversion","data":{data}}}'


def _goal_data(purchase: Purchase) -> str:
    amount = format_value(purchase.amount)
    count = max(purchase.item_count, 0)
    return (
        f'[{{"key":"amount","value":{amount}}},'
        f'{{"key":"productsCount","value":{count}}},'
        f'{{"key":"transactionId","value":{_dumps(purchase.order_id)}}}]'
    )


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class V1Client:
    def __init__(self, settings: ConvertSettings, sender: Sender) -> None:
        self.settings = settings
        self.sender = sender
        self.url = track_url(settings)
        self.prefix = body_prefix(settings)
        self.headers = {"Content-Type": "application/json"}
        if settings.v1.sdk_key and settings.v1.sdk_secret:
            self.headers["Authorization"] = f"Bearer {settings.v1.sdk_secret}"

    def max_hits(self, fmt: HitFormat) -> int:
        return self.settings.v1.batch_size

    def hits(self, goals: GoalSet, purchase: Purchase, pairs: Sequence[str]) -> list[Hit]:
        if not pairs:
            return []
        entry = visitor_entry(goals, purchase, pairs, self.settings.v1.bucketing_events)
        body = f"{self.prefix}{entry}{_SUFFIX}"
        return [Hit(purchase.event_id, WHOLE_PURCHASE, HitFormat.V1_JSON, body)]

    def describe(self, hit: Hit) -> str:
        return f"POST {self.url} {hit.payload}"

    def body(self, hits: Sequence[Hit]) -> str:
        """The request body for a batch: the hits' visitors after one shared head."""
        entries = []
        for hit in hits:
            if not (hit.payload.startswith(self.prefix) and hit.payload.endswith(_SUFFIX)):
                raise ValueError("a v1 hit built with other settings than this client's")
            entries.append(hit.payload[len(self.prefix) : -len(_SUFFIX)])
        return f"{self.prefix}{','.join(entries)}{_SUFFIX}"

    def send(self, hits: Sequence[Hit]) -> list[HitResult]:
        if not hits:
            return []
        answer = self.sender.post(self.url, self.body(hits).encode(), self.headers)
        outcome = classify(answer)
        if outcome is Outcome.PERMANENT and len(hits) > 1 and _refused(answer):
            half = len(hits) // 2
            return self.send(hits[:half]) + self.send(hits[half:])
        detail = answer.detail if len(hits) == 1 else f"{answer.detail} (batch of {len(hits)})"
        result = HitResult(outcome, answer.status, detail, answer.retry_after, answer.seconds)
        return [result] * len(hits)

    def close(self) -> None:
        self.sender.close()


def classify(answer: Answer) -> Outcome:
    status = answer.status
    if status is None:
        # No answer: a network error is retried; a redirect loop is a broken endpoint.
        return Outcome.PERMANENT if answer.broken else Outcome.RETRY
    if status == 200:
        return Outcome.SENT
    if status == 429 or status >= 500 or 200 <= status < 300:
        # Another 2xx is not Convert's success answer: its SDKs send again, so do we.
        return Outcome.RETRY
    return Outcome.PERMANENT


def _refused(answer: Answer) -> bool:
    """A 4xx names something in the body: worth finding which hit (a 3xx does not)."""
    return answer.status is not None and 400 <= answer.status < 500
