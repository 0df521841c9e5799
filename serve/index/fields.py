"""Typed fields of the indexed items: a gallery's columns beyond id/path/coarse/fine/split.

A `Schema` maps each field name to one of FIELD_TYPES. It is inferred from a gallery's rows
(csv cells are text: "55.49" is a float, "true" a bool, "2024-05-01" a timestamp) or declared
(`coins index ... --field price:float`), recorded in the index manifest (`fields`), and every
row stored is checked against it: values are stored and returned typed (JSON numbers, booleans,
strings; a timestamp as an ISO 8601 string in UTC, which sorts as time does). A missing value
(an empty csv cell, JSON null) is allowed for every type and matches no condition on the field.

Two ways in: `parse_rows` reads text (csv cells, shard rows from a csv) and typed values alike;
`check_rows` takes JSON values as they are (admin adds): a wrong type raises FieldError naming
the field, and nothing is stored.
"""

from __future__ import annotations

import datetime
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

FieldType = Literal["int", "float", "bool", "string", "timestamp"]
FIELD_TYPES: tuple[FieldType, ...] = ("int", "float", "bool", "string", "timestamp")
RESERVED = ("id", "path", "coarse", "fine", "split")  # columns of their own; never fields
_NAME = re.compile(r"^[^\x00-\x1f\"'\\]{1,128}$")  # inlined in SQL JSON paths: no quotes
_INT = re.compile(r"^[+-]?\d+$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")  # ISO 8601 starts with a date; "2024" alone is an int
_BOOLS = {"true": True, "false": False}
_INFER_ORDER: tuple[FieldType, ...] = ("int", "float", "bool", "timestamp")  # else string


class FieldError(ValueError):
    """A value, field name or schema that does not fit; the message names the field."""


@dataclass(frozen=True)
class Schema:
    """Field name -> type, in column order."""

    fields: dict[str, FieldType]

    def __post_init__(self) -> None:
        for name, kind in self.fields.items():
            check_name(name)
            if kind not in FIELD_TYPES:
                raise FieldError(f"field {name!r}: unknown type {kind!r}, expected {FIELD_TYPES}")

    def describe(self) -> str:
        """`price:float, brand:string`, or `(no fields)`."""
        return ", ".join(f"{n}:{t}" for n, t in self.fields.items()) or "(no fields)"

    def parse_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Rows with their field values typed, read from text where they are strings."""
        return [self._row(row, parse=True) for row in rows]

    def check_rows(self, rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
        """Rows whose field values already have their JSON types (an int is a float too)."""
        return [self._row(row, parse=False) for row in rows]

    def extended(self, rows: Sequence[Mapping[str, Any]]) -> Schema:
        """This schema with the fields `rows` bring that it lacks, typed by their JSON values
        (int, float where any is a float, bool, string): an admin add may bring a new field."""
        found: dict[str, set[str]] = {}
        for row in rows:
            for key, value in row.items():
                if key not in RESERVED and key not in self.fields:
                    found.setdefault(key, set()).add(_json_type(key, value))
        new: dict[str, FieldType] = {}
        for key, kinds in found.items():
            kinds.discard("null")
            if kinds == {"int", "float"}:
                kinds = {"float"}
            if len(kinds) != 1:
                what = "only null" if not kinds else f"values of types {sorted(kinds)}"
                raise FieldError(f"new field {key!r} has {what}; give it one type")
            check_name(key)
            new[key] = _field_type(key, kinds.pop())
        return Schema({**self.fields, **new}) if new else self

    def difference(self, other: Schema) -> str | None:
        """What differs from `other` (fields missing, added, or of another type), or None."""
        parts = []
        missing = [n for n in self.fields if n not in other.fields]
        added = [n for n in other.fields if n not in self.fields]
        if missing:
            parts.append(f"missing field(s) {missing}")
        if added:
            parts.append(f"new field(s) {added}")
        for name, kind in self.fields.items():
            if name in other.fields and other.fields[name] != kind:
                parts.append(f"field {name!r} is {kind} here, {other.fields[name]} there")
        return "; ".join(parts) or None

    def conform(
        self, rows: Sequence[Mapping[str, Any]], declared: Mapping[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Rows joining an index of this schema (an append), typed; FieldError naming the
        difference when their fields (`declared` types, else inferred) are not these."""
        new = infer_schema(rows, declared)
        differ = [n for n in (*self.fields, *new.fields) if (n in self.fields) != (n in new.fields)]
        given = dict(declared or {})
        retyped = [n for n, kind in given.items() if self.fields.get(n, kind) != kind]
        if differ or retyped:
            raise FieldError(
                f"the new items' fields ({new.describe()}) differ from the index's "
                f"({self.describe()}): {self.difference(new)}; append items with the same "
                "fields, or build a new index"
            )
        try:
            return self.parse_rows(rows)
        except FieldError as e:
            raise FieldError(
                f"the new items do not fit the index's fields ({self.describe()}; theirs read "
                f"as {new.describe()}): {e}"
            ) from None

    def _row(self, row: Mapping[str, Any], parse: bool) -> dict[str, Any]:
        out = {}
        for key, value in row.items():
            if key in RESERVED:
                out[key] = value
                continue
            if key not in self.fields:
                raise FieldError(
                    f"item {row.get('id')}: field {key!r} is not in the index's schema "
                    f"({self.describe()})"
                )
            try:
                out[key] = convert(value, self.fields[key], parse)
            except FieldError as e:
                raise FieldError(f"item {row.get('id')}: field {key!r}: {e}") from None
        return out


def check_name(name: str) -> None:
    """A field name must not be (in any case) a reserved column, nor hold quotes."""
    if name.lower() in RESERVED:
        raise FieldError(
            f"field {name!r} is named like the reserved column {name.lower()!r}; rename the "
            f"column (reserved: {list(RESERVED)})"
        )
    if not _NAME.match(name):
        raise FieldError(
            f"field name {name!r}: expected 1 to 128 characters without quotes, backslashes "
            "or control characters"
        )


def convert(value: Any, kind: FieldType, parse: bool = False) -> Any:
    """`value` as a stored value of type `kind` (None stays None); with `parse`, strings are
    read as text. FieldError when it does not fit."""
    if value is None or (parse and isinstance(value, str) and not value.strip()):
        return None
    if parse and isinstance(value, str) and kind != "string":
        return _from_text(value.strip(), kind)
    if kind == "int" and isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind == "float" and isinstance(value, int | float) and not isinstance(value, bool):
        try:
            x = float(value)  # an int past 1e308 overflows
        except OverflowError:
            raise FieldError(
                f"expected a finite float, got an integer of {len(str(value))} digits"
            ) from None
        if not math.isfinite(x):
            raise FieldError(f"expected a finite float, got {value!r}")
        return x
    if kind == "bool" and isinstance(value, bool):
        return value
    if kind == "string" and isinstance(value, str):
        return value
    if kind == "timestamp" and isinstance(value, str):
        return timestamp(value)
    raise FieldError(f"expected {_article(kind)}, got {type(value).__name__} {value!r}")


def timestamp(text: str) -> str:
    """An ISO 8601 date or date-time as the stored form: UTC, `isoformat()` (a time without an
    offset is taken as UTC). These strings sort as the times do."""
    if not _DATE.match(text):
        raise FieldError(f"expected an ISO 8601 timestamp (2024-05-01T12:00:00Z), got {text!r}")
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise FieldError(f"expected an ISO 8601 timestamp, got {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    return t.astimezone(datetime.timezone.utc).isoformat()


def infer_schema(
    rows: Iterable[Mapping[str, Any]], declared: Mapping[str, str] | None = None
) -> Schema:
    """The schema of `rows`' fields: `declared` types win; every other field gets the first of
    int, float, bool, timestamp that all its non-empty values read as, else string."""
    names: dict[str, None] = {}
    values: dict[str, list[Any]] = {}
    for row in rows:
        for key, value in row.items():
            if key in RESERVED:
                continue
            names.setdefault(key)
            if value is not None and not (isinstance(value, str) and not value.strip()):
                values.setdefault(key, []).append(value)
    declared = dict(declared or {})
    fields: dict[str, FieldType] = {}
    for name in [*names, *(n for n in declared if n not in names)]:
        if name in declared:
            fields[name] = _field_type(name, declared[name])
        else:
            fields[name] = _infer(values.get(name, []))
    return Schema(fields)


def parse_declared(specs: Sequence[str]) -> dict[str, str]:
    """`["price:float", "brand:string"]` -> {"price": "float", "brand": "string"}."""
    out: dict[str, str] = {}
    for spec in specs:
        name, sep, kind = spec.rpartition(":")
        if not sep or not name:
            raise FieldError(f"--field {spec!r}: expected NAME:TYPE, TYPE one of {FIELD_TYPES}")
        out[name] = _field_type(name, kind)
    return out


def _field_type(name: str, kind: str) -> FieldType:
    for t in FIELD_TYPES:
        if kind == t:
            return t
    raise FieldError(f"field {name!r}: unknown type {kind!r}, expected one of {FIELD_TYPES}")


def _infer(values: list[Any]) -> FieldType:
    for kind in _INFER_ORDER:
        try:
            for value in values:
                convert(value, kind, parse=True)
        except FieldError:
            continue
        if values:
            return kind
    return "string"


def _from_text(text: str, kind: FieldType) -> Any:
    if kind == "int":
        if not _INT.match(text):
            raise FieldError(f"expected an int, got {text!r}")
        return int(text)
    if kind == "float":
        try:
            x = float(text)
        except ValueError:
            raise FieldError(f"expected a float, got {text!r}") from None
        if not math.isfinite(x):
            raise FieldError(f"expected a finite float, got {text!r}")
        return x
    if kind == "bool":
        if text.lower() not in _BOOLS:
            raise FieldError(f"expected a bool (true or false), got {text!r}")
        return _BOOLS[text.lower()]
    assert kind == "timestamp", kind
    return timestamp(text)


def _json_type(key: str, value: Any) -> str:
    if value is None:
        return "null"
    for python, kind in ((bool, "bool"), (int, "int"), (float, "float"), (str, "string")):
        if isinstance(value, python):
            return kind
    raise FieldError(f"field {key!r}: expected a number, bool or string, got {value!r}")


def _article(kind: str) -> str:
    return f"an {kind}" if kind == "int" else f"a {kind}"
