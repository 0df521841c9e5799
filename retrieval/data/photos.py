"""A generated gallery of photo-like JPEG files: shapes (coarse) wearing textures (fine).

Benchmarks of the file path (decoding, the embedding job, training from files) need a gallery
that costs what real photos cost: full-size RGB JPEG files with noise, gradients and texture, not
flat 28-px PNG files. Each photo is one object on a lit, textured background: its shape is the
coarse class, the pattern on it the fine class, and colour, position, size, rotation and
lighting vary freely, so the fine class is a detail the coarse labels ignore (as in CoIns).

Photo `i` depends on (seed, i) only: a gallery of 5,000 is the first 5,000 photos of one of
20,000, and a tiny gallery for a test is the same photos at the same size.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

T = TypeVar("T")  # one write task

SHAPES = ("circle", "square", "triangle", "star", "hexagon", "cross", "ring", "diamond")
PATTERNS = ("solid", "stripes", "dots", "checks")
TEST_FRACTION = 0.2  # photos drawn into the `test` split, each by its own RNG
JPEG_QUALITY = 90
MANIFEST = "manifest.csv"  # the `csv` data set's default name: `--dataset csv --root DIR`


@dataclass(frozen=True)
class Photo:
    """One generated photo and its labels; `path` is relative to the gallery folder."""

    index: int
    coarse: str  # a shape
    fine: str  # "<shape>/<pattern>", as the `folder` data set names a fine class
    split: str  # train | test
    path: str  # <coarse>/<pattern>/NNNNNN.jpg


def photo_labels(index: int, seed: int = 0, ext: str = "jpg") -> Photo:
    """The labels of photo `index`: fine classes cycle, so every class has count/32 photos."""
    fine = index % (len(SHAPES) * len(PATTERNS))
    shape, pattern = SHAPES[fine // len(PATTERNS)], PATTERNS[fine % len(PATTERNS)]
    split = "test" if _rng(seed, index, 1).random() < TEST_FRACTION else "train"
    path = f"{shape}/{pattern}/{index:06d}.{ext}"
    return Photo(index, shape, f"{shape}/{pattern}", split, path)


def render_photo(index: int, size: int = 224, seed: int = 0) -> np.ndarray:
    """Photo `index` as uint8 [size, size, 3] (before JPEG compression)."""
    label = photo_labels(index, seed)
    rng = _rng(seed, index, 0)
    s = size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s  # [S,S] each, in [0, 1)

    background = _background(rng, s, xx, yy)  # float32 [S,S,3] in [0, 255]
    mask = _shape_mask(rng, label.coarse, s)  # float32 [S,S] in [0, 1], soft edge
    pattern = label.fine.split("/")[1]
    ink = _pattern(rng, pattern, s, xx, yy)  # float32 [S,S] in [0, 1]
    base = _colour(rng)
    # the second colour: the first darkened and tinted
    other = base * np.float32(rng.uniform(0.25, 0.6)) + np.float32(rng.uniform(0, 80))
    obj = base * (1 - ink[..., None]) + other * ink[..., None]
    # light from a random side: the object is brighter there and darker opposite
    lx, ly = (float(v) for v in rng.uniform(-1, 1, size=2))
    light = 1 + 0.35 * ((xx - 0.5) * lx + (yy - 0.5) * ly)  # [S,S]
    obj = obj * light[..., None]

    img = background * (1 - mask[..., None]) + obj * mask[..., None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(2, 7)  # sensor noise
    return np.clip(img, 0, 255).astype(np.uint8)


def write_photos(
    out: str | Path,
    count: int,
    size: int = 224,
    seed: int = 0,
    workers: int | None = None,
    ext: str = "jpg",
) -> Path:
    """Write photos 0..count-1 as JPEG files under `out` and `out/manifest.csv`; its path.

    The manifest has the columns path (relative to `out`), coarse, fine and split, as the `csv`
    data set reads them. `workers` processes render (default: the cores this process may use).
    `ext` "png" writes lossless PNG files instead of JPEG (quality 90).
    """
    if ext not in ("jpg", "png"):
        raise ValueError(f"ext {ext!r}: expected jpg or png")
    if count <= 0 or size < 16:
        raise ValueError(f"expected count > 0 and size >= 16, got count={count}, size={size}")
    out = Path(out)
    labels = [photo_labels(i, seed, ext) for i in range(count)]
    for folder in sorted({Path(p.path).parent for p in labels}):
        (out / folder).mkdir(parents=True, exist_ok=True)
    step = 256  # photos per task
    tasks = [(str(out), i, min(i + step, count), size, seed, ext) for i in range(0, count, step)]
    run_tasks(_write_range, tasks, workers)
    manifest = out / MANIFEST
    tmp = manifest.with_suffix(".csv.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(["path", "coarse", "fine", "split"])
        writer.writerows((p.path, p.coarse, p.fine, p.split) for p in labels)
    tmp.replace(manifest)  # a manifest only once every photo is written
    return manifest


def _write_range(task: tuple[str, int, int, int, int, str]) -> None:
    out, start, stop, size, seed, ext = task
    for i in range(start, stop):
        img = Image.fromarray(render_photo(i, size, seed))
        img.save(Path(out) / photo_labels(i, seed, ext).path, quality=JPEG_QUALITY)


def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, index, stream])


def _colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated random colour, float32 [3] in [0, 255]."""
    rgb = rng.uniform(0, 1, size=3)
    rgb[rng.integers(3)] = rng.uniform(0.75, 1.0)  # one strong channel keeps it saturated
    return (rgb * 230 + 25).astype(np.float32)


def _background(rng: np.random.Generator, s: int, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """A muted two-colour gradient plus low-frequency blotches: float32 [S,S,3]."""
    a, b = rng.uniform(40, 200, size=(2, 3)).astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = np.clip(0.5 + (xx - 0.5) * float(np.cos(angle)) + (yy - 0.5) * float(np.sin(angle)), 0, 1)
    grad = a * (1 - t[..., None]) + b * t[..., None]
    grid = rng.uniform(-25, 25, size=(6, 6, 3)).astype(np.float32)
    up = [Image.fromarray(grid[..., c]).resize((s, s), Image.Resampling.BICUBIC) for c in range(3)]
    return grad + np.stack([np.asarray(u) for u in up], axis=-1)  # each channel from a 6x6 grid


def _shape_mask(rng: np.random.Generator, shape: str, s: int) -> np.ndarray:
    """The object's coverage, float32 [S,S] in [0, 1], anti-aliased by a small blur."""
    r = rng.uniform(0.22, 0.36) * s
    cx, cy = rng.uniform(r, s - r, size=2)
    turn = rng.uniform(0, 2 * np.pi)
    canvas = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(canvas)
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
    elif shape == "ring":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        q = r * rng.uniform(0.45, 0.6)
        draw.ellipse((cx - q, cy - q, cx + q, cy + q), fill=0)
    else:
        draw.polygon(_polygon(shape, cx, cy, r, turn), fill=255)
    canvas = canvas.filter(ImageFilter.GaussianBlur(max(0.6, s / 300)))
    return np.asarray(canvas, dtype=np.float32) / 255


def _polygon(shape: str, cx: float, cy: float, r: float, turn: float) -> list[tuple[float, float]]:
    """Corners of a regular shape of radius `r` turned by `turn` radians."""
    if shape == "star":
        radii = [r, 0.45 * r] * 5
    elif shape == "cross":  # 12 corners of a plus sign: arms of half-width r/3
        w = r / 3
        pts = [(w, r), (w, w), (r, w), (r, -w), (w, -w), (w, -r)]
        pts += [(-w, -r), (-w, -w), (-r, -w), (-r, w), (-w, w), (-w, r)]
        return [_turn(x, y, cx, cy, turn) for x, y in pts]
    else:
        sides = {"square": 4, "triangle": 3, "hexagon": 6, "diamond": 4}[shape]
        radii = [r] * sides
    n = len(radii)
    angles = 2 * np.pi * np.arange(n) / n
    pts = [(q * np.cos(a), q * np.sin(a)) for a, q in zip(angles, radii, strict=True)]
    if shape == "diamond":  # a rhombus: one diagonal 0.6 of the other
        pts = [(x * 0.6, y) for x, y in pts]
    return [_turn(x, y, cx, cy, turn) for x, y in pts]


def _turn(x: float, y: float, cx: float, cy: float, turn: float) -> tuple[float, float]:
    c, s = np.cos(turn), np.sin(turn)
    return (cx + c * x - s * y, cy + s * x + c * y)


def _pattern(
    rng: np.random.Generator, pattern: str, s: int, xx: np.ndarray, yy: np.ndarray
) -> np.ndarray:
    """Where the second colour shows, float32 [S,S] in [0, 1]: the fine class."""
    period = rng.uniform(0.05, 0.09)  # a fraction of the image side, so any size shows it
    angle = rng.uniform(0, np.pi)
    c, s_ = float(np.cos(angle)) / period, float(np.sin(angle)) / period
    u, v = xx * c + yy * s_, yy * c - xx * s_  # coordinates along and across the pattern
    if pattern == "solid":
        return np.zeros((s, s), dtype=np.float32)
    if pattern == "stripes":
        return (np.sin(2 * np.pi * u) > 0).astype(np.float32)
    if pattern == "checks":
        return ((np.floor(u) + np.floor(v)) % 2).astype(np.float32)
    assert pattern == "dots", pattern
    du, dv = u - np.round(u), v - np.round(v)
    return (du**2 + dv**2 < 0.3**2).astype(np.float32)


def run_tasks(write: Callable[[T], None], tasks: list[T], workers: int | None) -> None:
    """`write` each task: here for one worker or one task, else over `workers` processes (all
    the CPUs this process may use by default)."""
    workers = workers or len(os.sched_getaffinity(0))
    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            write(task)
    else:
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(write, tasks))
