"""Uploaded bytes to an upright "RGB" or "L" image, refusing what is not a safe, supported image.

The pixel count and the aspect ratio are read from the header before any pixel is decoded, so a
decompression bomb (a tiny PNG that inflates to gigapixels) or a 1 x 2,000,000 sliver is refused
without allocating it.
"""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps

from coins.retrieval.data.images import standard_mode
from coins.serve.api.errors import ApiError

FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF", "TIFF")
# what a browser or curl may send for an image; the bytes decide the format, not the header
CONTENT_TYPES = {
    "image/jpeg",
    "image/jpg",
    "image/pjpeg",
    "image/png",
    "image/webp",
    "image/bmp",
    "image/x-ms-bmp",
    "image/gif",
    "image/tiff",
    "application/octet-stream",
}


def check_content_type(content_type: str | None, name: str) -> None:
    """415 unless the declared type is an image type we decode (or unspecified)."""
    declared = (content_type or "").split(";")[0].strip().lower()
    if declared and declared not in CONTENT_TYPES:
        raise ApiError(
            415,
            f"{name}: unsupported content type {declared!r}; expected an image "
            f"({', '.join(f.lower() for f in FORMATS)})",
        )


def decode_image(
    data: bytes,
    *,
    name: str = "image",
    content_type: str | None = None,
    max_pixels: int,
    max_aspect: float | None = None,
) -> Image.Image:
    """Decode `data` (first frame), EXIF orientation applied, as mode "RGB" or "L"; 413 over
    `max_pixels`, 422 when the longer side is more than `max_aspect` times the shorter."""
    check_content_type(content_type, name)
    if not data:
        raise ApiError(422, f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            _check_size(img, name, max_pixels, max_aspect)
            img.load()
            return standard_mode(ImageOps.exif_transpose(img))
    except Image.UnidentifiedImageError as err:
        raise ApiError(
            415, f"{name}: not a supported image; expected one of {', '.join(FORMATS)}"
        ) from err
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ApiError(413, f"{name}: {err}") from err
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ApiError(422, f"{name}: could not decode the image: {err}") from err


def _check_size(img: Image.Image, name: str, max_pixels: int, max_aspect: float | None) -> None:
    width, height = img.size
    if width * height > max_pixels:
        raise ApiError(
            413, f"{name}: {width}x{height} pixels is more than the limit of {max_pixels:,}"
        )
    if width == 0 or height == 0:
        raise ApiError(422, f"{name}: image has no pixels ({width}x{height})")
    aspect = max(width, height) / min(width, height)
    if max_aspect is not None and aspect > max_aspect:
        raise ApiError(
            422,
            f"{name}: {width}x{height} pixels has an aspect ratio of {aspect:,.1f}:1; expected "
            f"at most {max_aspect:g}:1 (longer side over shorter side)",
        )
