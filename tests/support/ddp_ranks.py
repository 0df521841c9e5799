"""The code the DDP test runs in each spawned rank. It lives on the test path (tests/support) and
not in the test module: spawned processes import it by name, and the test modules, imported by
pytest's importlib mode as `tests.train...`, are not importable there."""

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from train_fixtures import TINY_DATA

from coins.retrieval.data import build_dataset
from coins.train import TrainConfig
from coins.train.builder import CoInsModel

STEPS, BATCH = 3, 16


def batches(cfg: TrainConfig) -> list[tuple[torch.Tensor, ...]]:
    g = torch.Generator().manual_seed(0)
    size = cfg.model.preprocess.input_size
    return [
        (
            torch.randn(BATCH, 3, size, size, generator=g),
            torch.randn(BATCH, 3, size, size, generator=g),
            torch.randint(0, 4, (BATCH,), generator=g),
            torch.randint(0, 8, (BATCH,), generator=g),
            torch.arange(s * BATCH, (s + 1) * BATCH),
        )
        for s in range(STEPS)
    ]


def run_steps(cfg: TrainConfig, rank: int, world: int) -> CoInsModel:
    coarse = build_dataset("synthetic-patches", "train", **TINY_DATA).coarse_labels
    torch.manual_seed(0)
    model = CoInsModel(cfg, 4, coarse)
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    b = BATCH // world
    for step, batch in enumerate(batches(cfg)):
        im_q, im_k, coarse_b, fine, index = (t[rank * b : (rank + 1) * b] for t in batch)
        loss, _ = net(im_q, im_k, coarse_b, fine, index, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def worker(rank: int, port: int, cfg_dict: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = run_steps(TrainConfig.from_dict(cfg_dict), rank, 2)
        torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()
