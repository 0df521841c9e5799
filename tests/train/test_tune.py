"""`coins tune`: trials select on the held-out split only, and the best.yaml it writes trains."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from train_fixtures import tiny_config
from typer.testing import CliRunner

from coins.cli import app
from coins.train.config import TrainConfig, load_config
from coins.train.metrics_log import read_log
from coins.train.tune import COARSE_METHODS, selection_caveat, tune

PNG = b"\x89PNG\r\n\x1a\n"


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_coins_tune_writes_a_best_yaml_that_coins_train_trains(tmp_path) -> None:
    base = tmp_path / "base.yaml"
    base.write_text(json.dumps(tiny_config(max_steps=2).to_dict()))  # JSON is YAML
    search, run = tmp_path / "search", tmp_path / "run"
    args = ["tune", "--dataset", "synthetic-patches", "--trials", "2", "--epochs", "1",
            "--methods", "coins,maskcon", "--config", str(base), "--set", "select_by=view",
            "--out", str(search)]  # fmt: skip
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output[-3000:]
    assert "coins train --config" in done.output
    assert "caution: the label-free score chose among several methods" in done.output
    for trial in (search / "trials").iterdir():  # every evaluation of every trial on val
        log = read_log(trial / "metrics.jsonl")
        assert {r["split"] for r in log if "split" in r} == {"val"}
    table = rows(search / "trials.csv")
    assert len(table) == 2 and {r["criterion"] for r in table} == {"view_recall@1"}
    assert (search / "trials.png").read_bytes().startswith(PNG)
    best = max((r for r in table if r["state"] == "complete"), key=lambda r: float(r["score"]))
    chosen = yaml.safe_load((search / "best.yaml").read_text())
    assert chosen["method"] == best["method"]
    for key in ("alpha", "peer_w"):
        if best[key]:
            assert chosen[key] == pytest.approx(float(best[key]))
    assert (chosen["val_fraction"], chosen["eval_split"]) == (0.2, "test")

    done = CliRunner().invoke(app, ["train", "--config", str(search / "best.yaml"), "-o", str(run)])
    assert done.exit_code == 0, done.output[-3000:]
    assert "val (held out of train)" in done.output and "test (evaluated once)" in done.output
    trained = json.loads((run / "config.json").read_text())
    assert trained == json.loads(json.dumps(load_config(search / "best.yaml").to_dict()))
    assert trained["method"] == best["method"]
    written = json.loads((run / "eval.json").read_text())
    assert written["selection"]["split"] == "val" and set(written["val"]) == {"fine", "coarse"}


def test_weak_trials_are_pruned_and_the_best_is_written(tmp_path, monkeypatch) -> None:
    def fake_train(cfg: TrainConfig, out: Path, progress: bool, on_eval: Any) -> dict:
        assert cfg.eval_split == "val" and cfg.val_fraction == 0.3  # never the test split
        score = 0.9 if cfg.method == "coins" else 0.1
        for epoch in range(1, cfg.epochs + 1):
            on_eval({"epoch": epoch, "selection": {"score": score, "criterion": "view_recall@1"}})
        return {}

    monkeypatch.setattr("coins.train.tune.train", fake_train)
    base = tmp_path / "base.yaml"
    base.write_text(json.dumps(tiny_config().to_dict()))
    result = tune(tmp_path / "s", trials=12, epochs=4, config=base, val_fraction=0.3,
                  methods=("coins", "maskcon"))  # fmt: skip
    table = rows(result.trials_csv)
    assert {r["state"] for r in table} == {"complete", "pruned"}
    assert all(r["method"] == "maskcon" for r in table if r["state"] == "pruned")
    assert result.best_score == 0.9
    assert yaml.safe_load(result.best_yaml.read_text())["method"] == "coins"
    # the label-free score compared two methods: the result and best.yaml say so
    assert result.caveat is not None and "--methods METHOD" in result.caveat
    assert "# caution: the label-free score chose among several methods" in (
        result.best_yaml.read_text()
    )


def test_the_caveat_is_for_label_free_choices_of_methods_or_alpha() -> None:
    across = selection_caveat("view_recall@1", ("coins", "maskcon"))
    assert across is not None and "among several methods" in across
    alpha = selection_caveat("view_recall@1", ("coins-soft",))  # alpha of one method
    assert alpha is not None and "chose alpha" in alpha
    assert selection_caveat("view_recall@1", ("maskcon",)) is None  # w of one method
    assert selection_caveat("fine_recall@1", ("coins", "maskcon")) is None  # fine labels decide


def test_tune_refuses_what_would_select_on_test_or_cannot_run(tmp_path) -> None:
    with pytest.raises(ValueError, match=r"val_fraction in \(0, 1\)"):
        tune(tmp_path, trials=1, epochs=1, val_fraction=0.0)
    with pytest.raises(ValueError, match="methods \\['opt'\\]"):
        tune(tmp_path, trials=1, epochs=1, methods=("opt",))
    assert "opt" not in COARSE_METHODS and "coins" in COARSE_METHODS
