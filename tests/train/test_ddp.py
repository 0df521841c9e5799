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
import torch.multiprocessing as mp
from ddp_ranks import BATCH, STEPS, run_steps, worker
from train_fixtures import tiny_config
from typer.testing import CliRunner

from coins.cli import app
from coins.train.launch import torchrun_command
from coins.train.metrics_log import read_log


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow  # 8.4 s quiet: two gloo processes
def test_two_ranks_stay_in_sync_and_equal_one_process_with_two_bn_groups(tmp_path) -> None:
    ddp_cfg = tiny_config(method="coins-imp", bn_splits=1)
    mp.spawn(worker, args=(_free_port(), ddp_cfg.to_dict(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1))
    single = run_steps(tiny_config(method="coins-imp", bn_splits=2), 0, 1).state_dict()
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
    written = json.loads((run / "eval.json").read_text())  # with the untrained start beside
    assert set(written) == {"fine", "coarse", "selection", "untrained"}
    assert (run / "checkpoint.pt").is_file()
    cmd = torchrun_command(2, "c.json", run, resume=True)  # the same interpreter runs the ranks
    assert cmd[0] == sys.executable
    assert cmd[-4:] == ["coins.train.launch", "c.json", str(run), "--resume"]
