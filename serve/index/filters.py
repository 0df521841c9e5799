"""Filters over the items' fields, classes and ids, in Qdrant's shape, compiled to SQL.

One JSON format, used by `SearchIndex.search(..., filter=)`, `coins search --filter` and (wired
by the API) `POST /v1/search`:

    {"must":     [condition, ...],   # every one holds
     "should":   [condition, ...],   # at least one holds (when given)
     "must_not": [condition, ...]}   # none holds

A condition is one of

    {"key": "brand", "match": {"value": "acme"}}          # equality
    {"key": "brand", "match": {"any": ["acme", "zed"]}}   # any of
    {"key": "price", "range": {"gte": 10, "lt": 50}}      # gt, gte, lt, lte (numbers, timestamps)
    {"has_id": [17, 42]}                                  # these ids
    {"must": [...], "should": [...], "must_not": [...]}   # a nested filter

`key` is a field of the index's schema (fields.py), or `coarse` / `fine` (class names; an int
is a class number, resolved by the caller's `classes`), or `id`. A missing value matches no
condition (so `must_not` keeps the items without the field). Filters nest at most MAX_DEPTH
levels (the top filter is level 1). `compile_filter` checks a filter against the schema and
gives an SQL WHERE over the metadata table `items`; FilterError names what is wrong: an unknown
field, a value of the wrong type, a range on a string or bool field, a malformed filter.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    Tag,
    ValidationError,
    model_validator,
)

from coins.serve.index.fields import FieldError, FieldType, Schema, convert

MAX_DEPTH = 4  # nesting levels of filters, the top one included
MAX_CONDITIONS = 1024  # conditions in one filter, nested ones included
MAX_VALUES = 100_000  # values in one `any` or `has_id` list

Scalar = StrictBool | StrictInt | StrictFloat | StrictStr  # bool first: JSON true is no int


class FilterError(ValueError):
    """A filter that is malformed or does not fit the index; the message names what."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MatchValue(_Strict):
    value: Scalar


class MatchAny(_Strict):
    any: list[Scalar]


class Range(_Strict):
    gt: StrictInt | StrictFloat | StrictStr | None = None
    gte: StrictInt | StrictFloat | StrictStr | None = None
    lt: StrictInt | StrictFloat | StrictStr | None = None
    lte: StrictInt | StrictFloat | StrictStr | None = None

    @model_validator(mode="after")
    def _some_bound(self) -> Range:
        if all(v is None for v in (self.gt, self.gte, self.lt, self.lte)):
            raise ValueError("a range needs at least one of gt, gte, lt, lte")
        return self


class FieldCondition(_Strict):
    key: StrictStr
    match: MatchValue | MatchAny | None = None
    range: Range | None = None

    @model_validator(mode="after")
    def _one_test(self) -> FieldCondition:
        if (self.match is None) == (self.range is None):
            raise ValueError(f"condition on {self.key!r}: expected exactly one of match, range")
        return self


class HasId(_Strict):
    has_id: list[StrictInt]


def _condition_kind(c: Any) -> str | None:
    """Which condition a JSON object is, by its keys (so an error names that one's fields)."""
    if isinstance(c, Mapping):
        return "field" if "key" in c else "has_id" if "has_id" in c else "filter"
    kinds: dict[type, str] = {FieldCondition: "field", HasId: "has_id", Filter: "filter"}
    return kinds.get(type(c))


Condition = Annotated[
    Union[  # noqa: UP007 (a forward reference)
        Annotated[FieldCondition, Tag("field")],
        Annotated[HasId, Tag("has_id")],
        Annotated["Filter", Tag("filter")],
    ],
    Discriminator(_condition_kind),
]


class Filter(_Strict):
    """must / should / must_not lists of conditions; an empty filter keeps every item. As a
    field of a request model, it refuses nesting past MAX_DEPTH and more than MAX_CONDITIONS
    conditions itself (a ValidationError, so FastAPI's 422)."""

    must: list[Condition] | None = None
    should: list[Condition] | None = None
    must_not: list[Condition] | None = None

    @model_validator(mode="after")
    def _bounded(self) -> Filter:
        depth, conditions = _size(self)
        if depth > MAX_DEPTH:
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
        if conditions > MAX_CONDITIONS:
            raise ValueError(f"more than {MAX_CONDITIONS} conditions")
        return self


def _size(f: Filter) -> tuple[int, int]:
    """Nesting depth (this filter: 1) and conditions of a validated filter."""
    depth, conditions = 1, 0
    for c in (*(f.must or ()), *(f.should or ()), *(f.must_not or ())):
        conditions += 1
        if isinstance(c, Filter):
            d, n = _size(c)
            depth, conditions = max(depth, d + 1), conditions + n
    return depth, conditions


def parse_filter(raw: str | Mapping[str, Any] | Filter | None) -> Filter | None:
    """A filter from JSON text, a decoded JSON object or a Filter; FilterError when malformed
    (depth and size are checked before pydantic sees it)."""
    if raw is None or isinstance(raw, Filter):
        return raw
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as e:
            raise FilterError(f"filter: not valid JSON ({e})") from None
    if not isinstance(raw, Mapping):
        raise FilterError(f"filter: expected a JSON object, got {type(raw).__name__}")
    _check_shape(raw)
    try:
        return Filter.model_validate(raw)
    except ValidationError as e:
        raise FilterError(f"filter: {_first_error(e)}") from None


def label_filter(
    coarse: list[str | int] | None = None,
    fine: list[str | int] | None = None,
    ids: list[int] | None = None,
) -> Filter | None:
    """The older filter of the API and `coins search` (`coarse`, `fine` any-of lists, `ids`;
    every one given must hold) as a Filter, or None when nothing is given."""
    must: list[Condition] = []
    for key, labels in (("coarse", coarse), ("fine", fine)):
        if labels is not None:
            must.append(FieldCondition(key=key, match=MatchAny(any=list(labels))))
    if ids is not None:
        must.append(HasId(has_id=list(ids)))
    return Filter(must=must) if must else None


@dataclass
class Where:
    """An SQL boolean expression over `items` and its parameters."""

    sql: str
    args: list[Any] = field(default_factory=list)


ClassNames = Callable[[str, int], str]  # (level, number) -> class name; raises FilterError


def compile_filter(f: Filter, schema: Schema | None, classes: ClassNames | None = None) -> Where:
    """The SQL WHERE (over `items`) of the items `f` keeps, its values checked against
    `schema` (None: an index without one, whose extra columns cannot be filtered on)."""
    return _Compiler(schema or Schema({}), classes, schema is None).filter(f)


def field_expression(name: str) -> str:
    """The SQL of a field's value: the expression the metadata's field indexes are built on."""
    return f"json_extract(extra, '$.\"{name}\"')"


# ---- internals ----------------------------------------------------------------------------


@dataclass
class _Compiler:
    schema: Schema
    classes: ClassNames | None
    legacy: bool  # the index records no schema

    def filter(self, f: Filter) -> Where:
        parts: list[Where] = []
        parts += [self.condition(c) for c in f.must or ()]
        if f.should:
            should = [self.condition(c) for c in f.should]
            parts.append(_join(should, " OR "))
        # NULL (a missing value) counts as "does not hold": NOT keeps those items
        parts += [
            Where(f"NOT COALESCE({w.sql}, 0)", w.args)
            for w in map(self.condition, f.must_not or ())
        ]
        return _join(parts, " AND ") if parts else Where("1")

    def condition(self, c: Condition) -> Where:
        if isinstance(c, Filter):
            return self.filter(c)
        if isinstance(c, HasId):
            return Where("id IN (SELECT value FROM json_each(?))", [json.dumps(c.has_id)])
        column, kind = self.column(c.key)
        if c.range is not None:
            return self.range(c.key, column, kind, c.range)
        assert c.match is not None
        if isinstance(c.match, MatchValue):
            return Where(f"{column} = ?", [self.value(c.key, kind, c.match.value)])
        values = [self.value(c.key, kind, v) for v in c.match.any]
        return Where(f"{column} IN (SELECT value FROM json_each(?))", [json.dumps(values)])

    def column(self, key: str) -> tuple[str, str]:
        """The SQL of `key`'s value and its type (a field type, or class / id)."""
        if key in ("coarse", "fine"):
            return key, key
        if key == "id":
            return "id", "id"
        if key not in self.schema.fields:
            why = (
                "this index records no field schema (built before typed fields): rebuild it "
                "to filter on its extra columns"
                if self.legacy
                else f"its fields are {self.schema.describe()}"
            )
            raise FilterError(f"filter: unknown field {key!r}; coarse, fine and id work, {why}")
        return field_expression(key), self.schema.fields[key]

    def value(self, key: str, kind: str, v: Any) -> Any:
        if kind in ("coarse", "fine"):
            if isinstance(v, int) and not isinstance(v, bool):
                if self.classes is None:
                    raise FilterError(f"filter: {key} class number {v}: give a class name")
                return self.classes(kind, v)
            if not isinstance(v, str):
                raise FilterError(f"filter: {key} expects class names, got {v!r}")
            return v
        if kind == "id":
            if isinstance(v, bool) or not isinstance(v, int):
                raise FilterError(f"filter: id expects integers, got {v!r}")
            return _int64(key, v)
        try:
            out = convert(v, _field_type(kind))
        except FieldError as e:
            raise FilterError(f"filter: field {key!r} ({kind}): {e}") from None
        if isinstance(out, bool):
            return int(out)  # JSON true reads back as 1
        return _int64(key, out) if isinstance(out, int) else out

    def range(self, key: str, column: str, kind: str, r: Range) -> Where:
        if kind not in ("int", "float", "timestamp", "id"):
            raise FilterError(
                f"filter: range on field {key!r} of type {kind}; ranges take int, float, "
                "timestamp fields and id"
            )
        ops = {"gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
        parts = []
        for name, op in ops.items():
            bound = getattr(r, name)
            if bound is None:
                continue
            if not (kind in ("int", "id") and isinstance(bound, float)):
                bound = self.value(key, kind, bound)  # a float bound on ints compares as is
            parts.append(Where(f"{column} {op} ?", [bound]))
        return _join(parts, " AND ")


def _int64(key: str, v: int) -> int:
    """`v` when SQLite can bind it (a 64-bit integer); past that, no stored value equals it."""
    if not -(2**63) <= v < 2**63:
        raise FilterError(f"filter: {key!r}: {v} is outside the 64-bit integers stored")
    return v


def _field_type(kind: str) -> FieldType:
    assert kind in ("int", "float", "bool", "string", "timestamp"), kind
    return kind  # type: ignore[return-value]


def _join(parts: list[Where], op: str) -> Where:
    if len(parts) == 1:
        return parts[0]
    return Where(
        "(" + op.join(f"({p.sql})" for p in parts) + ")", [a for p in parts for a in p.args]
    )


def _check_shape(raw: Mapping[str, Any]) -> None:
    """Depth and size of a decoded filter, iteratively (no recursion on hostile input)."""
    stack: list[tuple[Any, int]] = [(raw, 1)]
    conditions = 0
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise FilterError(f"filter: nested deeper than {MAX_DEPTH} levels")
        for clause in ("must", "should", "must_not"):
            items = node.get(clause)
            if not isinstance(items, list):
                continue  # pydantic names the wrong type
            conditions += len(items)
            if conditions > MAX_CONDITIONS:
                raise FilterError(f"filter: more than {MAX_CONDITIONS} conditions")
            for c in items:
                if not isinstance(c, Mapping):
                    continue
                if {"must", "should", "must_not"} & set(c):
                    stack.append((c, depth + 1))
                _check_values(c)


def _check_values(c: Mapping[str, Any]) -> None:
    lists = [c.get("has_id")]
    match = c.get("match")
    if isinstance(match, Mapping):
        lists.append(match.get("any"))
    for values in lists:
        if isinstance(values, list) and len(values) > MAX_VALUES:
            raise FilterError(f"filter: a list of more than {MAX_VALUES} values")


def _first_error(e: ValidationError) -> str:
    err = e.errors()[0]
    where = ".".join(str(p) for p in err["loc"]) or "filter"
    return f"{where}: {err['msg']}"
