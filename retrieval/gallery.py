"""What a gallery is: items to embed, each with a stable int64 id and a metadata row.

One function, `gallery_source`, turns a data set split, a folder of images or a CSV manifest
into a `Gallery`; `coins embed` and `coins index` both enumerate through it, so an id means the
same item in every shard and index. Metadata rows are plain JSON objects:
``{"id", "path" (or None), "coarse", "fine" (class names or None), extra manifest columns}``.

Ids are stable, so that a second folder can join an index and a folder re-embedded after some
files changed keeps its ids. The id scheme (`Gallery.id_scheme`, also in `source`):

- "column": a manifest's own `id` column;
- "path-hash-v1": files without one (a folder, a manifest without `id`): a 63-bit hash of the
  path relative to the gallery root (the folder, or the manifest's folder), so the id depends
  neither on the other files nor on where the gallery is mounted; a collision is refused;
- "dataset": a registered data set's own ids.
"""

from __future__ import annotations

import csv
import hashlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .data import DatasetError, RetrievalDataset, build_dataset, dataset_splits
from .data.csv_gallery import OPTIONAL, REQUIRED
from .data.images import FileDataset, is_image_file, load_image


@dataclass
class Gallery:
    """Items in a fixed order: ids, metadata rows and images by position.

    `paths` is set when the images are files (an undecodable one can then be skipped and
    reported); generated data sets have none.
    """

    ids: np.ndarray  # int64 [N], unique
    rows: list[dict[str, Any]]  # [N] metadata rows, rows[i]["id"] == ids[i]
    source: dict[str, Any]  # what was enumerated: kind, data set/folder/file, split, id_scheme
    paths: list[Path] | None  # [N] image files, or None
    load: Callable[[int], Image.Image]  # image of position i
    id_scheme: str = "dataset"  # one of ID_SCHEMES

    def __post_init__(self) -> None:
        n = len(self.ids)
        assert self.ids.dtype == np.int64 and self.ids.shape == (n,), "ids must be int64 [N]"
        assert len(self.rows) == n and (self.paths is None or len(self.paths) == n)
        assert self.id_scheme in ID_SCHEMES, self.id_scheme

    def __len__(self) -> int:
        return len(self.ids)

    def image(self, index: int) -> Image.Image:
        return self.load(index)

    def subset(self, positions: np.ndarray) -> Gallery:
        """The items at `positions` (int [n]), in that order."""
        keep = np.asarray(positions, dtype=np.int64)
        return Gallery(
            ids=self.ids[keep],
            rows=[self.rows[i] for i in keep],
            source=self.source,
            paths=None if self.paths is None else [self.paths[i] for i in keep],
            load=lambda j: self.load(int(keep[j])),
            id_scheme=self.id_scheme,
        )


ID_SCHEMES = ("column", "path-hash-v1", "dataset")


def path_id(relpath: str) -> int:
    """The stable id of a file: blake2b (8-byte digest) of its POSIX relative path, as an
    int64 >= 0 (63 bits: FAISS ids are signed, and -1 means "no result")."""
    digest = hashlib.blake2b(relpath.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") & (2**63 - 1)


def path_ids(paths: Sequence[Path], root: Path) -> np.ndarray:
    """int64 [N] ids of `paths` by `path_id` of their path relative to `root`; two paths with
    one id (the same file listed twice, or a hash collision) are refused, both named."""
    base = os.path.abspath(root)
    rel = [os.path.relpath(os.path.abspath(p), base).replace(os.sep, "/") for p in paths]
    ids = np.array([path_id(r) for r in rel], dtype=np.int64)
    if len(np.unique(ids)) != len(ids):
        first: dict[int, str] = {}
        for r, i in zip(rel, ids.tolist(), strict=True):
            if i in first:
                raise DatasetError(
                    f"{root}: {first[i]!r} and {r!r} have the same path-hash id {i}; expected "
                    "unique paths (give the manifest an `id` column to choose ids yourself)"
                )
            first[i] = r
    return ids


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
    root: Path | None = None,
) -> Gallery:
    """A gallery of every item of `data`, in order: ids by path hash relative to `root` when
    given (files without ids of their own), else the data set's ids."""
    paths = [p.resolve() for p in data.paths] if isinstance(data, FileDataset) else None
    if root is not None:
        assert isinstance(data, FileDataset), "path-hash ids need files"
        ids, scheme = path_ids(data.paths, root), "path-hash-v1"
    else:
        ids, scheme = data.ids.astype(np.int64), source.get("id_scheme", "dataset")
    return Gallery(
        ids=ids,
        rows=metadata_rows(data, extras, ids),
        source=source | {"id_scheme": scheme},
        paths=paths,
        load=data.image,
        id_scheme=scheme,
    )


def metadata_rows(
    data: RetrievalDataset,
    extras: list[dict[str, str]] | None = None,
    ids: np.ndarray | None = None,
) -> list[dict[str, Any]]:
    """One JSON row per item: id (`ids`, default the data set's), path (None unless files),
    coarse and fine class names."""
    ids = data.ids if ids is None else ids
    fine = data.fine_labels
    rows = []
    for i in range(len(data)):
        f = -1 if fine is None else int(fine[i])
        row: dict[str, Any] = {
            "id": int(ids[i]),
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
    return from_dataset(build_dataset("folder", split, folder), source, root=folder)


def _manifest_gallery(path: Path, split: str | None) -> Gallery:
    split = _one_split("csv", split, path)
    data = build_dataset("csv", split, path)
    header, extras = _manifest_extras(path, split, len(data))
    source = {"kind": "manifest", "path": str(path), "split": split}
    if "id" in header:
        return from_dataset(data, source | {"id_scheme": "column"}, extras)
    return from_dataset(data, source, extras, root=path.parent)


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
    ids = path_ids(paths, folder)
    rows = [
        {"id": int(i), "path": str(p), "coarse": None, "fine": None}
        for i, p in zip(ids, paths, strict=True)
    ]
    scheme = "path-hash-v1"
    return Gallery(
        ids=ids,
        rows=rows,
        source={"kind": "images", "root": str(folder), "split": None, "id_scheme": scheme},
        paths=paths,
        load=lambda i: load_image(paths[i]),
        id_scheme=scheme,
    )


def _manifest_extras(path: Path, split: str, n: int) -> tuple[list[str], list[dict[str, str]]]:
    """The manifest's header, and its columns beyond path/coarse/fine/id/split for the rows of
    `split`, read the way the `csv` data set reads them (blank lines skipped, cells stripped)."""
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
    return header, [{c: r[c] for c in extra} for r in rows]


def _str(root: str | Path | None) -> str | None:
    return None if root is None else str(Path(root).resolve())
