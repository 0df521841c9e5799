"""The one writer of an index directory: an advisory lock on `DIR/.writer.lock`.

A process that changes an index directory (a `coins serve` with admin routes, for its whole
life; `coins index compact`; `coins index restore` into an existing index) holds an exclusive
`flock` on the lock file and writes its pid and role into it. A second writer fails at once with
`IndexLockedError` naming the holder. Readers (a server without admin routes, `coins index
snapshot`, `SearchIndex.load`) take no lock.

**[design]** Held for the writer's life, not per write: a server replays the log at load and
appends to that log after, so a compaction by another process in between (a new generation, the
old log deleted) would make its later acknowledged writes vanish. `flock` is released by the
kernel when the holder dies (even by SIGKILL): a lock file left behind is never in the way. A
clean release deletes the file (before unlocking it), so a directory keeps no trace; a process
that locked a file just deleted sees that its inode is no longer the path's, and tries again.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from pathlib import Path
from types import TracebackType
from typing import IO, Any

LOCK_NAME = ".writer.lock"
ATTEMPTS = 10  # locks of a file deleted by a releasing holder before giving up


class IndexLockedError(OSError):
    """Another process is writing to the index directory."""


class WriterLock:
    """An exclusive lock on `index_dir`'s writer lock file, held until `release` (or exit)."""

    def __init__(self, index_dir: str | Path, holder: str) -> None:
        self.path = Path(index_dir) / LOCK_NAME
        self.holder = holder  # what holds it, e.g. "coins serve", shown to the next writer
        self._file: IO[str] | None = None

    def acquire(self) -> WriterLock:
        """Take the lock or raise IndexLockedError naming the process that holds it."""
        assert self._file is None, f"{self.path} is held already"
        for _ in range(ATTEMPTS):
            f = self.path.open("a+")  # not truncated before the lock is ours: it names the holder
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                found = f.read()
                f.close()
                raise IndexLockedError(
                    f"{self.path.parent} is being written by {_describe(found)} (it holds "
                    f"{self.path}); stop it first, or let that process do this"
                ) from None
            except BaseException:
                f.close()
                raise
            if _same_file(f, self.path):
                break
            f.close()  # locked a file its holder deleted on release: lock the path's file
        else:
            raise IndexLockedError(f"{self.path}: replaced {ATTEMPTS} times while being locked")
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "holder": self.holder, "since": time.time()}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        if self._file is not None:
            if _same_file(self._file, self.path):  # not if the directory was replaced meanwhile
                self.path.unlink()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def __enter__(self) -> WriterLock:
        return self.acquire()

    def __exit__(
        self, kind: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _same_file(f: IO[str], path: Path) -> bool:
    """Whether the open file `f` is the one at `path` now."""
    try:
        now = path.stat()
    except FileNotFoundError:
        return False
    held = os.fstat(f.fileno())
    return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)


def _describe(text: str) -> str:
    """The holder named by a lock file's contents."""
    try:
        found: dict[str, Any] = json.loads(text)
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(found["since"])))
        return f"pid {int(found['pid'])} ({found['holder']}, since {since})"
    except (ValueError, KeyError, TypeError):  # written by a holder that has just started
        return "another process (pid not written yet)"
