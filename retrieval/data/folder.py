"""Your own images as a folder tree: `root/<coarse>/<fine>/<image>`.

With folders `root/train`, `root/val`, `root/test` the tree below each is one split; otherwise
the whole tree is the split "all" (`coins train` needs `train` and `test`: asking for them
without split folders says so). Class lists are the sorted union over all splits, so a label
means the same class in every split. Images lying directly in a coarse folder have no fine label
(-1); files with other extensions and hidden entries are skipped.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .base import DatasetError, check_split
from .images import IMAGE_EXTENSIONS, FileDataset, is_image_file
from .registry import register_dataset

SPLIT_FOLDERS = ("train", "val", "test")


@register_dataset("folder")
class ImageFolder(FileDataset):
    """Labels from folder names; ids are positions in the sorted path order of the split."""

    splits = ("all",)

    @classmethod
    def available_splits(cls, root: Path | None) -> tuple[str, ...]:
        if root is None:
            return cls.splits
        return _split_folders(_check_root(root)) or cls.splits

    def __init__(self, split: str = "train", root: Path | None = None) -> None:
        root = _check_root(root)
        split_folders = _split_folders(root)
        if not split_folders and split != "all":
            raise DatasetError(
                f"{root} has no split folders {list(SPLIT_FOLDERS)}, so its only split is "
                f"`all`, not {split!r}; for `coins train` pass --test-fraction 0.2 (a seeded "
                f"split per class), or move the class folders into {root / 'train'} and "
                f"{root / 'test'} (training reads `train`, evaluation `test`)"
            )
        check_split(split, split_folders or self.splits, root)
        tops = [root / s for s in split_folders] or [root]
        coarse_names, fine_names = _class_names(tops)
        top = root if split == "all" else root / split
        files = _image_files(top)
        if not files:
            raise DatasetError(
                f"{top}: expected images ({'/'.join(IMAGE_EXTENSIONS)}) in <coarse>/<fine>/ folders"
            )

        coarse_index = {name: i for i, name in enumerate(coarse_names)}
        fine_index = {name: i for i, name in enumerate(fine_names)}
        self.split = split
        self.coarse_classes = coarse_names
        self.coarse_labels = np.array([coarse_index[p.parts[0]] for p in files], dtype=np.int64)
        self.fine_classes = fine_names or None
        self.fine_labels = None
        if fine_names:
            fine = [fine_index.get("/".join(p.parts[:2]), -1) for p in files]
            self.fine_labels = np.array(fine, dtype=np.int64)
        self.ids = np.arange(len(files), dtype=np.int64)
        self.paths = [top / p for p in files]
        self._check_labels(top)


def _check_root(root: Path | None) -> Path:
    if root is None:
        raise DatasetError("folder: expected root, a folder of <coarse>/<fine>/<image> files")
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: expected a folder of <coarse>/<fine>/<image> files")
    return root


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_names(tops: list[Path]) -> tuple[list[str], list[str]]:
    """Sorted coarse names and "<coarse>/<fine>" names (fine names may repeat across coarse)."""
    coarse: set[str] = set()
    fine: set[str] = set()
    for top in tops:
        for c in _subfolders(top):
            coarse.add(c.name)
            fine.update(f"{c.name}/{f.name}" for f in _subfolders(c))
    return sorted(coarse), sorted(fine)


def _split_folders(root: Path) -> tuple[str, ...]:
    """The split folders under `root`; mixing them with class folders is ambiguous."""
    names = {p.name for p in _subfolders(root)}
    present = tuple(s for s in SPLIT_FOLDERS if s in names)
    others = sorted(names - set(present))
    if present and others:
        raise DatasetError(
            f"{root}: expected either split folders {list(SPLIT_FOLDERS)} or class folders, "
            f"found both {list(present)} and {others}"
        )
    return present


def _image_files(top: Path) -> list[Path]:
    """Image paths relative to `top`, `<coarse>/<image>` or `<coarse>/<fine>/<image>`, sorted."""
    files = []
    for coarse in _subfolders(top):
        for entry in coarse.iterdir():
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                inside = list(entry.iterdir())
                deeper = [p for p in inside if p.is_dir() and not p.name.startswith(".")]
                if deeper:
                    raise DatasetError(
                        f"{deeper[0]}: expected images only in <coarse>/<fine>/, found a folder"
                    )
                files += [p for p in inside if _is_image(p)]
            elif _is_image(entry):
                files.append(entry)
    return sorted((p.relative_to(top) for p in files), key=lambda p: p.as_posix())


def _is_image(path: Path) -> bool:
    return not path.name.startswith(".") and path.is_file() and is_image_file(path)
