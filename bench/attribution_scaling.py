"""How experiment-pair parsing grows with the number of pairs a buyer puts in a cart attribute.

The pairs are buyer-controlled (a Shopify cart attribute), so parsing must stay linear. This
times `webhooks.attribution.from_attributes` on 1,000 to 10,000 distinct pairs next to the
former parser (a list with `pair not in pairs`: quadratic), in the same run, and prints how
much longer 10x the pairs take: about 10x for a linear parser, about 100x for a quadratic one.

    .venv/bin/python -m bench.attribution_scaling
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Mapping

from webhooks.attribution.pairs import from_attributes

KEY = "convert_experiments"
_PAIR = re.compile(r"^(\d{1,20})-(\d{1,20})$")


def former_parser(attributes: Mapping[str, str], key: str) -> tuple[str, ...]:
    """The parser before the hardening issue, kept here only as the baseline."""
    pairs: list[str] = []
    for piece in attributes[key].split(","):
        match = _PAIR.match(piece.strip())
        if match:
            pair = f"{int(match.group(1))}-{int(match.group(2))}"
            if pair not in pairs:
                pairs.append(pair)
    return tuple(pairs)


def value(count: int) -> str:
    return ",".join(f"{i // 100}-{i % 100}" for i in range(count))


def best_of(parse: Callable[[], object], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        parse()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> int:
    print(f"{'pairs':>7} {'current ms':>11} {'former ms':>10}")
    rows = {}
    for count in (1_000, 2_000, 5_000, 10_000):
        attributes = {KEY: value(count)}
        current = best_of(functools.partial(from_attributes, attributes, KEY, max_pairs=20))
        former = best_of(functools.partial(former_parser, attributes, KEY), repeats=2)
        rows[count] = (current, former)
        print(f"{count:>7} {current * 1000:>11.2f} {former * 1000:>10.1f}")
    growth_current = rows[10_000][0] / rows[1_000][0]
    growth_former = rows[10_000][1] / rows[1_000][1]
    print(f"10x the pairs: current {growth_current:.1f}x the time, former {growth_former:.1f}x")
    return 0 if growth_current < 20 else 1


if __name__ == "__main__":
    raise SystemExit(main())
