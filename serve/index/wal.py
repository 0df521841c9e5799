"""The write-ahead log of an index directory: the admin adds and deletes made since a generation.

`wal-GGGGGG.log` holds the changes made on top of generation G, one record per request, each
fsynced before the request is acknowledged. Loading generation G replays its log, then the log
of any later generation not committed yet (a compaction that rotated the log and died before
its commit), on top of G's files. A commit of generation T holds every change of the logs
g < T, which are deleted with the old generation's files: the log position a generation
includes is the boundary between two log files.

A log is a 16-byte header (b"COINSWAL", u32 format, u32 generation) then records:

    b"CREC" | u32 payload bytes | u32 crc32(payload) | payload
    payload = u32 n_json | JSON {"seq", "op", "n", "dim", "rows"} | ids int64 [n]
              | vectors float32 [n, dim] (adds only)

**[design]** Only an unacknowledged write can be torn, and only at the end of the newest log: a
damaged record there with no valid record after it is dropped (and cut off before the next
append). A damaged record anywhere else is corruption and an `IndexLoadError`, as dropping it
would lose acknowledged writes.
"""

from __future__ import annotations

import json
import os
import re
import struct
import threading
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal

import numpy as np

from coins.serve.index.manifest import IndexLoadError

FILE_MAGIC = b"COINSWAL"
RECORD_MAGIC = b"CREC"
FORMAT = 1
_FILE_HEADER = struct.Struct("<8sII")  # magic, format, generation
_RECORD_HEADER = struct.Struct("<4sII")  # magic, payload bytes, crc32 of the payload
_JSON_LEN = struct.Struct("<I")
_LOG_FILE = re.compile(r"^wal-(\d{6})\.log$")

Op = Literal["add", "remove"]


@dataclass
class Change:
    """One admin request: `add` ids with vectors and metadata rows, or `remove` ids."""

    op: Op
    ids: np.ndarray  # int64 [n]
    vectors: np.ndarray | None = None  # float32 [n, D], adds only
    rows: list[dict[str, Any]] = field(default_factory=list)  # adds only, one per id
    seq: int = 0  # position in the sequence of all logged changes, set by `append`


@dataclass
class LogContents:
    """The valid records of one log file, and where they end."""

    changes: list[Change]
    valid_bytes: int  # header and valid records; a torn tail starts here
    torn_bytes: int = 0  # dropped after them


def log_path(index_dir: str | Path, generation: int) -> Path:
    return Path(index_dir) / f"wal-{generation:06d}.log"


def log_generations(index_dir: str | Path) -> list[int]:
    """Generations of the log files in `index_dir`, ascending."""
    names = (p.name for p in Path(index_dir).iterdir())
    return sorted(int(m.group(1)) for name in names if (m := _LOG_FILE.match(name)))


def encode(change: Change) -> bytes:
    """One record: header, then the checksummed payload."""
    ids = np.ascontiguousarray(change.ids, dtype=np.int64)
    assert ids.ndim == 1, ids.shape
    dim = 0
    blobs = [ids.tobytes()]
    if change.op == "add":
        assert change.vectors is not None and len(change.vectors) == len(ids) == len(change.rows)
        xb = np.ascontiguousarray(change.vectors, dtype=np.float32)  # [n, D]
        dim = int(xb.shape[1])
        blobs.append(xb.tobytes())
    head = {"seq": change.seq, "op": change.op, "n": len(ids), "dim": dim, "rows": change.rows}
    text = json.dumps(head, sort_keys=True).encode()
    payload = b"".join([_JSON_LEN.pack(len(text)), text, *blobs])
    return _RECORD_HEADER.pack(RECORD_MAGIC, len(payload), zlib.crc32(payload)) + payload


def _decode(payload: bytes) -> Change:
    (n_json,) = _JSON_LEN.unpack_from(payload)
    head = json.loads(payload[_JSON_LEN.size : _JSON_LEN.size + n_json])
    at = _JSON_LEN.size + n_json
    n, dim = int(head["n"]), int(head["dim"])
    ids = np.frombuffer(payload, dtype=np.int64, count=n, offset=at).copy()
    vectors = None
    if head["op"] == "add":
        at += 8 * n
        vectors = np.frombuffer(payload, np.float32, count=n * dim, offset=at).reshape(n, dim)
    return Change(head["op"], ids, vectors, list(head["rows"]), int(head["seq"]))


def _record_at(data: bytes, at: int) -> tuple[Change, int] | None:
    """The record starting at `at` and where it ends, or None if it is incomplete or damaged."""
    if at + _RECORD_HEADER.size > len(data):
        return None
    magic, size, crc = _RECORD_HEADER.unpack_from(data, at)
    end = at + _RECORD_HEADER.size + size
    if magic != RECORD_MAGIC or end > len(data):
        return None
    payload = data[at + _RECORD_HEADER.size : end]
    if zlib.crc32(payload) != crc:
        return None
    try:
        return _decode(payload), end
    except (ValueError, KeyError, TypeError) as e:  # a valid checksum over a bad record: a bug
        raise IndexLoadError(f"record at byte {at}: checksum valid but unreadable ({e})") from e


def read_log(path: Path, generation: int, newest: bool) -> LogContents:
    """The records of a log file. A damaged tail of the `newest` log (no valid record after
    it) is a torn, unacknowledged write: dropped. Any other damage raises IndexLoadError."""
    data = path.read_bytes()
    if len(data) < _FILE_HEADER.size and newest:  # created, then killed before its header
        return LogContents([], 0, len(data))
    magic, fmt, gen = _FILE_HEADER.unpack_from(data) if len(data) >= 16 else (b"", 0, 0)
    if magic != FILE_MAGIC or fmt != FORMAT or gen != generation:
        raise IndexLoadError(
            f"{path}: not a format-{FORMAT} write-ahead log of generation {generation} "
            f"(header {magic!r}, format {fmt}, generation {gen})"
        )
    changes: list[Change] = []
    at = _FILE_HEADER.size
    while at < len(data):
        found = _record_at(data, at)
        if found is None:
            break
        changes.append(found[0])
        at = found[1]
    if at < len(data) and not (newest and not _any_record_after(data, at)):
        raise IndexLoadError(
            f"{path}: damaged record at byte {at} of {len(data)} followed by valid records "
            "(or in an older log): acknowledged writes would be lost; restore a snapshot"
        )
    return LogContents(changes, at, len(data) - at)


def _any_record_after(data: bytes, at: int) -> bool:
    """Whether a valid record starts anywhere after byte `at`."""
    start = data.find(RECORD_MAGIC, at + 1)
    while start != -1:
        if _record_at(data, start) is not None:
            return True
        start = data.find(RECORD_MAGIC, start + 1)
    return False


class WriteAheadLog:
    """The newest log of an index directory, appended to by one writer.

    `append` writes a record and fsyncs it: once it returns, the change survives a crash.
    `rotate` starts the log of a later generation (a compaction's); `committed` follows a
    commit that included every change so far (the next append starts that generation's log).
    """

    def __init__(
        self, index_dir: Path, generation: int, valid_bytes: int | None = None, seq: int = 0
    ) -> None:
        self.index_dir = Path(index_dir)
        self.generation = generation  # of the log appended to
        self.seq = seq  # of the last record written or replayed
        self.records = 0  # in the current log file
        self.bytes = 0  # of the current log file
        self._valid = valid_bytes  # where the existing file's valid records end (torn tail cut)
        self._file: BinaryIO | None = None
        self._broken: str | None = None  # why appending stopped (a failed write not cut off)
        self._mutex = threading.Lock()

    @property
    def path(self) -> Path:
        return log_path(self.index_dir, self.generation)

    def append(self, change: Change) -> int:
        """Write `change` with the next sequence number and fsync it; returns that number."""
        with self._mutex:
            if self._broken is not None:
                raise OSError(f"{self.path}: the log takes no more records: {self._broken}")
            f = self._open()
            change.seq = self.seq + 1
            record = encode(change)
            start = f.tell()
            try:
                f.write(record)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                self._cut(f, start)  # no half record before the next one
                raise
            self.seq, self.records, self.bytes = change.seq, self.records + 1, start + len(record)
            return change.seq

    def rotate(self, generation: int) -> None:
        """Append to `generation`'s log from now on, creating it (durably) now."""
        assert generation > self.generation, (generation, self.generation)
        with self._mutex:
            self._close()
            self.generation, self._valid, self.records = generation, None, 0
            self._open()

    def committed(self, generation: int) -> None:
        """A commit of `generation` holds every change logged so far: log on top of it."""
        with self._mutex:
            self._close()
            self.generation, self._valid, self.records, self.bytes = generation, None, 0, 0

    def close(self) -> None:
        with self._mutex:
            self._close()

    def _open(self) -> BinaryIO:
        if self._file is not None:
            return self._file
        path = self.path
        f: BinaryIO
        if self._valid:  # the replayed log: its torn tail, if any, goes before new records
            f = path.open("r+b")
            f.truncate(self._valid)
            f.seek(0, os.SEEK_END)
        else:
            if path.exists() and self._valid is None:
                raise FileExistsError(f"{path}: a log this writer did not replay exists already")
            f = path.open("wb")  # a new log (or an empty, headerless leftover)
            try:
                f.write(_FILE_HEADER.pack(FILE_MAGIC, FORMAT, self.generation))
                f.flush()
                os.fsync(f.fileno())
                _fsync_dir(self.index_dir)  # the new name survives a crash too
            except BaseException:  # (a full disk) no record in it: gone, the next try makes it
                f.close()
                path.unlink(missing_ok=True)
                raise
        self._valid = None
        self.bytes = f.tell()
        self._file = f
        return f

    def _cut(self, f: BinaryIO, size: int) -> None:
        try:
            f.truncate(size)
            f.seek(size)
            os.fsync(f.fileno())
        except OSError as e:  # cannot cut: stop here, as a torn tail is dropped on load
            self._broken = f"a failed write could not be cut off ({e})"
            self._close()

    def _close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def _fsync_dir(path: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
