"""Atomic file writes: a crash mid-write never leaves a half-written file under the real name.

The data is fsynced before the rename and the directory after it: without the first, a power
loss can leave the new name pointing at an empty file; without the second, the rename may be
lost.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes it owner-only; give it the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_UMASK)
            _fsync(tmp_path, os.O_RDONLY)  # the block wrote by path: flush what it wrote
        os.replace(tmp_path, path)
        if hasattr(os, "O_DIRECTORY"):  # POSIX only: Windows cannot open a directory
            _fsync(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    finally:
        tmp_path.unlink(missing_ok=True)


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_umask() -> int:
    mask = os.umask(0)  # the only way to read it; done once, at import, before any threads
    os.umask(mask)
    return mask


_UMASK = _read_umask()


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def file_sha256(path: str | Path, block: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes, read `block` bytes at a time."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as file:
        while data := file.read(block):
            digest.update(data)
    return digest.hexdigest()
