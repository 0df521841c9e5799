import json

import yaml
from train_fixtures import TINY_DATA, TINY_MODEL
from typer.testing import CliRunner

from coins.cli import app

runner = CliRunner()
TINY_OPTIONS = [arg for key, value in TINY_DATA.items() for arg in ("--option", f"{key}={value}")]


def test_data_list_names_every_data_set() -> None:
    result = runner.invoke(app, ["data", "list"])
    assert result.exit_code == 0
    for name in ("synthetic-patches", "fashion-mnist", "cifar100", "sop", "folder", "csv"):
        assert name in result.output


def test_data_show_counts_images_and_classes() -> None:
    result = runner.invoke(app, ["data", "show", "synthetic-patches", *TINY_OPTIONS])
    assert result.exit_code == 0, result.output
    assert "train  images       64" in result.output
    assert "coarse classes     4" in result.output


def test_unknown_data_set_is_a_clear_error() -> None:
    result = runner.invoke(app, ["data", "show", "imagenet-21k"])
    assert result.exit_code == 2
    assert "unknown data set 'imagenet-21k'" in result.output


def test_eval_of_a_random_model_writes_the_metrics_json(tmp_path) -> None:
    config = tmp_path / "model.yaml"
    config.write_text(yaml.safe_dump(TINY_MODEL | {"preprocess": {"input_size": 16}}))
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        ["eval", "--dataset", "synthetic-patches", *TINY_OPTIONS,
         "--model-config", str(config), "--json", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    metrics = json.loads(out.read_text())
    assert set(metrics) == {"fine", "coarse"}
    assert all(0.0 <= v <= 1.0 for level in metrics.values() for v in level.values())
    assert "recall@1" in result.output and "fine" in result.output


def test_train_takes_flags_nested_sets_and_options(tmp_path) -> None:
    args = ["train", "--method", "coins-imp", "--out", str(tmp_path / "run"), *TINY_OPTIONS,
            "--epochs", "1", "--batch-size", "16", "--K", "64", "--num-workers", "0",
            "--bn-splits", "2", "--max-steps", "2", "--no-amp",
            "--set", "model.backbone_kwargs={channels: [8, 16, 16, 32]}",
            "--set", "model.head_dim=8", "--set", "model.preprocess.input_size=16"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["method"] == "coins-imp" and saved["K"] == 64 and saved["amp"] is False
    assert saved["model"]["head_dim"] == 8 and saved["model"]["preprocess"]["input_size"] == 16
    assert saved["dataset_options"]["num_train"] == 64
    assert (tmp_path / "run" / "eval.json").is_file()


def test_train_reports_bad_options_without_a_traceback(tmp_path) -> None:
    result = runner.invoke(app, ["train", "--out", str(tmp_path), "--method", "simclr"])
    assert result.exit_code == 2
    assert "expected one of" in result.output
