"""Your own images listed in a CSV manifest: columns `path,coarse` and optionally `fine,id,split`.

Labels are strings, numbered in sorted order over the whole manifest so that a label means the
same class in every split. Relative paths are read against the CSV's folder. The structure is
checked when the manifest is loaded, the image files only when an item is read.

Splits are the values of the `split` column; without that column the manifest is one split,
`all` (enough for `coins eval`, `embed` and `index`; `coins train` reads `train` and `test`, and
asking for them says which column to add). Ids need to be unique within a split only: every
consumer (training, evaluation, a gallery, its shards and index) reads one split, and an index
refuses an id it already holds. Without an `id` column this data set numbers the rows by position
(for training and evaluation), and a gallery of it (`coins embed`, `coins index`) gives each
file a 63-bit hash of its path instead (retrieval/gallery.py, `path_ids`). Columns beyond these
become the items' typed fields in an index (serve/index/fields.py).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .base import DatasetError, check_split, class_index
from .images import FileDataset
from .registry import register_dataset

REQUIRED = ("path", "coarse")
OPTIONAL = ("fine", "id", "split")
DEFAULT_NAME = "manifest.csv"  # looked for when root is a folder


@dataclass
class _Manifest:
    path: Path
    columns: list[str]
    rows: list[dict[str, str]]  # cells stripped; a missing optional column reads as ""
    lines: list[int]  # line of each row in the file, for messages


@register_dataset("csv")
class CSVManifest(FileDataset):
    """`root` is the CSV file (or a folder holding `manifest.csv`); split "all" without a
    `split` column, else the values of that column."""

    splits = ("all",)

    @classmethod
    def available_splits(cls, root: Path | None) -> tuple[str, ...]:
        if root is None:
            return cls.splits
        return _splits(_read_manifest(_manifest_path(root)))

    def __init__(self, split: str = "train", root: Path | None = None) -> None:
        table = _read_manifest(_manifest_path(root))
        if "split" not in table.columns and split != "all":
            raise DatasetError(
                f"{table.path} has no `split` column, so its only split is `all`, not {split!r}; "
                "for `coins train` pass --test-fraction 0.2 (a seeded split per class), or add "
                "a column `split` with the value `train` or `test` in every row (training reads "
                "`train`, evaluation `test`)"
            )
        check_split(split, _splits(table), table.path)
        coarse_classes, coarse_index = class_index([r["coarse"] for r in table.rows])
        fine_classes, fine_index = class_index([r["fine"] for r in table.rows if r["fine"]])
        ids = _ids(table)
        has_split = "split" in table.columns
        keep = [i for i, r in enumerate(table.rows) if not has_split or r["split"] == split]
        rows = [table.rows[i] for i in keep]

        self.split = split
        self.coarse_classes = coarse_classes
        self.coarse_labels = np.array([coarse_index[r["coarse"]] for r in rows], dtype=np.int64)
        self.fine_classes = fine_classes or None
        self.fine_labels = None
        if fine_classes:
            fine = [fine_index.get(r["fine"], -1) for r in rows]
            self.fine_labels = np.array(fine, dtype=np.int64)
        self.ids = ids[keep]
        # relative to the manifest's folder; an absolute path replaces the folder
        self.paths = [table.path.parent / r["path"] for r in rows]
        self._check_labels(table.path)


def _manifest_path(root: Path | None) -> Path:
    """The manifest: `root` itself, or `root/manifest.csv` when `root` is a folder."""
    if root is None:
        raise DatasetError(
            f"csv: expected root, the manifest file (path,coarse[,fine][,id][,split]) "
            f"or the folder holding it as {DEFAULT_NAME}"
        )
    root = Path(root)
    path = root / DEFAULT_NAME if root.is_dir() else root
    if not path.is_file():
        raise DatasetError(
            f"{path}: expected a CSV manifest file (or a folder holding {DEFAULT_NAME}), not found"
        )
    return path


def _read_manifest(path: Path) -> _Manifest:
    """Rows of the manifest, checked for the columns and for complete rows."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            reader = csv.reader(file)
            header = [name.strip() for name in next(reader, [])]
            body = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DatasetError(f"{path}: expected a UTF-8 CSV manifest: {err}") from err
    missing = [c for c in REQUIRED if c not in header]
    if missing or len(set(header)) != len(header):
        raise DatasetError(
            f"{path}: expected unique columns {list(REQUIRED)} plus optional {list(OPTIONAL)}, "
            f"found {header}"
        )
    rows, lines = [], []
    for line, cells in body:
        if len(cells) != len(header):
            raise DatasetError(
                f"{path}, line {line}: expected {len(header)} cells, got {len(cells)}"
            )
        row = dict.fromkeys(OPTIONAL, "") | {
            k: v.strip() for k, v in zip(header, cells, strict=True)
        }
        empty = [c for c in (*REQUIRED, "split") if c in header and not row[c]]
        if empty:
            raise DatasetError(f"{path}, line {line}: expected a value in column(s) {empty}")
        rows.append(row)
        lines.append(line)
    if not rows:
        raise DatasetError(f"{path}: expected at least one row after the header")
    return _Manifest(path, header, rows, lines)


def _splits(table: _Manifest) -> tuple[str, ...]:
    if "split" not in table.columns:
        return CSVManifest.splits
    return tuple(sorted({r["split"] for r in table.rows}))


def _ids(table: _Manifest) -> np.ndarray:
    """The `id` column as ints unique within each split, or the row index without the column."""
    if "id" not in table.columns:
        return np.arange(len(table.rows), dtype=np.int64)
    ids = []
    seen: dict[tuple[str, int], int] = {}  # (split, id) -> line
    for row, line in zip(table.rows, table.lines, strict=True):
        try:
            value = int(row["id"])
            if not -(2**63) <= value < 2**63:
                raise ValueError
        except ValueError:
            raise DatasetError(
                f"{table.path}, line {line}: expected an integer id, got {row['id']!r}"
            ) from None
        key = (row["split"], value)  # split is "" without the column: unique in the file
        if key in seen:
            within = f" within split {row['split']!r}" if row["split"] else ""
            raise DatasetError(
                f"{table.path}, line {line}: expected unique ids{within}, "
                f"{value} is also on line {seen[key]}"
            )
        seen[key] = line
        ids.append(value)
    return np.array(ids, dtype=np.int64)
