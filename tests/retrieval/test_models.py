import dataclasses

import pytest
import torch

from coins.retrieval.checkpoint import load_checkpoint, load_embedder, save_checkpoint
from coins.retrieval.data.transforms import Preprocess
from coins.retrieval.models import Embedder, EmbedderConfig
from coins.retrieval.presets import model_preset

TINY = EmbedderConfig(
    backbone="resnet18",
    backbone_kwargs={"channels": [8, 16, 16, 32]},
    head_hidden=16,
    head_dim=8,
    preprocess=Preprocess(16, 1, (0.5,), (0.25,)),
)


def test_embed_is_normalised_and_has_the_declared_dimension() -> None:
    model = Embedder(TINY).eval()
    x = torch.randn(3, 1, 16, 16)
    for which in ("backbone", "head"):
        z = model.embed(x, which)
        assert z.shape == (3, model.embedding_dim(which))
        torch.testing.assert_close(z.norm(dim=1), torch.ones(3))
    assert model.embedding_dim("backbone") == 32
    assert model.embedding_dim("head") == 8


def test_small_stem_is_a_3x3_stride_1_conv_without_maxpool() -> None:
    model = Embedder(TINY)
    conv = model.backbone.conv1
    assert isinstance(conv, torch.nn.Conv2d)
    assert conv.kernel_size == (3, 3) and conv.stride == (1, 1)
    assert isinstance(model.backbone.maxpool, torch.nn.Identity)
    # Spatial size is kept by the stem: 16 px in, 2x2 after three stride-2 stages.
    assert model.backbone.forward_features(torch.randn(1, 1, 16, 16)).shape[-1] == 2


def test_large_inputs_keep_the_imagenet_stem() -> None:
    cfg = dataclasses.replace(TINY, preprocess=Preprocess(96, 3, (0.5,) * 3, (0.25,) * 3))
    assert not cfg.uses_small_stem
    assert Embedder(cfg).backbone.conv1.stride == (2, 2)


def test_small_stem_on_a_non_resnet_is_a_clear_error() -> None:
    cfg = dataclasses.replace(TINY, backbone="vit_tiny_patch16_224", backbone_kwargs={})
    with pytest.raises(ValueError, match="ResNet-family"):
        Embedder(cfg)


def test_config_round_trips_through_a_dict() -> None:
    assert EmbedderConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ValueError, match="unknown model config keys"):
        EmbedderConfig.from_dict({**TINY.to_dict(), "depth": 3})


def test_checkpoint_rebuilds_the_same_embedder(tmp_path) -> None:
    torch.manual_seed(0)
    model = Embedder(TINY).eval()
    save_checkpoint(tmp_path / "m.pt", model, epoch=3)
    again = load_embedder(tmp_path / "m.pt")
    x = torch.randn(2, 1, 16, 16)
    torch.testing.assert_close(again.embed(x), model.embed(x))
    assert load_checkpoint(tmp_path / "m.pt")["epoch"] == 3
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file was renamed away


def test_bad_checkpoints_are_clear_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_checkpoint(tmp_path / "junk.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="expected a coins-checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_local_backbone_weights_load_and_mismatches_are_named(tmp_path) -> None:
    torch.manual_seed(1)
    source = Embedder(TINY)
    torch.save(source.backbone.state_dict(), tmp_path / "w.pth")
    model = Embedder(dataclasses.replace(TINY, weights=str(tmp_path / "w.pth")))
    torch.testing.assert_close(model.backbone.conv1.weight, source.backbone.conv1.weight)
    with pytest.raises(FileNotFoundError, match="expected a local"):
        Embedder(dataclasses.replace(TINY, weights=str(tmp_path / "nope.pth")))
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="same timm architecture"):
        Embedder(dataclasses.replace(TINY, weights=str(tmp_path / "bad.pth")))


def test_presets_match_the_data() -> None:
    assert model_preset("fashion-mnist").preprocess.in_chans == 1
    assert model_preset("synthetic-patches").uses_small_stem
    assert not model_preset("sop").uses_small_stem
