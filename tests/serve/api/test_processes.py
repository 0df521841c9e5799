"""`coins serve --processes N`: N processes on one port share one memory-mapped index; /metrics
sums them; admin writes (an API key) are refused, since the one writer is a separate process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from serve_real import Built, ready_pids, start_server, stop_server

from coins.serve.api.processes import ProcessesConfigError, check_processes

SEARCHES = 60


def search_count(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    pattern = r'^coins_http_requests_total\{[^}]*route="/v1/search"[^}]*status="200"\} (\S+)$'
    return sum(float(v) for v in re.findall(pattern, text, re.M))


def test_an_api_key_or_a_private_index_per_process_is_refused(tiny_built: Built) -> None:
    check_processes(tiny_built.settings(processes=2, mmap=True))  # the one valid combination
    check_processes(tiny_built.settings(api_key="k"))  # one process: the writer
    with pytest.raises(ProcessesConfigError, match="expected no --api-key"):
        check_processes(tiny_built.settings(processes=2, mmap=True, api_key="k"))
    with pytest.raises(ProcessesConfigError, match="expected --mmap"):
        check_processes(tiny_built.settings(processes=2))


def test_the_command_refuses_an_api_key_with_several_processes(tiny_built: Built) -> None:
    built = tiny_built
    cmd = [sys.executable, "-m", "coins.cli", "serve", str(built.index_dir), "--model",
           str(built.model), "--processes", "2", "--mmap", "--api-key", "k"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "expected no --api-key" in done.stderr and "separate single-process" in done.stderr


@pytest.mark.slow
def test_two_processes_answer_searches_and_metrics_sum_both(
    tiny_built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    metrics_dir = tmp_path / "metrics"  # given, so the per-process files can be looked at
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(metrics_dir))
    monkeypatch.setenv("COINS_HEADER_TIMEOUT_S", "1")  # the workers keep the header deadline
    proc, url = start_server(tiny_built, "--processes", "2", "--mmap", timeout=120)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")  # this process keeps one registry
    try:
        deadline = time.monotonic() + 120
        while len(ready_pids(url)) < 2:  # /readyz answers for whichever process took it
            assert time.monotonic() < deadline, "the second process never became ready"
            time.sleep(0.2)
        dim = httpx.get(f"{url}/v1/index").json()["dim"]
        xq = np.eye(1, dim, dtype=np.float32).tolist()  # [1, D]

        def search(_: int) -> int:  # a new connection each: the kernel picks the process
            return httpx.post(f"{url}/v1/search", json={"vectors": xq, "k": 3}).status_code

        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(search, range(SEARCHES)))
        assert statuses == [200] * SEARCHES
        assert search_count(url) == SEARCHES  # every process's requests, whichever answers
        counters = {p.name for p in metrics_dir.glob("counter_*.db")}
        assert len(counters) == 2, counters  # both processes counted requests
        with socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), 10) as idle:
            assert idle.recv(1) == b""  # closed after 1 s without a request line
    finally:
        stop_server(proc)
    assert not list(metrics_dir.glob("*.db"))  # cleaned at exit


_WORKER = """
import os, signal, sys
from coins.serve.api.observability import ServiceMetrics, exposition
m = ServiceMetrics()
m.ready.set(1)
m.index_size.set(int(sys.argv[1]))
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)  # no clean exit: process_exited never runs
sys.stdout.write(exposition(m).decode())
"""


def test_a_worker_killed_without_a_clean_exit_leaves_the_metrics(tmp_path: Path) -> None:
    """Two sibling workers share a metrics folder; one dies by SIGKILL: the other's /metrics
    shows only itself as ready, and the index size of the live one."""
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run = [sys.executable, "-c", _WORKER]
    killed = subprocess.run([*run, "999", "kill"], env=env, capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    assert {p.name for p in tmp_path.glob("gauge_live*.db")}  # what the dead one left behind
    live = subprocess.run([*run, "5", "live"], env=env, capture_output=True, text=True)
    assert live.returncode == 0, live.stderr
    ready = re.findall(r'^coins_ready\{pid="(\d+)"\} (\S+)$', live.stdout, re.M)
    assert len(ready) == 1 and ready[0][1] == "1.0", live.stdout  # itself only
    assert re.search(r"^coins_index_items 5\.0$", live.stdout, re.M), live.stdout
    assert len(list(tmp_path.glob("gauge_live*.db"))) == 2  # its own two: the dead one's gone


@pytest.mark.slow
def test_metrics_after_a_worker_is_killed_list_only_live_processes(
    tiny_built: Built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))
    proc, url = start_server(tiny_built, "--processes", "2", "--mmap", timeout=120)
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    try:
        deadline = time.monotonic() + 120
        while len(pids := ready_pids(url)) < 2:
            assert time.monotonic() < deadline, "the second process never became ready"
            time.sleep(0.2)
        victim = sorted(pids)[0]
        os.kill(int(victim), signal.SIGKILL)
        while len(now := ready_pids(url) - {victim}) < 2:  # uvicorn starts a replacement
            assert time.monotonic() < deadline + 60, f"no replacement: {now}"
            time.sleep(0.2)
        for _ in range(2):  # at every scrape, whichever process answers it
            assert victim not in ready_pids(url)
    finally:
        stop_server(proc)
