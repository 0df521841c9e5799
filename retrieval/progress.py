"""Progress a person can see, on a terminal or in a log: one reporter for train, embed, index
and tune.

On a terminal (stderr is a TTY) it draws a tqdm bar. Anywhere else (a log file, a pipe, `nohup`,
CI) a bar draws nothing useful, so it writes one plain line to stderr at most every `every_s`
seconds, and one at each `mark` (an epoch's end, say):

    coins train: epoch 3/10 |  640/1,600 img (40%) | 12.3 img/s | loss 4.1234 | ETA 7m05s

ETA is the work left over the rate so far. Nothing is written when `enabled` is False (a
process of a DDP run other than the first, or a caller that asked for quiet).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from tqdm import tqdm

EVERY_S = 10.0  # seconds between two lines off a terminal


def duration(seconds: float) -> str:
    """4s, 7m05s, 2h03m."""
    s = int(max(seconds, 0) + 0.5)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class Progress:
    """Counts `unit`s of work towards `total` (None: unknown) and reports them."""

    def __init__(
        self,
        what: str,
        total: int | None = None,
        unit: str = "img",
        enabled: bool = True,
        every_s: float = EVERY_S,
        stream: TextIO | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self.stream = sys.stderr if stream is None else stream
        self.enabled, self.clock = enabled, clock
        self.done, self.stage = 0, ""
        self.fields: dict[str, Any] = {}
        self.start = self.last = clock()
        isatty = getattr(self.stream, "isatty", None)
        self.bar: tqdm | None = None
        if enabled and isatty is not None and isatty():
            self.bar = tqdm(
                total=total, desc=what, unit=unit, file=self.stream, dynamic_ncols=True, leave=False
            )

    def update(self, n: int, **fields: Any) -> None:
        """`n` more units done; `fields` (loss=..., say) shown next to the count."""
        self.done += n
        self.fields.update(fields)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if fields:
                self.bar.set_postfix({k: _show(v) for k, v in self.fields.items()}, refresh=False)
            return
        now = self.clock()
        if now - self.last >= self.every_s:
            self._write(self.line())
            self.last = now

    def set_stage(self, stage: str) -> None:
        """What part of the work runs now (`epoch 3/10`), shown before the count."""
        self.stage = stage
        if self.bar is not None:
            self.bar.set_description(f"{self.what} {stage}".strip(), refresh=False)

    def mark(self, message: str = "") -> None:
        """A line now, whatever the time since the last (an epoch's end); `message` after it."""
        if not self.enabled:
            return
        text = self.line() + (f" | {message}" if message else "")
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self._write(text)
        self.last = self.clock()

    def note(self, message: str) -> None:
        """A line of its own (an evaluation's result), between the bar's redraws on a terminal."""
        if not self.enabled:
            return
        text = f"{self.what}: {message}"
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            self._write(text)

    def rate(self) -> float:
        """Units per second so far."""
        return self.done / max(self.clock() - self.start, 1e-9)

    def line(self) -> str:
        """The report as one line: what, stage, count (of total), rate, fields, ETA."""
        parts = [f"{self.what}: {self.stage}".rstrip(": ") if self.stage else self.what]
        count = f"{self.done:,}"
        if self.total:
            count += f"/{self.total:,} {self.unit} ({100 * self.done / self.total:.0f}%)"
        else:
            count += f" {self.unit}"
        parts.append(count)
        rate = self.rate()
        parts.append(f"{rate:.1f} {self.unit}/s")
        parts += [f"{k} {_show(v)}" for k, v in self.fields.items()]
        if self.total and rate > 0:
            parts.append(f"ETA {duration((self.total - self.done) / rate)}")
        parts.append(f"elapsed {duration(self.clock() - self.start)}")
        return " | ".join(parts)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _show(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)
