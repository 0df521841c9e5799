"""Image files decoded on access, the one place that turns a file into an "RGB" or "L" image.

Galleries are large, so files are only opened when an item is read; a missing or broken file
then raises DatasetError naming it, instead of a bare PIL error deep inside a DataLoader.

Training reads every image once per epoch, so two things keep it from waiting on files: a small
gallery is decoded once into memory (`FileDataset.cache_images`, the same uint8 pixels an
in-memory data set holds), and a JPEG much larger than the model's input decodes at 1/2, 1/4 or
1/8 scale inside the decoder (PIL `draft`), which costs a fraction of a full decode.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
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


def load_image(path: str | Path, min_side: int | None = None) -> Image.Image:
    """Decode `path` upright (EXIF orientation applied) as mode "RGB", or "L" for grey images.

    With `min_side`, a JPEG decodes at the smallest of 1, 1/2, 1/4, 1/8 scale whose shorter side
    stays >= min_side (other formats decode whole): what a model of that input size needs.
    """
    try:
        with Image.open(path) as img:
            if min_side is not None and img.format == "JPEG":
                img.draft(img.mode, (min_side, min_side))  # no-op unless the file is larger
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
    min_side: int | None = None  # decode JPEG files no smaller than this (load_image)
    decoded: list[np.ndarray] | None = None  # uint8 [H,W,C] or [H,W] per image, once cached

    def image(self, index: int) -> Image.Image:
        if self.decoded is not None:
            return Image.fromarray(self.decoded[index])
        return load_image(self.paths[index], self.min_side)

    def cache_images(self, budget_mb: float, device: str = "cpu") -> bool:
        """Decode every image into memory if they fit in `budget_mb`; whether they are cached.

        Run before the DataLoader starts its workers, which then share the pixels. The size is
        read from the file headers first, so a gallery over the budget costs no decoding. On a
        CUDA `device` a gallery of JPEG files decodes there (nvJPEG), without draft scaling.
        """
        if self.decoded is not None:
            return True
        if decoded_bytes(self.paths, self.min_side, budget_mb * 2**20) is None:
            return False
        jpeg = all(p.suffix.lower() in (".jpg", ".jpeg") for p in self.paths)
        if device.startswith("cuda") and jpeg:
            self.decoded = decode_jpegs_on(device, self.paths)
            return True
        with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:  # PIL frees the GIL
            images = pool.map(lambda p: load_image(p, self.min_side), self.paths)
            self.decoded = [np.asarray(img) for img in images]
        return True


def decode_jpegs_on(device: str, paths: list[Path], batch: int = 64) -> list[np.ndarray]:
    """JPEG files decoded on a CUDA device in batches (torchvision's nvJPEG), upright, as uint8
    [H,W,3] or [H,W] arrays. nvJPEG rounds some pixels differently from libjpeg (a level or
    two): a cached gallery trains on nearly, not exactly, the pixels PIL would give."""
    import torch
    from torchvision.io import decode_jpeg, read_file

    out: list[np.ndarray] = []
    for start in range(0, len(paths), batch):
        chunk = paths[start : start + batch]
        try:
            data = [read_file(str(p)) for p in chunk]
            images = decode_jpeg(data, device=device, apply_exif_orientation=True)
        except RuntimeError as err:
            raise DatasetError(
                f"{chunk[0]}..{chunk[-1]}: expected readable JPEG files: {err}"
            ) from err
        for img in images:
            assert isinstance(img, torch.Tensor)
            hwc = img.permute(1, 2, 0).cpu().numpy()  # [C,H,W] -> [H,W,C]
            out.append(hwc[..., 0] if hwc.shape[2] == 1 else hwc)
    return out


def decoded_bytes(paths: list[Path], min_side: int | None, limit: float) -> int | None:
    """Bytes of the images of `paths` decoded (as load_image would), from their headers; None as
    soon as the sum exceeds `limit`."""
    total = 0
    for path in paths:
        try:
            with Image.open(path) as img:
                if min_side is not None and img.format == "JPEG":
                    img.draft(img.mode, (min_side, min_side))  # sets the size, decodes nothing
                w, h = img.size
                bands = 1 if standard_mode_is_grey(img.mode) else 3
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DatasetError(f"{path}: expected a readable image: {err}") from err
        total += w * h * bands
        if total > limit:
            return None
    return total


def standard_mode_is_grey(mode: str) -> bool:
    """Whether `standard_mode` turns an image of PIL `mode` into "L"."""
    return mode == "L" or mode in _GREY_MODES or mode in _WIDE_GREY_MODES or mode == "F"
