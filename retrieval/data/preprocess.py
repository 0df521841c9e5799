"""From a PIL image to the float32 array an exported model expects, with PIL and numpy only.

`eval_transform` (transforms.py, torchvision) and `EvalPreprocess` give the same array: both take
the channels and the geometry from here (PIL does the resampling either way) and scale the same
uint8 pixels, so the serving path (`OnnxEmbedder`, `coins serve`) never imports torch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..configs import Preprocess


def to_channels(img: Image.Image, in_chans: int) -> Image.Image:
    """Grey images repeat into RGB for 3-channel models; RGB turns grey for 1-channel ones.

    The conversions torchvision's v2.RGB and v2.Grayscale make on a PIL image."""
    assert in_chans in (1, 3), "in_chans is 1 or 3"
    return img.convert("RGB" if in_chans == 3 else "L")


FILTERS = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}


def resize_centre_crop(
    img: Image.Image, size: int, max_aspect: float = 16.0, interpolation: str = "bilinear"
) -> Image.Image:
    """Resize the shorter side to `size` (antialiased `interpolation`), then crop the centre square.

    Ordinary images take the PIL calls of torchvision's Resize then CenterCrop (bit for bit what
    models were trained and evaluated with). A thin image would make that intermediate huge:
    1 x N pixels resize to size x size*N (a 1 x 2,000,000 PNG asks for gigabytes). When the
    intermediate would exceed `max_aspect` * size**2 pixels, only the source box that the crop
    keeps is resized, straight to size x size: the same sampling positions and filter, so the
    result equals the long path up to rounding (at most 1 grey level), at a cost bounded by
    size**2.
    """
    S, resample = size, FILTERS[interpolation]
    w, h = img.size
    short, long = (w, h) if w <= h else (h, w)
    new_long = int(S * long / short)  # as torchvision computes it
    new_w, new_h = (S, new_long) if w <= h else (new_long, S)
    top, left = round((new_h - S) / 2.0), round((new_w - S) / 2.0)  # as CenterCrop rounds
    if new_long > max_aspect * S:
        sx, sy = w / new_w, h / new_h  # source pixels per resized pixel
        box = (left * sx, top * sy, (left + S) * sx, (top + S) * sy)
        return img.resize((S, S), resample, box=box)
    if (new_w, new_h) != (w, h):  # torchvision's Resize returns an image of that size as it is
        img = img.resize((new_w, new_h), resample)
    return img.crop((left, top, left + S, top + S))


class EvalPreprocess:
    """The numpy twin of `eval_transform(pre)`: image -> float32 [C, S, S], normalised."""

    def __init__(self, pre: Preprocess, max_aspect: float = 16.0) -> None:
        self.pre, self.max_aspect = pre, max_aspect
        C = pre.in_chans
        self.mean = np.asarray(pre.mean, np.float32).reshape(C, 1, 1)
        self.std = np.asarray(pre.std, np.float32).reshape(C, 1, 1)

    def __call__(self, img: Image.Image) -> np.ndarray:
        pre = self.pre
        img = to_channels(img, pre.in_chans)
        img = resize_centre_crop(img, pre.input_size, self.max_aspect, pre.interpolation)
        pixels = np.asarray(img, np.uint8).reshape(pre.input_size, pre.input_size, -1)  # SxSxC
        # the float32 steps of ToDtype(scale=True) and Normalize: x * (1/255), then (x - m) / s
        x = pixels.transpose(2, 0, 1).astype(np.float32) * np.float32(1.0 / 255)  # CxSxS
        return (x - self.mean) / self.std

    def __repr__(self) -> str:
        return f"EvalPreprocess({self.pre!r}, max_aspect={self.max_aspect})"
