"""deploy/replicas.sh under a replica's death: nginx keeps answering, the script restarts it."""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[3] / "benchmarks"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("nginx") is None, reason="needs nginx (apt-get install nginx)"),
]


def test_a_replica_killed_under_load_is_restarted_and_no_search_fails(tmp_path: Path) -> None:
    sys.path.insert(0, str(BENCHMARKS))
    from bench_live_updates import build
    from bench_replicas import kill_one

    model, index_dir = build(tmp_path, 2000)
    args = argparse.Namespace(kill_replica=3.0, target=5.0, clients=2, interval=1.0, seed=0)
    out = kill_one(index_dir, model, tmp_path / "run", args)
    assert out["killed_pids"], "no process of replica a was found to kill"
    assert out["script_exited_early"] is None  # one replica's death did not stop the deployment
    assert out["failed_searches"] == 0, out["failures"]
    assert out["searches_ok"] > 0
    assert out["seconds_until_ready_again"] is not None  # restarted, and ready again
    log = "\n".join(out["supervisor_log"])
    assert "exited with status 137" in log and "restarting replica" in log, log
