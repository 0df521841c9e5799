"""Embedding throughput: ONNX Runtime against PyTorch eager (images/s, same model and batch).

The default Fashion-MNIST embedder (narrow ResNet-18, 28 px, 1 channel, random init) is
exported with `coins export`'s code path, then both runtimes embed the same preprocessed batch.
Blocks of calls alternate between the two so that the shared machine's noise hits both alike;
the rate is the batch over the median call time after warm-up. Prints both rates and their ratio.

    .venv/bin/python benchmarks/bench_onnx.py --batch 64
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from coins.retrieval.models import Embedder
from coins.retrieval.onnx.export import export_model
from coins.retrieval.onnx.runner import OnnxEmbedder
from coins.retrieval.presets import model_preset


def median_seconds(
    runs: dict[str, Callable[[], object]], rounds: int, warmup: int, block: int = 5
) -> dict[str, float]:
    """Median seconds per call of each run: blocks of `block` calls, the runs taking turns.

    Blocks rather than single calls: ONNX Runtime's threads spin for a moment after a call,
    which would slow an eager call that follows at once.
    """
    for run in runs.values():
        for _ in range(warmup):
            run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(0, rounds, block):
        for name, run in runs.items():
            for _ in range(block):
                tic = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - tic)
    return {name: float(np.median(t)) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Embedder(model_preset(args.dataset)).eval()
    pre = model.config.preprocess
    x = torch.randn(args.batch, pre.in_chans, pre.input_size, pre.input_size)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.onnx"
        export_model(model, path)
        runner = OnnxEmbedder(path, threads=args.threads, providers=["CPUExecutionProvider"])
        xn = x.numpy()

        @torch.inference_mode()
        def eager() -> torch.Tensor:
            return model.embed(x)

        seconds = median_seconds(
            {"pytorch": eager, "onnxruntime": lambda: runner.embed_arrays(xn)},
            args.rounds,
            args.warmup,
        )
    rates = {name: args.batch / s for name, s in seconds.items()}
    print(f"dataset {args.dataset}  batch {args.batch}  threads {args.threads}")
    for name, rate in rates.items():
        print(f"{name:<12} {rate:8.1f} images/s")
    print(f"ratio onnxruntime / pytorch: {rates['onnxruntime'] / rates['pytorch']:.2f}")


if __name__ == "__main__":
    main()
