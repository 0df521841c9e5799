"""Training from files against the same images held in memory: steps/s of `coins train`.

Writes a gallery of generated photos (retrieval/data/photos.py: PNG at 28 px, JPEG at 224 px)
and trains the same configuration (preset, batch, steps, seed) three ways: from the files as
they are (cache_images_mb=0), from the files with the decoded-image cache (the default), and
from a copy of the same images decoded into memory beforehand (the `memory-copy` data set
below: exactly what an in-memory data set such as synthetic-patches does per item). Then it
splits one step into its parts: a loader-only loop (decode + augmentation, as the training
DataLoader runs it) and a model-only loop (forward + backward on fixed tensors).

    .venv/bin/python benchmarks/bench_train_files.py --size 28 --count 2000 --steps 30
    .venv/bin/python benchmarks/bench_train_files.py --size 224 --count 1600 --steps 12
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from coins.retrieval.data import register_dataset
from coins.retrieval.data.csv_gallery import CSVManifest
from coins.retrieval.data.images import load_image
from coins.retrieval.data.photos import write_photos
from coins.train import load_config, train
from coins.train.builder import CoInsModel
from coins.train.loop import _loader


@register_dataset("memory-copy")
class MemoryCopy(CSVManifest):
    """A csv gallery decoded into memory when built: an in-memory data set of the same images."""

    def __init__(self, split: str = "train", root: Path | None = None) -> None:
        super().__init__(split, root)
        self.pixels = [np.asarray(load_image(p)) for p in self.paths]

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.pixels[index])


def config(dataset: str, root: Path, args: argparse.Namespace, **extra: object):
    preset = "grey-28" if args.size <= 32 else "rgb-224"
    return load_config(
        preset=preset,
        dataset=dataset,
        root=str(root),
        method=args.method,
        batch_size=args.batch,
        K=args.batch * 8,
        epochs=100,
        max_steps=args.steps,
        num_workers=args.workers,
        log_every=1,
        **extra,
    )


def steps_per_second(run: Path, batch: int, skip: int = 2) -> float:
    """Steps/s over the logged steps after the first `skip` (worker start-up and first fetch)."""
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [s for s in steps if s["event"] == "step"]
    # images_per_s of step n is cumulative from the epoch start: n * batch / t_n
    t = [s["step"] * batch / s["images_per_s"] for s in steps]
    return (len(t) - 1 - skip) / (t[-1] - t[skip])


def loader_only(cfg, steps: int) -> float:
    """Batches/s of the training DataLoader alone."""
    from coins.train.loop import _splits

    data, _ = _splits(cfg)
    tic = time.perf_counter()
    loader = iter(_loader(data, cfg, 0))
    next(loader)  # start-up and the first batch, as steps_per_second skips it
    tic = time.perf_counter()
    for _ in range(steps - 1):
        next(loader)
    return (steps - 1) / (time.perf_counter() - tic)


def model_only(cfg, steps: int) -> float:
    """Steps/s of forward + backward + update on fixed tensors (bench_train_throughput.py)."""
    pre, batch = cfg.model.preprocess, cfg.batch_size
    torch.manual_seed(0)
    model = CoInsModel(cfg, 8, np.zeros(cfg.K, dtype=np.int64))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x = torch.randn(batch, pre.in_chans, pre.input_size, pre.input_size)
    y = torch.randint(0, 8, (batch,))
    times = []
    for step in range(steps):
        tic = time.perf_counter()
        im_k = x.flip(3) if cfg.uses_queue else None
        loss, _ = model(x, im_k, y, y, torch.arange(batch), torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - tic)
    return 1 / float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=28, help="photo side: 28 (PNG) or 224 (JPEG)")
    parser.add_argument("--count", type=int, default=2000, help="photos in the gallery")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--method", default="coins")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--gallery", type=Path, default=None, help="reuse a written gallery")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-files-"))
    gallery = args.gallery or work / "gallery"
    if args.gallery is None:
        ext = "png" if args.size <= 32 else "jpg"
        tic = time.perf_counter()
        write_photos(gallery, args.count, args.size, ext=ext)
        print(f"gallery: {args.count} {ext} photos of {args.size} px in "
              f"{time.perf_counter() - tic:.1f} s: {gallery}")  # fmt: skip

    rates = {}
    runs = {
        "files": ("csv", {"cache_images_mb": 0}),
        "files+cache": ("csv", {}),
        "memory": ("memory-copy", {}),
    }
    for name, (dataset, extra) in runs.items():
        cfg = config(dataset, gallery, args, **extra)
        tic = time.perf_counter()
        train(cfg, work / name, progress=False)
        rates[name] = steps_per_second(work / name, args.batch)
        print(f"{name:12s} {rates[name]:.3f} steps/s "
              f"({rates[name] * args.batch:.1f} images/s; run {time.perf_counter() - tic:.0f} s)")  # fmt: skip
    for name in ("files", "files+cache"):
        print(f"ratio {name}/memory: {rates[name] / rates['memory']:.2f}")
    cfg = config("csv", gallery, args, cache_images_mb=0)
    print(
        f"loader only (files, {args.workers} workers): {loader_only(cfg, args.steps):.2f} batches/s"
    )
    cfg = config("memory-copy", gallery, args)
    print(
        f"loader only (memory, {args.workers} workers): {loader_only(cfg, args.steps):.2f} batches/s"
    )
    print(f"model only: {model_only(cfg, min(args.steps, 10)):.3f} steps/s")


if __name__ == "__main__":
    main()
