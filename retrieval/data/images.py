"""Image files decoded on access, the one place that turns a file into an "RGB" or "L" image.

Galleries are large, so files are only opened when an item is read; a missing or broken file
then raises DatasetError naming it, instead of a bare PIL error deep inside a DataLoader.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .base import DatasetError, RetrievalDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".gif")
_GREY_MODES = {"1", "L", "LA", "La"}
_WIDE_GREY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}  # 16-bit greys (16-bit PNG, TIFF)


def is_image_file(path: Path) -> bool:
    """Whether `path` has one of the image extensions we read (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path) -> Image.Image:
    """Decode `path` upright (EXIF orientation applied) as mode "RGB", or "L" for grey images."""
    try:
        with Image.open(path) as img:
            img.load()
            upright = ImageOps.exif_transpose(img)
            return standard_mode(upright)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DatasetError(
            f"{path}: expected a readable image (JPEG/PNG/BMP/WebP/GIF): {err}"
        ) from err


def standard_mode(img: Image.Image) -> Image.Image:
    """Reduce any PIL mode to "RGB" or "L"; alpha is dropped, 16-bit greys keep their top byte."""
    if img.mode in ("RGB", "L"):
        return img
    if img.mode in _GREY_MODES:
        return img.convert("L")
    if img.mode in _WIDE_GREY_MODES:
        # convert("L") would clip values above 255 instead of rescaling them
        grey = np.asarray(img, dtype=np.int64).clip(0, 65535) >> 8
        return Image.fromarray(grey.astype(np.uint8))
    if img.mode == "F":
        return Image.fromarray(np.asarray(img).clip(0, 255).astype(np.uint8))
    return img.convert("RGB")  # P, PA, RGBA, CMYK, YCbCr, LAB, HSV, ...


class FileDataset(RetrievalDataset):
    """A data set whose images are files; subclasses fill `paths` alongside the labels."""

    paths: list[Path]  # [N], absolute or relative to the working directory

    def image(self, index: int) -> Image.Image:
        return load_image(self.paths[index])
