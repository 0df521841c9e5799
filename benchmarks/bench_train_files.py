"""Training from files against the same images held in memory: steps/s of `coins train`.

Writes a gallery of generated photos (retrieval/data/photos.py: PNG at 28 px, JPEG at 224 px)
and trains the same configuration (preset, batch, steps, seed) three ways: from the files as
they are (cache_images_mb=0), from the files with the decoded-image cache (the default), and
from a copy of the same images decoded into memory beforehand (the `memory-copy` data set
below: exactly what an in-memory data set such as synthetic-patches does per item). Then it
splits one step into its parts in CPU seconds (robust to the load of other programs on a
shared machine): a loader-only loop (decode + augmentation, as the training DataLoader runs
it) and a model-only loop (forward + backward on fixed tensors).

    .venv/bin/python benchmarks/bench_train_files.py --size 28 --count 2000 --steps 30
    .venv/bin/python benchmarks/bench_train_files.py --size 224 --count 1600 --steps 12

Training's own output (`coins train`) is what is timed: steps/s from the step records of
metrics.jsonl, after the first two steps (worker start-up, the cache fill).
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

from coins.retrieval.data import RetrievalDataset, register_dataset
from coins.retrieval.data.csv_gallery import CSVManifest
from coins.retrieval.data.images import load_image
from coins.retrieval.data.photos import write_photos
from coins.train import load_config, train
from coins.train.builder import CoInsModel
from coins.train.loop import _loader


@register_dataset("memory-copy")
class MemoryCopy(RetrievalDataset):
    """A csv gallery decoded into memory when built: an in-memory data set of the same images."""

    @classmethod
    def available_splits(cls, root: Path | None) -> tuple[str, ...]:
        return CSVManifest.available_splits(root)

    def __init__(self, split: str = "train", root: Path | None = None) -> None:
        files = CSVManifest(split, root)
        self.split, self.ids = files.split, files.ids
        self.coarse_classes, self.coarse_labels = files.coarse_classes, files.coarse_labels
        self.fine_classes, self.fine_labels = files.fine_classes, files.fine_labels
        self.pixels = [np.asarray(load_image(p)) for p in files.paths]

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


def loader_cpu(cfg, batches: int) -> float:
    """CPU seconds per batch of the training DataLoader alone, read in this process (no
    workers): decode and augmentation, measured in CPU time so that the load of other programs
    on the machine does not count."""
    from coins.train.loop import _splits

    cfg.num_workers = 0
    data, _ = _splits(cfg)
    loader = iter(_loader(data, cfg, 0))
    next(loader)  # the cache fill, if any, and the first batch
    tic = time.process_time()
    for _ in range(batches):
        next(loader)
    return (time.process_time() - tic) / batches


def model_cpu(cfg, steps: int) -> float:
    """CPU seconds per step of forward + backward + update on fixed tensors (one torch thread:
    CPU time then measures work, not spinning threads), as bench_train_throughput.py."""
    pre, batch = cfg.model.preprocess, cfg.batch_size
    torch.manual_seed(0)
    model = CoInsModel(cfg, 8, np.zeros(cfg.K, dtype=np.int64))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x = torch.randn(batch, pre.in_chans, pre.input_size, pre.input_size)
    y = torch.randint(0, 8, (batch,))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    for step in range(steps):
        tic = time.process_time()
        im_k = x.flip(3) if cfg.uses_queue else None
        loss, _ = model(x, im_k, y, y, torch.arange(batch), torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.process_time() - tic)
    torch.set_num_threads(threads)
    return float(np.median(times[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=28, help="photo side: 28 (PNG) or 224 (JPEG)")
    parser.add_argument("--count", type=int, default=2000, help="photos in the gallery")
    parser.add_argument("--steps", type=int, default=30, help="training steps per run")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--method", default="coins")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--gallery", type=Path, default=None, help="reuse a written gallery")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved repetitions")
    parser.add_argument("--model-steps", type=int, default=6, help="steps of the model-only loop")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: default)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-train-files-"))
    gallery = args.gallery or work / "gallery"
    if args.gallery is None:
        ext = "png" if args.size <= 32 else "jpg"
        tic = time.perf_counter()
        write_photos(gallery, args.count, args.size, ext=ext)
        print(f"gallery: {args.count} {ext} photos of {args.size} px in "
              f"{time.perf_counter() - tic:.1f} s: {gallery}")  # fmt: skip

    if args.threads:
        torch.set_num_threads(args.threads)
    runs = {
        "files": ("csv", {"cache_images_mb": 0}),
        "files+cache": ("csv", {}),
        "memory": ("memory-copy", {}),
    }
    # Rounds interleave the three runs so that a change in the machine's load (it is shared)
    # falls on all of them; each figure is the median over the rounds.
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(args.rounds):
        for name, (dataset, extra) in runs.items():
            cfg = config(dataset, gallery, args, **extra)
            tic = time.perf_counter()
            train(cfg, work / f"{name}-{r}", progress=False)
            rates[name].append(steps_per_second(work / f"{name}-{r}", args.batch))
            wall = time.perf_counter() - tic
            print(f"round {r} {name:12s} {rates[name][-1]:.3f} steps/s (run {wall:.0f} s)")
    median = {name: float(np.median(v)) for name, v in rates.items()}
    for name, rate in median.items():
        print(f"{name:12s} median {rate:.3f} steps/s = {rate * args.batch:.1f} images/s")
    for name in ("files", "files+cache"):
        print(f"ratio {name}/memory: {median[name] / median['memory']:.2f}")
    # CPU cost of one step's parts. On C cores kept busy (workers decoding and augmenting
    # while the main process computes), steps/s is at most C / (model + loader) CPU seconds, so
    # (model + loader in memory) / (model + loader from files) bounds the ratio above.
    model = model_cpu(config("memory-copy", gallery, args), args.model_steps)
    print(f"model only: {model:.3f} CPU s/step")
    memory = loader_cpu(config("memory-copy", gallery, args), args.steps)
    for name, (dataset, extra) in runs.items():
        cost = loader_cpu(config(dataset, gallery, args, **extra), args.steps)
        bound = (model + memory) / (model + cost)
        print(f"loader only, {name:12s}: {cost:.3f} CPU s/batch; CPU-bound ratio {bound:.2f}")


if __name__ == "__main__":
    main()
