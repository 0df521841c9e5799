"""Tabulate runs trained with `--val-fraction`: what validation chose, and what test says after.

Every run directory holds eval.json (coins.train.loop): the test metrics (evaluated once, at
the end), the validation metrics ("val") and the selection record ("selection": view R@1 within
coarse class, label-free; train/selection.py). Run folders are named CONFIG-sSEED.

Prints, as Markdown:
1. one row per configuration: validation view R@1, validation fine R@1 and test fine R@1 /
   MAP@R, mean ± std over its seeds;
2. the Spearman rank correlation, over every run of a coarse-label method, of each validation
   score with test fine R@1, and per seed whether the run chosen by the score is within 1 point
   of the best test fine R@1 among that seed's runs;
3. for each method tried with several weights, the weight the label-free score picks.

Runs of several data sets are tabulated one data set at a time (their scores do not compare).

    python benchmarks/selection_table.py /work/runs/stage1 /work/runs/stage2
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from coins.train.run_dir import read_run

SCORES = {"view": "val view R@1 (label-free)", "val_fine": "val fine R@1 (fine labels)"}


def collect(folders: list[Path]) -> list[dict]:
    rows = []
    for folder in folders:
        for path in sorted(p for p in folder.iterdir() if (p / "eval.json").is_file()):
            match = re.fullmatch(r"(.+)-s(\d+)", path.name)
            if not match:
                continue
            run = read_run(path)
            m = run.metrics or {}
            if "val" not in m or "selection" not in m:
                continue  # not a --val-fraction run
            rows.append(
                {
                    "config": match.group(1),
                    "seed": int(match.group(2)),
                    "method": run.config["method"],
                    "dataset": run.config["dataset"],
                    "view": 100 * m["selection"]["view_recall@1"],
                    "val_fine": 100 * m["val"]["fine"]["recall@1"],
                    "test_fine": 100 * m["fine"]["recall@1"],
                    "test_map": 100 * m["fine"].get("map@r", float("nan")),
                    "test_coarse": 100 * m["coarse"]["recall@1"],
                }
            )
    return rows


def mean_std(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    if len(a) == 1:
        return f"{a[0]:.1f}"
    return f"{a.mean():.1f} ± {a.std(ddof=1):.1f}"


def config_table(rows: list[dict]) -> list[str]:
    by_config: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_config[r["config"]].append(r)
    out = [
        "| configuration | seeds | val view R@1 | val fine R@1 | test fine R@1 | test MAP@R "
        "| test coarse R@1 |",
        "|---|---|---|---|---|---|---|",
    ]
    order = sorted(by_config, key=lambda c: -np.mean([r["view"] for r in by_config[c]]))
    for config in order:
        rs = sorted(by_config[config], key=lambda r: r["seed"])
        cells = [mean_std([r[k] for r in rs]) for k in ("view", "val_fine", "test_fine")]
        cells += [mean_std([r[k] for r in rs]) for k in ("test_map", "test_coarse")]
        seeds = ", ".join(str(r["seed"]) for r in rs)
        out.append(f"| `{config}` | {seeds} | " + " | ".join(cells) + " |")
    return out


def correlation_table(rows: list[dict]) -> list[str]:
    coarse_only = [r for r in rows if r["method"] != "opt"]  # opt reads fine labels
    test = np.array([r["test_fine"] for r in coarse_only])
    out = [
        f"Over {len(coarse_only)} runs of coarse-label methods (`opt` left out: it trains on "
        "fine labels):",
        "",
        "| score | Spearman rho with test fine R@1 | seeds where its choice is within 1 point "
        "of the best | test fine R@1 of its choice, per seed (best) |",
        "|---|---|---|---|",
    ]
    seeds = sorted({r["seed"] for r in coarse_only})
    for key, label in SCORES.items():
        rho = spearmanr([r[key] for r in coarse_only], test).statistic
        hits, picks = 0, []
        for seed in seeds:
            rs = [r for r in coarse_only if r["seed"] == seed]
            chosen = max(rs, key=lambda r: r[key])
            best = max(r["test_fine"] for r in rs)
            hits += chosen["test_fine"] >= best - 1.0
            picks.append(f"s{seed}: {chosen['test_fine']:.1f} `{chosen['config']}` ({best:.1f})")
        out.append(f"| {label} | {rho:.2f} | {hits} of {len(seeds)} | {'; '.join(picks)} |")
    return out


def within_method_table(rows: list[dict], seed: int = 0) -> list[str]:
    """For each method tried with several weights at `seed`: the weight each score picks."""
    out = [
        f"Weights within one method (seed {seed}): the configuration each score picks, and the "
        "best by test fine R@1:",
        "",
        "| method | configurations (val view R@1 / test fine R@1) | view picks | best on test |",
        "|---|---|---|---|",
    ]
    by_method: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        if r["seed"] == seed:
            by_method[r["method"]].append(r)
    for method, rs in sorted(by_method.items()):
        if len(rs) < 2:
            continue
        rs = sorted(rs, key=lambda r: r["config"])
        tried = ", ".join(f"`{r['config']}` {r['view']:.1f} / {r['test_fine']:.1f}" for r in rs)
        pick = max(rs, key=lambda r: r["view"])
        best = max(rs, key=lambda r: r["test_fine"])
        out.append(
            f"| `{method}` | {tried} | `{pick['config']}` ({pick['test_fine']:.1f}) "
            f"| `{best['config']}` ({best['test_fine']:.1f}) |"
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path, help="sweep folders holding CONFIG-sSEED runs")
    args = p.parse_args(argv)
    rows = collect(args.folders)
    if not rows:
        print("no --val-fraction runs with eval.json found", file=sys.stderr)
        return 1
    datasets = sorted({r["dataset"] for r in rows})
    for dataset in datasets:  # scores are not comparable across data sets: one block each
        rs = [r for r in rows if r["dataset"] == dataset]
        if len(datasets) > 1:
            print(f"## {dataset}\n")
        print("\n".join(config_table(rs)))
        print()
        print("\n".join(correlation_table(rs)))
        print()
        print("\n".join(within_method_table(rs)))
        print()
        print("| run | val view R@1 | val fine R@1 | test fine R@1 |")
        print("|---|---|---|---|")
        for r in sorted(rs, key=lambda r: (r["config"], r["seed"])):
            name = f"{r['config']}-s{r['seed']}"
            print(f"| `{name}` | {r['view']:.1f} | {r['val_fine']:.1f} | {r['test_fine']:.1f} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
