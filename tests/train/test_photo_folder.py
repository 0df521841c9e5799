"""`coins train` on a photo folder without splits: --test-fraction, sizing and progress lines."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from coins.cli import app
from coins.retrieval.data.product_photos import write_product_photos
from coins.train import budget, load_config


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("photos")
    write_product_photos(out, 80, products=8, coarse=4, sizes=(20, 28), seed=4, workers=1)
    return out


TINY = [
    "--set", "model.backbone_kwargs.channels=[8,16,16,32]", "--set", "model.head_hidden=16",
    "--set", "model.head_dim=8", "--num-workers", "0",
]  # fmt: skip


def test_train_a_folder_with_test_fraction(photos: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", "--dataset", "folder", "--root", str(photos), "--test-fraction", "0.25"]
    result = CliRunner().invoke(app, [*args, *TINY, "--epochs", "2", "-o", str(out)])
    assert result.exit_code == 0, result.output
    err = result.stderr
    # 10 photos a product, 3 of each to test: 56 training images; rgb-32's batch 128 and K
    # 8192 sized to them, and said why
    assert "56 training images: batch 14: a quarter" in err and "queue K 28" in err
    # progress off a terminal: the plan, the untrained row, a line per epoch's end, evaluations
    assert "coins train: 56 training images, 2 epochs of 4 steps (batch 14)" in err
    assert "coins train: untrained, on test: fine R@1" in err
    assert "epoch 1 done in" in err and "epoch 2 done in" in err and "ETA" in err
    assert "coins train: epoch 2, on test: fine R@1" in err
    assert "untrained" in result.stdout and "fine R@1 on test: untrained" in result.stdout
    config = json.loads((out / "config.json").read_text())
    assert (config["test_fraction"], config["split_by"], config["seed"]) == (0.25, "item", 0)
    assert (config["batch_size"], config["K"]) == (14, 28)


def test_a_folder_without_splits_or_test_fraction_says_how(photos: Path, tmp_path: Path) -> None:
    args = ["train", "--dataset", "folder", "--root", str(photos), "-o", str(tmp_path / "r")]
    result = CliRunner().invoke(app, [*args, *TINY, "--epochs", "1"])
    assert result.exit_code == 2
    assert "pass --test-fraction 0.2" in result.stderr


@pytest.mark.parametrize("fraction", ["0", "1", "1.5"])
def test_test_fraction_outside_0_1_is_refused(photos: Path, fraction: str) -> None:
    args = ["train", "--dataset", "folder", "--root", str(photos), "--test-fraction", fraction]
    result = CliRunner().invoke(app, [*args, "-o", "unused"])
    assert result.exit_code == 2
    assert "must be in (0, 1)" in result.stderr or "no split folders" in result.stderr


def test_the_budget_is_fitted_by_coins_train_only(
    photos: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    timed: list[int] = []

    def fake(options: dict, train: object, size: int) -> dict[str, float]:
        timed.append(size)
        zero = {"forward_s": 0.0, "decode_s": 0.0, "augment_s": 0.0, "images_per_s": 1.0}
        return {"step_s": 1.0, **zero}

    monkeypatch.setattr(budget, "_time_steps", fake)
    monkeypatch.setattr(budget, "_since_process_start", lambda: 0.0)  # a fresh process
    options = {"dataset": "folder", "root": str(photos), "test_fraction": 0.25}
    cfg = load_config(time_budget_min=1.0, **options)
    assert timed == [] and cfg.time_budget_min == 1.0  # the Python default: no timing
    cfg = load_config(time_budget_min=1.0, budget=True, **options)
    assert timed == [32]  # rgb-32's input size, timed once
    assert cfg.epochs == 13  # 54 s planned / (4 steps of 1 s), at most the recipe's 200
    assert "time budget 1 min" in capsys.readouterr().err


def test_eval_of_a_checkpoint_takes_the_test_images_its_run_held_out(
    photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The files compared, not the metrics: `coins eval CHECKPOINT --dataset folder --root DIR`
    embeds the photos that training held out (--test-fraction 0.25 --seed 3) and evaluated."""
    import coins.retrieval.evaluate as evaluate
    import coins.train.loop as loop
    from coins.retrieval.gallery import file_paths

    seen: dict[str, list[list[Path]]] = {"train": [], "eval": []}

    def recording(into: str, embed: Any) -> Any:
        def embed_dataset(model: Any, data: Any, *args: Any, **kwargs: Any) -> Any:
            seen[into].append(list(file_paths(data) or []))
            return embed(model, data, *args, **kwargs)

        return embed_dataset

    monkeypatch.setattr(loop, "embed_dataset", recording("train", loop.embed_dataset))
    monkeypatch.setattr(evaluate, "embed_dataset", recording("eval", evaluate.embed_dataset))
    out = tmp_path / "run"
    data = ["--dataset", "folder", "--root", str(photos)]
    args = ["train", *data, "--test-fraction", "0.25", "--seed", "3", *TINY]
    result = CliRunner().invoke(app, [*args, "--epochs", "1", "--max-steps", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    held = seen["train"][-1]  # the final evaluation, on the test split
    assert len(held) == 24 and all(paths == held for paths in seen["train"])
    ckpt = str(out / "checkpoint.pt")
    result = CliRunner().invoke(app, ["eval", ckpt, *data])
    assert result.exit_code == 0, result.output
    assert seen["eval"][-1] == held
    said = "the checkpoint's own split of folder: test fraction 0.25 by item, seed 3"
    assert f"coins eval: {said} (its training config" in result.stderr
    result = CliRunner().invoke(app, ["eval", ckpt, *data, "--test-fraction", "0.25"])
    assert result.exit_code == 0, result.output
    assert seen["eval"][-1] == held  # the fraction given: the checkpoint's seed still
    # the flags, given, cut another way: seed 0, or the other side
    result = CliRunner().invoke(app, ["eval", ckpt, *data, "--split-seed", "0"])
    assert result.exit_code == 0, result.output
    assert len(seen["eval"][-1]) == 24 and seen["eval"][-1] != held
    result = CliRunner().invoke(app, ["eval", ckpt, *data, "--split", "train"])
    assert result.exit_code == 0, result.output
    assert len(seen["eval"][-1]) == 56 and not set(seen["eval"][-1]) & set(held)
    result = CliRunner().invoke(
        app, ["eval", ckpt, *data, "--test-fraction", "0", "--split", "all"]
    )
    assert result.exit_code == 0, result.output
    assert len(seen["eval"][-1]) == 80 and "own split" not in result.stderr
