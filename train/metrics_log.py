"""A JSON-lines log of a run: one record per logged step, epoch and evaluation."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any


class MetricsLog:
    """Appends one JSON object per line, flushed at once so a crash loses nothing written."""

    def __init__(self, path: str | Path, enabled: bool = True) -> None:
        self.path = Path(path)
        self.enabled = enabled

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            f.write(json.dumps({"time": round(time.time(), 3), **record}) + "\n")


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a metrics log, in order."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
