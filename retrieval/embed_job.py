"""`coins embed`: a gallery embedded as a streaming job, one process per rank, into shards v2.

The gallery is cut into chunks of C positions; chunk c belongs to rank c % WORLD_SIZE. Each
process decodes and preprocesses its chunks in DataLoader workers, embeds batches with ONNX
Runtime and writes each chunk as soon as it is done, so memory is bounded by a chunk whatever
the gallery's size. A re-run skips the chunks that are complete and verified: a job killed
(or a machine lost) is resumed by running the same command again.

The engine is torchrun, the training launcher already: `--nproc N` starts N local processes
(`torchrun --standalone`); on several machines the same command runs under torchrun's own
`--nnodes/--node_rank/--rdzv-endpoint` (see the README). No process group is needed: ranks
share nothing but the output folder, where each writes the same `embedding.json` atomically.
"""

from __future__ import annotations

import gc
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .configs import Preprocess
from .data import DatasetError
from .data.preprocess import EvalPreprocess
from .gallery import Gallery, gallery_source
from .onnx.contract import EmbedError
from .onnx.runner import OnnxEmbedder
from .progress import Progress
from .shards import Verify, chunk_done, job_manifest, prepare_output, write_chunk


@dataclass
class EmbedJob:
    """What to embed and how; the same on every rank.

    The gallery is exactly one of `dataset` (with `split`, `root`, `options`), `images` or
    `manifest`, as `gallery_source` takes them.
    """

    model: Path  # .onnx written by coins export
    out: Path  # the job's folder: embedding.json and chunk-NNNNNN.{npy,parquet,json}
    dataset: str | None = None
    split: str | None = None
    root: Path | None = None
    options: dict[str, Any] = field(default_factory=dict)
    images: Path | None = None
    manifest: Path | None = None
    # a source without splits cut as `coins train --test-fraction` cuts it (gallery_source)
    test_fraction: float = 0.0  # 0: the source as it is
    split_by: str = "item"  # item or fine
    split_seed: int = 0  # the training run's --seed
    chunk_size: int = 4096  # gallery positions per chunk: the unit of memory, resume and work
    batch_size: int = 64  # images per ONNX Runtime call
    workers: int | None = None  # DataLoader workers per process (None: cores / local processes)
    threads: int | None = None  # ONNX Runtime threads per process (None: cores / processes)
    strict: bool = False  # an undecodable image fails the job instead of being skipped
    verify: Verify = "fast"  # how a finished chunk is checked before it is skipped


@dataclass
class Rank:
    """This process's place in the job, from torchrun's environment (one process without)."""

    rank: int = 0
    world_size: int = 1
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> Rank:
        env = os.environ
        world = int(env.get("WORLD_SIZE", 1))
        return cls(int(env.get("RANK", 0)), world, int(env.get("LOCAL_WORLD_SIZE", world)))


def embed_job(
    job: EmbedJob,
    rank: Rank | None = None,
    progress: bool = True,
    on_chunk: Callable[[int], None] | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run this rank's share of `job`; `on_chunk(c)` is called after chunk c is written.
    Returns what this rank did: chunks written and resumed, items, skipped, images/s."""
    rank = rank or Rank.from_env()
    cores = os.cpu_count() or 1
    per_process = max(1, cores // rank.local_world_size)
    gallery = gallery_source(
        job.dataset, job.split, job.root, job.options or None, job.images, job.manifest,
        job.test_fraction, job.split_by, job.split_seed,
    )  # fmt: skip
    model = OnnxEmbedder(job.model, threads=job.threads or per_process)
    manifest = job_manifest(
        model_sha256=model.sha256, dim=model.dim, which=model.which,
        preprocess=model.metadata["preprocess"], source=gallery.source,
        id_scheme=gallery.id_scheme, items=len(gallery), chunk_size=job.chunk_size,
    )  # fmt: skip
    job.out.mkdir(parents=True, exist_ok=True)
    prepare_output(job.out, manifest)
    mine = range(rank.rank, manifest["chunks"], rank.world_size)
    todo = [c for c in mine if not chunk_done(job.out, c, manifest, job.verify)]
    log(
        f"rank {rank.rank}/{rank.world_size}: ONNX Runtime provider {model.provider}; "
        f"{len(todo)} of {len(mine)} chunks to embed ({len(mine) - len(todo)} already done)"
    )
    workers = per_process if job.workers is None else job.workers
    start, counts = time.perf_counter(), {"embedded": 0, "skipped": 0}
    total = sum(_chunk_positions(c, job.chunk_size, len(gallery)).size for c in todo)
    # a bar on a terminal, else a line every 10 s (each rank its own, named)
    bar = Progress(f"coins embed rank {rank.rank}", total, enabled=progress)
    chunks = _embedded_chunks(gallery, model, job, todo, workers, bar.update)
    with bar, closing(chunks):  # an error or a stop (on_chunk) ends the workers too
        for chunk, vectors, rows, skipped in chunks:
            write_chunk(job.out, chunk, vectors, rows, skipped, model.sha256)
            for s in skipped:
                log(f"skipped {s['path']}: {s['reason']}")
            counts["embedded"] += len(rows)
            counts["skipped"] += len(skipped)
            if on_chunk is not None:
                on_chunk(chunk)
    seconds = time.perf_counter() - start
    done = counts["embedded"] + counts["skipped"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    log(f"rank {rank.rank}/{rank.world_size}: peak RSS {peak:.0f} MiB (this process)")
    return {
        "rank": rank.rank, "world_size": rank.world_size, "provider": model.provider,
        "chunks": len(mine), "written": len(todo), "resumed": len(mine) - len(todo),
        "items": done, **counts, "seconds": seconds, "images_per_s": done / max(seconds, 1e-9),
        "peak_rss_mib": peak,
    }  # fmt: skip


def _chunk_positions(chunk: int, chunk_size: int, n: int) -> np.ndarray:
    return np.arange(chunk * chunk_size, min((chunk + 1) * chunk_size, n), dtype=np.int64)


class _Preprocessed(Dataset):
    """Gallery position -> (position, float32 [C, S, S] image or None, reason), in a worker.

    Holds the preprocessing only, not the `OnnxEmbedder`: a worker must never own (and so
    never free) an ONNX Runtime session, see `_started`."""

    def __init__(self, gallery: Gallery, preprocess: Preprocess) -> None:
        self.gallery, self.transform = gallery, EvalPreprocess(preprocess)  # = eval_transform

    def __len__(self) -> int:
        return len(self.gallery)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None, str | None]:
        try:
            image = self.gallery.image(i)
        except DatasetError as e:  # an undecodable image names itself
            return i, None, str(e)
        return i, self.transform(image), None


def _collate(
    items: list[tuple[int, np.ndarray | None, str | None]],
) -> tuple[list[int], torch.Tensor | None, list[tuple[int, str]]]:
    """Good images stacked as one tensor (shared memory between processes), failures apart."""
    good = [(i, x) for i, x, _ in items if x is not None]
    failed = [(i, reason) for i, x, reason in items if x is None and reason is not None]
    x = torch.from_numpy(np.stack([x for _, x in good])) if good else None
    return [i for i, _ in good], x, failed


def _embedded_chunks(
    gallery: Gallery,
    model: OnnxEmbedder,
    job: EmbedJob,
    todo: Sequence[int],
    workers: int,
    on_batch: Callable[[int], None] | None = None,
) -> Generator[tuple[int, np.ndarray, list[dict[str, Any]], list[dict[str, Any]]], None, None]:
    """(chunk, vectors float32 [n, D], rows [n], skipped) for each chunk of `todo`, in order.

    `on_batch(n)` is called after each batch of n positions (embedded or skipped). One
    DataLoader over all the chunks' batches (a batch never crosses a chunk), so the
    workers keep decoding the next chunk while this one is embedded and written. The workers
    are stopped when this generator ends, fails (--strict) or is closed, not when the garbage
    collector gets to the loader: a traceback kept by the caller would keep them waiting.
    """
    if job.batch_size < 1:
        raise EmbedError(f"expected batch_size >= 1, got {job.batch_size}")
    batches, owner = [], []
    for c in todo:
        positions = _chunk_positions(c, job.chunk_size, len(gallery)).tolist()
        for s in range(0, len(positions), job.batch_size):
            batches.append(positions[s : s + job.batch_size])
            owner.append(c)
    loader = DataLoader(
        _Preprocessed(gallery, model.preprocess), batch_sampler=batches, num_workers=workers,
        collate_fn=_collate, prefetch_factor=4 if workers else None,
    )  # fmt: skip
    loaded = _started(loader)
    try:
        yield from _chunks_of(loaded, owner, gallery, model, job.strict, on_batch)
    finally:
        _stop(loaded)


def _started(loader: DataLoader) -> Iterator[Any]:
    """`iter(loader)`: forks the workers, with the garbage collector frozen meanwhile.

    A forked worker inherits every object of this process, garbage included, and its own
    collector would free inherited garbage (e.g. an `OnnxEmbedder` left in the traceback of an
    earlier error, as in a test process). Freeing an ONNX Runtime session in a forked child
    waits forever on its thread pool's condition variables (pthread_cond_destroy: the pool's
    threads were not copied by fork): the worker hangs in a futex wait and the job with it.
    Objects frozen at the fork are never collected by the child; this process unfreezes them.
    """
    gc.freeze()
    try:
        return iter(loader)
    finally:
        gc.unfreeze()


def _stop(loaded: Iterator[Any]) -> None:
    """Stop the loader's workers now (join, then terminate the ones that do not exit)."""
    shutdown = getattr(loaded, "_shutdown_workers", None)  # absent without workers
    if shutdown is not None:
        shutdown()


def _chunks_of(
    loaded: Iterator[Any],
    owner: list[int],
    gallery: Gallery,
    model: OnnxEmbedder,
    strict: bool,
    on_batch: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray, list[dict[str, Any]], list[dict[str, Any]]]]:
    """The chunks of the loaded batches; batch b belongs to chunk owner[b]."""
    parts: list[np.ndarray] = []
    kept: list[int] = []
    skipped: list[dict[str, Any]] = []
    for b, (positions, x, failed) in enumerate(loaded):
        for i, reason in failed:
            path = None if gallery.paths is None else str(gallery.paths[i])
            if strict:
                raise EmbedError(f"{reason} (--strict: no image is skipped)")
            skipped.append({"id": int(gallery.ids[i]), "path": path, "reason": reason})
        if x is not None:
            parts.append(model.embed_arrays(x.numpy()).vectors)
            kept += positions
        if on_batch is not None:
            on_batch(len(positions) + len(failed))
        if b + 1 == len(owner) or owner[b + 1] != owner[b]:  # the chunk's last batch
            vectors = np.concatenate(parts) if parts else np.zeros((0, model.dim), np.float32)
            yield owner[b], vectors, [gallery.rows[i] for i in kept], skipped
            parts, kept, skipped = [], [], []


def job_argv(job: EmbedJob, options: Sequence[str] = ()) -> list[str]:
    """The `coins embed` arguments of `job` (`options`: its --option KEY=VALUE pairs)."""
    argv = [str(job.model), "--out", str(job.out)]
    for flag, value in (
        ("--dataset", job.dataset), ("--split", job.split), ("--root", job.root),
        ("--images", job.images), ("--manifest", job.manifest), ("--workers", job.workers),
        ("--threads", job.threads),
    ):  # fmt: skip
        if value is not None:
            argv += [flag, str(value)]
    for pair in options:
        argv += ["--option", pair]
    if job.test_fraction:
        argv += ["--test-fraction", str(job.test_fraction), "--split-by", job.split_by]
        argv += ["--split-seed", str(job.split_seed)]
    argv += ["--chunk-size", str(job.chunk_size), "--batch-size", str(job.batch_size)]
    return [*argv, "--verify", job.verify, *(["--strict"] if job.strict else [])]


def torchrun_command(nproc: int, argv: Sequence[str]) -> list[str]:
    """`coins embed ARGV` on `nproc` local processes under torchrun (train/launch.py's way;
    retrieval does not import train, so the few lines are its own)."""
    if nproc < 2:
        raise ValueError(f"nproc must be at least 2 to launch processes, got {nproc}")
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={nproc}", "-m", "coins.cli", "embed", *argv,
    ]  # fmt: skip


def launch_embed_job(nproc: int, job: EmbedJob, options: Sequence[str] = ()) -> int:
    """Run `job` as `nproc` local processes under torchrun; torchrun's exit code."""
    return subprocess.call(torchrun_command(nproc, job_argv(job, options)))
