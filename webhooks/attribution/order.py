"""The first place to look: the order's own attributes (Stripe metadata, Shopify note
attributes), under the source's configured key, in the plain `EXP-VAR` format."""

from __future__ import annotations

from collections.abc import Callable

from webhooks.attribution.chain import Absent, Answer, Found, Subject
from webhooks.attribution.pairs import from_attributes
from webhooks.core.states import Reason

DEFAULT_EXPERIMENTS_KEY = "convert_experiments"


class OrderAttributes:
    def __init__(self, key_of: Callable[[str], str], max_pairs: int) -> None:
        self.key_of = key_of  # source name -> the attribute holding the pairs
        self.max_pairs = max_pairs

    def find(self, subject: Subject) -> Answer:
        key = self.key_of(subject.source)
        attribution = from_attributes(subject.attributes, key, max_pairs=self.max_pairs)
        if not attribution.pairs:
            code = attribution.reason_code or Reason.NO_EXPERIMENT_DATA
            return Absent(code, attribution.reason or f"no pairs in '{key}'")
        return Found(attribution.pairs, f"order attribute '{key}'", "plain", note=attribution.note)
