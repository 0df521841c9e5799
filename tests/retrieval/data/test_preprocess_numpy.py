"""The torch-free eval preprocessing (`EvalPreprocess`, PIL + numpy) against torchvision's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from coins.retrieval.data import EvalPreprocess, Preprocess, eval_transform

GREY = Preprocess(input_size=16, in_chans=1, mean=(0.449,), std=(0.226,))
RGB = Preprocess(input_size=16, in_chans=3, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
PRESETS = {"grey": GREY, "rgb": RGB}


def torchvision_reference(pre: Preprocess) -> v2.Compose:
    """Plain torchvision, no shared code: channels, Resize, CenterCrop, scale, normalise."""
    channels = v2.RGB() if pre.in_chans == 3 else v2.Grayscale(num_output_channels=1)
    return v2.Compose([
        channels, v2.Resize(pre.input_size, antialias=True), v2.CenterCrop(pre.input_size),
        v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(pre.mean, pre.std),
    ])  # fmt: skip


def image(mode: str, w: int, h: int, seed: int = 0) -> Image.Image:
    """Random pixels of any size in `mode` (16-bit greys over the whole 0..65535 range)."""
    rng = np.random.default_rng(seed + w * 1000 + h)
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "P":
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        return img.quantize(colors=17)
    bands = len(Image.new(mode, (1, 1)).getbands())
    pixels = rng.integers(0, 256, (h, w, bands), dtype=np.uint8)
    return Image.fromarray(pixels.squeeze(-1) if bands == 1 else pixels, mode)


SIZES = [(40, 30), (17, 23), (33, 33), (16, 16), (5, 3), (300, 19), (31, 101)]


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "LA", "I;16"])
@pytest.mark.parametrize("preset", PRESETS)
def test_equals_eval_transform_and_plain_torchvision(mode: str, preset: str) -> None:
    pre = PRESETS[preset]
    numpy_path, torch_path = EvalPreprocess(pre), eval_transform(pre)
    reference = torchvision_reference(pre)
    for w, h in SIZES:
        img = image(mode, w, h)
        x = numpy_path(img)
        assert x.dtype == np.float32 and x.shape == (pre.in_chans, 16, 16)
        assert np.abs(x - torch_path(img).numpy()).max() <= 1e-6, (mode, w, h)
        assert np.abs(x - reference(img).numpy()).max() <= 1e-6, (mode, w, h)


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize(("w", "h"), [(3, 400), (400, 3), (1, 90), (7, 401)])
def test_thin_images_equal_eval_transform(preset: str, w: int, h: int) -> None:
    pre = Preprocess(32, PRESETS[preset].in_chans, PRESETS[preset].mean, PRESETS[preset].std)
    img = image("RGB", w, h)
    x = EvalPreprocess(pre)(img)
    assert x.shape == (pre.in_chans, 32, 32)
    assert np.abs(x - eval_transform(pre)(img).numpy()).max() <= 1e-6
    # the bounded path samples as the whole resize does: at most one grey level apart
    grey_level = 1 / 255 / min(pre.std) + 1e-6
    assert np.abs(x - torchvision_reference(pre)(img).numpy()).max() <= grey_level


def test_white_is_normalised_per_channel() -> None:
    x = EvalPreprocess(RGB)(Image.new("RGB", (20, 12), (255, 255, 255)))
    want = (1 - np.asarray(RGB.mean, np.float32)) / np.asarray(RGB.std, np.float32)
    np.testing.assert_allclose(x, np.broadcast_to(want[:, None, None], x.shape), atol=1e-6)
