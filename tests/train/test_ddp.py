"""DDP on 2 CPU processes (gloo): ranks stay in sync and match the documented single process.

One process with bn_splits = 2 computes exactly what 2 ranks with bn_splits = 1 compute:
same shuffle-BN permutation and groups, gradients averaged over ranks = gradient of the mean
loss over the global batch, keys gathered in rank order into the queue.
"""

import json
import socket
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel
from train_fixtures import TINY_DATA, tiny_config
from typer.testing import CliRunner

from coins.cli import app
from coins.retrieval.data import build_dataset
from coins.train import TrainConfig
from coins.train.builder import CoInsModel
from coins.train.launch import torchrun_command
from coins.train.metrics_log import read_log

STEPS, BATCH = 3, 16


def _batches(cfg: TrainConfig) -> list[tuple[torch.Tensor, ...]]:
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


def _run(cfg: TrainConfig, rank: int, world: int) -> CoInsModel:
    coarse = build_dataset("synthetic-patches", "train", **TINY_DATA).coarse_labels
    torch.manual_seed(0)
    model = CoInsModel(cfg, 4, coarse)
    net = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    b = BATCH // world
    for step, batch in enumerate(_batches(cfg)):
        im_q, im_k, coarse_b, fine, index = (t[rank * b : (rank + 1) * b] for t in batch)
        loss, _ = net(im_q, im_k, coarse_b, fine, index, torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _worker(rank: int, port: int, cfg_dict: dict, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        model = _run(TrainConfig.from_dict(cfg_dict), rank, 2)
        torch.save(model.state_dict(), f"{out}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_ranks_stay_in_sync_and_equal_one_process_with_two_bn_groups(tmp_path) -> None:
    ddp_cfg = tiny_config(method="coins-imp", bn_splits=1)
    mp.spawn(_worker, args=(_free_port(), ddp_cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = _run(tiny_config(method="coins-imp", bn_splits=2), 0, 1).state_dict()
    trained = [
        k
        for k in rank0
        if k.startswith(("encoder_q.", "classifier."))
        and "running" not in k
        and "num_batches" not in k
    ]
    assert trained
    for key in [*trained, "queue.queue", "queue.coarse", "queue.index"]:
        torch.testing.assert_close(
            rank0[key], rank1[key], rtol=0, atol=0, msg=f"ranks differ: {key}"
        )
        torch.testing.assert_close(rank0[key], single[key], rtol=1e-4, atol=1e-5, msg=key)
    # The queue holds the gathered keys of both ranks for every step.
    assert int(rank0["queue.ptr"]) == STEPS * BATCH
    assert rank0["queue.index"][: STEPS * BATCH].tolist() == list(range(STEPS * BATCH))


@pytest.mark.slow
def test_coins_train_nproc_2_runs_ddp_end_to_end(tmp_path) -> None:
    cfg = tiny_config(method="coinsp", max_steps=3, epochs=2)
    config = tmp_path / "config.yaml"
    config.write_text(json.dumps(cfg.to_dict()))  # JSON is YAML
    run = tmp_path / "run"
    args = ["train", "--nproc", "2", "--config", str(config), "-o", str(run)]
    done = CliRunner().invoke(app, args)  # torchrun's output goes to the captured fds
    assert done.exit_code == 0, done.output[-3000:]
    steps = [r for r in read_log(run / "metrics.jsonl") if r["event"] == "step"]
    # rank 0 alone logs; 64 images / (2 ranks x 16) = 2 steps an epoch, stopped at step 3
    assert [(r["epoch"], r["step"]) for r in steps] == [(1, 1), (1, 2), (2, 3)]
    assert "proxy" in steps[-1]  # M = 1: the proxies were clustered and broadcast
    assert set(json.loads((run / "eval.json").read_text())) == {"fine", "coarse"}
    assert (run / "checkpoint.pt").is_file()
    cmd = torchrun_command(2, "c.json", run, resume=True)  # the same interpreter runs the ranks
    assert cmd[0] == sys.executable
    assert cmd[-4:] == ["coins.train.launch", "c.json", str(run), "--resume"]
