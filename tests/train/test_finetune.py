"""Fine-tuning from pretrained weights: the config they bring, the recipe, the untrained row."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import torch
from train_fixtures import TINY_DATA, TINY_MODEL, tiny_config

from coins.retrieval.checkpoint import load_checkpoint
from coins.retrieval.configs import EmbedderConfig, Preprocess
from coins.retrieval.models import Embedder
from coins.retrieval.pretrained import save_backbone
from coins.train import load_config, train
from coins.train.metrics_log import read_log

GREY = {"input_size": 20, "in_chans": 1, "mean": [0.4], "std": [0.2], "interpolation": "bicubic"}


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    """A coins backbone file: the tiny model's architecture, grey 20-px inputs, bicubic."""
    torch.manual_seed(3)
    config = EmbedderConfig.from_dict({**TINY_MODEL, "preprocess": GREY})
    return save_backbone(Embedder(config), tmp_path / "start.safetensors")


def test_the_weights_bring_their_architecture_and_preprocessing(weights: Path) -> None:
    cfg = load_config(dataset="synthetic-patches", **{"model.pretrained": str(weights)})
    assert cfg.model.backbone_kwargs == TINY_MODEL["backbone_kwargs"]
    assert cfg.model.preprocess == Preprocess(20, 1, (0.4,), (0.2,), "bicubic")
    assert cfg.backbone_lr_mult < 1 and cfg.freeze_bn  # the pretrained-photos preset
    mine = load_config(**{"model.pretrained": str(weights), "model.preprocess.input_size": 24})
    assert mine.model.preprocess.input_size == 24 and mine.model.preprocess.std == (0.2,)


def test_pretrained_with_model_weights_is_refused(weights: Path) -> None:
    with pytest.raises(ValueError, match="expected one source of initial weights"):
        load_config(**{"model.pretrained": str(weights), "model.weights": str(weights)})


def test_a_hub_name_fixes_the_backbone() -> None:
    cfg = load_config(**{"model.pretrained": "resnet10t.c3_in1k"})  # timm's config: no download
    assert cfg.model.backbone == "resnet10t" and cfg.model.backbone_kwargs == {}
    assert cfg.model.preprocess.input_size == 176 and cfg.model.preprocess.in_chans == 3
    with pytest.raises(ValueError, match="drop model\\.backbone"):
        load_config(**{"model.pretrained": "resnet10t.c3_in1k", "model.backbone": "resnet18"})


def finetune(weights: Path, **options: object):
    model = {**TINY_MODEL, "pretrained": str(weights), "preprocess": {"input_size": 16}}
    plain = {"head_warmup_epochs": 0, "freeze_bn": False, "backbone_lr_mult": 1.0}
    return tiny_config(model=model, **{**plain, **options})


def test_training_logs_the_untrained_embedder_and_records_the_weights(
    weights: Path, tmp_path: Path
) -> None:
    train(finetune(weights, max_steps=2), tmp_path, progress=False)
    evals = [r for r in read_log(tmp_path / "metrics.jsonl") if r["event"] == "eval"]
    assert evals[0]["epoch"] == 0 and evals[0]["untrained"] and evals[0]["split"] == "test"
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["untrained"]["fine"] == evals[0]["fine"]
    origin = load_checkpoint(tmp_path / "checkpoint.pt")["weights_origin"]
    assert origin["pretrained"] == str(weights) and len(origin["sha256"]) == 64


def backbone_after(weights: Path, run: Path, **options: object) -> dict[str, torch.Tensor]:
    steps = TINY_DATA["num_train"] // 16  # one epoch
    train(finetune(weights, max_steps=steps, **options), run, progress=False)
    state = load_checkpoint(run / "checkpoint.pt")["model"]
    return {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}


def test_the_head_warm_up_leaves_the_backbone_as_it_started(weights: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    start = load_file(str(weights))
    after = backbone_after(weights, tmp_path / "w", head_warmup_epochs=1)
    assert all(torch.equal(after[k], v) for k, v in start.items())  # BatchNorm statistics too
    moved = backbone_after(weights, tmp_path / "plain")
    assert not all(torch.equal(moved[k], v) for k, v in start.items())


def test_a_zero_backbone_rate_with_frozen_batch_norm_keeps_the_backbone(
    weights: Path, tmp_path: Path
) -> None:
    from safetensors.torch import load_file

    start = load_file(str(weights))
    after = backbone_after(weights, tmp_path / "z", backbone_lr_mult=0.0, freeze_bn=True)
    assert all(torch.equal(after[k], v) for k, v in start.items())
    stats = backbone_after(weights, tmp_path / "s", backbone_lr_mult=0.0)  # BN still adapts
    assert not torch.equal(stats["bn1.running_mean"], start["bn1.running_mean"])
    assert torch.equal(stats["conv1.weight"], start["conv1.weight"])


@pytest.mark.slow  # a training run through the command line: ~10 s on a loaded CPU
def test_the_command_prints_the_untrained_and_the_trained_rows(
    weights: Path, tmp_path: Path
) -> None:
    from typer.testing import CliRunner

    from coins.cli import app

    data = [arg for key, value in TINY_DATA.items() for arg in ("--option", f"{key}={value}")]
    args = ["train", "--pretrained", str(weights), "--dataset", "synthetic-patches", *data,
            "-o", str(tmp_path / "run"), "--epochs", "2", "--batch-size", "16", "--K", "64",
            "--num-workers", "0", "--max-steps", "2", "--head-warmup-epochs", "0",
            "--set", "model.preprocess.input_size=16"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "untrained (before the first step):" in result.output
    assert re.search(r"fine R@1 on test: untrained \d+\.\d, trained \d+\.\d", result.output)
    refused = CliRunner().invoke(app, [*args, "--set", f"model.weights={weights}"])
    assert refused.exit_code == 2 and "expected one source of initial weights" in refused.output
    neither = CliRunner().invoke(app, ["export", "-o", str(tmp_path / "m.onnx")])
    assert neither.exit_code == 2 and "CHECKPOINT or --pretrained" in neither.output


FROZEN = ("conv1.", "bn1.", "layer1.", "layer2.")  # the stem and stages 1-2 of a ResNet


def test_frozen_stages_get_no_gradient_and_keep_their_weights_and_statistics() -> None:
    from coins.train.builder import CoInsModel
    from coins.train.loop import _optimizer

    cfg = tiny_config(freeze_stages=2, weight_decay=0.1)  # a decay would move any param it saw
    torch.manual_seed(0)
    model = CoInsModel(cfg, 4, torch.arange(64) % 4).train()
    backbone = model.encoder_q.backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    frozen = [n for n, _ in backbone.named_parameters() if n.startswith(FROZEN)]
    assert frozen and sorted(frozen) == sorted(model.frozen.params)
    opt = _optimizer(cfg, model)
    in_opt = {id(p) for group in opt.param_groups for p in group["params"]}
    assert not in_opt & {id(backbone.get_parameter(n)) for n in frozen}
    kept: dict[str, bool] = {}  # does the stage's output carry a graph?

    def watch(stage: str) -> Any:
        def hook(module: torch.nn.Module, inputs: Any, out: torch.Tensor) -> None:
            kept[stage] = out.requires_grad

        return hook

    for stage in ("layer2", "layer3"):
        backbone.get_submodule(stage).register_forward_hook(watch(stage))
    x = torch.randn(16, 3, 16, 16)
    loss, _ = model(x, x.flip(3), torch.arange(16) % 4, torch.arange(16) % 8, torch.arange(16),
                    torch.Generator().manual_seed(0))  # fmt: skip
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    assert kept == {"layer2": False, "layer3": True}  # backward stops above stage 2
    assert all(backbone.get_parameter(n).grad is None for n in frozen)
    after = backbone.state_dict()
    same = {k for k in before if torch.equal(before[k], after[k])}
    assert {k for k in before if k.startswith(FROZEN)} <= same  # BatchNorm statistics too
    assert "layer3.0.bn1.running_mean" not in same and "layer3.0.conv1.weight" not in same
    assert model.encoder_k is not None  # the key encoder: the same frozen stages, exactly
    key = model.encoder_k.backbone.state_dict()
    assert all(torch.equal(key[k], after[k]) for k in before if k.startswith(FROZEN))


def test_freezing_more_stages_than_the_backbone_has_is_refused() -> None:
    from coins.train.builder import CoInsModel

    with pytest.raises(ValueError, match=r"freeze_stages 5: ResNet has a stem and 4 stages"):
        CoInsModel(tiny_config(freeze_stages=5), 4, torch.arange(64) % 4)
    with pytest.raises(ValueError, match="freeze_stages must be >= 0"):
        tiny_config(freeze_stages=-1)


def test_frozen_stages_stay_through_the_head_warm_up(weights: Path, tmp_path: Path) -> None:
    """After the head-only epoch the backbone learns again, its frozen stages not: in both
    encoders, the checkpoint and the key encoder of the training state."""
    from safetensors.torch import load_file

    start = load_file(str(weights))
    cfg = finetune(weights, freeze_stages=2, head_warmup_epochs=1, epochs=2)
    train(cfg, tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["train_config"]["freeze_stages"] == 2
    for prefix, tensors in (("backbone.", state["model"]), ("encoder_k.backbone.", None)):
        tensors = tensors or state["train_state"]["model"]
        after = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        assert all(torch.equal(after[k], v) for k, v in start.items() if k.startswith(FROZEN))
    moved = {k: v for k, v in start.items() if k.startswith("layer3.")}
    assert not all(torch.equal(state["model"][f"backbone.{k}"], v) for k, v in moved.items())
