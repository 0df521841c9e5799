"""The index's ReadWriteLock: many readers at once, a writer alone, and a waiting writer served
before readers that come after it (it cannot starve)."""

from __future__ import annotations

import threading
import time

from coins.serve.api.state import ReadWriteLock


def started(target) -> threading.Thread:
    t = threading.Thread(target=target, daemon=True)
    t.start()
    return t


def test_readers_share_and_a_writer_waits_for_the_last_one() -> None:
    lock, events = ReadWriteLock(), []
    first, second = lock.read(), lock.read()
    first.__enter__()
    second.__enter__()  # two readers at once: no deadlock

    def write() -> None:
        with lock.write():
            events.append("write")

    writer = started(write)
    time.sleep(0.1)
    assert lock.busy() and events == []  # waiting for both readers
    first.__exit__(None, None, None)
    time.sleep(0.1)
    assert events == []  # one reader left: still waiting
    second.__exit__(None, None, None)
    writer.join(5)
    assert events == ["write"] and not lock.busy()


def test_a_waiting_writer_goes_before_later_readers() -> None:
    lock, events = ReadWriteLock(), []
    holder = lock.read()
    holder.__enter__()

    def write() -> None:
        with lock.write():
            events.append("write")
            time.sleep(0.05)

    def read() -> None:
        with lock.read():
            events.append("read")

    writer = started(write)
    time.sleep(0.1)
    reader = started(read)  # comes after the waiting writer: waits for it
    time.sleep(0.1)
    assert events == []
    holder.__exit__(None, None, None)
    writer.join(5)
    reader.join(5)
    assert events == ["write", "read"]


def test_many_threads_never_see_a_writer_beside_a_reader() -> None:
    lock, state, errors = ReadWriteLock(), {"readers": 0, "writer": False}, []
    guard = threading.Lock()

    def read() -> None:
        for _ in range(200):
            with lock.read():
                with guard:
                    state["readers"] += 1
                    if state["writer"]:
                        errors.append("reader beside a writer")
                with guard:
                    state["readers"] -= 1

    def write() -> None:
        for _ in range(50):
            with lock.write():
                with guard:
                    if state["readers"] or state["writer"]:
                        errors.append("writer beside another holder")
                    state["writer"] = True
                time.sleep(0.0005)
                with guard:
                    state["writer"] = False

    threads = [started(read) for _ in range(4)] + [started(write) for _ in range(2)]
    for t in threads:
        t.join(30)
    assert not any(t.is_alive() for t in threads) and errors == []
