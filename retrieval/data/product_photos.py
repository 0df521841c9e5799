"""A generated photo folder of products: `DIR/<shape>/<product>/NNNNNN.jpg`, no split folders.

Where `photos.py` draws a fresh colour for every photo (its fine class is the pattern alone),
here each product is one fixed object: a shape (the coarse class), a pattern and a pair of
colours of its own. Photos of a product vary in pose, size, lighting, background, crop and
image size (each side drawn in `sizes`), as the photos a shop takes of one item do, so telling
two products of one shape apart needs the pattern and the colours: the fine detail coarse labels
ignore. Products of another `seed` are other products (other colours), so a gallery for
pretraining and one for evaluation share no product.

The folder has no `train/` and `test/` folders: `coins train --dataset folder --root DIR
--test-fraction 0.2` splits it. Photo `i` depends on (seed, i, the class counts, sizes) only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from .photos import (
    JPEG_QUALITY,
    PATTERNS,
    SHAPES,
    _background,
    _pattern,
    _rng,
    _shape_mask,
    run_tasks,
)


@dataclass(frozen=True)
class Product:
    """One product: its shape (coarse class), pattern and two colours, float32 [3] each."""

    index: int
    shape: str
    pattern: str
    colour: np.ndarray
    other: np.ndarray

    @property
    def name(self) -> str:
        """The product's folder name, `<pattern>-<index>`: unique within the gallery."""
        return f"{self.pattern}-{self.index:03d}"


def product(index: int, coarse: int, seed: int = 0) -> Product:
    """Product `index` of a gallery of `coarse` shapes: products cycle through the shapes, and
    within a shape through the patterns, so every shape has products of every pattern."""
    shape = SHAPES[index % coarse]
    pattern = PATTERNS[(index // coarse) % len(PATTERNS)]
    rng = _rng(seed, index, 7)
    colour = rng.uniform(0, 1, size=3)
    colour[rng.integers(3)] = rng.uniform(0.75, 1.0)  # one strong channel: saturated
    colour = (colour * 230 + 25).astype(np.float32)
    other = (colour * rng.uniform(0.25, 0.6) + rng.uniform(0, 80, size=3)).astype(np.float32)
    return Product(index, shape, pattern, colour, other)


def photo_product(index: int, products: int) -> int:
    """The product shown by photo `index`: products cycle, so every product has count/products
    photos (one more for the first count % products)."""
    return index % products


def render_product_photo(
    index: int, products: int, coarse: int, sizes: tuple[int, int] = (128, 224), seed: int = 0
) -> np.ndarray:
    """Photo `index` as uint8 [H, W, 3]: W and H drawn in `sizes` (inclusive)."""
    item = product(photo_product(index, products), coarse, seed)
    rng = _rng(seed, index, 8)
    w, h = (int(v) for v in rng.integers(sizes[0], sizes[1] + 1, size=2))
    s = max(w, h)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # [S,S] each, in [0, 1)
    background = _background(rng, s, xx, yy)  # float32 [S,S,3]
    mask = _shape_mask(rng, item.shape, s)  # float32 [S,S] in [0, 1]
    ink = _pattern(rng, item.pattern, s, xx, yy)  # float32 [S,S] in [0, 1]
    shade = np.float32(rng.uniform(0.85, 1.15))  # the same product under other light
    obj = (item.colour * (1 - ink[..., None]) + item.other * ink[..., None]) * shade
    lx, ly = (float(v) for v in rng.uniform(-1, 1, size=2))
    light = 1 + 0.35 * ((xx - 0.5) * lx + (yy - 0.5) * ly)  # [S,S]
    img = background * (1 - mask[..., None]) + obj * light[..., None] * mask[..., None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(2, 7)  # sensor noise
    square = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    return np.asarray(square.resize((w, h), Image.Resampling.BILINEAR))


def photo_path(index: int, products: int, coarse: int, seed: int = 0) -> str:
    """`<shape>/<product>/NNNNNN.jpg`, relative to the gallery folder."""
    item = product(photo_product(index, products), coarse, seed)
    return f"{item.shape}/{item.name}/{index:06d}.jpg"


def write_product_photos(
    out: str | Path,
    count: int,
    products: int = 48,
    coarse: int = 8,
    sizes: tuple[int, int] = (128, 224),
    seed: int = 0,
    workers: int | None = None,
) -> Path:
    """Write photos 0..count-1 as JPEG files under `out/<shape>/<product>/`; returns `out`."""
    if not 2 <= coarse <= len(SHAPES):
        raise ValueError(f"expected 2 <= coarse <= {len(SHAPES)} shapes, got {coarse}")
    if products < coarse or count < 2 * products:
        raise ValueError(
            f"expected products >= coarse ({coarse}) and count >= 2 * products (two photos of "
            f"each), got products={products}, count={count}"
        )
    if not 16 <= sizes[0] <= sizes[1]:
        raise ValueError(f"expected 16 <= sizes[0] <= sizes[1], got {sizes}")
    out = Path(out)
    for p in range(products):
        item = product(p, coarse, seed)
        (out / item.shape / item.name).mkdir(parents=True, exist_ok=True)
    step = 128  # photos per task
    tasks = [
        (str(out), i, min(i + step, count), products, coarse, sizes, seed)
        for i in range(0, count, step)
    ]
    run_tasks(_write_range, tasks, workers)
    return out


def _write_range(task: tuple[str, int, int, int, int, tuple[int, int], int]) -> None:
    out, start, stop, products, coarse, sizes, seed = task
    for i in range(start, stop):
        img = Image.fromarray(render_product_photo(i, products, coarse, sizes, seed))
        path = Path(out) / photo_path(i, products, coarse, seed)
        tmp = path.with_name(f".{path.name}.tmp")  # hidden: the folder data set skips it
        img.save(tmp, format="JPEG", quality=JPEG_QUALITY)
        tmp.replace(path)
