"""Training from files: the decoded-image cache, draft decoding, and the same run either way."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import TINY_MODEL, tiny_config

from coins.retrieval.data import build_dataset, load_image
from coins.retrieval.data.images import decode_jpegs_on
from coins.retrieval.data.photos import write_photos
from coins.retrieval.extras import missing_extra
from coins.train import train
from coins.train.loop import loader_workers


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("photos")
    write_photos(out, 96, size=24, seed=1, workers=1)
    return out


def test_cached_images_equal_the_files(gallery: Path) -> None:
    data = build_dataset("csv", "train", gallery)
    files = [np.asarray(data.image(i)) for i in range(len(data))]
    assert data.cache_images(budget_mb=1)
    assert data.decoded is not None
    for i, pixels in enumerate(files):
        assert np.array_equal(np.asarray(data.image(i)), pixels)


def test_a_gallery_over_the_budget_is_not_cached(gallery: Path) -> None:
    data = build_dataset("csv", "train", gallery)
    budget = (len(data) * 24 * 24 * 3 - 1) / 2**20  # one byte short
    assert not data.cache_images(budget_mb=budget)
    assert data.decoded is None


def test_draft_decodes_a_large_jpeg_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    smooth = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    big = Image.fromarray(smooth).resize((448, 320), Image.Resampling.BICUBIC)
    big.save(tmp_path / "a.jpg", quality=95)
    big.save(tmp_path / "a.png")
    assert load_image(tmp_path / "a.jpg", min_side=80).size == (112, 80)  # 1/4 scale
    assert load_image(tmp_path / "a.jpg", min_side=81).size == (224, 160)  # 1/2: 1/4 is too small
    assert load_image(tmp_path / "a.png", min_side=80).size == (448, 320)  # not a JPEG
    full = load_image(tmp_path / "a.jpg").resize((112, 80), Image.Resampling.BOX)
    small = load_image(tmp_path / "a.jpg", min_side=80)
    diff = np.abs(np.asarray(full, np.int16) - np.asarray(small, np.int16))
    assert diff.mean() < 2  # the same picture, scaled inside the decoder


def _csv_run(gallery: Path, out: Path, **overrides: object) -> list[float]:
    cfg = tiny_config(
        dataset="csv",
        root=str(gallery),
        dataset_options={},
        model={**TINY_MODEL, "preprocess": {"input_size": 16, "in_chans": 3}},
        epochs=2,
        proxies=4,
        **overrides,
    )
    train(cfg, out, progress=False)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(s)["loss"] for s in lines if json.loads(s)["event"] == "step"]


@pytest.mark.slow
def test_training_from_the_cache_is_training_from_the_files(gallery: Path, tmp_path: Path) -> None:
    cached = _csv_run(gallery, tmp_path / "cached")
    files = _csv_run(gallery, tmp_path / "files", cache_images_mb=0)
    assert len(cached) >= 4
    assert cached == files  # the same pixels, so the same run, step for step


def test_missing_faiss_names_the_extras() -> None:
    assert "coins[cpu]" in (missing_extra("faiss") or "")
    assert "onnxruntime-gpu" in (missing_extra("onnxruntime.capi") or "")
    assert missing_extra("numpy") is None
    code = (
        "import sys; sys.modules['faiss'] = None\n"  # an import of faiss fails as if missing
        "from coins.cli import main\n"
        "sys.argv = ['coins', 'index', 'remove', 'nowhere', '--ids', '1']\n"
        "main()"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    assert "pip install 'coins[cpu]'" in done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_jpeg_decoding_on_the_gpu_matches_pil(gallery: Path) -> None:
    data = build_dataset("csv", "train", gallery)
    on_gpu = decode_jpegs_on("cuda", data.paths[:10], batch=4)
    for path, pixels in zip(data.paths[:10], on_gpu, strict=True):
        reference = np.asarray(load_image(path), np.int16)
        assert pixels.shape == reference.shape
        assert np.abs(pixels.astype(np.int16) - reference).max() <= 3


def test_workers_per_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert (loader_workers(3), loader_workers(0), loader_workers(-1)) == (3, 0, 15)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # four training processes share the cores
    assert loader_workers(-1) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda _: {0})
    assert loader_workers(-1) == 0  # one core: the training process reads its own batches
    with pytest.raises(ValueError, match="num_workers must be >= 0"):
        tiny_config(num_workers=-2)
