"""A read-only replica follows its index directory: a new generation, committed there by the one
writer (`coins index compact`, or a server with admin routes), is swapped in within seconds.

A follower (`coins serve --follow`) polls `index.json`, the directory's commit point
(serve/index/manifest.py): a stat every `follow_interval_s`, and a read of the small JSON only
when its inode, size or modification time changed. When the generation it names differs from
the one served, the index is reloaded through `reload_index`, which loads outside the search
lock and swaps under it, so requests in flight finish on the old index. A failed load (say the
writer deleted the files of the generation being read) is logged and retried at the next change
of `index.json`, and the previous index keeps serving.

**[design]** Followers only read: they take no writer lock and refuse admin routes (a server
with `--follow` and an API key is refused at start). Changes a writer has logged but not yet
compacted into a generation (its write-ahead log) reach followers with the next compaction.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

from fastapi import FastAPI

from coins.serve.api.loading import reload_index
from coins.serve.api.settings import ServeSettings
from coins.serve.api.state import ServiceState
from coins.serve.index.manifest import MANIFEST_NAME

log = logging.getLogger("coins.serve")

Signature = tuple[int, int, int]  # inode, size, mtime in ns: changes with each commit (a rename)


def manifest_signature(index_dir: Path) -> Signature | None:
    """What a stat of `index.json` says, or None while it is missing."""
    try:
        st = os.stat(index_dir / MANIFEST_NAME)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


def committed_generation(index_dir: Path) -> int | None:
    """The generation `index.json` names, or None if it cannot be read now (mid-replace on a
    file system without atomic renames, or missing)."""
    try:
        return int(json.loads((index_dir / MANIFEST_NAME).read_text())["generation"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class GenerationFollower:
    """A daemon thread that swaps in each new generation of `app`'s index directory."""

    def __init__(self, app: FastAPI) -> None:
        settings: ServeSettings = app.state.settings
        self.app = app
        self.index_dir = settings.index_dir
        self.interval_s = settings.follow_interval_s
        self._stop = threading.Event()
        self._seen: Signature | None = None  # the signature last acted on (loaded or failed)
        self._thread = threading.Thread(target=self._run, name="coins-follow", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=max(5.0, 2 * self.interval_s))

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception:  # nothing may end the thread: the next poll tries again
                log.exception("following %s failed", self.index_dir)

    def poll(self) -> bool:
        """Reload if `index.json` changed to another generation than the served one; True if
        a new generation was swapped in."""
        state: ServiceState = self.app.state.service
        if not state.ready or state.index is None:
            return False  # the first load is load_all's
        signature = manifest_signature(self.index_dir)
        if signature is None or signature == self._seen:
            return False
        generation = committed_generation(self.index_dir)
        served = int(state.index.manifest.generation)
        if generation is None:
            return False  # unreadable now: look again at the next poll
        self._seen = signature
        if generation == served:
            return False
        try:
            reload_index(self.app)
        except Exception as err:  # ApiError(409) from reload_index, or anything else
            log.error("generation %d not loaded, still serving %d: %s", generation, served, err)
            return False
        log.info("following %s: now serving generation %d", self.index_dir, generation)
        return True


class FollowerConfigError(ValueError):
    """Settings a follower cannot have."""


def check_follower(settings: ServeSettings) -> None:
    """A follower only reads: refuse admin routes, which would write to a directory another
    process (the one writer) commits to."""
    if settings.follow and settings.api_key is not None:
        raise FollowerConfigError(
            "--follow makes a read-only replica, but an API key enables admin writes: "
            "expected no --api-key (or COINS_API_KEY) with --follow; the directory's one "
            "writer is a server without --follow"
        )
