"""Pretrained starts the timm way, on weight files the tests make themselves (no downloads)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import timm
import torch

from coins.retrieval.atomic import file_sha256
from coins.retrieval.checkpoint import load_embedder, save_checkpoint
from coins.retrieval.models import Embedder, EmbedderConfig, Preprocess
from coins.retrieval.pretrained import PretrainedError, save_backbone, weights_config

GREY_28 = Preprocess(28, 1, (0.3,), (0.3,))
NARROW = {"channels": [8, 8, 16, 16]}


def narrow(**changes: object) -> EmbedderConfig:
    config = EmbedderConfig("resnet18", NARROW, head_hidden=0, head_dim=8, preprocess=GREY_28)
    return dataclasses.replace(config, **changes)


def timm_file(tmp_path: Path, name: str = "resnet10t", suffix: str = ".pth") -> Path:
    """A timm model's full state dict (stem, classifier and all), as timm's weights come."""
    torch.manual_seed(1)
    model = timm.create_model(name, num_classes=10)
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)
    return path


def test_a_saved_backbone_loads_back_as_it_was(tmp_path: Path) -> None:
    torch.manual_seed(0)
    source = Embedder(narrow()).eval()
    file = save_backbone(source, tmp_path / "backbone.safetensors")
    weights, where = weights_config(str(file), "resnet50")  # the file names its architecture
    assert weights["coins"]["backbone_kwargs"] == NARROW and str(file) in where
    assert weights["input_size"] == (1, 28, 28) and weights["mean"] == (0.3,)
    loaded = Embedder(narrow(pretrained=str(file))).eval()
    x = torch.randn(3, 1, 28, 28)
    assert torch.equal(source.features(x), loaded.features(x))
    assert loaded.weights_origin is not None
    assert loaded.weights_origin.sha256 == file_sha256(file)
    assert loaded.weights_origin.reinitialised == []


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_timm_file_drops_its_classifier_and_keeps_every_other_tensor(
    tmp_path: Path, suffix: str
) -> None:
    file = timm_file(tmp_path, suffix=suffix)
    reference = timm.create_model("resnet10t", num_classes=10)
    reference.load_state_dict(torch.load(file) if suffix == ".pth" else _safetensors(file))
    config = EmbedderConfig("resnet10t", preprocess=Preprocess(64, 3), small_stem=False)
    model = Embedder(dataclasses.replace(config, pretrained=str(file)))
    own = model.backbone.state_dict()
    assert not any(k.startswith("fc.") for k in own)
    for key, value in own.items():
        assert torch.equal(value, reference.state_dict()[key]), key


def test_timm_adapts_the_input_convolution_to_grey(tmp_path: Path) -> None:
    file = timm_file(tmp_path)
    rgb = torch.load(file)["conv1.0.weight"]  # Cx3xkxk
    config = EmbedderConfig("resnet10t", preprocess=Preprocess(64, 1, (0.5,), (0.2,)))
    model = Embedder(dataclasses.replace(config, small_stem=False, pretrained=str(file)))
    grey = model.backbone.state_dict()["conv1.0.weight"]
    assert grey.shape[1] == 1
    torch.testing.assert_close(grey, rgb.sum(dim=1, keepdim=True))


def test_the_small_stem_is_reported_as_reinitialised(tmp_path: Path) -> None:
    file = timm_file(tmp_path, "resnet18")
    model = Embedder(EmbedderConfig("resnet18", preprocess=GREY_28, pretrained=str(file)))
    assert model.weights_origin is not None
    [note] = model.weights_origin.reinitialised
    assert note.startswith("conv1.weight") and "(64, 3, 7, 7)" in note
    layer = torch.load(file)["layer1.0.conv1.weight"]
    assert torch.equal(model.backbone.state_dict()["layer1.0.conv1.weight"], layer)


def test_weights_of_another_architecture_name_the_tensors(tmp_path: Path) -> None:
    file = timm_file(tmp_path, "resnet10t")
    config = EmbedderConfig("resnet18", preprocess=Preprocess(64, 3), small_stem=False)
    with pytest.raises(PretrainedError, match="do not fit resnet18") as e:
        Embedder(dataclasses.replace(config, pretrained=str(file)))
    assert "layer2.0.downsample.1.weight: file (128, 64, 1, 1), model (128,)" in str(e.value)
    assert "missing (conv1.weight" in str(e.value)


def test_a_corrupt_safetensors_file_is_named(tmp_path: Path) -> None:
    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(PretrainedError, match=f"{bad}.*not a readable safetensors"):
        Embedder(narrow(pretrained=str(bad)))


def test_a_missing_file_and_an_unknown_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(PretrainedError, match="does not exist"):
        Embedder(narrow(pretrained=str(tmp_path / "none.safetensors")))
    with pytest.raises(PretrainedError, match="not a timm model name"):
        weights_config("no_such_net.in1k", "resnet18")


def test_a_hub_name_offline_without_a_cached_copy_says_how_to_pass_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # never a download in tests
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    config = EmbedderConfig("resnet10t", preprocess=Preprocess(64, 3), small_stem=False)
    with pytest.raises(PretrainedError, match="cache holds no copy") as e:
        Embedder(dataclasses.replace(config, pretrained="resnet10t.c3_in1k"))
    assert "--pretrained PATH.safetensors" in str(e.value)


def test_pretrained_and_weights_together_are_refused(tmp_path: Path) -> None:
    file = save_backbone(Embedder(narrow()), tmp_path / "b.safetensors")
    with pytest.raises(ValueError, match="expected one source of initial weights"):
        Embedder(narrow(pretrained=str(file), weights=str(file)))


def test_a_checkpoint_records_where_its_weights_came_from(tmp_path: Path) -> None:
    file = save_backbone(Embedder(narrow()), tmp_path / "b.safetensors")
    model = Embedder(narrow(pretrained=str(file)))
    save_checkpoint(tmp_path / "c.pt", model)
    file.unlink()  # a checkpoint rebuilds without the file its training started from
    loaded = load_embedder(tmp_path / "c.pt")
    assert loaded.config.pretrained == str(file)
    assert loaded.weights_origin is not None
    assert loaded.weights_origin.to_dict() == model.weights_origin.to_dict()  # type: ignore[union-attr]


def _safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_a_hub_name_loads_through_timm_from_its_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from huggingface_hub import constants
    from safetensors.torch import save_file

    # the Hugging Face cache as a download would have left it; offline, so timm reads it there
    repo = tmp_path / "hub" / "models--timm--resnet10t.c3_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    torch.manual_seed(2)
    reference = timm.create_model("resnet10t")  # with its 1000-class classifier
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    save_file(state, str(snapshot / "model.safetensors"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    config = EmbedderConfig("resnet10t", preprocess=Preprocess(64, 3), small_stem=False)
    model = Embedder(dataclasses.replace(config, pretrained="resnet10t.c3_in1k"))
    assert torch.equal(
        model.backbone.state_dict()["layer4.0.conv2.weight"], state["layer4.0.conv2.weight"]
    )
    assert model.weights_origin is not None
    assert model.weights_origin.sha256 == file_sha256(snapshot / "model.safetensors")
