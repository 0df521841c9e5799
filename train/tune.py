"""`coins tune`: choose the method and its loss weights on a held-out split, never on test.

Each trial trains one configuration with a validation split held out of the training split
(`val_fraction`, stratified by coarse class) and `eval_split: val`, so no trial evaluates the
test split. It is scored every `eval_every` epochs by the selection score (train/selection.py:
view R@1 within coarse class, label-free, or fine R@1 on the validation rows that have a fine
label); Optuna's TPE sampler proposes the next trial and its median pruner stops a trial whose
score falls below the median of earlier trials at the same epoch. The best trial's resolved
options are written as DIR/best.yaml, which `coins train --config DIR/best.yaml` trains again
(with the same validation split held out, evaluating the test split once at the end).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from ..retrieval.atomic import atomic_path
from ..retrieval.progress import Progress
from .config import TrainConfig, load_config
from .loop import TrainingDiverged, train
from .methods import METHODS

# Methods a user with coarse labels only can train (not `opt`, which reads fine labels).
COARSE_METHODS = tuple(name for name, m in METHODS.items() if "fine" not in m.labels)
ALPHA = (0.1, 16.0)  # L_cos weight, log-uniform: docs/results.md saw 0.5 trail and 8 tie cos
PEER_W = (0.1, 0.9)  # the SupCon / soft-target weight w of grafit and maskcon


@dataclass(frozen=True)
class TuneResult:
    """What `tune` wrote, and the best trial's number, score and criterion."""

    best_yaml: Path
    trials_csv: Path
    trials_png: Path
    best_trial: int
    best_score: float
    criterion: str
    caveat: str | None = None  # why the choice may not hold (`selection_caveat`), or None


# docs/results.md, "The label-free selection score": on synthetic patches the view score ranked
# the weights within each method as test did but not the methods; on Fashion-MNIST it ranked
# every run backwards (Spearman -1.0 over 6 runs), alpha included: it rewards the instance term.
VIEW_ACROSS_METHODS = (
    "the label-free score chose among several methods; it does not rank methods as test does "
    "(it favours coins-imp, coinsp and ins on synthetic patches, and ranked Fashion-MNIST runs "
    "backwards: docs/results.md). Label a few held-out rows per fine class (a `fine` column), "
    "or rerun with --methods METHOD"
)
VIEW_ALPHA = (
    "the label-free score chose alpha, the weight of L_cos; it ranked alpha right on synthetic "
    "patches but backwards on Fashion-MNIST, where it picked the smallest alpha, the worst on "
    "test (docs/results.md). Label a few held-out rows per fine class (a `fine` column)"
)


def selection_caveat(criterion: str, methods: Sequence[str]) -> str | None:
    """The warning a search deserves when the label-free score made a choice it has been seen
    to make wrongly: between methods, or of alpha (the methods that weigh L_cos)."""
    if criterion != "view_recall@1":
        return None
    if len(set(methods)) > 1:
        return VIEW_ACROSS_METHODS
    if any(METHODS[m].key_encoder and METHODS[m].classifier is not None for m in methods):
        return VIEW_ALPHA
    return None


def suggest(trial: optuna.Trial, methods: Sequence[str], epochs: int) -> dict[str, Any]:
    """The options one trial trains with: the method, then only the weights it reads."""
    name = trial.suggest_categorical("method", list(methods))
    method = METHODS[name]
    options: dict[str, Any] = {"method": name}
    if method.key_encoder and method.classifier is not None:  # L_ins (or L_proxy) + alpha L_cos
        options["alpha"] = trial.suggest_float("alpha", *ALPHA, log=True)
        options["cos_warmup_epochs"] = trial.suggest_int("cos_warmup_epochs", 0, epochs // 2)
    if method.peer is not None:
        options["peer_w"] = trial.suggest_float("peer_w", *PEER_W)
    return options


def tune(
    out: str | Path,
    trials: int,
    epochs: int,
    dataset: str | None = None,
    root: str | Path | None = None,
    dataset_options: dict[str, Any] | None = None,
    config: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    methods: Sequence[str] = COARSE_METHODS,
    val_fraction: float = 0.2,
    eval_every: int = 1,
    seed: int = 0,
    device: str | None = None,
    progress: bool = False,
) -> TuneResult:
    """Search `trials` configurations of `epochs` epochs each; write DIR/best.yaml, trials.csv
    and trials.png. `config` and `overrides` (dotted keys) set every option not searched."""
    if trials < 1 or epochs < 1:
        raise ValueError(f"expected trials >= 1 and epochs >= 1, got {trials} and {epochs}")
    if not 0 < val_fraction < 1:
        raise ValueError(
            f"tune selects on held-out images: expected val_fraction in (0, 1), got {val_fraction}"
        )
    unknown = [m for m in methods if m not in COARSE_METHODS]
    if unknown or not methods:
        raise ValueError(f"methods {unknown}: expected some of {', '.join(COARSE_METHODS)}")
    out = Path(out)
    if (out / "trials").exists():
        raise FileExistsError(f"{out} already holds a search (trials/); pass another --out")
    given = {
        "dataset": dataset,
        "root": None if root is None else str(root),
        "dataset_options": dataset_options,
        "seed": seed,
    }
    fixed = {
        **{k: v for k, v in given.items() if v is not None},
        **(overrides or {}),
        "device": device,
        "epochs": epochs,
        "val_fraction": val_fraction,
        "eval_split": "val",  # no trial evaluates the test split
        "eval_every": eval_every,
        "eval_untrained": False,  # a trial is scored on its own progress; spare the extra pass
    }
    base = load_config(config, **fixed)  # checks every fixed option before the first trial
    # a line per trial (each trial's training reports its own progress as well)
    report = Progress("coins tune", trials, unit="trial", enabled=progress)

    def objective(trial: optuna.Trial) -> float:
        options = suggest(trial, methods, epochs)
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                          for k, v in options.items())  # fmt: skip
        report.note(f"trial {trial.number + 1}/{trials}: {shown}")
        cfg = load_config(config, **{**fixed, **options})
        scores: list[dict[str, Any]] = []

        def score(record: dict[str, Any]) -> None:
            selection = record["selection"]
            scores.append(selection)
            trial.set_user_attr("criterion", selection["criterion"])
            trial.set_user_attr("epochs_run", record["epoch"])
            trial.report(selection["score"], record["epoch"])
            if trial.should_prune():
                raise optuna.TrialPruned(f"score {selection['score']:.4f} at {record['epoch']}")

        try:
            train(cfg, out / "trials" / f"{trial.number:03d}", progress=progress, on_eval=score)
        finally:
            last = f", {scores[-1]['criterion']} {scores[-1]['score']:.4f}" if scores else ""
            report.update(1)
            report.mark(f"trial {trial.number + 1} ended after {len(scores)} evaluations{last}")
        return float(scores[-1]["score"])

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1),
    )
    study.optimize(objective, n_trials=trials, catch=(TrainingDiverged,))
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    if not done:
        raise ValueError(f"none of the {trials} trials finished (see {out / 'trials.csv'})")
    best = study.best_trial
    chosen = load_config(config, **{**fixed, **best.params})  # the names are TrainConfig fields
    criterion = str(best.user_attrs.get("criterion", ""))
    caveat = selection_caveat(criterion, methods)
    return TuneResult(
        best_yaml=_write_best(out / "best.yaml", chosen, base, best, caveat),
        trials_csv=_write_table(out / "trials.csv", study),
        trials_png=_write_plot(out / "trials.png", study),
        best_trial=best.number,
        best_score=float(best.value or 0.0),
        criterion=criterion,
        caveat=caveat,
    )


def _write_best(
    path: Path,
    chosen: TrainConfig,
    base: TrainConfig,
    best: optuna.trial.FrozenTrial,
    caveat: str | None = None,
) -> Path:
    """The best trial's resolved options, evaluating the test split once when trained again."""
    options = json.loads(json.dumps(chosen.to_dict()))  # tuples as lists: plain YAML
    options["eval_split"] = "test" if base.eval_split == "val" else base.eval_split
    options["eval_every"] = 0
    options["eval_untrained"] = True  # the chosen run, trained again, shows what it added
    header = (
        f"# coins tune: trial {best.number} of the search, {best.user_attrs.get('criterion')} "
        f"{best.value:.4f} on the val split ({chosen.val_fraction:g} of train held out).\n"
        f"# coins train --config {path} --out RUN trains it (set val_fraction: 0 to train on "
        "all training images).\n"
    )
    if caveat is not None:
        header += f"# caution: {caveat}.\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(header + yaml.safe_dump(options, sort_keys=False))
    return path


COLUMNS = ("trial", "state", "method", "alpha", "cos_warmup_epochs", "peer_w", "score")


def _write_table(path: Path, study: optuna.Study) -> Path:
    """One row per trial: its options, state (complete, pruned, fail) and last score."""
    with atomic_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow([*COLUMNS, "criterion", "epochs_run"])
        for t in study.trials:
            value = t.value if t.value is not None else _last(t)
            writer.writerow(
                [
                    t.number,
                    t.state.name.lower(),
                    *(t.params.get(c, "") for c in COLUMNS[2:6]),
                    "" if value is None else f"{value:.6f}",
                    t.user_attrs.get("criterion", ""),
                    t.user_attrs.get("epochs_run", ""),
                ]
            )
    return path


def _last(trial: optuna.trial.FrozenTrial) -> float | None:
    """The last score a pruned trial reported."""
    steps = trial.intermediate_values
    return steps[max(steps)] if steps else None


def _write_plot(path: Path, study: optuna.Study) -> Path:
    """Score per trial (last reported), one colour per method; pruned trials hollow."""
    from .report.figures import new_figure, save_png

    figure = new_figure(7, 3.6)
    ax = figure.subplots()
    methods = sorted({str(t.params.get("method")) for t in study.trials})
    for i, name in enumerate(methods):
        for pruned in (False, True):
            points = [
                (t.number, _last(t) if t.value is None else t.value)
                for t in study.trials
                if str(t.params.get("method")) == name
                and (t.state == optuna.trial.TrialState.PRUNED) == pruned
            ]
            points = [(n, v) for n, v in points if v is not None]
            if points:
                x, y = zip(*points, strict=True)
                face = "none" if pruned else f"C{i % 10}"
                label = f"{name} (pruned)" if pruned else name
                ax.scatter(x, y, edgecolors=f"C{i % 10}", facecolors=face, label=label)
    ax.set(xlabel="trial", ylabel="selection score on val", title="coins tune")
    ax.legend(fontsize="x-small")
    return save_png(figure, path)
