"""The write-ahead log: changes survive a kill, a torn last record is dropped, damage elsewhere
is refused, the metadata delta answers as the applied changes would, and compaction folds the
log into a new generation while changes go on."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from live_index import item, log_add, log_remove, make_index, present

from coins.serve.index.live import begin_compaction, compact
from coins.serve.index.manifest import IndexManifest
from coins.serve.index.store import IndexLoadError, SearchIndex
from coins.serve.index.wal import log_generations, log_path


def test_logged_changes_are_replayed_without_rewriting_the_index_files(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    before = {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()}
    index = SearchIndex.load(index_dir)
    log_add(index, 100)
    log_add(index, 101)
    log_remove(index, 3)
    log_remove(index, 100)
    log_add(index, 3, coarse="back")  # a deleted id added again
    after = {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()}
    assert {k: v for k, v in after.items() if k in before} == before  # nothing rewritten
    assert set(after) - set(before) == {"wal-000001.log"}
    again = SearchIndex.load(index_dir)
    assert again.log.replayed == 5 and again.ntotal == 51
    assert present(again, [100, 101, 3]) == [False, True, True]
    assert again.metadata(np.array([3]))[0]["coarse"] == "back"
    scores, ids = again.search(item(101)[1], 1)
    assert ids[0, 0] == 101 and scores[0, 0] == pytest.approx(1, abs=1e-5)


def test_a_torn_last_record_is_dropped_and_cut_before_the_next_append(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    index = SearchIndex.load(index_dir)
    log_add(index, 100)
    size = log_path(index_dir, 1).stat().st_size
    log_add(index, 101)
    with log_path(index_dir, 1).open("r+b") as f:  # a kill in the middle of the second write
        f.truncate(size + 20)
    index = SearchIndex.load(index_dir)
    assert present(index, [100, 101]) == [True, False]
    log_add(index, 102)  # appended after the cut, not after the torn bytes
    index = SearchIndex.load(index_dir)
    assert present(index, [100, 101, 102]) == [True, False, True]


def test_damage_before_valid_records_is_refused(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    index = SearchIndex.load(index_dir)
    for i in (100, 101, 102):
        log_add(index, i)
    data = bytearray(log_path(index_dir, 1).read_bytes())
    data[40] ^= 0xFF  # inside the first record: acknowledged writes follow it
    log_path(index_dir, 1).write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="damaged record at byte 16"):
        SearchIndex.load(index_dir)


def test_a_kill_after_acknowledgement_loses_nothing(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    code = textwrap.dedent(f"""
        import os, sys
        sys.path.insert(0, {str(Path(__file__).parents[2] / "support")!r})
        from live_index import log_add, log_remove
        from coins.serve.index.store import SearchIndex
        index = SearchIndex.load({str(index_dir)!r})
        for i in range(100, 120):
            log_add(index, i)
        log_remove(index, 7)
        print("acknowledged", flush=True)
        os.kill(os.getpid(), 9)
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == -9 and "acknowledged" in run.stdout, run.stderr
    index = SearchIndex.load(index_dir)
    assert all(present(index, list(range(100, 120)))) and present(index, [7]) == [False]
    assert index.ntotal == 50 + 20 - 1


def test_the_delta_answers_as_a_dict_of_applied_changes(tmp_path) -> None:
    """Random adds, removes and re-adds against a plain dict of rows (the slow reference)."""
    index = SearchIndex.load(make_index(tmp_path / "ix", n=30))
    rng = np.random.default_rng(1)
    ref = {i: f"c{i % 3}" for i in range(30)}
    for step in range(200):
        i = int(rng.integers(60))
        if i in ref and rng.random() < 0.5:
            log_remove(index, i)
            del ref[i]
        elif i not in ref:
            log_add(index, i, coarse=f"c{step % 4}")
            ref[i] = f"c{step % 4}"
    for loaded in (index, SearchIndex.load(index.index_dir)):
        assert loaded.ntotal == len(ref) == loaded._store.count()
        for c in ("c0", "c1", "c2", "c3"):
            expected = sorted(i for i, v in ref.items() if v == c)
            assert loaded.ids_where(coarse=c).tolist() == expected
        ids, coarse, _ = loaded.labels()
        assert dict(zip(ids.tolist(), coarse, strict=True)) == ref
        assert present(loaded, list(range(60))) == [i in ref for i in range(60)]


def test_compact_folds_the_log_into_a_new_generation(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    index = SearchIndex.load(index_dir)
    for i in range(100, 110):
        log_add(index, i)
    log_remove(index, 0)
    report = compact(index_dir)
    assert (report.before, report.after, report.changes, report.ntotal) == (1, 2, 11, 59)
    assert log_generations(index_dir) == []
    again = SearchIndex.load(index_dir)
    assert again.log.replayed == 0 and again.manifest.generation == 2 and again.ntotal == 59
    assert sorted(p.name for p in index_dir.iterdir()) == [
        "index-000002.faiss", "index.json", "metadata-000002.sqlite"
    ]  # fmt: skip
    assert compact(index_dir).after == 2  # nothing to fold


@pytest.mark.parametrize("crash", ["before_commit", "after_commit", "none"])
def test_a_compaction_loses_no_change_made_during_it(tmp_path, crash) -> None:
    """A server's compaction: changes before the rotation go to the new generation, those
    after stay in the new log; a kill at any point (a fresh load) sees them all."""
    index_dir = make_index(tmp_path / "ix", key="IVF4,Flat")
    index = SearchIndex.load(index_dir)
    for i in range(100, 105):
        log_add(index, i)
    log_remove(index, 1)
    job = begin_compaction(index)
    assert job is not None and job.generation == 2
    for i in range(105, 108):  # during the compaction
        log_add(index, i)
    log_remove(index, 100)
    if crash != "before_commit":
        job.commit()
        assert IndexManifest.load(index_dir).generation == 2
        assert log_generations(index_dir) == [2]  # wal-000001 is in generation 2
    if crash == "none":
        job.finish()
        assert index.manifest.generation == 2
        log_add(index, 108)
    expected = [101, 102, 103, 104, 105, 106, 107] + ([108] if crash == "none" else [])
    for loaded in (index, SearchIndex.load(index_dir)):
        assert all(present(loaded, expected)) and present(loaded, [100, 1]) == [False, False]
        assert loaded.ntotal == 50 - 1 + len(expected)
        assert loaded.ids_where(coarse="new").tolist() == expected


def test_a_memory_mapped_index_with_a_log_asks_for_a_compaction(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    log_add(SearchIndex.load(index_dir), 100)
    with pytest.raises(IndexLoadError, match="coins index compact"):
        SearchIndex.load(index_dir, mmap=True)
    compact(index_dir)
    assert SearchIndex.load(index_dir, mmap=True).ntotal == 51


def test_no_log_file_until_a_change(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    SearchIndex.load(index_dir)
    assert log_generations(index_dir) == [] and os.listdir(index_dir)
