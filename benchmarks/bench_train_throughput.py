"""Training throughput of `coins` against `cos` (images/s, same backbone, batch and input).

`coins` forwards two views (query with gradient, key without) where `cos` forwards one, so a
ratio near 0.75 is what the extra key forward costs. Prints both rates and their ratio.

    .venv/bin/python benchmarks/bench_train_throughput.py --dataset fashion-mnist --batch 128
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from coins.train import load_config
from coins.train.builder import CoInsModel


def images_per_second(method: str, dataset: str, batch: int, steps: int, warmup: int) -> float:
    cfg = load_config(method=method, dataset=dataset, batch_size=batch, K=batch * 16)
    pre = cfg.model.preprocess
    torch.manual_seed(0)
    model = CoInsModel(cfg, 8, np.zeros(batch * 16, dtype=np.int64))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    x = torch.randn(batch, pre.in_chans, pre.input_size, pre.input_size)
    y = torch.randint(0, 8, (batch,))
    times = []
    for step in range(warmup + steps):
        tic = time.perf_counter()
        im_k = x.flip(3) if cfg.uses_queue else None
        loss, _ = model(x, im_k, y, y, torch.arange(batch), torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - tic)
    return batch / float(np.median(times[warmup:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="fashion-mnist")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    rates = {
        m: images_per_second(m, args.dataset, args.batch, args.steps, args.warmup)
        for m in ("cos", "coins")
    }
    print(f"dataset {args.dataset}  batch {args.batch}  threads {torch.get_num_threads()}")
    for method, rate in rates.items():
        print(f"{method:<6} {rate:8.1f} images/s")
    print(f"ratio coins / cos: {rates['coins'] / rates['cos']:.3f}")


if __name__ == "__main__":
    main()
