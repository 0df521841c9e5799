"""The embedding runner on a tiny exported model (galleries: ../test_gallery.py; shards:
../test_shards.py and ../test_embed_job.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from train_fixtures import TINY_DATA

from coins.retrieval.checkpoint import load_embedder
from coins.retrieval.data import build_dataset
from coins.retrieval.evaluate import embed_dataset
from coins.retrieval.models import Embedder
from coins.retrieval.onnx.runner import (
    EmbedError,
    OnnxEmbedder,
    embed_items,
    gallery_source,
    model_sha256,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint: Path, tiny_onnx: Path) -> tuple[Embedder, Path]:
    """The session's tiny trained embedder (with its coarse head) and its export."""
    return load_embedder(tiny_checkpoint).eval(), tiny_onnx


@pytest.fixture(scope="module")
def runner(tiny) -> OnnxEmbedder:
    return OnnxEmbedder(tiny[1], threads=1)


def tiny_test_split():
    return build_dataset("synthetic-patches", "test", **TINY_DATA)


def write_images(folder: Path, names: list[str]) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 24), COLOURS[i % len(COLOURS)]).save(path)
        paths.append(path)
    return paths


def test_runner_reads_what_it_needs_from_the_model_file(runner, tiny) -> None:
    assert runner.dim == 32 and runner.preprocess.input_size == 16
    assert runner.coarse_classes == tiny_test_split().coarse_classes
    assert runner.sha256 == model_sha256(tiny[1]) and len(runner.sha256) == 64
    assert runner.metadata["method"] == "coins"


def test_runner_embeds_a_data_set_as_the_pytorch_evaluation_does(runner, tiny) -> None:
    data = tiny_test_split()
    expected = embed_dataset(tiny[0], data, progress=False)  # PyTorch eager, eval_transform
    result = runner.embed_dataset(data, batch_size=20, progress=False)
    assert result.vectors.shape == (48, 32) and result.vectors.dtype == np.float32
    np.testing.assert_allclose(result.vectors, expected, atol=1e-4)
    np.testing.assert_array_equal(result.rows, np.arange(48))
    assert result.coarse_probs is not None and result.coarse_probs.shape == (48, 4)


def test_embed_images_takes_any_size_and_mode(runner) -> None:
    images = [Image.new("RGB", (40, 30), (9, 99, 199)), Image.new("L", (16, 16), 128)]
    result = runner.embed_images(images)
    assert result.vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1, atol=1e-5)
    one = runner.embed_arrays(runner.to_array(images[0])[None])
    np.testing.assert_allclose(one.vectors[0], result.vectors[0], atol=1e-6)
    assert len(runner.embed_images([])) == 0


@pytest.mark.parametrize(
    "x",
    [np.zeros((2, 3, 16, 16), np.float64), np.zeros((2, 1, 16, 16), np.float32), [[0.0]]],
)
def test_bad_arrays_name_the_expected_shape(runner, x) -> None:
    with pytest.raises(EmbedError, match=r"expected float32 images \[N, 3, 16, 16\]"):
        runner.embed_arrays(x)  # type: ignore[arg-type]


def test_an_unavailable_provider_is_an_error_not_a_fallback(tiny) -> None:
    with pytest.raises(EmbedError, match="not available"):
        OnnxEmbedder(tiny[1], providers=["NoSuchExecutionProvider"])


def test_corrupt_images_are_skipped_and_reported_or_raise_when_strict(runner, tmp_path) -> None:
    paths = write_images(tmp_path, ["a.png", "b.png", "c.png"])
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    truncated = tmp_path / "truncated.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:100])
    files = [paths[0], tmp_path / "broken.png", paths[1], truncated, paths[2]]
    result, failed = runner.embed_files(files, batch_size=2, progress=False)
    np.testing.assert_array_equal(result.rows, [0, 2, 4])
    assert [p.name for p, _ in failed] == ["broken.png", "truncated.jpg"]
    assert all("expected a readable image" in reason for _, reason in failed)
    good, _ = runner.embed_files([paths[0], paths[1], paths[2]], progress=False)
    np.testing.assert_allclose(result.vectors, good.vectors, atol=1e-6)
    with pytest.raises(EmbedError, match=r"broken\.png: expected a readable image"):
        runner.embed_files(files, strict=True, progress=False)


def test_embed_items_keeps_rows_with_their_ids_and_lists_the_skipped(runner, tmp_path) -> None:
    write_images(tmp_path, ["shoes/1.png", "shoes/2.png", "bags/3.png"])
    (tmp_path / "shoes/0.png").write_bytes(b"broken")
    gallery = gallery_source(images=tmp_path)
    done = embed_items(runner, gallery, progress=False)
    np.testing.assert_array_equal(done.ids, gallery.ids[[0, 2, 3]])  # bags/3, shoes/1, shoes/2
    assert [r["id"] for r in done.rows] == done.ids.tolist() and done.vectors.shape == (3, 32)
    assert [(s["id"], Path(s["path"]).name) for s in done.skipped] == [(gallery.ids[1], "0.png")]
