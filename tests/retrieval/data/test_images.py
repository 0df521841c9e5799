"""Decoding image files: every mode ends as "RGB" or "L", upright, or as a DatasetError."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from coins.retrieval.data import DatasetError, load_image


@pytest.mark.parametrize(
    ("mode", "color", "expected_mode"),
    [
        ("RGBA", (10, 20, 30, 0), "RGB"),
        ("P", 3, "RGB"),
        ("LA", (90, 255), "L"),
        ("1", 1, "L"),
        ("CMYK", (0, 0, 0, 0), "RGB"),
        ("L", 17, "L"),
    ],
)
def test_modes_become_rgb_or_l(
    tmp_path: Path, mode: str, color: object, expected_mode: str
) -> None:
    path = tmp_path / ("x.jpg" if mode == "CMYK" else "x.png")
    Image.new(mode, (5, 4), color).save(path)  # type: ignore[arg-type]
    img = load_image(path)
    assert img.mode == expected_mode and img.size == (5, 4)


def test_16_bit_grey_is_rescaled_not_clipped(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    values = np.array([[0, 256, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path)
    img = load_image(path)
    assert img.mode == "L"
    assert np.asarray(img).tolist() == [[0, 1, 128, 255]]


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    path = tmp_path / "turned.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored sideways: rotate 90 degrees clockwise to view
    Image.new("RGB", (40, 20), (200, 10, 10)).save(path, exif=exif)
    assert load_image(path).size == (20, 40)


def test_unreadable_files_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"absent.png: expected a readable image"):
        load_image(tmp_path / "absent.png")
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DatasetError, match=r"broken.jpg: expected a readable image \(JPEG/PNG"):
        load_image(broken)
    truncated = tmp_path / "truncated.png"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(truncated)
    truncated.write_bytes(truncated.read_bytes()[:60])
    with pytest.raises(DatasetError, match=r"truncated\.png"):
        load_image(truncated)
