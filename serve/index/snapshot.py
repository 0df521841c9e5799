"""Snapshots of a live index directory, and restoring one.

A snapshot is a folder holding a committed generation (its manifest and files), the write-ahead
logs on top of it up to their last complete record, and `snapshot.json`: the sha256 and size of
every file. Generation files are written once and never changed, so they are hard-linked where
the file system allows (copied otherwise); logs grow, so they are copied.

**[design]** Consistency without stopping the server: the manifest is read first and its files
linked; a commit that deletes them meanwhile makes the snapshot start over. Logs are read after,
oldest first: changes are appended in order and a rotation only starts a later log, so what is
read is a prefix of the sequence of changes on top of that generation. A record being written
is incomplete, and left out (it was not acknowledged yet when the copy was made). So a snapshot
takes no writer lock; a restore takes the target's (writer_lock.py).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from coins.retrieval.atomic import file_sha256, write_json
from coins.serve.index.manifest import FILE_SUFFIX, MANIFEST_NAME, IndexLoadError, IndexManifest
from coins.serve.index.wal import log_generations, log_path, read_log
from coins.serve.index.writer_lock import LOCK_NAME, WriterLock

SNAPSHOT_NAME = "snapshot.json"
ATTEMPTS = 5  # tries to copy a generation that a concurrent commit keeps replacing


@dataclass
class SnapshotReport:
    path: Path
    generation: int
    files: int
    linked: int  # hard links among them
    log_records: int  # changes in the logs copied


def snapshot(index_dir: str | Path, out: str | Path) -> SnapshotReport:
    """Copy the index in `index_dir` (served or not) to the new folder `out`, consistently."""
    index_dir, out = Path(index_dir), Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; snapshot into a new folder")
    for _ in range(ATTEMPTS):
        out.mkdir(parents=True, exist_ok=True)
        report = _try_snapshot(index_dir, out)
        if report is not None:
            return report
        for path in out.iterdir():  # a commit removed a file being linked: start over
            path.unlink()
    raise IndexLoadError(f"{index_dir}: new generations kept replacing the files being copied")


def _try_snapshot(index_dir: Path, out: Path) -> SnapshotReport | None:
    text = (index_dir / MANIFEST_NAME).read_text() if (index_dir / MANIFEST_NAME).is_file() else ""
    if not text:
        raise IndexLoadError(f"{index_dir}: no {MANIFEST_NAME}; is it an index directory?")
    manifest = IndexManifest.from_dict(json.loads(text))
    linked = 0
    sums = {r.name: {"sha256": r.sha256, "bytes": r.bytes} for r in manifest.files.values()}
    for record in manifest.files.values():
        try:
            linked += _link_or_copy(index_dir / record.name, out / record.name)
        except FileNotFoundError:
            return None
        record.check(out / record.name, record.name, "full")
    records = 0
    found = [g for g in log_generations(index_dir) if g >= manifest.generation]
    for n, g in enumerate(found):
        source = log_path(index_dir, g)
        data = source.read_bytes()  # one read: the bytes the records are parsed from
        (out / source.name).write_bytes(data)
        contents = read_log(out / source.name, g, newest=n == len(found) - 1)
        with (out / source.name).open("r+b") as f:
            f.truncate(contents.valid_bytes)  # an append in progress is left out
        records += len(contents.changes)
    (out / MANIFEST_NAME).write_text(text)
    for p in _files(out):
        if p.name not in sums:  # the logs and the manifest (the rest was checked above)
            sums[p.name] = {"sha256": file_sha256(p), "bytes": p.stat().st_size}
    write_json(out / SNAPSHOT_NAME, {"generation": manifest.generation, "files": sums})
    return SnapshotReport(out, manifest.generation, len(sums), linked, records)


def restore(snapshot_dir: str | Path, index_dir: str | Path, force: bool = False) -> SnapshotReport:
    """Copy a snapshot into `index_dir` (which must be empty, or with `force` hold an index
    to replace), check every checksum, and load it to prove it loads. Holds the directory's
    writer lock: IndexLockedError while a server with admin routes writes to it."""
    from coins.serve.index.store import SearchIndex

    snapshot_dir, index_dir = Path(snapshot_dir), Path(index_dir)
    sums = _verified(snapshot_dir)
    index_dir.mkdir(parents=True, exist_ok=True)
    with WriterLock(index_dir, "coins index restore"):  # no server writes to what is replaced
        if any(p.name != LOCK_NAME for p in index_dir.iterdir()):
            if not force:
                raise FileExistsError(
                    f"{index_dir} is not empty; pass --force to replace its index"
                )
            _clear_index(index_dir)
        linked = 0
        for name in sorted(sums, key=lambda n: n == MANIFEST_NAME):  # the manifest (commit) last
            if name.startswith("wal-"):
                shutil.copyfile(snapshot_dir / name, index_dir / name)  # logs grow: never shared
            else:
                linked += _link_or_copy(snapshot_dir / name, index_dir / name)
        index = SearchIndex.load(index_dir, verify="full")
    generation = index.manifest.generation
    records = index.log.replayed if index.log is not None else 0
    return SnapshotReport(index_dir, generation, len(sums), linked, records)


def _verified(snapshot_dir: Path) -> dict[str, dict[str, int | str]]:
    """The files of a snapshot, after checking each one's size and sha256."""
    path = snapshot_dir / SNAPSHOT_NAME
    if not path.is_file():
        raise IndexLoadError(f"{snapshot_dir}: no {SNAPSHOT_NAME}; not a `coins index snapshot`")
    sums: dict[str, dict[str, int | str]] = json.loads(path.read_text())["files"]
    for name, expected in sums.items():
        file = snapshot_dir / name
        if not file.is_file() or file_sha256(file) != expected["sha256"]:
            raise IndexLoadError(f"{file}: missing or changed since the snapshot (sha256)")
    return sums


def _clear_index(index_dir: Path) -> None:
    """Remove an index's files (and only those) from `index_dir`."""
    if not (index_dir / MANIFEST_NAME).is_file():
        raise FileExistsError(f"{index_dir} holds files but no index; refusing to clear it")
    for path in index_dir.iterdir():
        name = path.name
        ours = name == MANIFEST_NAME or name.startswith(tuple(f".{r}" for r in FILE_SUFFIX))
        ours |= name.split("-")[0] in (*FILE_SUFFIX, "wal")
        if ours and path.is_file():
            path.unlink()


def _link_or_copy(source: Path, target: Path) -> int:
    """Hard-link `source` (1), or copy it where links cannot be made (0)."""
    try:
        os.link(source, target)
        return 1
    except FileNotFoundError:
        raise
    except OSError:  # another file system, or links not supported
        shutil.copyfile(source, target)
        return 0


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name != SNAPSHOT_NAME)
