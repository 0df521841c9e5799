"""`coins export`: ONNX models of tiny embedders, checked against PyTorch, with their metadata."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from train_fixtures import TINY_DATA, TINY_MODEL, tiny_config
from typer.testing import CliRunner

import coins.retrieval.onnx.export as export_module
from coins import __version__
from coins.cli import app
from coins.retrieval.checkpoint import load_embedder, save_checkpoint
from coins.retrieval.models import Embedder, EmbedderConfig
from coins.retrieval.onnx.export import ExportError, export_checkpoint
from coins.retrieval.onnx.quantize import QuantizationRejected, export_int8
from coins.retrieval.onnx.runner import EmbedError, OnnxEmbedder
from coins.train import train

COARSE = ["c0", "c1", "c2", "c3"]
FINE = [f"f{i}" for i in range(8)]


def make_checkpoint(path: Path, method: str) -> Path:
    """A randomly initialised tiny embedder saved as `coins train` saves it."""
    torch.manual_seed(0)
    model = Embedder(EmbedderConfig.from_dict(TINY_MODEL))
    classes = {"cos": COARSE, "coins": COARSE, "opt": FINE}.get(method)
    classifier = None
    if classes is not None:
        weight = torch.randn(len(classes), TINY_MODEL["head_dim"])
        classifier = {"weight": weight, "T": 0.2, "classes": classes}
    train_config = {"dataset": "synthetic-patches", "root": None, "dataset_options": TINY_DATA}
    save_checkpoint(path, model, method=method, train_config=train_config, classifier=classifier)
    return path


@pytest.fixture(scope="module")
def exported(
    tmp_path_factory: pytest.TempPathFactory, tiny_checkpoint: Path, tiny_onnx: Path
) -> dict[str, tuple[Path, Path]]:
    """(checkpoint, model.onnx) for coins (backbone: the session's trained model, read only),
    ins (backbone) and opt (head)."""
    folder = tmp_path_factory.mktemp("export")
    out = {"coins": (tiny_checkpoint, tiny_onnx)}
    for method, which in (("ins", "backbone"), ("opt", "head")):
        ckpt = make_checkpoint(folder / f"{method}.pt", method)
        onnx_path = folder / f"{method}.onnx"
        export_checkpoint(ckpt, onnx_path, which=which)  # type: ignore[arg-type]
        out[method] = (ckpt, onnx_path)
    return out


def trained_classes(ckpt: Path) -> list[str]:
    """The coarse classes of the checkpoint's classifier: what its export must carry."""
    return torch.load(ckpt, weights_only=False)["classifier"]["classes"]


def torch_outputs(ckpt: Path, x: torch.Tensor, which: str) -> tuple[np.ndarray, np.ndarray]:
    """Embedding and classifier probabilities computed the slow, obvious way."""
    state = torch.load(ckpt, weights_only=False)
    model = load_embedder(ckpt)
    with torch.no_grad():
        embedding = model.embed(x, which)  # type: ignore[arg-type]
        w = torch.nn.functional.normalize(state["classifier"]["weight"], dim=1)
        probs = torch.softmax(model(x) @ w.T / state["classifier"]["T"], dim=1)
    return embedding.numpy(), probs.numpy()


def test_onnx_runtime_matches_pytorch_at_any_batch_size(exported) -> None:
    ckpt, path = exported["coins"]
    runner = OnnxEmbedder(path)
    for batch in (1, 5, 13):
        x = torch.randn(batch, 3, 16, 16, generator=torch.Generator().manual_seed(batch))
        result = runner.embed_arrays(x.numpy())
        embedding, probs = torch_outputs(ckpt, x, "backbone")
        assert result.vectors.shape == (batch, 32)
        np.testing.assert_allclose(result.vectors, embedding, atol=1e-4)
        assert result.coarse_probs is not None
        np.testing.assert_allclose(result.coarse_probs, probs, atol=1e-4)
        np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1, atol=1e-5)


def test_graph_has_named_input_and_outputs_with_a_symbolic_batch_axis(exported) -> None:
    proto = onnx.load(str(exported["coins"][1]))
    names = [v.name for v in proto.graph.input] + [v.name for v in proto.graph.output]
    assert names == ["image", "embedding", "coarse_probs"]
    for value in [*proto.graph.input, *proto.graph.output]:
        assert value.type.tensor_type.shape.dim[0].dim_param
    assert proto.opset_import[0].version >= 18


def test_metadata_holds_preprocess_config_method_and_classes(exported) -> None:
    proto = onnx.load(str(exported["coins"][1]))
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["coins"])
    assert meta["preprocess"] | {"mean": None} == {
        "input_size": 16, "in_chans": 3, "mean": None, "std": [0.25] * 3, "mode": "RGB",
        "interpolation": "bilinear", "layout": "NCHW", "resize": meta["preprocess"]["resize"],
        "scale": meta["preprocess"]["scale"],
    }  # fmt: skip
    assert EmbedderConfig.from_dict(meta["model_config"]) == EmbedderConfig.from_dict(TINY_MODEL)
    assert meta["which"] == "backbone" and meta["method"] == "coins"
    assert meta["coarse_classes"] == trained_classes(exported["coins"][0])
    assert meta["embedding_dim"] == 32
    assert meta["coins_version"] == __version__
    assert meta["source"]["trained_on"]["dataset"] == "synthetic-patches"
    assert meta["weights_origin"] is None  # trained from a random start


def test_coarse_head_only_where_the_method_trained_a_coarse_classifier(exported) -> None:
    coins, ins = OnnxEmbedder(exported["coins"][1]), OnnxEmbedder(exported["ins"][1])
    x = np.zeros((2, 3, 16, 16), np.float32)
    assert coins.coarse_classes == trained_classes(exported["coins"][0])
    assert coins.embed_arrays(x).coarse_probs is not None
    assert ins.coarse_classes is None and ins.embed_arrays(x).coarse_probs is None
    assert [o.name for o in ins.session.get_outputs()] == ["embedding"]


def test_a_classifier_with_its_own_head_exports_that_head(tmp_path) -> None:
    train(tiny_config(classifier_head="own", max_steps=1, epochs=1), tmp_path, progress=False)
    ckpt, path = tmp_path / "checkpoint.pt", tmp_path / "model.onnx"
    export_checkpoint(ckpt, path)
    x = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    state = torch.load(ckpt, weights_only=False)["classifier"]
    head = state["head"]  # Linear-ReLU-Linear, by hand
    with torch.no_grad():
        f = load_embedder(ckpt).features(x)
        h = torch.relu(f @ head["0.weight"].T + head["0.bias"]) @ head["2.weight"].T
        c = torch.nn.functional.normalize(h + head["2.bias"], dim=1)
        w = torch.nn.functional.normalize(state["weight"], dim=1)
        probs = torch.softmax(c @ w.T / state["T"], dim=1).numpy()
    result = OnnxEmbedder(path).embed_arrays(x.numpy())
    assert result.coarse_probs is not None
    np.testing.assert_allclose(result.coarse_probs, probs, atol=1e-4)
    _, probs_of_q = torch_outputs(ckpt, x, "backbone")  # what reading q instead would give
    assert np.abs(probs_of_q - probs).max() > 1e-3


def test_opt_exports_its_fine_classifier_under_its_own_name(exported) -> None:
    ckpt, path = exported["opt"]
    runner = OnnxEmbedder(path)
    assert runner.coarse_classes is None and runner.fine_classes == FINE
    assert runner.which == "head" and runner.dim == TINY_MODEL["head_dim"]
    x = torch.randn(3, 3, 16, 16)
    result = runner.embed_arrays(x.numpy())
    embedding, probs = torch_outputs(ckpt, x, "head")
    assert result.coarse_probs is None and result.fine_probs is not None
    np.testing.assert_allclose(result.vectors, embedding, atol=1e-4)
    np.testing.assert_allclose(result.fine_probs, probs, atol=1e-4)


def test_a_failed_self_check_raises_and_leaves_no_file(exported, tmp_path, monkeypatch) -> None:
    good = exported["ins"][1].read_bytes()  # what the exporter writes, without exporting again
    monkeypatch.setattr(export_module, "_torch_export", lambda m, path, o: path.write_bytes(good))
    monkeypatch.setattr(export_module, "_parity", lambda *args: (0.5, 0.9))
    out = tmp_path / "model.onnx"
    with pytest.raises(ExportError, match=r"max abs difference 0\.5 .*min row cosine 0\.9"):
        export_checkpoint(exported["ins"][0], out)
    assert list(tmp_path.iterdir()) == []

    monkeypatch.setattr(
        export_module, "_torch_export", lambda m, path, o: path.write_bytes(good[:500])
    )
    with pytest.raises(ExportError, match=r"fails onnx\.checker"):
        export_checkpoint(exported["ins"][0], out)
    assert list(tmp_path.iterdir()) == []


def test_a_file_that_is_not_onnx_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "model.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(EmbedError, match=r"model\.onnx: not a loadable ONNX model"):
        OnnxEmbedder(bad)
    with pytest.raises(EmbedError, match="does not exist"):
        OnnxEmbedder(tmp_path / "missing.onnx")


def test_an_onnx_file_without_coins_metadata_is_a_clear_error(exported, tmp_path) -> None:
    proto = onnx.load(str(exported["ins"][1]))
    del proto.metadata_props[:]
    plain = tmp_path / "plain.onnx"
    onnx.save(proto, str(plain))
    with pytest.raises(EmbedError, match=r"plain\.onnx: no 'coins' metadata; expected"):
        OnnxEmbedder(plain)


def test_cli_export_prints_the_check(exported, tmp_path) -> None:
    out = tmp_path / "cli.onnx"
    result = CliRunner().invoke(app, ["export", str(exported["coins"][0]), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "coarse_probs ['batch', 4]" in result.output and "max abs diff" in result.output
    assert OnnxEmbedder(out).coarse_classes == trained_classes(exported["coins"][0])


@pytest.mark.slow
def test_int8_is_kept_or_refused_by_the_fine_recall_drop(exported, tmp_path) -> None:
    ckpt = exported["coins"][0]
    report = export_int8(ckpt, tmp_path / "int8.onnx", calibration_images=32, max_drop=100)
    q = report.quantization
    assert q.kept and q.drop == pytest.approx(q.fine_r1_fp32 - q.fine_r1_int8)
    assert q.calibration == {"dataset": "synthetic-patches", "split": "train", "images": 32}
    int8 = OnnxEmbedder(tmp_path / "int8.onnx")
    assert int8.metadata["quantization"]["drop"] == q.drop
    assert int8.embed_arrays(np.zeros((2, 3, 16, 16), np.float32)).vectors.shape == (2, 32)

    with pytest.raises(QuantizationRejected, match=r"fine R@1 .* a drop of .* > -100 allowed"):
        export_int8(ckpt, tmp_path / "refused.onnx", calibration_images=32, max_drop=-100)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int8.onnx"]
