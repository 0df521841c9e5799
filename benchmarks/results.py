"""Train every method with the same budget and write the results table (docs/results.md).

Each run is a real `coins train` command (printed in the table with its wall time), so any row
can be rerun by hand. Runs already finished in RUNS_DIR are read back, not trained again.

    .venv/bin/python benchmarks/results.py synthetic --seeds 0 1 2
    .venv/bin/python benchmarks/results.py fashion-mnist --seeds 0
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

METHODS = ("cos", "opt", "ins", "coins", "coins-imp", "coinsp", "grafit", "maskcon")
SUITES: dict[str, dict[str, object]] = {
    # Options every method shares on a suite; the preset of the data set supplies the rest.
    "synthetic": {"dataset": "synthetic-patches", "args": []},
    "fashion-mnist": {"dataset": "fashion-mnist", "args": []},
}


def command(suite: str, method: str, seed: int, out: Path, extra: list[str]) -> list[str]:
    dataset = str(SUITES[suite]["dataset"])
    args = list(SUITES[suite]["args"])  # type: ignore[call-overload]
    return ["coins", "train", "--method", method, "--dataset", dataset, "--seed", str(seed),
            "--out", str(out), *args, *extra]  # fmt: skip


def run(cmd: list[str], out: Path) -> dict[str, object]:
    """Run one training command (unless finished before) and return its metrics and wall time."""
    record = out / "result.json"
    if record.is_file():
        return json.loads(record.read_text())
    tic = time.perf_counter()
    exe = [str(Path(sys.executable).with_name("coins")), *cmd[1:]]
    subprocess.run(exe, check=True, stdout=subprocess.DEVNULL)
    result = {
        "command": shlex.join(cmd),
        "wall_s": time.perf_counter() - tic,
        "metrics": json.loads((out / "eval.json").read_text()),
    }
    record.write_text(json.dumps(result, indent=2))
    return result


def row(method: str, results: list[dict[str, object]]) -> str:
    def stat(level: str, key: str) -> str:
        values = [100 * r["metrics"][level][key] for r in results]  # type: ignore[index]
        if len(values) == 1:
            return f"{values[0]:.1f}"
        return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"

    fine = " | ".join(stat("fine", f"recall@{k}") for k in (1, 2, 4, 8))
    wall = statistics.mean(float(r["wall_s"]) for r in results)  # type: ignore[arg-type]
    return f"| `{method}` | {fine} | {stat('coarse', 'recall@1')} | {wall:.0f} s |"


def table(suite: str, runs: dict[str, list[dict[str, object]]]) -> str:
    lines = [
        "| method | fine R@1 | fine R@2 | fine R@4 | fine R@8 | coarse R@1 | wall / run |",
        "|---|---|---|---|---|---|---|",
        *(row(m, rs) for m, rs in runs.items()),
        "",
        "Commands:",
        "",
        "```",
        *(str(r["command"]) for rs in runs.values() for r in rs),
        "```",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs/results"))
    parser.add_argument("--extra", default="", help="More `coins train` flags for every run.")
    parser.add_argument("--output", type=Path, help="Write the table here (default: print).")
    args = parser.parse_args()
    runs: dict[str, list[dict[str, object]]] = {}
    for method in args.methods:
        for seed in args.seeds:
            out = args.runs_dir / args.suite / f"{method}-s{seed}"
            cmd = command(args.suite, method, seed, out, shlex.split(args.extra))
            print("running:", shlex.join(cmd), flush=True)
            runs.setdefault(method, []).append(run(cmd, out))
    text = table(args.suite, runs)
    if args.output:
        args.output.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
