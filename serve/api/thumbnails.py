"""Images of indexed items for the web page, looked up by id only (never by a client's path).

An item's picture is the image file at its metadata path, or, for galleries indexed from a data
set without files (synthetic-patches), the data set's item rendered again. Either way it is
decoded and re-encoded as a PNG thumbnail, so only image content ever leaves the server.

Only files inside the gallery folders (`ImageFolders`) are shown: an item's path is a string an
admin sent, and without the check any image file the server can read would be public.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from coins.retrieval.data import DatasetError, RetrievalDataset, build_dataset, load_image
from coins.retrieval.data.images import is_image_file
from coins.serve.api.errors import ApiError
from coins.serve.api.schemas import ItemMetadata
from coins.serve.index.manifest import gallery_roots


@dataclass(frozen=True)
class ImageFolders:
    """The folders whose image files items may name: the gallery folders an index manifest
    records and the server's `image_roots` setting, symlinks resolved."""

    roots: tuple[Path, ...]
    base: Path | None  # a relative item path is read against it: the gallery's own root

    @classmethod
    def of(cls, manifest: dict[str, Any], image_roots: Sequence[Path] = ()) -> ImageFolders:
        source = manifest.get("source")
        source = source if isinstance(source, dict) else {}
        recorded = gallery_roots(source, known=manifest.get("roots") or [])
        folders = [Path(r) for r in recorded] + list(image_roots)
        roots = tuple(dict.fromkeys(f.resolve() for f in folders))  # in order, once each
        root = source.get("root")
        base = Path(root).resolve() if root else None
        return cls(roots, base if base is not None and base.is_dir() else None)

    def inside(self, path: str) -> Path | None:
        """`path` resolved (symlinks followed, so a link cannot lead out) if that lies inside
        one of the roots, else None."""
        candidate = Path(path)
        if not candidate.is_absolute():
            if self.base is None:
                return None
            candidate = self.base / candidate
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: no file
            return None
        return resolved if any(resolved.is_relative_to(r) for r in self.roots) else None

    def describe(self) -> str:
        """The roots for an error message."""
        if not self.roots:
            return (
                "this index records no gallery folder; start the server with --image-root "
                "FOLDER (COINS_IMAGE_ROOTS) to allow one"
            )
        return "allowed folders: " + ", ".join(str(r) for r in self.roots)


class Thumbnails:
    """Thumbnails of the items of one index; the data set (if any) is built on first use."""

    def __init__(
        self, manifest: dict[str, Any], index_dir: Path, image_roots: Sequence[Path] = ()
    ) -> None:
        self.source = _dataset_source(manifest)
        self.folders = ImageFolders.of(manifest, image_roots)
        self.index_dir = index_dir
        self._lock = threading.Lock()
        self._dataset: RetrievalDataset | None = None
        self._position: dict[int, int] | None = None

    def thumbnail(self, item: ItemMetadata, size: int) -> bytes:
        """PNG bytes of item's image, its longer side at most `size`; 404 if it has none."""
        img = self._image(item)
        img.thumbnail((size, size), Image.Resampling.LANCZOS)
        out = io.BytesIO()
        img.save(out, format="PNG")
        return out.getvalue()

    def _image(self, item: ItemMetadata) -> Image.Image:
        if item.path:
            path = self.folders.inside(item.path)
            if path is None:  # e.g. added before paths were confined: never shown
                raise ApiError(404, f"item {item.id}: its image is outside the gallery folders")
            if is_image_file(path) and path.is_file():
                try:
                    return load_image(path)
                except DatasetError as err:
                    raise ApiError(404, f"item {item.id}: its image cannot be read") from err
        if self.source.get("dataset"):
            return self._dataset_image(item.id)
        raise ApiError(404, f"item {item.id} has no image this server can show")

    def _dataset_image(self, id_: int) -> Image.Image:
        with self._lock:
            if self._dataset is None:
                self._dataset = build_dataset(
                    self.source["dataset"],
                    split=self.source.get("split", "test"),
                    root=self.source.get("root"),
                    **(self.source.get("options") or {}),
                )
                ids = np.asarray(self._dataset.ids)
                self._position = {int(i): p for p, i in enumerate(ids)}
        assert self._position is not None and self._dataset is not None
        pos = self._position.get(id_)
        if pos is None:
            raise ApiError(404, f"item {id_} is not in data set {self.source['dataset']!r}")
        return self._dataset.image(pos)


def _dataset_source(manifest: dict[str, Any]) -> dict[str, Any]:
    """`{dataset, split, root, options}` of the data set an index was built from, else {}."""
    source = manifest.get("source") or manifest.get("data_source") or {}
    if not isinstance(source, dict):
        return {}
    name = source.get("dataset") or source.get("name")
    if not name:
        return {"root": source.get("root")} if source.get("root") else {}
    return {
        "dataset": name,
        "split": source.get("split", "test"),
        "root": source.get("root"),
        "options": source.get("options") or source.get("dataset_options") or {},
    }
