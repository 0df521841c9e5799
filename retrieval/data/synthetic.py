"""Synthetic patches (CoIns supplementary 2.1): coarse label = big patch, fine label = small patch.

Each image is a black canvas with one big and one small colour patch from a shared pool. A model
trained on the coarse labels alone can ignore the small patch entirely; whether it does is what
the attention-map experiment looks at, so the patch boxes are kept in `boxes`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .base import DatasetError, RetrievalDataset, check_split
from .registry import register_dataset

_STREAMS = {"pool": 0, "train": 1, "test": 2}  # independent RNG streams derived from the seed
_MIN_VALUE = 32  # patch colours stay visibly apart from the black canvas


@register_dataset("synthetic-patches")
class SyntheticPatches(RetrievalDataset):
    """Images generated from `seed` alone; no files, so `root` must be None.

    Args:
        num_train, num_test: images per split (512, as in the paper).
        num_coarse: big patches in the pool = coarse classes (32).
        num_fine: small patches in the pool = fine classes (128).
        image_size: side of the square canvas (32).
        big_size, small_size: side of the big (14) and small (6) patches.
        nested: each fine class belongs to one coarse class (a seeded balanced assignment) and
            an image shows the small patch's own big patch; else the two are drawn independently.
        cells: a patch is a cells x cells grid of random colours (1: one solid colour, which
            survives crops and flips; larger grids make finer, more fragile textures).
        layout: "random" places both patches anywhere (apart); "anchored" puts the big patch
            near the top-left and the small one near the bottom-right corner, each moved by up
            to `jitter` pixels. A random layout identifies every image by itself, which gives
            instance discrimination a shortcut that says nothing about the fine class.
        seed: generates the pool and both splits.
    """

    def __init__(
        self,
        split: str = "train",
        root: Path | None = None,
        *,
        num_train: int = 512,
        num_test: int = 512,
        num_coarse: int = 32,
        num_fine: int = 128,
        image_size: int = 32,
        big_size: int = 14,
        small_size: int = 6,
        nested: bool = True,
        cells: int = 1,
        layout: str = "random",
        jitter: int = 2,
        seed: int = 0,
    ) -> None:
        source = self.name
        check_split(split, self.splits, source)
        if root is not None:
            raise DatasetError(f"{source}: generated from the seed; expected root=None, got {root}")
        _check_sizes(
            num_train=num_train,
            num_test=num_test,
            num_coarse=num_coarse,
            num_fine=num_fine,
            image_size=image_size,
            big_size=big_size,
            small_size=small_size,
            cells=cells,
        )
        if nested and num_fine % num_coarse:
            raise DatasetError(
                f"{source}: nested=True needs num_fine to be a multiple of num_coarse, "
                f"got num_fine={num_fine}, num_coarse={num_coarse}"
            )
        if layout not in ("random", "anchored"):
            raise DatasetError(f"{source}: layout {layout!r}; expected 'random' or 'anchored'")
        pool_rng = np.random.default_rng([seed, _STREAMS["pool"]])
        self.big_patches = _random_patches(pool_rng, num_coarse, big_size, cells)  # uint8 [C,B,B,3]
        self.small_patches = _random_patches(
            pool_rng, num_fine, small_size, cells
        )  # uint8 [F,s,s,3]
        # fine class f belongs to coarse class fine_to_coarse[f], each coarse class owning F/C
        self.fine_to_coarse: np.ndarray | None = None
        if nested:
            order = pool_rng.permutation(num_fine)
            self.fine_to_coarse = np.empty(num_fine, dtype=np.int64)
            self.fine_to_coarse[order] = np.arange(num_fine) % num_coarse

        count = num_train if split == "train" else num_test
        rng = np.random.default_rng([seed, _STREAMS[split]])
        coarse, fine = self._sample_labels(rng, count, num_coarse, num_fine)
        if layout == "anchored":
            self.boxes = _anchored_boxes(rng, count, image_size, big_size, small_size, jitter)
        else:
            self.boxes = _place_boxes(rng, count, image_size, big_size, small_size)  # [N,2,4]
        self.images = self._paint(coarse, fine, image_size)  # uint8 [N,S,S,3]

        self.split = split
        width_c, width_f = max(2, len(str(num_coarse - 1))), max(2, len(str(num_fine - 1)))
        self.coarse_classes = [f"big-{c:0{width_c}d}" for c in range(num_coarse)]
        self.fine_classes = [f"small-{f:0{width_f}d}" for f in range(num_fine)]
        self.coarse_labels = coarse
        self.fine_labels = fine
        offset = 0 if split == "train" else num_train  # ids unique across splits
        self.ids = np.arange(offset, offset + count, dtype=np.int64)
        self._check_labels(source)

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(self.images[index])

    def _sample_labels(
        self, rng: np.random.Generator, count: int, num_coarse: int, num_fine: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Balanced labels: every fine class appears count / num_fine times (up to one)."""
        fine = rng.permutation(np.arange(count) % num_fine).astype(np.int64)
        if self.fine_to_coarse is not None:
            return self.fine_to_coarse[fine], fine
        coarse = rng.permutation(np.arange(count) % num_coarse).astype(np.int64)
        return coarse, fine

    def _paint(self, coarse: np.ndarray, fine: np.ndarray, size: int) -> np.ndarray:
        images = np.zeros((len(coarse), size, size, 3), dtype=np.uint8)
        for image, (big, small), c, f in zip(images, self.boxes, coarse, fine, strict=True):
            image[big[1] : big[3], big[0] : big[2]] = self.big_patches[c]
            image[small[1] : small[3], small[0] : small[2]] = self.small_patches[f]
        return images


def _check_sizes(**sizes: int) -> None:
    for key, value in sizes.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise DatasetError(f"synthetic-patches: expected {key} a positive int, got {value!r}")
    image, big, small = sizes["image_size"], sizes["big_size"], sizes["small_size"]
    # wherever the big patch lands, the wider side left over must hold the small patch
    if -(-(image - big) // 2) < small:
        raise DatasetError(
            f"synthetic-patches: image_size={image} leaves no room beside a big patch of {big} "
            f"for a small patch of {small}; expected image_size >= big_size + 2 * small_size - 1"
        )


def _random_patches(rng: np.random.Generator, count: int, size: int, cells: int) -> np.ndarray:
    """`count` patches: cells x cells random colour grids, nearest-upsampled; uint8 [n,s,s,3]."""
    cell = -(-size // cells)
    grid = rng.integers(_MIN_VALUE, 256, size=(count, cells, cells, 3), dtype=np.uint8)
    patches = grid.repeat(cell, axis=1).repeat(cell, axis=2)
    return np.ascontiguousarray(patches[:, :size, :size])


def _place_boxes(
    rng: np.random.Generator, count: int, image_size: int, big: int, small: int
) -> np.ndarray:
    """Random non-overlapping (big, small) boxes as (x0, y0, x1, y1), end exclusive: [N,2,4]."""
    big_xy = rng.integers(0, image_size - big + 1, size=(count, 2))
    small_xy = np.empty_like(big_xy)
    todo = np.arange(count)
    for _ in range(1000):  # each round places about half of the rest
        small_xy[todo] = rng.integers(0, image_size - small + 1, size=(len(todo), 2))
        apart = (small_xy[todo] + small <= big_xy[todo]) | (big_xy[todo] + big <= small_xy[todo])
        todo = todo[~apart.any(axis=1)]
        if len(todo) == 0:
            break
    assert len(todo) == 0, "could not place the small patches"
    return _boxes(big_xy, small_xy, big, small)


def _anchored_boxes(
    rng: np.random.Generator, count: int, image_size: int, big: int, small: int, jitter: int
) -> np.ndarray:
    """Big patch near the top-left, small near the bottom-right, each moved by <= jitter px."""
    if jitter < 0 or image_size < big + small + 4 * jitter:
        raise DatasetError(
            f"synthetic-patches: anchored layout needs 0 <= jitter and image_size >= big_size + "
            f"small_size + 4 * jitter; got image_size={image_size}, big_size={big}, "
            f"small_size={small}, jitter={jitter}"
        )
    big_xy = jitter + rng.integers(-jitter, jitter + 1, size=(count, 2))
    small_xy = image_size - small - jitter + rng.integers(-jitter, jitter + 1, size=(count, 2))
    return _boxes(big_xy, small_xy, big, small)


def _boxes(big_xy: np.ndarray, small_xy: np.ndarray, big: int, small: int) -> np.ndarray:
    """(big, small) boxes as (x0, y0, x1, y1), end exclusive, from their corners: [N,2,4]."""
    boxes = np.empty((len(big_xy), 2, 4), dtype=np.int64)
    boxes[:, 0, :2], boxes[:, 0, 2:] = big_xy, big_xy + big
    boxes[:, 1, :2], boxes[:, 1, 2:] = small_xy, small_xy + small
    return boxes
