"""What a gallery is: items to embed, each with a stable int64 id and a metadata row.

One function, `gallery_source`, turns a data set split, a folder of images or a CSV manifest
into a `Gallery`; `coins embed` and `coins index` both enumerate through it, so an id means the
same item in every shard and index. Metadata rows are plain JSON objects:
``{"id", "path" (or None), "coarse", "fine" (class names or None), extra manifest columns}``.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data import DatasetError, RetrievalDataset, build_dataset, dataset_splits
from .data.images import FileDataset, is_image_file, load_image
from .data.manifest import OPTIONAL, REQUIRED


@dataclass
class Gallery:
    """Items in a fixed order: ids, metadata rows and images by position.

    `paths` is set when the images are files (an undecodable one can then be skipped and
    reported); generated data sets have none.
    """

    ids: np.ndarray  # int64 [N], unique
    rows: list[dict[str, Any]]  # [N] metadata rows, rows[i]["id"] == ids[i]
    source: dict[str, Any]  # what was enumerated: kind, data set or folder or file, split
    paths: list[Path] | None  # [N] image files, or None
    load: Callable[[int], Image.Image]  # image of position i

    def __post_init__(self) -> None:
        n = len(self.ids)
        assert self.ids.dtype == np.int64 and self.ids.shape == (n,), "ids must be int64 [N]"
        assert len(self.rows) == n and (self.paths is None or len(self.paths) == n)

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Image.Image:
        return self.load(index)

    def shard(self, index: int, count: int) -> Gallery:
        """Shard `index` of `count`: the items at positions i with i % count == index.

        Interleaving (rather than contiguous ranges) keeps shards balanced when the source is
        sorted by class or by folder, and a shard's items do not depend on the other shards.
        """
        if not 0 <= index < count:
            raise ValueError(f"expected shard index in [0, {count}), got {index} of {count}")
        keep = np.arange(index, len(self), count)
        return Gallery(
            ids=self.ids[keep],
            rows=[self.rows[i] for i in keep],
            source=self.source,
            paths=None if self.paths is None else [self.paths[i] for i in keep],
            load=lambda j: self.load(int(keep[j])),
        )


def gallery_source(
    dataset: str | None = None,
    split: str | None = None,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    images: str | Path | None = None,
    manifest: str | Path | None = None,
) -> Gallery:
    """The gallery of exactly one of: a data set split (`dataset`, `root`, `options`), a folder
    of `images`, or a CSV `manifest`.

    A folder with subfolders is read as the `folder` data set (`<coarse>/<fine>/<image>`,
    labels from folder names); a folder of image files alone gives unlabelled items with ids
    in sorted file-name order. A manifest is the `csv` data set, with its extra columns kept.
    `split` may be left out when the source has a single split.
    """
    given = [
        k for k, v in {"dataset": dataset, "images": images, "manifest": manifest}.items() if v
    ]
    if len(given) != 1:
        raise ValueError(
            f"expected exactly one of dataset, images, manifest; got {given or 'none'}"
        )
    if dataset is not None:
        split = _one_split(dataset, split, root)
        data = build_dataset(dataset, split, root, **(options or {}))
        source = {"kind": "dataset", "dataset": dataset, "split": split, "root": _str(root)}
        return from_dataset(data, source | {"options": options or {}})
    if images is not None:
        return _images_gallery(Path(images).resolve(), split)
    assert manifest is not None
    return _manifest_gallery(Path(manifest).resolve(), split)


def from_dataset(
    data: RetrievalDataset,
    source: dict[str, Any],
    extras: list[dict[str, str]] | None = None,
) -> Gallery:
    """A gallery of every item of `data`, in order."""
    paths = [p.resolve() for p in data.paths] if isinstance(data, FileDataset) else None
    return Gallery(
        ids=data.ids.astype(np.int64),
        rows=metadata_rows(data, extras),
        source=source,
        paths=paths,
        load=data.image,
    )


def metadata_rows(
    data: RetrievalDataset, extras: list[dict[str, str]] | None = None
) -> list[dict[str, Any]]:
    """One JSON row per item: id, path (None unless files), coarse and fine class names."""
    fine = data.fine_labels
    rows = []
    for i in range(len(data)):
        f = -1 if fine is None else int(fine[i])
        row: dict[str, Any] = {
            "id": int(data.ids[i]),
            "path": str(data.paths[i].resolve()) if isinstance(data, FileDataset) else None,
            "coarse": data.coarse_classes[int(data.coarse_labels[i])],
            "fine": data.fine_classes[f] if f >= 0 and data.fine_classes else None,
        }
        rows.append(row | (extras[i] if extras else {}))
    return rows


def _images_gallery(folder: Path, split: str | None) -> Gallery:
    """The `folder` data set where there are subfolders, else the image files themselves."""
    if not any(p.is_dir() and not p.name.startswith(".") for p in _entries(folder)):
        return _flat_folder(folder)
    split = _one_split("folder", split, folder)
    source = {"kind": "images", "root": str(folder), "split": split}
    return from_dataset(build_dataset("folder", split, folder), source)


def _manifest_gallery(path: Path, split: str | None) -> Gallery:
    split = _one_split("csv", split, path)
    data = build_dataset("csv", split, path)
    source = {"kind": "manifest", "path": str(path), "split": split}
    return from_dataset(data, source, _manifest_extras(path, split, len(data)))


def _one_split(name: str, split: str | None, root: str | Path | None) -> str:
    if split is not None:
        return split
    splits = dataset_splits(name, root)
    if len(splits) != 1:
        raise DatasetError(f"{name}: expected a split, one of {list(splits)}")
    return splits[0]


def _entries(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise DatasetError(f"{folder}: expected a folder of images")
    return sorted(folder.iterdir())


def _flat_folder(folder: Path) -> Gallery:
    """Unlabelled image files directly in `folder`, sorted by name."""
    paths = [p for p in _entries(folder) if p.is_file() and not p.name.startswith(".")]
    paths = [p for p in paths if is_image_file(p)]
    if not paths:
        raise DatasetError(f"{folder}: expected image files or <coarse>/<fine>/ folders")
    rows = [{"id": i, "path": str(p), "coarse": None, "fine": None} for i, p in enumerate(paths)]
    return Gallery(
        ids=np.arange(len(paths), dtype=np.int64),
        rows=rows,
        source={"kind": "images", "root": str(folder), "split": None},
        paths=paths,
        load=lambda i: load_image(paths[i]),
    )


def _manifest_extras(path: Path, split: str, n: int) -> list[dict[str, str]]:
    """The manifest's columns beyond path/coarse/fine/id/split, for the rows of `split`,
    read the way the `csv` data set reads them (blank lines skipped, cells stripped)."""
    with path.open(newline="", encoding="utf-8-sig") as file:
        reader = csv.reader(file)
        header = [name.strip() for name in next(reader, [])]
        rows = [
            dict(zip(header, (c.strip() for c in r), strict=True))
            for r in reader
            if any(c.strip() for c in r)
        ]
    extra = [c for c in header if c not in (*REQUIRED, *OPTIONAL)]
    if "split" in header:
        rows = [r for r in rows if r["split"] == split]
    assert len(rows) == n, "the csv data set and the manifest disagree on the rows"
    return [{c: r[c] for c in extra} for r in rows]


def _str(root: str | Path | None) -> str | None:
    return None if root is None else str(Path(root).resolve())
