"""One writer per index directory: a second writer (another process, or `coins index compact`
and `restore`) fails at once naming the holder's pid; a killed holder blocks no one."""

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from live_index import log_add, make_index, present

from coins.serve.index.live import compact
from coins.serve.index.snapshot import restore, snapshot
from coins.serve.index.store import SearchIndex
from coins.serve.index.writer_lock import LOCK_NAME, IndexLockedError, WriterLock


def hold_in_child(index_dir) -> subprocess.Popen:
    """A Python process that takes `index_dir`'s writer lock, says so, and sleeps."""
    code = textwrap.dedent(f"""
        import sys, time
        from coins.serve.index.writer_lock import WriterLock
        lock = WriterLock({str(index_dir)!r}, "a test writer").acquire()
        print("held", flush=True)
        time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "held"
    return child


def test_a_second_writer_is_refused_naming_the_holder(tmp_path) -> None:
    holder = rf"pid {os.getpid()} \(coins serve, since"
    with WriterLock(tmp_path, "coins serve"), pytest.raises(IndexLockedError, match=holder):
        WriterLock(tmp_path, "coins index compact").acquire()
    assert not (tmp_path / LOCK_NAME).exists()  # a clean release leaves no trace
    with WriterLock(tmp_path, "coins index compact") as again:
        assert again.held


def test_compact_refuses_a_directory_another_process_writes_and_not_a_killed_one(
    tmp_path,
) -> None:
    index_dir = make_index(tmp_path / "ix")
    log_add(SearchIndex.load(index_dir), 100)
    child = hold_in_child(index_dir)
    try:
        with pytest.raises(IndexLockedError, match=rf"pid {child.pid} \(a test writer"):
            compact(index_dir)
        assert SearchIndex.load(index_dir).manifest.generation == 1  # nothing was folded
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert (index_dir / LOCK_NAME).exists()  # left by the killed holder: not in the way
    report = compact(index_dir)
    assert (report.before, report.after, report.changes) == (1, 2, 1)


def test_restore_refuses_a_directory_being_written(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix", n=20)
    snapshot(index_dir, tmp_path / "snap")
    other = make_index(tmp_path / "other", n=40)
    with WriterLock(other, "coins serve"), pytest.raises(IndexLockedError, match="coins serve"):
        restore(tmp_path / "snap", other, force=True)
    back = SearchIndex.load(other)
    assert back.ntotal == 40 and present(back, [39]) == [True]  # untouched
