"""`coins index`, `coins search` and `coins eval --index` on a tiny exported model."""

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
from coins.retrieval.evaluate import metrics_from_embeddings
from coins.retrieval.models import Embedder, EmbedderConfig
from coins.retrieval.onnx.export import export_model
from coins.retrieval.onnx.runner import OnnxEmbedder
from coins.serve.index.build import build_gallery_index
from coins.serve.index.store import IndexLoadError, SearchIndex

runner = CliRunner()
DATA = [arg for key, value in TINY_DATA.items() for arg in ("--option", f"{key}={value}")]


def export_tiny(path: Path, channels: list[int]) -> Path:
    torch.manual_seed(0)
    config = TINY_MODEL | {"backbone_kwargs": {"channels": channels}}
    export_model(Embedder(EmbedderConfig.from_dict(config)).eval(), path, "backbone", None, "coins")
    return path


@pytest.fixture
def built(tiny_onnx: Path, tiny_index: Path) -> tuple[Path, Path]:
    """The session's tiny model and its flat index of the synthetic-patches test split (48
    items), as `coins index` builds it (tests/conftest.py): read only."""
    return tiny_onnx, tiny_index


def test_index_builds_a_flat_index_of_a_data_set_split(tiny_onnx: Path, tmp_path: Path) -> None:
    out = tmp_path / "idx"
    args = ["index", str(tiny_onnx), "--dataset", "synthetic-patches", "--split", "test", *DATA]
    result = runner.invoke(app, [*args, "--type", "flat", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "48 vectors of dimension 32, IDMap2,Flat" in result.output
    assert SearchIndex.load(out).ntotal == 48


def test_search_by_id_never_returns_the_item(built) -> None:
    _, out = built
    index = SearchIndex.load(out)
    first = int(index.labels()[0][0])
    result = runner.invoke(app, ["search", str(out), "--id", str(first), "-k", "5", "--json"])
    assert result.exit_code == 0, result.output
    hits = json.loads(result.output)[0]
    assert len(hits) == 5 and first not in [h["id"] for h in hits]
    assert [h["rank"] for h in hits] == [0, 1, 2, 3, 4]
    assert all(h["metadata"]["coarse"] is not None for h in hits)
    assert hits[0]["score"] >= hits[-1]["score"]


def test_search_by_image_and_by_vector_file_agree(built, tmp_path) -> None:
    model, out = built
    data = build_dataset("synthetic-patches", "test", **TINY_DATA)
    image = tmp_path / "q.png"
    data.image(3).save(image)
    search = ["search", str(out)]
    by_image = runner.invoke(app, [*search, "--image", str(image), "--model", str(model), "--json"])
    assert by_image.exit_code == 0, by_image.output
    top = json.loads(by_image.output)[0][0]
    assert top["id"] == int(data.ids[3]) and top["score"] == pytest.approx(1.0, abs=1e-4)
    vector = tmp_path / "q.npy"
    np.save(vector, OnnxEmbedder(model).embed_images([data.image(3)]).vectors[0])
    by_vector = runner.invoke(app, [*search, "--vector-file", str(vector)])
    assert by_vector.exit_code == 0 and f"{int(data.ids[3]):>10}" in by_vector.output
    name = top["metadata"]["coarse"]
    coarse = runner.invoke(app, [*search, "--vector-file", str(vector), "--coarse", name, "--json"])
    assert {h["metadata"]["coarse"] for h in json.loads(coarse.output)[0]} == {name}


def test_eval_through_the_index_equals_the_metrics_of_the_onnx_vectors(built, tmp_path) -> None:
    model, out = built
    json_path = tmp_path / "m.json"
    args = ["eval", "--index", str(out), "--model", str(model), "--json", str(json_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    data = build_dataset("synthetic-patches", "test", **TINY_DATA)
    x = OnnxEmbedder(model).embed_dataset(data).vectors
    order = np.argsort(data.ids)  # the index evaluates in id order: the same set
    expected = metrics_from_embeddings(x[order], data.coarse_labels[order], data.fine_labels[order])
    got = json.loads(json_path.read_text())
    for level in ("fine", "coarse"):
        for name, value in expected[level].items():
            assert got[level][name] == pytest.approx(value, abs=1e-9), (level, name)


def test_a_model_of_another_dimension_is_a_clear_error(built, tmp_path) -> None:
    _, out = built
    other = export_tiny(tmp_path / "wide.onnx", [8, 16, 16, 64])
    image = tmp_path / "q.png"
    Image.new("RGB", (16, 16), (255, 0, 0)).save(image)
    result = runner.invoke(app, ["search", str(out), "--image", str(image), "--model", str(other)])
    assert result.exit_code == 2
    assert "gives 64-d vectors but the index holds 32-d" in result.output
    with pytest.raises(IndexLoadError, match="not the given model's"):
        SearchIndex.load(out, model_sha256="f" * 64)


def test_shards_then_append_then_remove(built, tmp_path) -> None:
    model, _ = built
    gallery = ["--dataset", "synthetic-patches", *DATA]
    shards = str(tmp_path / "shards")
    args = ["embed", str(model), *gallery, "--split", "test", "--chunk-size", "20", "-o", shards]
    assert runner.invoke(app, [*args, "--workers", "0"]).exit_code == 0
    out = str(tmp_path / "idx")
    from_shards = ["index", "--from-embeddings", shards]
    first = runner.invoke(app, [*from_shards, "-o", out, "--type", "flat"])
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*from_shards, "-o", out])
    assert again.exit_code == 2 and "already holds an index" in again.output
    train = ["index", str(model), *gallery, "--split", "train", "-o", out, "--append"]
    appended = runner.invoke(app, train)
    assert appended.exit_code == 0, appended.output
    assert "0 of 64 items are in the index already: skipped" in appended.output
    assert "added 64 vectors: 48 -> 112 of dimension" in appended.output  # not the build's 48
    index = SearchIndex.load(out)
    assert index.ntotal == 48 + 64 and index.manifest.model_sha256 == OnnxEmbedder(model).sha256
    twice = runner.invoke(app, train)  # the same items again: every one skipped, none added
    assert twice.exit_code == 0, twice.output
    assert "64 of 64 items are in the index already: skipped" in twice.output
    assert "added 0 vectors: 112 -> 112" in twice.output
    ids = index.labels()[0][:3]
    removed = runner.invoke(app, ["index", "remove", out, "--ids", ",".join(map(str, ids))])
    assert removed.exit_code == 0, removed.output
    assert SearchIndex.load(out).ntotal == 48 + 64 - 3


def test_remove_from_hnsw_says_it_cannot(built, tmp_path) -> None:
    model, _ = built
    out = tmp_path / "hnsw"
    args = ["index", str(model), "--dataset", "synthetic-patches", "--split", "test", *DATA]
    assert runner.invoke(app, [*args, "--type", "hnsw", "-o", str(out)]).exit_code == 0
    result = runner.invoke(app, ["index", "remove", str(out), "--ids", "0"])
    assert result.exit_code == 2 and "cannot remove" in result.output


def test_search_needs_exactly_one_query(built) -> None:
    _, out = built
    result = runner.invoke(app, ["search", str(out)])
    assert result.exit_code == 2 and "exactly one query" in result.output
    bad = runner.invoke(app, ["search", str(out.parent), "--id", "1"])
    assert bad.exit_code == 2 and "no index manifest" in bad.output


def test_index_takes_a_model_or_shards_not_both(built, tmp_path) -> None:
    model, _ = built
    with pytest.raises(ValueError, match="got neither"):
        build_gallery_index(tmp_path / "x")
    both = ["index", str(model), "--from-embeddings", str(tmp_path), "-o", str(tmp_path / "y")]
    result = runner.invoke(app, both)
    assert result.exit_code == 2 and "got both" in result.output
    assert not (tmp_path / "y").exists()


def test_index_of_the_photos_a_test_fraction_run_held_out(tiny_onnx: Path, tmp_path: Path) -> None:
    # `coins index --test-fraction 0.5 --split-seed 3 --split test`: the items `coins train
    # --test-fraction 0.5 --seed 3` held out, with the whole folder's ids, the cut recorded
    from coins.retrieval.gallery import gallery_source

    folder = tmp_path / "photos"
    names = [f"{c}/{f}/{i}.png" for c in ("bags", "shoes") for f in ("a", "b") for i in range(4)]
    for i, name in enumerate(names):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 24), (40 * i % 256, 90, 160)).save(folder / name)
    out = tmp_path / "held"
    cut = ["--test-fraction", "0.5", "--split-seed", "3"]
    args = ["index", "build", str(tiny_onnx), "--images", str(folder), "--split", "test", *cut]
    result = runner.invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    held = gallery_source(images=folder, split="test", test_fraction=0.5, split_seed=3)
    index = SearchIndex.load(out)
    assert sorted(index.labels()[0].tolist()) == sorted(held.ids.tolist()) and len(held) == 8
    source = index.manifest.source
    assert (source["test_fraction"], source["split_seed"], source["split"]) == (0.5, 3, "test")
    other = gallery_source(images=folder, split="test", test_fraction=0.5, split_seed=0)
    assert sorted(other.ids.tolist()) != sorted(held.ids.tolist())  # the seed matters
