"""Part of the store: a segment's AST (`mailer/segments.py`) as one SQL condition on `subscribers`.

Every value of the segment is a bind parameter (attribute names too: JSON paths and keys are bound),
never text pasted into SQL, so quotes, backslashes, `%`, `_` or `'); DROP TABLE …` in a segment are
plain characters compared literally. The condition is never NULL (each test is COALESCEd to false),
so `not` is two-valued: `city != "Lyon"` includes people without a city, as `segments.matches` says.

SQLite and PostgreSQL read JSON differently; `_SQLite` and `_PostgreSQL` give the same few views of
an attribute (its type, its text, its number, its items). SQLite's built-in lower() folds ASCII
only, so SQLite connections get `mailer_lower` (Python's str.lower, what PostgreSQL's lower() does
with a UTF-8 ctype), `mailer_number` and `mailer_has_item` (`register_sqlite_functions`).
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from .. import segments as seg
from .schema import list_members, subscribers

# segments.NUMBER_RE and DATE_PREFIX_RE, as PostgreSQL regular expressions / a SQLite GLOB
NUMBER_PATTERN = r"^ *[-+]?[0-9]{1,15}(\.[0-9]{1,15})? *$"
DATE_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}"
DATE_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]*"


def register_sqlite_functions(dbapi_conn) -> None:  # noqa: ANN001 - a sqlite3.Connection
    """The functions segments need on a SQLite connection (called on every new connection)."""
    dbapi_conn.create_function("mailer_lower", 1, _lower, deterministic=True)
    dbapi_conn.create_function("mailer_number", 1, _number, deterministic=True)
    dbapi_conn.create_function("mailer_has_item", 2, _has_item, deterministic=True)


def _lower(value):  # noqa: ANN001, ANN202
    return seg.fold(value) if isinstance(value, str) else value


def _number(value):  # noqa: ANN001, ANN202
    return seg.as_number(value) if isinstance(value, str) else None


def _has_item(text, value) -> int:  # noqa: ANN001
    return int(isinstance(text, str) and isinstance(value, str) and seg.fold(value) in seg.items_of(text))


def condition(segment: seg.Segment, dialect: str) -> sa.ColumnElement[bool]:
    """The WHERE condition (on `subscribers`) of the people in `segment`, for `dialect` ("sqlite" or
    "postgresql"). Raises ValueError for another dialect."""
    views = {"sqlite": _SQLite, "postgresql": _PostgreSQL}.get(dialect)
    if views is None:
        raise ValueError(f"segments need SQLite or PostgreSQL, not {dialect}")
    return _Compiler(views(), segment.zone).node(segment.root)


class _SQLite:
    def fold(self, value):  # noqa: ANN001, ANN201
        return sa.func.mailer_lower(value)

    def contains(self, text, needle):  # noqa: ANN001, ANN201
        return sa.func.instr(self.fold(text), self.fold(needle)) > 0

    def domain(self):  # noqa: ANN201
        return sa.func.substr(subscribers.c.email, sa.func.instr(subscribers.c.email, "@") + 1)

    @staticmethod
    def _path(key: str):  # noqa: ANN205
        return sa.bindparam(None, '$."' + key + '"', type_=sa.String)

    def type_is(self, key: str, kind: str):  # noqa: ANN201
        names = {"string": ("text",), "number": ("integer", "real"), "array": ("array",)}[kind]
        return sa.func.json_type(subscribers.c.attributes, self._path(key)).in_(names)

    def text(self, key: str):  # noqa: ANN201
        return sa.func.json_extract(subscribers.c.attributes, self._path(key))

    def number(self, key: str):  # noqa: ANN201
        return sa.case((self.type_is(key, "number"), self.text(key)),
                       (self.type_is(key, "string"), sa.func.mailer_number(self.text(key))))

    def day(self, key: str):  # noqa: ANN201
        text = self.text(key)
        return sa.case((sa.and_(self.type_is(key, "string"), text.op("GLOB")(DATE_GLOB)), sa.func.substr(text, 1, 10)))

    def present(self, key: str):  # noqa: ANN201
        kind = sa.func.json_type(subscribers.c.attributes, self._path(key))
        text = self.text(key)
        return sa.and_(kind.is_not(None), kind != "null",
                       sa.not_(sa.and_(kind == "text", text == "")),
                       sa.not_(sa.and_(kind.in_(("array", "object")), text.in_(("[]", "{}")))))

    def has_item(self, key: str, value: str):  # noqa: ANN201
        elements = sa.func.json_each(subscribers.c.attributes, self._path(key)).table_valued("value", "type")
        in_array = sa.exists().select_from(elements).where(
            elements.c.type == "text", self.fold(elements.c.value) == self.fold(sa.bindparam(None, value)))
        in_text = sa.func.mailer_has_item(self.text(key), sa.bindparam(None, value)) == 1
        return sa.case((self.type_is(key, "array"), in_array), (self.type_is(key, "string"), in_text), else_=False)


class _PostgreSQL:
    def fold(self, value):  # noqa: ANN001, ANN201
        return sa.func.lower(value)

    def contains(self, text, needle):  # noqa: ANN001, ANN201
        return sa.func.strpos(self.fold(text), self.fold(needle)) > 0

    def domain(self):  # noqa: ANN201
        return sa.func.substr(subscribers.c.email, sa.func.strpos(subscribers.c.email, "@") + 1)

    @staticmethod
    def _json(key: str):  # noqa: ANN205
        return subscribers.c.attributes[key]  # attributes -> %(param)s

    def type_is(self, key: str, kind: str):  # noqa: ANN201
        return sa.func.json_typeof(self._json(key)) == kind

    def text(self, key: str):  # noqa: ANN201
        return self._json(key).as_string()  # attributes ->> %(param)s

    def number(self, key: str):  # noqa: ANN201
        text = self.text(key)
        return sa.case((self.type_is(key, "number"), sa.cast(text, sa.Float)),
                       (sa.and_(self.type_is(key, "string"), text.regexp_match(NUMBER_PATTERN)),
                        sa.cast(sa.func.btrim(text), sa.Float)))

    def day(self, key: str):  # noqa: ANN201
        text = self.text(key)
        return sa.case((sa.and_(self.type_is(key, "string"), text.regexp_match(DATE_PATTERN)),
                        sa.func.substr(text, 1, 10)))

    def present(self, key: str):  # noqa: ANN201
        value = self._json(key)
        empties = [sa.cast(sa.bindparam(None, text, type_=sa.Text), postgresql.JSONB)
                   for text in ("null", '""', "[]", "{}")]
        return sa.and_(value.is_not(None), sa.cast(value, postgresql.JSONB).not_in(empties))

    def has_item(self, key: str, value: str):  # noqa: ANN201
        elements = sa.func.json_array_elements(self._json(key)).table_valued("value")
        element_text = elements.c.value.op("#>>")(sa.literal_column("'{}'::text[]"))
        in_array = sa.exists().select_from(elements).where(
            sa.func.json_typeof(elements.c.value) == "string",
            self.fold(element_text) == self.fold(sa.bindparam(None, value)))
        part = sa.func.regexp_split_to_table(self.fold(self.text(key)), sa.bindparam(None, ",")).column_valued("part")
        in_text = sa.exists(sa.select(sa.literal(1)).where(
            sa.func.btrim(part, sa.bindparam(None, ' "')) == self.fold(sa.bindparam(None, value))))
        return sa.case((self.type_is(key, "array"), in_array), (self.type_is(key, "string"), in_text), else_=False)


class _Compiler:
    def __init__(self, views, zone: str) -> None:  # noqa: ANN001
        self.views, self.zone = views, zone

    def node(self, node: seg.Node) -> sa.ColumnElement[bool]:
        if isinstance(node, seg.And):
            return sa.and_(*(self.node(item) for item in node.items))
        if isinstance(node, seg.Or):
            return sa.or_(*(self.node(item) for item in node.items))
        if isinstance(node, seg.Not):
            return sa.not_(self.node(node.item))
        return sa.func.coalesce(self.test(node), sa.false())

    def text_column(self, field: seg.Field):  # noqa: ANN201
        return self.views.domain() if field.name == "domain" else subscribers.c[field.name]

    def test(self, node: seg.Node) -> sa.ColumnElement[bool]:
        views, field = self.views, node.field
        if isinstance(node, seg.Exists):
            if field.kind == "text":
                return self.text_column(field) != ""
            if field.kind == "date":
                return subscribers.c[seg.DATE_FIELDS[field.name]].is_not(None)
            if field.kind == "set":
                return sa.exists().where(list_members.c.subscriber_id == subscribers.c.id)
            return views.present(field.name)
        if isinstance(node, seg.Has):
            if field.kind == "set":
                return sa.exists().where(list_members.c.subscriber_id == subscribers.c.id,
                                         list_members.c.list_name == sa.bindparam(None, node.value.value))
            return views.has_item(field.name, node.value.value)
        if isinstance(node, seg.Contains):
            needle = sa.bindparam(None, node.value.value, type_=sa.String)
            if field.kind == "text":
                return views.contains(self.text_column(field), needle)
            return sa.and_(views.type_is(field.name, "string"), views.contains(views.text(field.name), needle))
        if isinstance(node, seg.In):
            if node.values[0].kind == "string":
                column = self.text_column(field) if field.kind == "text" else views.text(field.name)
                folded = [views.fold(sa.bindparam(None, value.value, type_=sa.String)) for value in node.values]
                test = views.fold(column).in_(folded)
                return test if field.kind == "text" else sa.and_(views.type_is(field.name, "string"), test)
            return views.number(field.name).in_([sa.bindparam(None, v.value, type_=sa.Float) for v in node.values])
        assert isinstance(node, seg.Compare)
        literal, op = node.value, node.op
        if field.kind == "text":
            return views.fold(self.text_column(field)) == views.fold(sa.bindparam(None, literal.value, type_=sa.String))
        if field.kind == "date":
            column = subscribers.c[seg.DATE_FIELDS[field.name]]
            if literal.kind == "datetime":
                return _operate(column, op, sa.bindparam(None, literal.value, type_=column.type))
            start, end = (sa.bindparam(None, bound, type_=column.type) for bound in seg.day_bounds(literal.value, self.zone))
            return {"=": sa.and_(column >= start, column < end), "<": column < start, "<=": column < end,
                    ">": column >= end, ">=": column >= start}[op]
        if literal.kind == "string":
            return sa.and_(views.type_is(field.name, "string"),
                           views.fold(views.text(field.name)) == views.fold(sa.bindparam(None, literal.value, type_=sa.String)))
        if literal.kind == "number":
            return _operate(views.number(field.name), op, sa.bindparam(None, literal.value, type_=sa.Float))
        return _operate(views.day(field.name), op, sa.bindparam(None, literal.value.isoformat(), type_=sa.String))


def _operate(left, op: str, right):  # noqa: ANN001, ANN202
    return {"=": left == right, "<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
