"""The progress reporter: a line at most every 10 s off a terminal, a bar on one."""

from __future__ import annotations

import io

from coins.retrieval.progress import Progress, duration


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_off_a_terminal_one_line_per_10_s_with_rate_loss_and_eta() -> None:
    out, clock = io.StringIO(), Clock()
    report = Progress("coins train", total=1000, stream=out, clock=clock)
    report.set_stage("epoch 1/2")
    for _ in range(20):  # 20 updates of 10 images, one per second
        clock.now += 1
        report.update(10, loss=2.5)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2  # at 10 s and at 20 s, not at every update
    assert lines[0] == (
        "coins train: epoch 1/2 | 100/1,000 img (10%) | 10.0 img/s | loss 2.5000 | ETA 1m30s"
        " | elapsed 10s"
    )
    clock.now += 1
    report.update(10)
    report.mark("epoch 1 done")  # at once, whatever the time since the last line
    assert out.getvalue().splitlines()[-1].endswith("| epoch 1 done")
    assert "210/1,000 img (21%)" in out.getvalue().splitlines()[-1]


def test_without_a_total_no_eta() -> None:
    out, clock = io.StringIO(), Clock()
    report = Progress("coins embed", stream=out, clock=clock, every_s=5)
    clock.now = 5
    report.update(50)
    assert out.getvalue() == "coins embed | 50 img | 10.0 img/s | elapsed 5s\n"


def test_disabled_writes_nothing() -> None:
    out, clock = io.StringIO(), Clock()
    report = Progress("coins train", total=10, enabled=False, stream=out, clock=clock)
    clock.now = 60
    report.update(5)
    report.mark("x")
    report.note("y")
    assert out.getvalue() == "" and report.done == 5


def test_on_a_terminal_a_bar() -> None:
    out = Terminal()
    with Progress("coins embed", total=4, stream=out) as report:
        assert report.bar is not None
        report.update(2, loss=1.0)
        report.note("half way")
    text = out.getvalue()
    assert "half way" in text and "\r" in text  # tqdm redraws the line in place


def test_duration() -> None:
    assert [duration(s) for s in (4.4, 65, 7325)] == ["4s", "1m05s", "2h02m"]
