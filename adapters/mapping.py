"""The field mapping of the generic sources (`custom`, `standard_webhooks`): where each value
of a normalized event sits in a JSON body, written as dotted paths, and its options schema.

A path is keys joined by dots, each key optionally followed by list indexes:
`order.lines[0].sku`. Keys are 1-64 characters of letters, digits and `_ - $ @ :`; indexes
are 0-999999; a path has at most 16 keys and indexes and 256 characters. A path is compiled
once, when the source is configured, and each read walks at most those 16 steps: a body's
size or depth costs nothing here (load_json_object bounds the parse itself).

The options are checked by `check-config` under `sources.<name>.mapping`, each problem named
by its key; `compile_mapping` turns loaded options into a FieldMapping, whose `read` makes
the ParseResult of one delivery. Messages name the configured path, never a body value.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate, validates_schema

from adapters.payload import described, email_digest, int_id, string_map
from webhooks.core.errors import PayloadError
from webhooks.core.events import (
    MAX_ATTRIBUTE_KEY_CHARS,
    MAX_ITEM_COUNT,
    MAX_LINE_QUANTITY,
    MAX_TIMESTAMP,
    MAX_TOPIC_CHARS,
    EventKind,
    Money,
    NormalizedEvent,
    ParseResult,
    bounded_attributes,
    check_count,
    check_id,
    check_key,
    check_timestamp,
    is_attribute_key,
)
from webhooks.core.money import (
    NO_MINOR_UNIT,
    currency_code,
    from_decimal_string,
    from_minor_units,
    iso_exponent,
)

MAX_PATH_CHARS = 256
MAX_PATH_STEPS = 16
# A list of line items longer than this is not an order: refused before it is walked.
MAX_LINES = 10_000
MAX_TYPES = 100  # event types per list
MAX_MATCH_VALUES = 20
DEFAULT_EXPERIMENTS_ATTRIBUTE = "convert_experiments"
UNITS = ("decimal", "minor")

_KEY = r"[A-Za-z0-9_$@:-]{1,64}"
_SEGMENT = re.compile(rf"({_KEY})((?:\[[0-9]{{1,6}}\])*)", re.ASCII)
_PATH = re.compile(rf"{_KEY}(?:\[[0-9]{{1,6}}\])*(?:\.{_KEY}(?:\[[0-9]{{1,6}}\])*)*", re.ASCII)
_INDEX = re.compile(r"\[([0-9]{1,6})\]", re.ASCII)
# Integers sent as text ("8980", "3"): ASCII digits only ("٣" is a digit to int()).
_DIGITS = re.compile(r"[0-9]{1,18}", re.ASCII)
_EVENT_TYPE = re.compile(r"\A[\x21-\x7e]{1,128}\Z", re.ASCII)

# --- paths ----------------------------------------------------------------------------------


def path_problem(text: object) -> str | None:
    """Why `text` cannot be a path, or None. Never quotes the text (it may be anything)."""
    if not isinstance(text, str):
        return "must be a dotted path such as order.total"
    if len(text) > MAX_PATH_CHARS:
        return f"is longer than {MAX_PATH_CHARS} characters"
    if not _PATH.fullmatch(text):
        return (
            "is not a path: keys of letters, digits and _-$@: joined by dots, each key "
            "optionally followed by list indexes such as [0]"
        )
    if len(_steps(text)) > MAX_PATH_STEPS:
        return f"has more than {MAX_PATH_STEPS} keys and indexes"
    return None


def _steps(text: str) -> tuple[str | int, ...]:
    steps: list[str | int] = []
    for segment in text.split("."):
        match = _SEGMENT.fullmatch(segment)
        assert match is not None  # checked by _PATH
        steps.append(match.group(1))
        steps.extend(int(index) for index in _INDEX.findall(match.group(2)))
    return tuple(steps)


@dataclass(frozen=True)
class Path:
    """A compiled path: its text (for messages) and its steps (keys and list indexes)."""

    text: str
    steps: tuple[str | int, ...]

    @classmethod
    def of(cls, text: str) -> Path:
        problem = path_problem(text)
        if problem is not None:
            raise ValueError(f"path {problem}")
        return cls(text, _steps(text))

    @property
    def field(self) -> str:
        return f"field '{self.text}'"

    def find(self, data: object) -> object:
        """The value at the path, or None when any step is absent or of another type."""
        for step in self.steps:
            if isinstance(step, int):
                if not isinstance(data, list) or step >= len(data):
                    return None
                data = data[step]
            elif isinstance(data, dict):
                data = data.get(step)
            else:
                return None
        return data

    def required(self, data: object) -> object:
        value = self.find(data)
        if value is None:
            raise PayloadError(f"{self.field} is missing")
        return value


def _optional_path(text: str | None) -> Path | None:
    return None if text is None else Path.of(text)


# --- reading values -------------------------------------------------------------------------


def _whole_number(value: object) -> object:
    """An integer sent as text ("8980") as an int; anything else unchanged (for the checks)."""
    if isinstance(value, str) and _DIGITS.fullmatch(value):
        return int(value)
    return value


def read_id(value: object, path: Path) -> str:
    """An order or customer id: a non-empty string (bounded, no control characters) or a
    positive integer below 2**64, as exact text. Not a JSON number with a fraction."""
    if isinstance(value, str):
        return check_id(value, path.field)
    if isinstance(value, int) and not isinstance(value, bool):
        return int_id(value, path.text)
    raise PayloadError(f"{path.field} must be a string or a positive integer")


def read_time(value: object, what: str) -> float:
    """Unix seconds (an integer, or ASCII digits) or an ISO 8601 time (UTC if it names no
    offset); absent: 0.0 (unknown)."""
    value = _whole_number(value)
    if value is None:
        return 0.0
    if isinstance(value, int) and not isinstance(value, bool):
        return check_timestamp(value, what)
    if isinstance(value, Decimal) and value.is_finite():  # 1700000000.25: seconds, not money
        return check_timestamp(float(value), what)
    if isinstance(value, str) and len(value) <= 64:
        try:
            moment = datetime.fromisoformat(value)
            if moment.tzinfo is None:
                moment = moment.replace(tzinfo=UTC)
            seconds = moment.timestamp()
        except (ValueError, OverflowError):
            seconds = -1.0
        if 0 <= seconds <= MAX_TIMESTAMP:
            return seconds
    raise PayloadError(f"{what} must be Unix seconds or an ISO 8601 time from 1970 to 9999")


@dataclass(frozen=True)
class Match:
    """A value at a path compared with a list of JSON scalars (type and value: true is not 1,
    "1" is not 1). An absent value matches nothing."""

    path: Path
    values: tuple[str | int | bool, ...]

    def matches(self, body: object) -> bool:
        value = self.path.find(body)
        return any(type(value) is type(v) and value == v for v in self.values)

    def shown(self, body: object) -> str:
        known = {v for v in self.values if isinstance(v, str)}
        return described(self.path.find(body), known)


@dataclass(frozen=True)
class Items:
    """The item count: an integer at `count`, or the lines of the list at `lines`, each
    line's `quantity` (a path inside the line) summed, or the lines counted."""

    count: Path | None = None
    lines: Path | None = None
    quantity: Path | None = None

    def read(self, body: object) -> int:
        if self.count is not None:
            value = _whole_number(self.count.required(body))
            return check_count(value, self.count.field)
        assert self.lines is not None
        lines = self.lines.required(body)
        if not isinstance(lines, list):
            raise PayloadError(f"{self.lines.field} must be a list")
        if len(lines) > MAX_LINES:
            raise PayloadError(f"{self.lines.field} holds more than {MAX_LINES} lines")
        if self.quantity is None:
            return len(lines)
        return self._sum(lines, self.quantity)

    def _sum(self, lines: list[Any], quantity: Path) -> int:
        assert self.lines is not None
        what = f"field '{self.lines.text}[].{quantity.text}'"
        total = 0
        for line in lines:
            value = _whole_number(quantity.find(line))
            if value is None:  # a line without a quantity (a note, a discount) adds nothing
                continue
            total += check_count(value, what, MAX_LINE_QUANTITY)
        if total > MAX_ITEM_COUNT:  # 10,000 lines of up to 10**6 can pass a 32-bit column
            raise PayloadError(f"{what} adds up to more than {MAX_ITEM_COUNT}")
        return total


# --- the compiled mapping -------------------------------------------------------------------


@dataclass(frozen=True)
class FieldMapping:
    """Where each value of an event is, per source. See the module docstring and
    /work/notes/readme_custom.md for the keys."""

    event_type: Path
    kinds: Mapping[str, EventKind]
    order_id: Path
    amount: Path
    unit: str  # "decimal" | "minor"
    currency: Path | str  # a path, or the fixed ISO code
    items: Items | None = None
    customer_id: Path | None = None
    email: Path | None = None
    experiments: Path | None = None
    experiments_attribute: str = DEFAULT_EXPERIMENTS_ATTRIBUTE
    test: Match | bool = False
    paid: Match | None = None
    occurred_at: Path | None = None
    refund_of: Path | None = None
    refund_id: Path | None = None
    refund_amount: Path | None = None

    def read(self, key: str, body: Mapping[str, Any], platform: str) -> ParseResult:
        """The delivery `key` of `body` as a ParseResult: one event, or none with a reason."""
        value = self.event_type.required(body)
        topic = check_key(value, self.event_type.field, MAX_TOPIC_CHARS)
        kind = self.kinds.get(topic)
        if kind is None:
            return ParseResult(key, topic, reason="this event type is not mapped to a kind")
        if self.paid is not None and kind != EventKind.REFUND and not self.paid.matches(body):
            shown = self.paid.shown(body)
            reason = f"not paid: field '{self.paid.path.text}' is {shown}; not counted"
            return ParseResult(key, topic, reason=reason)
        return ParseResult(key, topic, events=(self._event(kind, body, platform),))

    def _event(self, kind: EventKind, body: Mapping[str, Any], platform: str) -> NormalizedEvent:
        refund = kind == EventKind.REFUND
        currency = self._currency(body)
        amount_path = (self.refund_amount or self.amount) if refund else self.amount
        id_path = (self.refund_id or self.order_id) if refund else self.order_id
        return NormalizedEvent(
            kind=kind,
            platform=platform,
            order_id=read_id(id_path.required(body), id_path),
            amounts={"total": Money(self._amount(amount_path, body, currency), currency)},
            item_count=0 if refund else self._items(body),
            test_mode=self.test if isinstance(self.test, bool) else self.test.matches(body),
            occurred_at=self._occurred_at(body),
            attributes=self._attributes(body),
            customer_id=self._customer_id(body),
            email_digest=email_digest(self.email.find(body)) if self.email else None,
            refund_of=self._refund_of(body) if refund else None,
            raw=body,
        )

    def _currency(self, body: Mapping[str, Any]) -> str:
        if isinstance(self.currency, str):
            return self.currency
        return currency_code(self.currency.required(body), self.currency.text)

    def _amount(self, path: Path, body: Mapping[str, Any], currency: str) -> Decimal:
        value = path.required(body)
        if self.unit == "decimal":
            # A JSON number with a fraction arrives as an exact Decimal (load_json_object),
            # never a float: 49.90 is read as written.
            return from_decimal_string(value, path.text)
        exponent = iso_exponent(currency)
        if exponent is None:
            raise PayloadError(f"currency of {path.field} has no minor unit")
        return from_minor_units(_whole_number(value), exponent, path.text)

    def _items(self, body: Mapping[str, Any]) -> int:
        return 1 if self.items is None else self.items.read(body)

    def _occurred_at(self, body: Mapping[str, Any]) -> float:
        if self.occurred_at is None:
            return 0.0
        return read_time(self.occurred_at.find(body), self.occurred_at.field)

    def _attributes(self, body: Mapping[str, Any]) -> dict[str, str]:
        """A string at the experiments path is stored under `experiments_attribute`; an
        object's string entries are stored as they are (bounded); anything else: none."""
        if self.experiments is None:
            return {}
        value = self.experiments.find(body)
        if isinstance(value, str):
            return bounded_attributes([(self.experiments_attribute, value)])
        return string_map(value)

    def _customer_id(self, body: Mapping[str, Any]) -> str | None:
        if self.customer_id is None:
            return None
        value = self.customer_id.find(body)
        if value is None or value == "":
            return None
        return read_id(value, self.customer_id)

    def _refund_of(self, body: Mapping[str, Any]) -> str:
        assert self.refund_of is not None  # the schema requires it with refund_types
        return read_id(self.refund_of.required(body), self.refund_of)


def compile_mapping(options: Mapping[str, Any]) -> FieldMapping:
    """A FieldMapping from options loaded by MappingOptions (ValueError if they are not)."""
    kinds: dict[str, EventKind] = {}
    for key, kind in KIND_LISTS.items():
        kinds.update(dict.fromkeys(options.get(key, ()), kind))
    experiments = options.get("experiments") or {}
    refund_amount = options.get("refund_amount")
    return FieldMapping(
        event_type=Path.of(options["event_type"]),
        kinds=kinds,
        order_id=Path.of(options["order_id"]),
        amount=Path.of(options["amount"]["path"]),
        unit=options["amount"]["unit"],
        currency=_currency_rule(options["currency"]),
        items=_items_rule(options.get("items")),
        customer_id=_optional_path(options.get("customer_id")),
        email=_optional_path(options.get("email")),
        experiments=_optional_path(experiments.get("path")),
        experiments_attribute=experiments.get("attribute", DEFAULT_EXPERIMENTS_ATTRIBUTE),
        test=_test_rule(options.get("test")),
        paid=_match(options.get("paid")),
        occurred_at=_optional_path(options.get("occurred_at")),
        refund_of=_optional_path(options.get("refund_of")),
        refund_id=_optional_path(options.get("refund_id")),
        refund_amount=_optional_path(refund_amount),
    )


def _currency_rule(options: Mapping[str, Any]) -> Path | str:
    fixed = options.get("fixed")
    return fixed if isinstance(fixed, str) else Path.of(options["path"])


def _items_rule(options: Mapping[str, Any] | None) -> Items | None:
    if not options:
        return None
    return Items(
        _optional_path(options.get("path")),
        _optional_path(options.get("list")),
        _optional_path(options.get("quantity")),
    )


def _test_rule(options: Mapping[str, Any] | None) -> Match | bool:
    if not options:
        return False
    if "fixed" in options:
        return bool(options["fixed"])
    return Match(Path.of(options["path"]), tuple(options.get("values", (True,))))


def _match(options: Mapping[str, Any] | None) -> Match | None:
    if not options:
        return None
    return Match(Path.of(options["path"]), tuple(options["values"]))


KIND_LISTS: Mapping[str, EventKind] = {
    "purchase_types": EventKind.PURCHASE,
    "renewal_types": EventKind.SUBSCRIPTION_RENEWAL,
    "refund_types": EventKind.REFUND,
}


# --- options (validated by check-config) ----------------------------------------------------


def _check_path(value: str) -> None:
    problem = path_problem(value)
    if problem is not None:
        raise ValidationError(problem)


def path_field(**kwargs: Any) -> fields.String:
    return fields.String(validate=_check_path, **kwargs)


class _Strict(Schema):
    class Meta:
        unknown = RAISE


class _Scalar(fields.Field):
    """A JSON scalar to compare with: a string (printable, at most 128 characters), an
    integer or a boolean. Not a float: TOML floats are binary and no flag needs one."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, bool):
            return value
        if isinstance(value, int) and abs(value) < 2**63:
            return value
        if isinstance(value, str) and len(value) <= 128 and value.isprintable():
            return value
        raise ValidationError("must be a string (at most 128 characters), an integer or a boolean")


def _event_type(value: str) -> None:
    if not _EVENT_TYPE.fullmatch(value):
        raise ValidationError("must be 1-128 printable ASCII characters without spaces")


def _type_list(minimum: int = 0, **kwargs: Any) -> fields.List:
    error = f"needs {minimum}-{MAX_TYPES} event types"
    if minimum:
        error += " (none: nothing would count)"
    return fields.List(
        fields.String(validate=_event_type),
        validate=validate.Length(min=minimum, max=MAX_TYPES, error=error),
        **kwargs,
    )


class AmountOptions(_Strict):
    path = path_field(required=True)
    unit = fields.String(
        required=True,
        validate=validate.OneOf(
            UNITS, error='must be "decimal" (49.90) or "minor" (4990 cents, ISO 4217 exponent)'
        ),
    )


class CurrencyOptions(_Strict):
    path = path_field()
    fixed = fields.String(
        validate=validate.Regexp(
            r"\A[A-Z]{3}\Z", error="must be an upper-case ISO 4217 code such as EUR"
        )
    )

    @validates_schema
    def _one(self, data: Mapping[str, Any], **_: Any) -> None:
        _exactly_one(data, ("path", "fixed"))


class ItemsOptions(_Strict):
    path = path_field()  # an integer: the item count
    list = path_field()  # a list of lines
    quantity = path_field()  # inside each line: summed (without it, lines are counted)

    @validates_schema
    def _one(self, data: Mapping[str, Any], **_: Any) -> None:
        _exactly_one(data, ("path", "list"))
        if "quantity" in data and "list" not in data:
            raise ValidationError("is only read with list", "quantity")


class ExperimentsOptions(_Strict):
    path = path_field(required=True)
    attribute = fields.String(
        validate=lambda v: (
            is_attribute_key(v)
            or _fail(f"must be 1-{MAX_ATTRIBUTE_KEY_CHARS} printable characters")
        )
    )


class TestOptions(_Strict):
    path = path_field()
    values = fields.List(
        _Scalar(), validate=validate.Length(min=1, max=MAX_MATCH_VALUES, error="needs 1-20 values")
    )
    fixed = fields.Boolean()

    @validates_schema
    def _one(self, data: Mapping[str, Any], **_: Any) -> None:
        _exactly_one(data, ("path", "fixed"))
        if "values" in data and "path" not in data:
            raise ValidationError("is only read with path", "values")


class MatchOptions(_Strict):
    path = path_field(required=True)
    values = fields.List(
        _Scalar(),
        required=True,
        validate=validate.Length(min=1, max=MAX_MATCH_VALUES, error="needs 1-20 values"),
    )


class MappingOptions(_Strict):
    """`sources.<name>.mapping`. No defaults are filled in: the loaded options are what the
    file says, and compile_mapping applies the defaults."""

    event_type = path_field(required=True)
    purchase_types = _type_list(1, required=True)
    renewal_types = _type_list()
    refund_types = _type_list()
    order_id = path_field(required=True)
    amount = fields.Nested(AmountOptions, required=True)
    currency = fields.Nested(CurrencyOptions, required=True)
    items = fields.Nested(ItemsOptions)
    customer_id = path_field()
    email = path_field()
    experiments = fields.Nested(ExperimentsOptions)
    test = fields.Nested(TestOptions)
    paid = fields.Nested(MatchOptions)
    occurred_at = path_field()
    refund_of = path_field()
    refund_id = path_field()
    refund_amount = path_field()

    @validates_schema
    def _consistent(self, data: Mapping[str, Any], **_: Any) -> None:
        problems: dict[str, Any] = {}
        seen: dict[str, str] = {}
        for key in KIND_LISTS:
            for event_type in data.get(key, ()):
                if event_type in seen:
                    problems[key] = [f"names a type already in {seen[event_type]}"]
                seen.setdefault(event_type, key)
        if data.get("refund_types"):
            if "refund_of" not in data:
                problems["refund_of"] = ["is required with refund_types (the refunded order)"]
        else:
            for key in ("refund_of", "refund_id", "refund_amount"):
                if key in data:
                    problems[key] = ["is only read with refund_types"]
        fixed = data.get("currency", {}).get("fixed")
        if data.get("amount", {}).get("unit") == "minor" and fixed in NO_MINOR_UNIT:
            problems["currency"] = {"fixed": ['has no minor unit: use unit = "decimal"']}
        if problems:
            raise ValidationError(problems)


def _exactly_one(data: Mapping[str, Any], keys: Sequence[str]) -> None:
    given = [key for key in keys if key in data]
    if len(given) != 1:
        names = " or ".join(keys)
        raise ValidationError(f"set exactly one of {names}", given[-1] if given else keys[0])


def _fail(message: str) -> bool:
    raise ValidationError(message)


def load_mapping(options: Mapping[str, Any]) -> FieldMapping:
    """Validate and compile mapping options (a source's, or a sample's): ValueError naming
    the first problem when they cannot work."""
    try:
        loaded = MappingOptions().load(dict(options))
    except ValidationError as exc:
        raise ValueError(f"mapping options do not load: {exc.messages}") from exc
    return compile_mapping(loaded)
