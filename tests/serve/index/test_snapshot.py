"""Snapshots of a live index: a copy that loads with every logged change, hard links for the
immutable files, checksums verified on restore, and no overwrite of an index without --force."""

import numpy as np
import pytest
from live_index import log_add, make_index, present

from coins.serve.index.snapshot import SNAPSHOT_NAME, restore, snapshot
from coins.serve.index.store import IndexLoadError, SearchIndex
from coins.serve.index.wal import log_path


def test_a_snapshot_restores_the_index_with_its_logged_changes(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    index = SearchIndex.load(index_dir)
    for i in (100, 101):
        log_add(index, i)
    with log_path(index_dir, 1).open("ab") as f:  # an append in progress: not acknowledged
        f.write(b"CREC\x00\x10")
    report = snapshot(index_dir, tmp_path / "snap")
    assert report.log_records == 2 and report.linked == 2  # the FAISS and SQLite files
    log_add(index, 102)  # after the snapshot: not in it (the live log, cut first)
    restored = restore(tmp_path / "snap", tmp_path / "back")
    assert restored.generation == 1 and restored.log_records == 2
    back = SearchIndex.load(tmp_path / "back")
    assert present(back, [100, 101, 102]) == [True, True, False] and back.ntotal == 52
    log_add(back, 103)  # the restored index takes changes; the snapshot does not change
    assert SearchIndex.load(tmp_path / "back").ntotal == 53
    assert restore(tmp_path / "snap", tmp_path / "again").log_records == 2


def test_restore_refuses_a_non_empty_folder_unless_forced(tmp_path) -> None:
    snapshot(make_index(tmp_path / "ix", n=20), tmp_path / "snap")
    other = make_index(tmp_path / "other", n=40)
    log_add(SearchIndex.load(other), 500)
    with pytest.raises(FileExistsError, match="--force"):
        restore(tmp_path / "snap", other)
    restore(tmp_path / "snap", other, force=True)
    back = SearchIndex.load(other)
    assert back.ntotal == 20 and present(back, [500]) == [False]  # the old log is gone too


def test_restore_refuses_a_changed_snapshot(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    log_add(SearchIndex.load(index_dir), 100)
    snapshot(index_dir, tmp_path / "snap")
    log = tmp_path / "snap" / "wal-000001.log"
    data = bytearray(log.read_bytes())
    data[-1] ^= 1
    log.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match="changed since the snapshot"):
        restore(tmp_path / "snap", tmp_path / "back")
    assert (tmp_path / "snap" / SNAPSHOT_NAME).is_file()


def test_a_snapshot_needs_an_empty_target(tmp_path) -> None:
    index_dir = make_index(tmp_path / "ix")
    (tmp_path / "snap").mkdir()
    (tmp_path / "snap" / "x").write_text("x")
    with pytest.raises(FileExistsError):
        snapshot(index_dir, tmp_path / "snap")
    assert np.array_equal(SearchIndex.load(index_dir).ids_where(), np.arange(50))
