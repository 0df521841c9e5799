"""The embedding runner, gallery enumeration and embedding shards, on a tiny exported model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import TINY_DATA, TINY_MODEL
from typer.testing import CliRunner

from coins.cli import app
from coins.retrieval.data import build_dataset
from coins.retrieval.evaluate import embed_dataset
from coins.retrieval.models import Embedder, EmbedderConfig
from coins.retrieval.onnx.contract import Classifier
from coins.retrieval.onnx.export import export_model
from coins.retrieval.onnx.runner import EmbedError, OnnxEmbedder, gallery_source, model_sha256
from coins.retrieval.shards import (
    embed_gallery,
    embed_items,
    parse_shard,
    read_embedding_shards,
)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[Embedder, Path]:
    """A randomly initialised tiny embedder with a coarse head, and its export."""
    torch.manual_seed(0)
    model = Embedder(EmbedderConfig.from_dict(TINY_MODEL)).eval()
    path = tmp_path_factory.mktemp("embed") / "tiny.onnx"
    head = Classifier(torch.randn(4, 8), 0.2, ["a", "b", "c", "d"], "coarse")
    export_model(model, path, "backbone", head, "coins")
    return model, path


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
    assert runner.coarse_classes == ["a", "b", "c", "d"]
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


def test_gallery_of_a_class_folder_has_paths_and_class_names(tmp_path) -> None:
    write_images(tmp_path, ["shoes/red/1.png", "shoes/blue/2.png", "bags/3.png"])
    gallery = gallery_source(images=tmp_path)
    assert gallery.source == {"kind": "images", "root": str(tmp_path.resolve()), "split": "all"}
    assert [(r["coarse"], r["fine"]) for r in gallery.rows] == [
        ("bags", None), ("shoes", "shoes/blue"), ("shoes", "shoes/red"),
    ]  # fmt: skip
    assert gallery.rows[0]["path"] == str((tmp_path / "bags/3.png").resolve())
    np.testing.assert_array_equal(gallery.ids, [0, 1, 2])


def test_embed_items_keeps_rows_with_their_ids_and_lists_the_skipped(runner, tmp_path) -> None:
    write_images(tmp_path, ["shoes/1.png", "shoes/2.png", "bags/3.png"])
    (tmp_path / "shoes/0.png").write_bytes(b"broken")
    gallery = gallery_source(images=tmp_path)
    done = embed_items(runner, gallery, progress=False)
    np.testing.assert_array_equal(done.ids, [0, 2, 3])  # bags/3, shoes/1, shoes/2
    assert [r["id"] for r in done.rows] == [0, 2, 3] and done.vectors.shape == (3, 32)
    assert [(s["id"], Path(s["path"]).name) for s in done.skipped] == [(1, "0.png")]


def test_gallery_of_a_flat_folder_is_unlabelled(tmp_path) -> None:
    write_images(tmp_path, ["b.png", "a.jpg"])
    (tmp_path / "notes.txt").write_text("not an image")
    gallery = gallery_source(images=tmp_path)
    assert [Path(r["path"]).name for r in gallery.rows] == ["a.jpg", "b.png"]
    assert all(r["coarse"] is None and r["fine"] is None for r in gallery.rows)


def test_gallery_of_a_manifest_keeps_ids_and_extra_columns(tmp_path) -> None:
    write_images(tmp_path, ["x.png", "y.png", "z.png"])
    (tmp_path / "items.csv").write_text(
        "path,coarse,fine,id,split,sku\n"
        "x.png,shoes,s1,10,test,A-1\ny.png,bags,,20,train,B-2\nz.png,bags,b1,30,test,C-3\n"
    )
    gallery = gallery_source(manifest=tmp_path / "items.csv", split="test")
    np.testing.assert_array_equal(gallery.ids, [10, 30])
    assert [(r["id"], r["coarse"], r["fine"], r["sku"]) for r in gallery.rows] == [
        (10, "shoes", "s1", "A-1"), (30, "bags", "b1", "C-3"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="expected a split"):
        gallery_source(manifest=tmp_path / "items.csv")


def test_gallery_needs_exactly_one_source(tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one of dataset, images, manifest"):
        gallery_source(dataset="synthetic-patches", images=tmp_path)


def test_shards_cover_the_gallery_once_and_read_back_in_one_piece(runner, tmp_path) -> None:
    gallery = gallery_source("synthetic-patches", "test", options=TINY_DATA)
    for i in range(3):
        info = embed_gallery(runner, gallery, tmp_path / f"m{i}", (i, 3), progress=False)
        assert info["count"] == len(range(i, 48, 3))
    ids, vectors, rows, info = read_embedding_shards([tmp_path / f"m{i}" for i in range(3)])
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], gallery.ids)
    full = runner.embed_dataset(tiny_test_split(), progress=False).vectors
    np.testing.assert_allclose(vectors[order], full, atol=1e-6)
    assert [r["id"] for r in rows] == ids.tolist()
    assert rows[0] == gallery.rows[0] and rows[0]["path"] is None
    assert info["model_sha256"] == runner.sha256 and info["dim"] == 32 and info["count"] == 48
    saved = json.loads((tmp_path / "m1/shard-00001-of-00003.json").read_text())
    assert saved["source"]["dataset"] == "synthetic-patches" and saved["count"] == 16


def test_shards_of_another_model_or_missing_or_repeated_are_errors(runner, tmp_path) -> None:
    gallery = gallery_source("synthetic-patches", "test", options=TINY_DATA)
    for i in range(2):
        embed_gallery(runner, gallery, tmp_path / "a", (i, 2), progress=False)
    embed_gallery(runner, gallery, tmp_path / "b", (0, 2), progress=False)
    with pytest.raises(EmbedError, match=r"missing \[1\], repeated \[\]"):
        read_embedding_shards(tmp_path / "b")
    with pytest.raises(EmbedError, match=r"missing \[\], repeated \[0\]"):
        read_embedding_shards([tmp_path / "a", tmp_path / "b"])
    info_path = tmp_path / "a/shard-00001-of-00002.json"
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps(info | {"model_sha256": "0" * 64}))
    with pytest.raises(EmbedError, match="shards disagree on model_sha256"):
        read_embedding_shards(tmp_path / "a")
    with pytest.raises(EmbedError, match="no shard"):
        read_embedding_shards(tmp_path / "empty")


def test_parse_shard() -> None:
    assert parse_shard("2/5") == (2, 5)
    for bad in ("5/5", "-1/2", "1", "a/b"):
        with pytest.raises(ValueError, match="expected a shard I/N"):
            parse_shard(bad)


def test_cli_embed_skips_a_corrupt_image_unless_strict(tiny, tmp_path) -> None:
    write_images(tmp_path / "gallery", ["shoes/1.png", "shoes/2.png", "bags/3.png"])
    (tmp_path / "gallery/bags/bad.png").write_bytes(b"broken")
    args = [
        "embed",
        str(tiny[1]),
        "--images",
        str(tmp_path / "gallery"),
        "-o",
        str(tmp_path / "out"),
    ]
    result = CliRunner().invoke(app, [*args, "--shard", "0/1"])
    assert result.exit_code == 0, result.output
    assert "bad.png" in result.output and "3 of 4 items embedded (1 skipped)" in result.output
    ids, vectors, rows, info = read_embedding_shards(tmp_path / "out")
    assert len(ids) == 3 and vectors.shape == (3, 32) and len(info["skipped"]) == 1
    assert "bad.png" not in json.dumps(rows)
    strict = CliRunner().invoke(app, [*args, "--strict"])
    assert strict.exit_code == 2 and "bad.png: expected a readable image" in strict.output
