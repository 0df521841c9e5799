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

from .data import DatasetError, RetrievalDataset, dataset_splits
from .data.csv_gallery import OPTIONAL, REQUIRED
from .data.holdout import HeldOut
from .data.images import FileDataset, is_image_file, load_image
from .data.split import build_split


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
    test_fraction: float = 0.0,
    split_by: str = "item",
    split_seed: int = 0,
) -> Gallery:
    """The gallery of exactly one of: a data set split (`dataset`, `root`, `options`), a folder
    of `images`, or a CSV `manifest`.

    A folder with subfolders is read as the `folder` data set (`<coarse>/<fine>/<image>`,
    labels from folder names); a folder of image files alone gives unlabelled items with ids
    in sorted file-name order. A manifest is the `csv` data set, with its extra columns kept.
    `split` may be left out when the source has a single split. `test_fraction` > 0 cuts a
    labelled source without splits into `train` and `test` as `coins train --test-fraction`
    does (retrieval/data/split.py; `split_seed` is that run's `--seed`), and `split` names the
    side; ids stay those of the whole gallery.
    """
    cut = Cut(test_fraction, split_by, split_seed)
    given = [
        k for k, v in {"dataset": dataset, "images": images, "manifest": manifest}.items() if v
    ]
    if len(given) != 1:
        raise ValueError(
            f"expected exactly one of dataset, images, manifest; got {given or 'none'}"
        )
    if dataset is not None:
        split = _one_split(dataset, split, root)
        data = cut.build(dataset, split, root, options or {})
        source = {"kind": "dataset", "dataset": dataset, "split": split, "root": _str(root)}
        return from_dataset(data, source | {"options": options or {}} | cut.record())
    if images is not None:
        return _images_gallery(Path(images).resolve(), split, cut)
    assert manifest is not None
    return _manifest_gallery(Path(manifest).resolve(), split, cut)


@dataclass(frozen=True)
class Cut:
    """A test-fraction split of a source without splits (`split_dataset`); 0: none."""

    fraction: float = 0.0
    split_by: str = "item"
    seed: int = 0

    def build(
        self, name: str, split: str, root: str | Path | None, options: dict[str, Any]
    ) -> RetrievalDataset:
        return build_split(name, split, root, options, self.fraction, self.split_by, self.seed)

    def record(self) -> dict[str, Any]:
        """What a gallery's source records of the cut (nothing without one)."""
        if not self.fraction:
            return {}
        return {"test_fraction": self.fraction, "split_by": self.split_by, "split_seed": self.seed}


def from_dataset(
    data: RetrievalDataset,
    source: dict[str, Any],
    extras: list[dict[str, str]] | None = None,
    root: Path | None = None,
) -> Gallery:
    """A gallery of every item of `data`, in order: ids by path hash relative to `root` when
    given (files without ids of their own), else the data set's ids."""
    files = file_paths(data)
    paths = None if files is None else [p.resolve() for p in files]
    if root is not None:
        assert files is not None, "path-hash ids need files"
        ids, scheme = path_ids(files, root), "path-hash-v1"
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
    files = file_paths(data)
    rows = []
    for i in range(len(data)):
        f = -1 if fine is None else int(fine[i])
        row: dict[str, Any] = {
            "id": int(ids[i]),
            "path": None if files is None else str(files[i].resolve()),
            "coarse": data.coarse_classes[int(data.coarse_labels[i])],
            "fine": data.fine_classes[f] if f >= 0 and data.fine_classes else None,
        }
        rows.append(row | (extras[i] if extras else {}))
    return rows


def file_paths(data: RetrievalDataset) -> list[Path] | None:
    """The image file of every item of `data` (files, or a split cut from files), else None."""
    if isinstance(data, FileDataset):
        return data.paths
    if isinstance(data, HeldOut):
        files = file_paths(data.base)
        return None if files is None else [files[i] for i in data.indices.tolist()]
    return None


def _images_gallery(folder: Path, split: str | None, cut: Cut) -> Gallery:
    """The `folder` data set where there are subfolders, else the image files themselves."""
    if not any(p.is_dir() and not p.name.startswith(".") for p in _entries(folder)):
        if cut.fraction:
            raise DatasetError(f"{folder}: a test fraction needs <coarse>/ folders to cut by")
        return _flat_folder(folder)
    split = _one_split("folder", split, folder)
    source = {"kind": "images", "root": str(folder), "split": split} | cut.record()
    return from_dataset(cut.build("folder", split, folder, {}), source, root=folder)


def _manifest_gallery(path: Path, split: str | None, cut: Cut) -> Gallery:
    split = _one_split("csv", split, path)
    data = cut.build("csv", split, path, {})
    whole = data.base if isinstance(data, HeldOut) else data
    header, extras = _manifest_extras(path, whole.split, len(whole))
    if isinstance(data, HeldOut):  # the rows of the side cut
        extras = [extras[i] for i in data.indices.tolist()]
    source = {"kind": "manifest", "path": str(path), "split": split} | cut.record()
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
