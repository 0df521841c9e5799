import json
import subprocess
import sys

import pytest
import yaml
from train_fixtures import TINY_DATA, TINY_MODEL
from typer.testing import CliRunner

from coins.cli import app
from coins.train.config import field_docs, load_config

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
    args = ["train", "--method", "coins-imp", "-o", str(tmp_path / "run"), *TINY_OPTIONS,
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


@pytest.mark.parametrize(
    ("pair", "message"),
    [
        ("model.backbone_kwargs.channels=32,64",
         "model.backbone_kwargs.channels: expected a list of 4 ints, e.g. [16, 32, 64, 128], "
         "got '32,64'"),
        ("model.backbone_kwargs.channels=[8, 16]", "expected a list of 4 ints"),
        ("model.head_dimm=8", "unknown training options ['model.head_dimm']; did you mean "
         "model.head_dim"),
        ("epochs=ten", "epochs: expected an int, got 'ten'"),
        ("augment.crop_scale=[0.5]", "augment.crop_scale: expected a list of 2 numbers"),
        ("model.preprocess.input_size=1.5", "model.preprocess.input_size: expected an int"),
        ("model.head_dim.x=1", "model.head_dim: expected a plain value"),
        ("epochs", "--set: expected KEY=VALUE, got 'epochs'"),
        ("epochs=[1", "--set epochs: expected a YAML value"),
    ],
)  # fmt: skip
def test_malformed_set_values_are_one_line_errors(tmp_path, pair: str, message: str) -> None:
    result = runner.invoke(app, ["train", "-o", str(tmp_path / "run"), "--set", pair])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and message in result.output
    assert result.output.count("\n") == 1 and "Traceback" not in result.output
    assert not (tmp_path / "run").exists()  # checked before anything was built


def test_backbone_arguments_timm_refuses_are_a_clear_error(tmp_path) -> None:
    kwargs = ["--set", "model.backbone_kwargs={}", "--set", "model.backbone_kwargs.bogus=3"]
    args = ["train", "-o", str(tmp_path / "run"), *TINY_OPTIONS, "--max-steps", "1", *kwargs]
    result = runner.invoke(app, [*args, "--dataset", "synthetic-patches"])
    assert result.exit_code == 2, result.output
    error = result.output.splitlines()[-1]  # after the sizing of batch and queue, said first
    assert error.startswith("error: model.backbone 'resnet18' with model.backbone_kwargs")
    assert "bogus" in result.output and "Traceback" not in result.output


def test_coins_debug_shows_the_traceback(tmp_path) -> None:
    args = ["train", "-o", str(tmp_path), "--set", "epochs=ten"]
    result = runner.invoke(app, args, env={"COINS_DEBUG": "1"})
    assert isinstance(result.exception, ValueError)


def test_an_empty_mapping_replaces_and_dotted_keys_merge() -> None:
    preset = load_config()
    assert preset.model.backbone_kwargs == {"channels": [16, 32, 64, 128]}
    assert load_config(**{"model.backbone_kwargs": {}}).model.backbone_kwargs == {}
    cleared = load_config(**{"model.backbone_kwargs": {}, "model.backbone_kwargs.depth": 3})
    assert cleared.model.backbone_kwargs == {"depth": 3}
    merged = load_config(**{"model.backbone_kwargs.depth": 3, "model.head_dim": 8})
    assert merged.model.backbone_kwargs == {"channels": [16, 32, 64, 128], "depth": 3}
    assert (merged.model.head_dim, merged.model.head_hidden) == (8, preset.model.head_hidden)


def test_field_docs_are_the_comments_of_the_config_source() -> None:
    docs = {d.key: d for d in field_docs()}
    assert docs["K"].comment.startswith("queue size") and docs["K"].default == 4096
    assert docs["model.head_dim"].comment == "projection output dimension"
    assert docs["augment.crop_scale"].comment == "area range of RandomResizedCrop"
    assert docs["model.preprocess.input_size"].hint is int
    assert "model" not in docs and "augment" not in docs  # expanded to their keys


def test_train_help_explains_every_option_within_80_columns() -> None:
    result = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert max(len(line) for line in lines) <= 80
    words = result.output.split()
    for doc in field_docs():
        flag = "--" + doc.key.replace("_", "-")
        assert flag in words or f"{flag}/--no-{flag[2:]}" in words or doc.key in words, doc.key
    assert "base learning rate (the released code: 0.03 at batch 256)" in " ".join(words)
    assert "-o, --out" in result.output


@pytest.mark.parametrize("command", [[], ["train"], ["index", "build"], ["serve"], ["eval"]])
def test_help_imports_no_heavy_library(command: list[str]) -> None:
    code = (
        "import sys\n"
        "from coins.cli import app\n"
        f"try:\n    app({[*command, '--help']!r})\n"
        "except SystemExit as e:\n    assert e.code == 0, e.code\n"
        "heavy = {'torch', 'torchvision', 'timm', 'onnx', 'onnxruntime', 'faiss', 'fastapi'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_train_without_a_dataset_says_what_it_trains_on(tmp_path) -> None:
    args = ["train", "-o", str(tmp_path / "run"), *TINY_OPTIONS, "--max-steps", "1"]
    result = runner.invoke(app, [*args, "--set", "model.backbone_kwargs.bogus=3"])
    said = result.output.splitlines()[0]
    assert said.startswith("coins: no data set given (--dataset): training on synthetic-patches")
    assert "--dataset folder --root DIR" in said and "fashion-mnist" in said
