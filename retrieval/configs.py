"""Typed configs read back from plain dicts (JSON, YAML, checkpoints): unknown keys fail loudly."""

from __future__ import annotations

import dataclasses
from typing import Any


def check_fields(cls: type, d: dict[str, Any], what: str) -> None:
    """Raise ValueError naming the keys of `d` that are not fields of dataclass `cls`."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; expected some of {sorted(known)}")
