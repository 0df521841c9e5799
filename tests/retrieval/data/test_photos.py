"""The generated photo gallery: deterministic, labelled as its folders say, readable as csv."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coins.retrieval.data import build_dataset
from coins.retrieval.data.photos import PATTERNS, SHAPES, photo_labels, render_photo, write_photos


@pytest.fixture(scope="module")
def gallery(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("photos")
    write_photos(out, 80, size=32, seed=3, workers=1)
    return out


def test_render_depends_on_seed_and_index_only() -> None:
    a = render_photo(5, size=48, seed=1)
    assert a.dtype == np.uint8 and a.shape == (48, 48, 3)
    assert np.array_equal(a, render_photo(5, size=48, seed=1))
    assert not np.array_equal(a, render_photo(5, size=48, seed=2))
    assert not np.array_equal(a, render_photo(6, size=48, seed=1))


def test_gallery_files_and_manifest(gallery: Path) -> None:
    rows = list(csv.DictReader((gallery / "manifest.csv").open()))
    assert len(rows) == 80 and list(rows[0]) == ["path", "coarse", "fine", "split"]
    for row in rows:
        coarse, pattern, name = row["path"].split("/")
        assert (coarse, f"{coarse}/{pattern}") == (row["coarse"], row["fine"])
        assert name.endswith(".jpg") and row["split"] in ("train", "test")
    with Image.open(gallery / rows[0]["path"]) as img:
        assert (img.format, img.mode, img.size) == ("JPEG", "RGB", (32, 32))
    test = sum(r["split"] == "test" for r in rows)
    assert 5 <= test <= 30  # about a fifth of 80
    assert {r["fine"] for r in rows} == {f"{s}/{p}" for s in SHAPES for p in PATTERNS}


def test_a_smaller_gallery_is_a_prefix(gallery: Path, tmp_path: Path) -> None:
    write_photos(tmp_path, 10, size=32, seed=3, workers=2)
    for i in range(10):
        path = photo_labels(i, seed=3).path
        assert (tmp_path / path).read_bytes() == (gallery / path).read_bytes()


def test_csv_and_folder_read_the_same_labels(gallery: Path) -> None:
    by_csv = build_dataset("csv", "train", gallery)
    by_folder = build_dataset("folder", "all", gallery)
    folder = zip(by_folder.paths, by_folder.coarse_labels, by_folder.fine_labels, strict=True)
    labels = {
        p.relative_to(gallery).as_posix(): (by_folder.coarse_classes[c], by_folder.fine_classes[f])
        for p, c, f in folder
    }
    assert len(by_csv) > 40
    for p, c, f in zip(by_csv.paths, by_csv.coarse_labels, by_csv.fine_labels, strict=True):
        key = p.relative_to(gallery).as_posix()
        assert labels[key] == (by_csv.coarse_classes[c], by_csv.fine_classes[f])


def test_bad_arguments_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="count > 0"):
        write_photos(tmp_path, 0)
    with pytest.raises(ValueError, match="jpg or png"):
        write_photos(tmp_path, 4, size=32, ext="gif")
