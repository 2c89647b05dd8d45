"""Experiment data formats: one pure parser per format, from an attribute value to the pairs
(and the Convert visitor id when the format has one), or to a reason naming the format.

Formats (facts and sources: ../shared/reference/convert-tracking.md, sections 5 to 7):
- `plain`: `EXP-VAR[,EXP-VAR...]` (pairs.py).
- `json`: a list of objects, each with an experience id (`experienceId`, `experimentId`,
  `experience_id` or `experiment_id`) and a variation id (`variationId` or `variation_id`),
  or an `{experience: variation}` map (a variation may also be an object with
  `variationId`/`variation_id`, as in `convert.historicalData.experiences`).
- `visitor_data`: what `convert.getAllVisitorData()` returns (`@convertcom/tracking-types`
  VisitorData): `{visitorId, segments, bucketing: [{experienceId, variationId, ...}]}`.
- `shopify_app_data`: the Convert Shopify App's `__data` cart attribute: base64 of visitor
  data plus `accountId`, `projectId`, `currency` (support article "Developing a Custom Web
  Pixel for the Convert Shopify App").
- `conv_attrs`: the older Shopify snippets' `_conv_attrs` JSON: `{cid, pid, vid, exps: [...],
  vars: [...], ...}`, exps[i] paired with vars[i].
- `conv_v_cookie`: a raw `_conv_v` cookie, URL-encoded or not: `key:value` pieces joined by
  `*`; its `exp` piece decoded with Convert's recipe (support article 204495429).

Every parser is total: any string gives `Parsed` (maybe with no pairs: well-formed data that
names no experiment) or `Refused`, never an exception and never a guess (ambiguous data, such
as a JSON key given twice or exps and vars of different lengths, is refused). The work is
bounded: at most MAX_VALUE_CHARS characters are read, JSON deeper than MAX_JSON_DEPTH is
refused before it is parsed, and JSON integers stay text (no 4,300-digit int is built).
Data naming another Convert account or project than the configured one is refused.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from webhooks.attribution.pairs import (
    DEFAULT_MAX_PAIRS,
    MAX_VALUE_CHARS,
    PLAIN_NO_PAIR,
    canonical_id,
    capped,
    check_max_pairs,
    plain_pairs,
)
from webhooks.core.states import Reason

PLAIN = "plain"
JSON = "json"
VISITOR_DATA = "visitor_data"
SHOPIFY_APP_DATA = "shopify_app_data"
CONV_ATTRS = "conv_attrs"
CONV_V_COOKIE = "conv_v_cookie"
FORMATS = (PLAIN, JSON, VISITOR_DATA, SHOPIFY_APP_DATA, CONV_ATTRS, CONV_V_COOKIE)

# The deepest real shape is `__data`: object > bucketing list > entry > goals list > goal.
MAX_JSON_DEPTH = 8
MAX_VISITOR_ID_CHARS = 255  # events.visitor_id column
EXPERIENCE_KEYS = ("experienceId", "experimentId", "experience_id", "experiment_id")
VARIATION_KEYS = ("variationId", "variation_id")

_VISITOR_ID = re.compile(rf"[\x21-\x7e]{{1,{MAX_VISITOR_ID_CHARS}}}", re.ASCII)
# Counting JSON depth: the next quote or bracket, and the rest of a string after its quote
# (possessive: a string is scanned once, so the count is linear in the text).
_JSON_STRUCTURE = re.compile(r'["\[\]{}]')
_JSON_STRING_REST = re.compile(r'(?:[^"\\]++|\\.)*+"', re.DOTALL)
_BASE64 = re.compile(r"[A-Za-z0-9+/_-]+={0,2}", re.ASCII)
_PLAIN_CHARS = re.compile(r"[0-9,\s-]+", re.ASCII)
_COOKIE_KEY = re.compile(r"[A-Za-z0-9_]+", re.ASCII)
_COOKIE_START = re.compile(r"[A-Za-z0-9_]+(?::|%3[Aa])", re.ASCII)
# Convert's recipe for the `exp` piece, after `-` -> `,` and `.` -> `:`: quote every key.
# The lookbehind only starts a match where a run of key characters starts: the same matches
# as Convert's `([a-z0-9]+):`, without rescanning a long run from each of its characters.
_COOKIE_JSON_KEY = re.compile(r"(?<![a-z0-9])([a-z0-9]++):")


@dataclass(frozen=True)
class Parsed:
    format: str
    pairs: tuple[str, ...]  # "EXP-VAR", digits only, in order, no repeats; may be empty
    visitor_id: str | None = None
    dropped: int = 0  # distinct valid pairs beyond max_pairs
    note: str | None = None  # for people: pairs left out by the cap


@dataclass(frozen=True)
class Refused:
    format: str  # the format tried
    reason: str  # completes "'<attribute>' ...": "holds no valid conv_attrs: ..."


Result = Parsed | Refused


@dataclass(frozen=True)
class Project:
    """The configured Convert account and project (None: not checked)."""

    account_id: str | None = None
    project_id: str | None = None


ANY_PROJECT = Project()
Parser = Callable[[str, int, Project], Result]


class _Malformed(Exception):
    """Inside this module only: why a value is not the format tried."""


class _JsonInt(str):
    """A JSON integer kept as its text: ids are checked as text, never built as big ints."""


def parse_plain(
    value: str, max_pairs: int = DEFAULT_MAX_PAIRS, project: Project = ANY_PROJECT
) -> Result:
    found = plain_pairs(value, max_pairs)
    if found.reason_code == Reason.MALFORMED_EXPERIMENT_DATA:
        return Refused(PLAIN, found.reason or PLAIN_NO_PAIR)
    return Parsed(PLAIN, found.pairs, dropped=found.dropped, note=found.note)


def parse_json(
    value: str, max_pairs: int = DEFAULT_MAX_PAIRS, project: Project = ANY_PROJECT
) -> Result:
    return _guarded(JSON, value, max_pairs, lambda: _from_json(_load_json(value), max_pairs))


def parse_visitor_data(
    value: str, max_pairs: int = DEFAULT_MAX_PAIRS, project: Project = ANY_PROJECT
) -> Result:
    def parse() -> Parsed:
        return _from_visitor_data(VISITOR_DATA, _load_json(value), max_pairs, project)

    return _guarded(VISITOR_DATA, value, max_pairs, parse)


def parse_shopify_app_data(
    value: str, max_pairs: int = DEFAULT_MAX_PAIRS, project: Project = ANY_PROJECT
) -> Result:
    def parse() -> Parsed:
        data = _load_json(_base64_text(value))
        return _from_visitor_data(SHOPIFY_APP_DATA, data, max_pairs, project)

    return _guarded(SHOPIFY_APP_DATA, value, max_pairs, parse)


def parse_conv_attrs(
    value: str, max_pairs: int = DEFAULT_MAX_PAIRS, project: Project = ANY_PROJECT
) -> Result:
    def parse() -> Parsed:
        return _from_conv_attrs(_load_json(value), max_pairs, project)

    return _guarded(CONV_ATTRS, value, max_pairs, parse)


def parse_conv_v_cookie(
    value: str, max_pairs: int = DEFAULT_MAX_PAIRS, project: Project = ANY_PROJECT
) -> Result:
    return _guarded(CONV_V_COOKIE, value, max_pairs, lambda: _from_cookie(value, max_pairs))


def parse_any(
    value: str, max_pairs: int = DEFAULT_MAX_PAIRS, project: Project = ANY_PROJECT
) -> Result:
    """A value in any format, told by its shape: JSON (a list, or an object told by its keys:
    `bucketing`/`visitorId` visitor data, `exps`/`vars` conv_attrs, else a map), a cookie
    (`key:value*...`), base64 JSON (Shopify app data), else plain."""
    check_max_pairs(max_pairs)
    text = value[:MAX_VALUE_CHARS].strip()
    if text[:1] in ("{", "["):
        try:
            data = _load_json(value)
        except _Malformed as exc:
            return Refused(JSON, f"holds no valid {JSON}: {exc}")
        format = _json_format(data)
        return _guarded(
            format, value, max_pairs, lambda: _from_decoded(format, data, max_pairs, project)
        )
    if _PLAIN_CHARS.fullmatch(text):
        return parse_plain(value, max_pairs, project)
    if _COOKIE_START.match(text):
        return parse_conv_v_cookie(value, max_pairs, project)
    if len(text) >= 4 and _BASE64.fullmatch(text):
        try:
            data = _load_json(_base64_text(text))
        except _Malformed:
            data = None  # not base64 JSON after all: read as plain (which says what it wants)
        if isinstance(data, dict):
            return _guarded(
                SHOPIFY_APP_DATA,
                value,
                max_pairs,
                lambda: _from_decoded(SHOPIFY_APP_DATA, data, max_pairs, project),
            )
    return parse_plain(value, max_pairs, project)


# Convert's own attribute names, each read in its own format.
CONVERT_ATTRIBUTES: Mapping[str, Parser] = {
    "__data": parse_shopify_app_data,
    "_conv_attrs": parse_conv_attrs,
    "_conv_v": parse_conv_v_cookie,
}


def _guarded(format: str, value: str, max_pairs: int, parse: Callable[[], Parsed]) -> Result:
    check_max_pairs(max_pairs)
    if len(value) > MAX_VALUE_CHARS:
        # Structured data cut short is unreadable; a longer value is not experiment data.
        return Refused(format, f"holds no valid {format}: longer than {MAX_VALUE_CHARS} characters")
    try:
        return parse()
    except _Malformed as exc:
        return Refused(format, f"holds no valid {format}: {exc}")


# --- decoding --------------------------------------------------------------------------------


def _load_json(text: str) -> object:
    """JSON within the size and depth bounds, integers kept as text, keys never repeated."""
    if len(text) > MAX_VALUE_CHARS:
        raise _Malformed(f"longer than {MAX_VALUE_CHARS} characters")
    _check_depth(text)
    try:
        return json.loads(
            text,
            parse_int=_JsonInt,
            parse_constant=_no_constant,
            object_pairs_hook=_unique_keys,
        )
    except (ValueError, RecursionError):  # JSONDecodeError is a ValueError
        raise _Malformed("not valid JSON") from None


def _check_depth(text: str) -> None:
    """Refuses nesting deeper than MAX_JSON_DEPTH before json.loads recurses into it."""
    depth, at = 0, 0
    while token := _JSON_STRUCTURE.search(text, at):
        at = token.end()
        char = token.group()
        if char == '"':
            rest = _JSON_STRING_REST.match(text, at)
            if rest is None:
                return  # an unterminated string: json.loads refuses the text
            at = rest.end()
        elif char in "[{":
            depth += 1
            if depth > MAX_JSON_DEPTH:
                raise _Malformed(f"JSON nested deeper than {MAX_JSON_DEPTH} levels")
        else:
            depth -= 1


def _no_constant(name: str) -> object:
    raise _Malformed("not valid JSON (NaN or Infinity)")


def _unique_keys(items: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(items)
    if len(found) != len(items):
        raise _Malformed("a JSON object names a key twice")
    return found


def _base64_text(value: str) -> str:
    """The UTF-8 text a base64 value (standard or URL-safe, padded or not) encodes."""
    text = value.strip()
    if not _BASE64.fullmatch(text):
        raise _Malformed("not base64")
    bare = text.rstrip("=").replace("-", "+").replace("_", "/")
    if len(bare) % 4 == 1:
        raise _Malformed("not base64 (wrong length)")
    try:
        raw = base64.b64decode(bare + "=" * (-len(bare) % 4), validate=True)
        return raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        raise _Malformed("not base64 of UTF-8 text") from None


# --- formats ---------------------------------------------------------------------------------


def _json_format(data: object) -> str:
    if isinstance(data, dict):
        if "bucketing" in data or "visitorId" in data:
            return VISITOR_DATA
        if "exps" in data or "vars" in data:
            return CONV_ATTRS
    return JSON


def _from_decoded(format: str, data: object, max_pairs: int, project: Project) -> Parsed:
    if format == CONV_ATTRS:
        return _from_conv_attrs(data, max_pairs, project)
    if format in (VISITOR_DATA, SHOPIFY_APP_DATA):
        return _from_visitor_data(format, data, max_pairs, project)
    return _from_json(data, max_pairs)


def _from_json(data: object, max_pairs: int) -> Parsed:
    if isinstance(data, list):
        return _collected(JSON, [_entry_pair(entry) for entry in data], max_pairs)
    if isinstance(data, dict):
        candidates = [_map_pair(key, value) for key, value in data.items()]
        return _collected(JSON, candidates, max_pairs)
    raise _Malformed("neither a list of pairs nor an {experience: variation} map")


def _from_visitor_data(format: str, data: object, max_pairs: int, project: Project) -> Parsed:
    if not isinstance(data, dict):
        raise _Malformed("not a JSON object")
    _check_project(data, "accountId", "projectId", project)
    bucketing = data.get("bucketing")
    if not isinstance(bucketing, list):
        raise _Malformed("no 'bucketing' list")
    parsed = _collected(format, [_entry_pair(entry) for entry in bucketing], max_pairs)
    return _with_visitor(parsed, data.get("visitorId"))


def _from_conv_attrs(data: object, max_pairs: int, project: Project) -> Parsed:
    if not isinstance(data, dict):
        raise _Malformed("not a JSON object")
    _check_project(data, "cid", "pid", project)
    exps, vars_ = data.get("exps"), data.get("vars")
    if not isinstance(exps, list) or not isinstance(vars_, list):
        raise _Malformed("no 'exps' and 'vars' lists")
    if len(exps) != len(vars_):
        raise _Malformed("'exps' and 'vars' differ in length")
    candidates = [_pair(exp, var) for exp, var in zip(exps, vars_, strict=True)]
    return _with_visitor(_collected(CONV_ATTRS, candidates, max_pairs), data.get("vid"))


def _from_cookie(value: str, max_pairs: int) -> Parsed:
    text = value.strip()
    if "%" in text:
        try:
            text = unquote(text, errors="strict")
        except UnicodeDecodeError:
            raise _Malformed("URL-encoding that is not UTF-8") from None
    pieces: dict[str, str] = {}
    for piece in text.split("*"):
        if not piece:
            continue
        key, colon, content = piece.partition(":")
        if not colon or not _COOKIE_KEY.fullmatch(key):
            raise _Malformed("a piece is not 'key:value'")
        if key in pieces:
            raise _Malformed(f"the '{key}' piece appears twice")
        pieces[key] = content
    if not pieces:
        raise _Malformed("no 'key:value' piece")
    exp = pieces.get("exp")
    parsed = Parsed(CONV_V_COOKIE, ()) if exp is None else _cookie_experiments(exp, max_pairs)
    # `vi` is "1" unless the visitor id is a generated or the site's own one (section 5.1).
    visitor = pieces.get("vi")
    return _with_visitor(parsed, None if visitor == "1" else visitor)


def _cookie_experiments(exp: str, max_pairs: int) -> Parsed:
    """Convert's recipe: `-` stands for `,` and `.` for `:`; then quote every key."""
    text = _COOKIE_JSON_KEY.sub(r'"\1":', exp.replace("-", ",").replace(".", ":"))
    data = _load_json(text)
    if not isinstance(data, dict):
        raise _Malformed("its 'exp' piece is not a map of experiences")
    candidates = [
        _pair(experience, shown.get("v")) if isinstance(shown, dict) else None
        for experience, shown in data.items()
    ]
    return _collected(CONV_V_COOKIE, candidates, max_pairs)


# --- pieces ----------------------------------------------------------------------------------


def _collected(format: str, candidates: list[str | None], max_pairs: int) -> Parsed:
    """The valid pairs, capped. An entry that is not a valid pair is left out, as the plain
    format leaves out a bad piece; entries with no valid pair at all are refused."""
    result = capped((pair for pair in candidates if pair is not None), max_pairs)
    if candidates and not result.found:
        noun = "entry is" if len(candidates) == 1 else f"{len(candidates)} entries are"
        raise _Malformed(f"no valid pair: the {noun} not two ids of 1 to 20 ASCII digits")
    return Parsed(format, result.pairs, dropped=result.dropped, note=result.note)


def _entry_pair(entry: object) -> str | None:
    if not isinstance(entry, dict):
        return None
    return _pair(_one_of(entry, EXPERIENCE_KEYS), _one_of(entry, VARIATION_KEYS))


def _map_pair(experience: str, variation: object) -> str | None:
    if isinstance(variation, dict):
        variation = _one_of(variation, VARIATION_KEYS)
    return _pair(experience, variation)


def _one_of(entry: Mapping[str, Any], names: Iterable[str]) -> object:
    """The value under whichever of `names` the entry uses; None when it uses none, or two
    that disagree (which one to trust would be a guess)."""
    values = {_id_text(entry[name]) for name in names if name in entry}
    return values.pop() if len(values) == 1 else None


def _pair(experience: object, variation: object) -> str | None:
    exp, var = _id(experience), _id(variation)
    return f"{exp}-{var}" if exp is not None and var is not None else None


def _id(value: object) -> str | None:
    """An id from a JSON string of digits or a non-negative JSON integer (not a float or a
    bool: those parse as float and bool, never as _JsonInt)."""
    return canonical_id(value) if isinstance(value, str) else None


def _id_text(value: object) -> object:
    """A hashable stand-in for comparing two ids given under different names."""
    if isinstance(value, str):
        return canonical_id(value) or ("not an id", value)
    return ("not an id", repr(value)[:64])


def _check_project(
    data: Mapping[str, Any], account_key: str, project_key: str, project: Project
) -> None:
    for key, configured, what in (
        (account_key, project.account_id, "account"),
        (project_key, project.project_id, "project"),
    ):
        if configured is None or data.get(key) is None:
            continue
        given = _id(data[key])
        if given != canonical_id(configured):
            shown = f"{given}" if given is not None else "an unreadable id"
            raise _Malformed(
                f"it belongs to Convert {what} {shown} ('{key}'), not the configured {configured}"
            )


def _with_visitor(parsed: Parsed, visitor: object) -> Parsed:
    """The visitor id when the data gives a usable one (printable ASCII that fits the
    column); an unusable one is left out: the pairs are still good."""
    if isinstance(visitor, str) and _VISITOR_ID.fullmatch(visitor):
        return Parsed(parsed.format, parsed.pairs, visitor, parsed.dropped, parsed.note)
    return parsed
