"""Run many `coins train` configurations side by side (one GPU or CPU) and tabulate them.

A spec is a JSON list of {"name": ..., "args": [...]} where args are `coins train` flags. Runs
start in the spec's order, `--parallel` at a time; none starts after `--deadline-s`, and runs
still going at the deadline are stopped and reported as unfinished. Each finished run is also
evaluated on the head embedding, so the table shows both features.

    python benchmarks/sweep.py spec.json --out runs/sweep --parallel 10 --deadline-s 400
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def start(
    name: str, args: list[str], out: Path, device: str, head: bool = True
) -> subprocess.Popen[bytes]:
    run_dir = out / name
    script = (
        "import sys, json; from pathlib import Path; from coins.cli import main;"
        "from coins.retrieval.evaluate import evaluate_model_on;"
        "sys.argv = ['coins', 'train', *sys.argv[1:]]\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "d = Path(sys.argv[sys.argv.index('--out') + 1])\n"
        "c = json.loads((d / 'config.json').read_text())\n"
    )
    if head:  # the head embedding too: one more pass over the eval split
        script += (
            "evaluate_model_on(c['dataset'], c['eval_split'], d/'checkpoint.pt', root=c['root'],"
            " options=c['dataset_options'], which='head', device=c['device'],"
            " json_path=d/'eval-head.json')\n"
        )
    cmd = [sys.executable, "-c", script, *args, "--device", device, "--out", str(run_dir)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    log = (out / f"{name}.log").open("wb")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def result(name: str, args: list[str], out: Path, wall: float, rc: int | None) -> dict:
    record: dict = {"name": name, "args": args, "wall_s": round(wall, 1), "rc": rc}
    for key, file in (("backbone", "eval.json"), ("head", "eval-head.json")):
        path = out / name / file
        if path.is_file():
            m = json.loads(path.read_text())
            record[key] = {
                "fine_r1": m["fine"]["recall@1"],
                "fine_r8": m["fine"]["recall@8"],
                "coarse_r1": m["coarse"]["recall@1"],
                "fine_map_r": m["fine"].get("map@r"),
            }
    if rc not in (0, None):
        tail = (out / f"{name}.log").read_text(errors="replace").splitlines()[-6:]
        record["error"] = "\n".join(tail)
    return record


def sweep(
    spec: list[dict], out: Path, parallel: int, deadline: float, device: str, head: bool = True
) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    pending = list(spec)
    running: dict[str, tuple[subprocess.Popen[bytes], float, list[str]]] = {}
    done: list[dict] = []
    t0 = time.monotonic()
    while pending or running:
        for name, (proc, tic, args) in list(running.items()):
            if proc.poll() is not None:
                done.append(result(name, args, out, time.monotonic() - tic, proc.returncode))
                del running[name]
        late = time.monotonic() - t0 > deadline
        while pending and len(running) < parallel and not late:
            run = pending.pop(0)
            running[run["name"]] = (start(run["name"], run["args"], out, device, head),
                                    time.monotonic(), run["args"])  # fmt: skip
        if late:
            for name, (proc, tic, args) in running.items():
                proc.kill()
                done.append(result(name, args, out, time.monotonic() - tic, None))
            done += [{"name": r["name"], "args": r["args"], "rc": "not started"} for r in pending]
            break
        time.sleep(1)
    return done


def table(done: list[dict]) -> str:
    lines = ["| run | fine R@1 backbone | fine R@1 head | coarse R@1 | wall s | rc |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for r in done:
        bb, hd = r.get("backbone", {}), r.get("head", {})
        f = lambda d, k: f"{100 * d[k]:.1f}" if k in d else "-"  # noqa: E731
        lines.append(f"| {r['name']} | {f(bb, 'fine_r1')} | {f(hd, 'fine_r1')} | "
                     f"{f(bb, 'coarse_r1')} | {r.get('wall_s', '-')} | {r['rc']} |")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("spec", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parallel", type=int, default=4)
    p.add_argument("--deadline-s", type=float, default=1e9)
    p.add_argument("--device", default="cpu")
    p.add_argument("--results", type=Path, help="also write the records here (JSON)")
    p.add_argument("--no-head", action="store_true", help="skip the head-embedding evaluation")
    a = p.parse_args()
    spec = json.loads(a.spec.read_text())
    done = sweep(spec, a.out, a.parallel, a.deadline_s, a.device, not a.no_head)
    text = json.dumps(done, indent=1)
    (a.out / "sweep.json").write_text(text)
    if a.results:
        a.results.write_text(text)
    print(table(done))


if __name__ == "__main__":
    main()
