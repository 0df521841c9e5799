"""The table of a pretrained-start sweep: the starting backbone untrained (each fine-tuning run's
epoch-0 evaluation), the fine-tuned runs and the runs from scratch, mean ± std over seeds.

    python benchmarks/pretrained_table.py runs/i23-fm/sweep* --group finetune scratch
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path


def rows(sweeps: list[Path], prefix: str) -> list[tuple[str, dict, dict | None, float]]:
    """(run, trained metrics, untrained metrics, wall minutes) of the finished runs named
    prefix-s<N> in the sweep folders."""
    out = []
    found = (run for sweep in sweeps for run in sweep.glob(f"{prefix}-s*"))
    runs = sorted(found, key=lambda r: r.name)
    for run in runs:
        if not (run / "eval.json").is_file():
            continue
        written = json.loads((run / "eval.json").read_text())
        log = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        minutes = (log[-1]["time"] - (run / "config.json").stat().st_mtime) / 60  # the run's own
        out.append((run.name, written, written.get("untrained"), minutes))
    return out


def cell(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def line(name: str, metrics: list[dict], minutes: list[float] | None) -> str:
    def pct(level: str, key: str) -> list[float]:
        return [100 * m[level][key] for m in metrics]

    per_seed = ", ".join(f"{v:.1f}" for v in pct("fine", "recall@1"))
    wall = cell(minutes) if minutes else "-"
    return (
        f"| {name} | {len(metrics)} | **{cell(pct('fine', 'recall@1'))}** | "
        f"{cell(pct('fine', 'map@r'))} | {cell(pct('coarse', 'recall@1'))} | {per_seed} | {wall} |"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sweep", type=Path, nargs="+", help="sweep output folders")
    p.add_argument("--group", nargs="+", required=True, help="run name prefixes, in order")
    a = p.parse_args()
    print(
        "| configuration | runs | fine R@1 | fine MAP@R | coarse R@1 | fine R@1 per run | minutes |"
    )
    print("|---|---|---|---|---|---|---|")
    first = rows(a.sweep, a.group[0])
    untrained = [u for _, _, u, _ in first if u is not None]
    if untrained:
        print(line("(i) starting backbone, untrained", untrained, None))
    for prefix in a.group:
        found = rows(a.sweep, prefix)
        if found:
            print(line(prefix, [m for _, m, _, _ in found], [t for *_, t in found]))


if __name__ == "__main__":
    main()
