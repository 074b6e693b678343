"""Segments: the small filter language of issue.toml's `segment = "…"`, parsed into an AST.

    segment = 'language = "en" and (city in ("Lyon", "Paris") or tags has "premium") and joined >= 2026-01-01'

A hand-written recursive-descent parser, because the language is the product: its error messages
(one line, the column, what was expected) and its type rules are ours to decide, and it is about
150 lines — a grammar library (lark) would add a dependency and still need all the type checks.
Longer than ~400 lines because the grammar (documented here), the parser and the reference
evaluation must agree, and they are read together. A top-level module (shared like `statuses`):
`content` parses it at load, the store compiles it, `sending` freezes it, `subscribers` checks it. The AST is turned into SQL with
bind parameters only by the store (`store/segments.py`), and evaluated in plain Python by
`matches` (the second implementation the tests compare the SQL with).

Grammar (keywords are case-insensitive; `and` binds tighter than `or`; `not` tighter than both):

    segment    := or
    or         := and ("or" and)*
    and        := unary ("and" unary)*
    unary      := "not" unary | "(" or ")" | "exists" field | test
    test       := field ("=" | "!=" | "<" | "<=" | ">" | ">=") value
                | field ["not"] "in" "(" value ("," value)* [","] ")"
                | field "has" string
                | field ["not"] "contains" string
    field      := name | "attributes." name          name: [A-Za-z_][A-Za-z0-9_]*
    value      := string | number | date | datetime
    string     := "…" | '…'   (the quote doubled inside: 'O''Brien'; backslashes are plain characters)
    number     := [-]digits[.digits]
    date       := YYYY-MM-DD          datetime := YYYY-MM-DDTHH:MM[:SS][Z|±HH:MM]

Fields: `email`, `domain` (after the @), `name`, `language`, `source` (text); `joined` (when the
person was added), `confirmed` (when they confirmed) (dates); `lists` (`lists has "vip"`); any other
name is an attribute (imported CSV columns, `first_name`, `timezone`…), `attributes.NAME` when it
collides with a field. Text compares case-insensitively (`=`, `!=`, `in`, `contains`, `has`; list
names exactly, as issue.toml's `list`). An attribute compares by the literal's type: a string with a
text value, a number with a number or a text that is one (`"42"`), a date with a text starting
YYYY-MM-DD. A date against `joined`/`confirmed` means that whole day in MAILER_TIMEZONE. `!=`,
`not in`, `not contains` are the negations of their positive forms, so they include people who
lack the attribute. `has` matches an element of a JSON list, or an item of a comma-separated text
(`"premium, vip"`; Mailchimp's `"a","b"`). `exists x` is true when x is set and not empty.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Iterable, Union
from zoneinfo import ZoneInfo

from .errors import MailerError

TEXT_FIELDS = ("email", "domain", "name", "language", "source")
DATE_FIELDS = {"joined": "created_at", "confirmed": "confirmed_at"}
SET_FIELDS = ("lists",)
BUILTIN_FIELDS = (*TEXT_FIELDS, *DATE_FIELDS, *SET_FIELDS)
# subscriber columns that are no segment field, with why (a clearer error than "unknown field")
NOT_FIELDS = {
    "status": "only active subscribers ever receive an issue, so status is not a segment field",
    "created": "the date someone was added is `joined`",
    "created_at": "the date someone was added is `joined`",
    "list": "named lists are `lists has \"NAME\"` (or issue.toml's `list`)",
}
COMPARISONS = ("=", "!=", "<", "<=", ">", ">=")
KEYWORDS = frozenset({"and", "or", "not", "in", "has", "contains", "exists"})
# What counts as a number inside a text attribute (the same pattern in SQL: store.segments.NUMBER_PATTERN);
# at most 15 digits each side, so every engine reads it as the same double.
NUMBER_RE = re.compile(r" *[-+]?[0-9]{1,15}(?:\.[0-9]{1,15})? *")
DATE_PREFIX_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


class SegmentError(MailerError):
    """A segment that cannot be used: `column` (1-based) in `text`, and why."""

    exit_code = 3

    def __init__(self, text: str, column: int, reason: str) -> None:
        self.text, self.column, self.reason = text, column, reason
        super().__init__(f"column {column}: {reason}")

    def caret(self) -> str:
        """The segment and a caret under the column (two lines, for a terminal or a page)."""
        return f"{self.text}\n{' ' * (self.column - 1)}^"


# ----- the AST -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Field:
    name: str
    kind: str  # "text" | "date" | "set" | "attribute"
    column: int

    def __str__(self) -> str:
        return self.name if self.kind != "attribute" or self.name not in BUILTIN_FIELDS else f"attributes.{self.name}"


@dataclass(frozen=True)
class Literal:
    kind: str  # "string" | "number" | "date" | "datetime"
    value: object  # str | float | date | datetime (aware)
    column: int


@dataclass(frozen=True)
class Compare:
    field: Field
    op: str
    value: Literal


@dataclass(frozen=True)
class In:
    field: Field
    values: tuple[Literal, ...]


@dataclass(frozen=True)
class Has:
    field: Field
    value: Literal


@dataclass(frozen=True)
class Contains:
    field: Field
    value: Literal


@dataclass(frozen=True)
class Exists:
    field: Field


@dataclass(frozen=True)
class Not:
    item: "Node"


@dataclass(frozen=True)
class And:
    items: tuple["Node", ...]


@dataclass(frozen=True)
class Or:
    items: tuple["Node", ...]


Node = Union[Compare, In, Has, Contains, Exists, Not, And, Or]


@dataclass(frozen=True)
class Segment:
    """A parsed segment: its text, its AST, and the zone its dates are days of."""

    text: str
    root: Node
    zone: str

    def attributes(self) -> list[Field]:
        """The attribute fields it names, in order (for the unknown-field check)."""
        return [field for field in fields_of(self.root) if field.kind == "attribute"]


def fields_of(node: Node) -> Iterable[Field]:
    if isinstance(node, (And, Or)):
        for item in node.items:
            yield from fields_of(item)
    elif isinstance(node, Not):
        yield from fields_of(node.item)
    else:
        yield node.field


# ----- the tokenizer -----------------------------------------------------------------------------
_TOKEN = re.compile(r"""
    (?P<space>\s+)
  | (?P<datetime>[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}(?::[0-9]{2})?(?:Z|[+-][0-9]{2}:[0-9]{2})?(?![\w:.+-]))
  | (?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2}(?![\w:.+-]))
  | (?P<number>-?[0-9]+(?:\.[0-9]+)?(?![\w.-]))
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)?)
  | (?P<op>!=|<=|>=|=|<|>|\(|\)|,)
  | (?P<quote>["'])
""", re.VERBOSE)


@dataclass(frozen=True)
class _Token:
    kind: str  # name | op | string | number | date | datetime | end
    text: str
    column: int
    value: object = None


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    index = 0
    while index < len(text):
        char = text[index]
        _refuse_control(text, index)
        match = _TOKEN.match(text, index)
        if match is None:
            raise SegmentError(text, index + 1, f"unexpected {char!r}")
        kind = match.lastgroup
        if kind == "space":
            index = match.end()
            continue
        if kind == "quote":
            value, end = _string(text, index)
            out.append(_Token("string", text[index:end], index + 1, value))
            index = end
            continue
        out.append(_Token(kind, match.group(), index + 1))
        index = match.end()
    out.append(_Token("end", "", len(text) + 1))
    return out


def _refuse_control(text: str, index: int) -> None:
    char = text[index]
    if (ord(char) < 32 and char != "\t") or 0x7F <= ord(char) < 0xA0:
        raise SegmentError(text, index + 1, f"control character U+{ord(char):04X}: a segment is one line of "
                                            "printable text (no stored value holds one)")


def _string(text: str, start: int) -> tuple[str, int]:
    """A quoted string starting at `start`: its value and the index after its closing quote."""
    quote, chars, index = text[start], [], start + 1
    while index < len(text):
        char = text[index]
        _refuse_control(text, index)
        if char == quote:
            if text[index + 1:index + 2] == quote:  # doubled: one quote character
                chars.append(quote)
                index += 2
                continue
            return "".join(chars), index + 1
        chars.append(char)
        index += 1
    raise SegmentError(text, start + 1, f"string not closed (no matching {quote})")


# ----- the parser --------------------------------------------------------------------------------
class _Parser:
    def __init__(self, text: str, zone: ZoneInfo) -> None:
        self.text, self.zone = text, zone
        self.tokens = _tokens(text)
        self.index = 0

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def fail(self, reason: str, token: _Token | None = None) -> SegmentError:
        return SegmentError(self.text, (token or self.token).column, reason)

    def keyword(self, *words: str) -> bool:
        token = self.token
        if token.kind == "name" and token.text.lower() in words:
            self.index += 1
            return True
        return False

    def op(self, symbol: str) -> bool:
        if self.token.kind == "op" and self.token.text == symbol:
            self.index += 1
            return True
        return False

    def describe(self, token: _Token) -> str:
        return "the end of the segment" if token.kind == "end" else repr(token.text)

    def parse(self) -> Node:
        if self.token.kind == "end":
            raise self.fail("empty segment (remove the line to send to everyone)")
        node = self.or_()
        if self.token.kind != "end":
            raise self.fail(f"expected `and`, `or` or the end, found {self.describe(self.token)}")
        return node

    def or_(self) -> Node:
        items = [self.and_()]
        while self.keyword("or"):
            items.append(self.and_())
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_(self) -> Node:
        items = [self.unary()]
        while self.keyword("and"):
            items.append(self.unary())
        return items[0] if len(items) == 1 else And(tuple(items))

    def unary(self) -> Node:
        if self.keyword("not"):
            return Not(self.unary())
        if self.op("("):
            opening = self.tokens[self.index - 1]
            node = self.or_()
            if not self.op(")"):
                raise self.fail(f"expected ')' to close the '(' of column {opening.column}, "
                                f"found {self.describe(self.token)}")
            return node
        if self.keyword("exists"):
            return Exists(self.field())
        return self.test()

    def field(self) -> Field:
        token = self.token
        if token.kind != "name" or token.text.lower() in KEYWORDS:
            raise self.fail(f"expected a field name, found {self.describe(token)}")
        self.index += 1
        name = token.text
        if "." in name:
            prefix, _, rest = name.partition(".")
            if prefix.lower() != "attributes":
                raise self.fail(f"unknown field {name!r} (an attribute is written NAME or attributes.NAME)", token)
            return Field(rest, "attribute", token.column)
        lowered = name.lower()
        if lowered in TEXT_FIELDS:
            return Field(lowered, "text", token.column)
        if lowered in DATE_FIELDS:
            return Field(lowered, "date", token.column)
        if lowered in SET_FIELDS:
            return Field(lowered, "set", token.column)
        if NOT_FIELDS.get(lowered):
            raise self.fail(f"{name}: {NOT_FIELDS[lowered]}", token)
        return Field(name, "attribute", token.column)

    def test(self) -> Node:
        field = self.field()
        token = self.token
        if token.kind == "op" and token.text in COMPARISONS:
            self.index += 1
            value = self.value()
            self.check_compare(field, token.text, value, token)
            if token.text == "!=":
                return Not(Compare(field, "=", value))
            return Compare(field, token.text, value)
        negated = self.keyword("not")
        if self.keyword("in"):
            node = self.in_(field)
        elif self.keyword("contains"):
            value = self.value()
            if field.kind not in ("text", "attribute") or value.kind != "string":
                raise self.fail(f"`contains` takes a text field and a quoted string", token)
            node = Contains(field, value)
        elif not negated and self.keyword("has"):
            value = self.value()
            if field.kind == "text" or field.kind == "date":
                raise self.fail(f"`has` is for lists and list-like attributes (tags has \"x\"), "
                                f"not {field.name}: use =", token)
            if value.kind != "string":
                raise self.fail("`has` takes a quoted string", self.tokens[self.index - 1])
            node = Has(field, value)
        else:
            expected = "`in` or `contains`" if negated else "=, !=, <, <=, >, >=, in, not in, has or contains"
            raise self.fail(f"expected {expected} after {field.name}, found {self.describe(self.token)}")
        return Not(node) if negated else node

    def in_(self, field: Field) -> In:
        if field.kind not in ("text", "attribute"):
            raise self.fail(f"`in` is for text fields and attributes, not {field.name}", self.tokens[self.index - 1])
        if not self.op("("):
            raise self.fail(f"expected '(' after in, found {self.describe(self.token)}")
        values = []
        while True:
            if self.token.kind == "op" and self.token.text == ")" and values:
                self.index += 1
                break
            value = self.value()
            if value.kind not in ("string", "number") or (field.kind == "text" and value.kind != "string"):
                raise SegmentError(self.text, value.column, f"`in` takes quoted strings"
                                   + ("" if field.kind == "text" else " or numbers"))
            if values and value.kind != values[0].kind:
                raise SegmentError(self.text, value.column, "the values of `in` must all be strings or all numbers")
            values.append(value)
            if self.op(")"):
                break
            if not self.op(","):
                raise self.fail(f"expected ',' or ')' in the list of values, found {self.describe(self.token)}")
        return In(field, tuple(values))

    def value(self) -> Literal:
        token = self.token
        column = token.column
        if token.kind == "string":
            self.index += 1
            return Literal("string", token.value, column)
        if token.kind == "number":
            self.index += 1
            return Literal("number", float(token.text), column)
        if token.kind == "date":
            self.index += 1
            try:
                return Literal("date", date.fromisoformat(token.text), column)
            except ValueError:
                raise self.fail(f"{token.text} is no date", token) from None
        if token.kind == "datetime":
            self.index += 1
            try:
                moment = datetime.fromisoformat(token.text.replace("Z", "+00:00"))
            except ValueError:
                raise self.fail(f"{token.text} is no date and time", token) from None
            if moment.tzinfo is None:
                from .wallclock import localize  # the one rule for wall times a DST change skips or repeats
                moment = localize(moment, self.zone)
            return Literal("datetime", moment.astimezone(timezone.utc), column)
        if token.kind == "name":
            raise self.fail(f"expected a value, found {token.text!r} (quote text: \"{token.text}\")")
        raise self.fail(f"expected a value (\"text\", a number or a date), found {self.describe(token)}")

    def check_compare(self, field: Field, op: str, value: Literal, op_token: _Token) -> None:
        ordering = op not in ("=", "!=")
        if field.kind == "set":
            raise self.fail(f"{field.name} is a set of names: write {field.name} has \"NAME\"", op_token)
        if field.kind == "text":
            if value.kind != "string":
                raise SegmentError(self.text, value.column, f"{field.name} is text: quote the value "
                                                            f"(\"{self.tokens[self.index - 1].text}\")")
            if ordering:
                raise self.fail(f"{op} compares dates and numbers; {field.name} is text", op_token)
        elif field.kind == "date":
            if value.kind not in ("date", "datetime"):
                raise SegmentError(self.text, value.column, f"{field.name} is a date: write it like 2026-01-31")
        else:  # attribute
            if value.kind == "datetime":
                raise SegmentError(self.text, value.column, "attributes compare by day: write the date alone "
                                                            "(2026-01-31)")
            if ordering and value.kind == "string":
                raise SegmentError(self.text, value.column, f"{op} compares dates and numbers, not text")


def parse(text: str, zone: ZoneInfo | str = "UTC") -> Segment:
    """Parse a segment. Raises SegmentError (column, reason) on a syntax or type error. `zone` (an
    IANA name or ZoneInfo: MAILER_TIMEZONE) is where dates are days and where a date and time
    without an offset is read."""
    zone_info = ZoneInfo(zone) if isinstance(zone, str) else zone
    return Segment(text, _Parser(text, zone_info).parse(), zone_info.key)


def day_bounds(day: date, zone: str) -> tuple[datetime, datetime]:
    """[start, end) of `day` in `zone`, in UTC (a 23- or 25-hour day across a DST change)."""
    from .wallclock import localize
    info = ZoneInfo(zone)
    start = localize(datetime.combine(day, time(0, 0)), info)
    end = localize(datetime.combine(day + timedelta(days=1), time(0, 0)), info)
    return start.astimezone(timezone.utc), end.astimezone(timezone.utc)


def check_fields(segment: Segment, attribute_names: Iterable[str]) -> None:
    """Raise SegmentError at the first attribute no subscriber has (a typo: `citty`), naming the
    close ones and what is in use. `attribute_names`: every attribute name in the store."""
    import difflib
    known = set(attribute_names) | {"first_name", "last_name", "timezone"}
    for field in segment.attributes():
        if field.name not in known:
            near = difflib.get_close_matches(field.name, sorted(known | set(BUILTIN_FIELDS)), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            in_use = ", ".join(sorted(attribute_names)) or "none"
            raise SegmentError(segment.text, field.column,
                               f"unknown field {field.name!r}: {hint}fields are {', '.join(BUILTIN_FIELDS)}; "
                               f"attributes in use: {in_use}")


# ----- the second implementation: plain Python over one subscriber -------------------------------
def fold(text: str) -> str:
    """How text compares (case-insensitively): lower-cased, as SQL's lower() on PostgreSQL with a UTF-8
    ctype and our SQLite function do it."""
    return text.lower()


def as_number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str) and NUMBER_RE.fullmatch(value):
        return float(value)
    return None


def as_day(value: object) -> str | None:
    if isinstance(value, str) and DATE_PREFIX_RE.match(value):
        return value[:10]
    return None


def items_of(value: object) -> list[str]:
    """The items `has` looks at: the strings of a JSON list, or the comma-separated parts of a text,
    each stripped of spaces and double quotes."""
    if isinstance(value, list):
        return [fold(item) for item in value if isinstance(item, str)]
    if isinstance(value, str):
        return [part.strip(' "') for part in fold(value).split(",")]
    return []


def _compare(left: object, op: str, right: object) -> bool:
    return {"=": left == right, "<": left < right, "<=": left <= right,  # type: ignore[operator]
            ">": left > right, ">=": left >= right}[op]  # type: ignore[operator]


def matches(segment: Segment, person: dict) -> bool:
    """Whether `person` is in the segment: a dict with email, name, language, source (str),
    created_at, confirmed_at (aware datetimes or None), attributes (dict), lists (set of names).
    The reference the SQL of the store is tested against."""
    return _eval(segment.root, person, segment.zone)


def _text_of(field: Field, person: dict) -> str:
    if field.name == "domain":
        return person["email"].partition("@")[2]
    return person[field.name] or ""


def _eval(node: Node, person: dict, zone: str) -> bool:
    if isinstance(node, And):
        return all(_eval(item, person, zone) for item in node.items)
    if isinstance(node, Or):
        return any(_eval(item, person, zone) for item in node.items)
    if isinstance(node, Not):
        return not _eval(node.item, person, zone)
    field = node.field
    attributes = person.get("attributes") or {}
    if isinstance(node, Exists):
        if field.kind == "text":
            return _text_of(field, person) != ""
        if field.kind == "date":
            return person[DATE_FIELDS[field.name]] is not None
        if field.kind == "set":
            return bool(person["lists"])
        value = attributes.get(field.name)
        return value is not None and value != "" and value != [] and value != {}
    if isinstance(node, Has):
        if field.kind == "set":
            return node.value.value in person["lists"]
        return fold(node.value.value) in items_of(attributes.get(field.name))
    if isinstance(node, Contains):
        text = _text_of(field, person) if field.kind == "text" else attributes.get(field.name)
        return isinstance(text, str) and fold(node.value.value) in fold(text)
    if isinstance(node, In):
        return any(_eval(Compare(field, "=", value), person, zone) for value in node.values)
    assert isinstance(node, Compare)
    literal = node.value
    if field.kind == "text":
        return fold(_text_of(field, person)) == fold(literal.value)
    if field.kind == "date":
        moment = person[DATE_FIELDS[field.name]]
        if moment is None:
            return False
        if literal.kind == "datetime":
            return _compare(moment, node.op, literal.value)
        start, end = day_bounds(literal.value, zone)
        return {"=": start <= moment < end, "<": moment < start, "<=": moment < end,
                ">": moment >= end, ">=": moment >= start}[node.op]
    value = attributes.get(field.name)
    if literal.kind == "string":
        return isinstance(value, str) and fold(value) == fold(literal.value)
    if literal.kind == "number":
        number = as_number(value)
        return number is not None and _compare(number, node.op, literal.value)
    day = as_day(value)
    return day is not None and _compare(day, node.op, literal.value.isoformat())
