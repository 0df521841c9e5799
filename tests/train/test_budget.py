"""A run sized to its gallery and to a time budget before it trains, saying why."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from coins.retrieval.data.product_photos import write_product_photos
from coins.train import budget, train
from coins.train.config import TrainConfig, field_docs, load_config


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """120 photos of 12 products of 4 shapes, 24-40 px, no split folders."""
    out = tmp_path_factory.mktemp("products")
    write_product_photos(out, 120, products=12, coarse=4, sizes=(24, 40), seed=5, workers=1)
    return out


def test_folder_with_test_fraction_is_sized_and_recorded(
    gallery: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = load_config(dataset="folder", root=str(gallery), test_fraction=0.2, seed=1)
    err = capsys.readouterr().err
    assert (cfg.test_fraction, cfg.split_by, cfg.seed) == (0.2, "item", 1)
    assert cfg.to_dict()["test_fraction"] == 0.2  # config.json is cfg.to_dict()
    # 96 training images (2 of 10 per product to test): the rgb-32 recipe's batch 128 and K
    # 8192 shrink to a quarter and a half of them
    assert (cfg.batch_size, cfg.K) == (24, 48)
    assert "96 training images: batch 24" in err and "queue K 48" in err


def test_the_users_own_options_are_not_sized(gallery: Path) -> None:
    cfg = load_config(
        dataset="folder", root=str(gallery), test_fraction=0.2, batch_size=16, K=32, epochs=3
    )
    assert (cfg.batch_size, cfg.K, cfg.epochs) == (16, 32, 3)


def test_too_small_a_gallery_names_the_fix(gallery: Path, tmp_path: Path) -> None:
    cfg = load_config(dataset="folder", root=str(gallery), test_fraction=0.9)  # 12 to train
    with pytest.raises(ValueError, match=r"12 training images are too few .* --test-fraction"):
        train(cfg, tmp_path / "run")  # before anything is built
    assert not (tmp_path / "run").exists()


def test_without_a_dataset_says_what_it_trains_on(capsys: pytest.CaptureFixture[str]) -> None:
    load_config(fit=False)
    err = capsys.readouterr().err
    assert "no data set given (--dataset): training on synthetic-patches" in err
    assert "fashion-mnist" in err  # the list of data sets
    load_config(dataset="synthetic-patches", fit=False)
    assert "no data set given" not in capsys.readouterr().err


SINCE_START = budget._since_process_start  # the real one, before any test replaces it


@pytest.fixture(autouse=True)
def _fresh_process(monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget counts from the process's start: a test process has run for a while."""
    monkeypatch.setattr(budget, "_since_process_start", lambda: 0.0)


def test_the_budget_counts_from_the_process_start() -> None:
    before = SINCE_START()
    assert 0 < before < 7 * 24 * 3600  # this test process has run for a while already
    time.sleep(0.05)
    assert SINCE_START() > before


def _fake_timing(step_s: float) -> Any:
    """`step_s` seconds a step at the timed size, nothing else costs (fit_to_budget scales the
    step by the pixels for smaller sizes)."""

    def timed(options: dict[str, Any], train: Any, size: int, **_: Any) -> dict[str, float]:
        zero = {"forward_s": 0.0, "decode_s": 0.0, "augment_s": 0.0, "images_per_s": 1.0}
        return {"step_s": step_s, **zero}

    return timed


def _options(gallery: Path, **more: Any) -> dict[str, Any]:
    cfg = load_config(dataset="folder", root=str(gallery), test_fraction=0.2, fit=False)
    return {**cfg.to_dict(), "batch_size": 16, "epochs": 50, **more}


def test_budget_cuts_epochs_then_input_size(
    gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _options(gallery, time_budget_min=1.0)
    options["model"]["preprocess"]["input_size"] = 224
    train = budget._train_split(options)  # 96 images: 6 steps of 16 an epoch
    # 0.8 s a step at 224 px: 54 s planned of 60 (MARGIN) fit 11 epochs of 4.8 s
    monkeypatch.setattr(budget, "_time_steps", _fake_timing(0.8))
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert fitted["model"]["preprocess"]["input_size"] == 224 and fitted["epochs"] == 11
    # 10 s a step at 224 px: 60 s an epoch does not fit 3 epochs; at 112 px (a quarter of the
    # pixels) 15 s an epoch fits 3
    monkeypatch.setattr(budget, "_time_steps", _fake_timing(10.0))
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert fitted["model"]["preprocess"]["input_size"] == 112 and fitted["epochs"] == 3
    assert "time budget 1 min" in capsys.readouterr().err
    # an input size the user set stays; the epochs shrink instead
    fitted = budget.fit_to_budget(options, train, fixed={"model.preprocess.input_size"})
    assert fitted["model"]["preprocess"]["input_size"] == 224 and fitted["epochs"] == 1
    fitted = budget.fit_to_budget(options, train, fixed={"epochs"})
    assert fitted["epochs"] == 50  # the user's epochs, however long


def test_a_budget_too_short_for_one_epoch_stops_the_run_early(
    gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _options(gallery, time_budget_min=1.0)
    options["model"]["preprocess"]["input_size"] = 224
    train = budget._train_split(options)
    # 100 s a step at 224 px, 25 s at 112 px: 54 s hold 2 of an epoch's 6 steps
    monkeypatch.setattr(budget, "_time_steps", _fake_timing(100.0))
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert fitted["model"]["preprocess"]["input_size"] == 112
    assert (fitted["epochs"], fitted["max_steps"]) == (1, 2)
    err = capsys.readouterr().err
    assert "cut to 2 of their 6 steps (max_steps)" in err and "the run stops early" in err


def test_the_timing_runs_here(gallery: Path) -> None:
    options = _options(gallery, time_budget_min=5.0)
    timing = budget._time_steps(options, budget._train_split(options), 32)
    assert set(timing) == {"step_s", "forward_s", "decode_s", "augment_s", "images_per_s"}
    assert timing["step_s"] > 0 and timing["forward_s"] > 0 and timing["decode_s"] > 0
    frozen = budget._time_steps({**options, "freeze_stages": 2}, budget._train_split(options), 32)
    assert frozen["step_s"] > 0


def _timing_by_frozen(step_s: dict[int, float], calls: list[int]) -> Any:
    """`step_s[k]` seconds a step with `freeze_stages` k, at the timed size; `calls` collects
    the levels timed."""

    def timed(options: dict[str, Any], train: Any, size: int, **_: Any) -> dict[str, float]:
        k = int(options.get("freeze_stages", 0))
        calls.append(k)
        zero = {"forward_s": 0.0, "decode_s": 0.0, "augment_s": 0.0}
        return {"step_s": step_s[k], **zero, "images_per_s": 16 / step_s[k]}

    return timed


def test_pretrained_weights_freeze_stages_before_the_input_size_steps_down(
    gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _options(gallery, time_budget_min=1.0)  # rgb-32's narrow ResNet-18: 4 stages
    options["model"]["preprocess"]["input_size"] = 224
    train = budget._train_split(options)  # 96 images: 6 steps of 16 an epoch
    calls: list[int] = []
    # 60 s an epoch unfrozen, 36 s with the stem and stage 1 frozen, 12 s with stages 1-2: of
    # 54 s planned, 3 epochs fit only with two stages frozen
    monkeypatch.setattr(budget, "_time_steps", _timing_by_frozen({0: 10, 1: 6, 2: 2}, calls))
    fitted = budget.fit_to_budget(options, train, fixed=set())  # from scratch: never frozen
    assert fitted["freeze_stages"] == 0 and fitted["model"]["preprocess"]["input_size"] == 112
    assert calls == [0] and "frozen" not in capsys.readouterr().err
    options["model"]["pretrained"] = "resnet18.a1_in1k"  # only the name is read: no download
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert fitted["freeze_stages"] == 2 and fitted["model"]["preprocess"]["input_size"] == 224
    assert fitted["epochs"] == 4 and calls == [0, 0, 1, 2]
    err = capsys.readouterr().err
    said = "stem and stages 1-2 frozen (timed: 8.0 training images/s against 1.6 unfrozen)"
    assert f"input 224 px, {said}, 4 epochs" in err
    # freezing two stages is not enough: then the input size steps down, two stages frozen
    # (16, 12, 8 s a step at 224 px; 8 s at 128 px is 2.6 s: 15.7 s an epoch, 3 fit)
    calls.clear()
    monkeypatch.setattr(budget, "_time_steps", _timing_by_frozen({0: 16, 1: 12, 2: 8}, calls))
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert fitted["freeze_stages"] == 2 and fitted["model"]["preprocess"]["input_size"] == 128
    assert fitted["epochs"] == 3 and calls == [0, 1, 2]  # each level timed once, at 224 px
    # time to spare: nothing frozen, and said so
    monkeypatch.setattr(budget, "_time_steps", _timing_by_frozen({0: 0.8}, calls))
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert fitted["freeze_stages"] == 0 and fitted["model"]["preprocess"]["input_size"] == 224
    assert "input 224 px, no stage frozen (3 epochs fit unfrozen)" in capsys.readouterr().err


def test_the_users_frozen_stages_stay(
    gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _options(gallery, time_budget_min=1.0, freeze_stages=1)
    options["model"]["preprocess"]["input_size"] = 224
    options["model"]["pretrained"] = "resnet18.a1_in1k"
    calls: list[int] = []
    monkeypatch.setattr(budget, "_time_steps", _timing_by_frozen({1: 6.0}, calls))
    fitted = budget.fit_to_budget(options, budget._train_split(options), fixed={"freeze_stages"})
    assert fitted["freeze_stages"] == 1 and calls == [1]  # timed as set, the input size cut
    assert fitted["model"]["preprocess"]["input_size"] == 128
    assert "stem and stage 1 frozen (yours)" in capsys.readouterr().err


def test_resume_keeps_what_was_fitted(tmp_path: Path) -> None:
    assert budget.fitted_from_run(tmp_path) == {}
    cfg = TrainConfig(time_budget_min=12.0, epochs=4, batch_size=32, K=512)
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict()))
    assert budget.fitted_from_run(tmp_path) == {
        "epochs": 4,
        "batch_size": 32,
        "K": 512,
        "max_steps": 0,
        "freeze_stages": 0,
        "model.preprocess.input_size": 32,
    }


def test_every_training_option_is_explained() -> None:
    """Every flag of `coins train` has help: the comment on the field's line, or the comment
    lines just above it."""
    docs = {d.key: d.comment for d in field_docs()}
    assert not [key for key, comment in docs.items() if not comment]
    assert docs["alpha_schedule"].startswith("constant, or cosine")
    assert "shared: L_cos classifies q" in docs["classifier_head"]
    assert "Kendall" in docs["loss_weighting"]


def test_a_short_budget_drops_the_head_only_warm_up(
    gallery: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    options = _options(gallery, time_budget_min=1.0, head_warmup_epochs=1)
    options["model"]["preprocess"]["input_size"] = 112
    train = budget._train_split(options)
    monkeypatch.setattr(budget, "_time_steps", _fake_timing(4.0))  # 24 s an epoch: 2 fit
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert (fitted["epochs"], fitted["head_warmup_epochs"]) == (2, 0)
    assert "the head-only warm-up dropped: 1 of the 2 epochs" in capsys.readouterr().err
    monkeypatch.setattr(budget, "_time_steps", _fake_timing(0.8))  # 4.8 s an epoch: 11 fit
    fitted = budget.fit_to_budget(options, train, fixed=set())
    assert (fitted["epochs"], fitted["head_warmup_epochs"]) == (11, 1)
    fitted = budget.fit_to_budget(options, train, fixed={"head_warmup_epochs"})
    assert fitted["head_warmup_epochs"] == 1  # the user's


def test_training_keeps_the_budget_when_the_machine_slows_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The timing said 3 epochs fit; the deadline passes in the first: training stops at a
    step's end, and the final evaluation still runs."""
    from train_fixtures import tiny_config

    from coins.train.metrics_log import read_log

    # as if the process had run for an hour: the deadline has passed
    monkeypatch.setattr(budget, "_since_process_start", lambda: 3600.0)
    cfg = tiny_config(epochs=3, time_budget_min=1.0)
    train(cfg, tmp_path)
    log = read_log(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in log if r["event"] == "epoch"] == [1]  # one step, then stopped
    assert [r["epoch"] for r in log if r["event"] == "eval"][-1] == 1
    assert json.loads((tmp_path / "eval.json").read_text())["fine"]["recall@1"] >= 0
    assert (
        "time budget of 1 min: training stops at step 1 (epoch 1 of 3)" in capsys.readouterr().err
    )
