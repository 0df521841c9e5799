import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import TINY_DATA, TINY_MODEL
from typer.testing import CliRunner

from coins.cli import app
from coins.retrieval.checkpoint import save_checkpoint
from coins.retrieval.data import DatasetError, build_dataset
from coins.retrieval.models import Embedder, EmbedderConfig
from coins.retrieval.presets import model_preset
from coins.train import load_config
from coins.train.report.attention import (
    attention_maps,
    box_mass,
    patch_area,
    patch_boxes,
    spatial_attention,
    stage_names,
    upsample_normalised,
)
from coins.train.report.explain import explain, summarise
from coins.train.report.figures import PNG_SIGNATURE

runner = CliRunner()
TINY_OPTIONS = [arg for key, value in TINY_DATA.items() for arg in ("--option", f"{key}={value}")]


def slow_bilinear(a: np.ndarray, height: int, width: int) -> list[list[float]]:
    """PyTorch's bilinear resize with align_corners=False, one output pixel at a time."""
    h, w = a.shape

    def source(dst: int, scale: float, n: int) -> tuple[int, int, float]:
        s = max((dst + 0.5) * scale - 0.5, 0.0)
        i0 = min(math.floor(s), n - 1)
        return i0, min(i0 + 1, n - 1), s - i0

    out = []
    for y in range(height):
        y0, y1, ly = source(y, h / height, h)
        row = []
        for x in range(width):
            x0, x1, lx = source(x, w / width, w)
            top = (1 - lx) * a[y0, x0] + lx * a[y0, x1]
            bottom = (1 - lx) * a[y1, x0] + lx * a[y1, x1]
            row.append(float((1 - ly) * top + ly * bottom))
        out.append(row)
    return out


def slow_mass(a: np.ndarray, size: int, box: tuple[int, int, int, int]) -> float:
    """Share of the upsampled map inside box (x0, y0, x1, y1), end exclusive, by a pixel loop."""
    up = slow_bilinear(a, size, size)
    total = sum(v for row in up for v in row)
    x0, y0, x1, y1 = box
    inside = sum(
        up[y][x] for y in range(size) for x in range(size) if x0 <= x < x1 and y0 <= y < y1
    )
    return inside / total


def tiny_model(seed: int = 0) -> Embedder:
    torch.manual_seed(seed)
    return Embedder(EmbedderConfig.from_dict(dict(TINY_MODEL))).eval()


def tiny_checkpoint(path, method: str, seed: int = 0):
    cfg = load_config(
        method=method, dataset="synthetic-patches", dataset_options=TINY_DATA, seed=seed
    )
    save_checkpoint(path, tiny_model(seed), method=method, train_config=cfg.to_dict())
    return path


def test_spatial_attention_is_the_channel_mean_of_squares() -> None:
    f = torch.randn(2, 5, 3, 4)
    slow = torch.zeros(2, 3, 4)
    for c in range(5):
        slow += f[:, c] ** 2 / 5
    assert torch.allclose(spatial_attention(f), slow, atol=1e-6)


@pytest.mark.parametrize("h, w, size", [(4, 4, 32), (3, 5, 16), (8, 8, 8), (1, 1, 7)])
def test_upsampled_maps_match_a_slow_bilinear_and_sum_to_one(h, w, size) -> None:
    a = np.random.default_rng(h * w).random((h, w)) ** 3
    maps = upsample_normalised(torch.tensor(a)[None].float(), (size, size))
    assert maps.shape == (1, size, size)
    assert float(maps.sum()) == pytest.approx(1.0, abs=1e-5) and (maps >= 0).all()
    slow = np.asarray(slow_bilinear(a, size, size))
    assert np.allclose(maps[0].numpy(), slow / slow.sum(), atol=1e-6)


def test_a_zero_map_is_an_error_not_a_division_by_zero() -> None:
    with pytest.raises(ValueError, match="sums to 0"):
        upsample_normalised(torch.zeros(1, 2, 2), (4, 4))


BOXES = [(0, 0, 14, 14), (20, 3, 26, 9), (26, 26, 32, 32), (5, 30, 9, 40), (4, 4, 4, 9)]


@pytest.mark.parametrize("box", BOXES)
def test_box_mass_matches_a_pixel_loop_on_a_hand_made_map(box) -> None:
    a = np.array([[0.0, 1.0, 0.0, 2.0], [0.5, 0.0, 3.0, 0.0], [0.0, 0.0, 0.0, 1.0], [4, 0, 0, 0]])
    maps = upsample_normalised(torch.tensor(a)[None].float(), (32, 32)).numpy()
    got = box_mass(maps, np.array([box]))
    assert got[0] == pytest.approx(slow_mass(a, 32, box), abs=1e-6)


def test_box_mass_reads_x_as_column_and_y_as_row() -> None:
    maps = np.zeros((1, 8, 8))
    maps[0, 1, 6] = 1.0  # row 1, column 6
    assert box_mass(maps, np.array([[6, 1, 7, 2]]))[0] == 1.0  # x0=6, y0=1
    assert box_mass(maps, np.array([[1, 6, 2, 7]]))[0] == 0.0


def test_synthetic_boxes_hold_their_patches() -> None:
    data = build_dataset("synthetic-patches", split="test", **TINY_DATA)
    boxes = patch_boxes(data)  # [N,2,4]
    lit = (data.images > 0).any(axis=-1).astype(np.float64)  # [N,S,S] painted pixels
    lit /= lit.sum(axis=(1, 2), keepdims=True)
    both = box_mass(lit, boxes[:, 0]) + box_mass(lit, boxes[:, 1])
    assert np.allclose(both, 1.0)  # every painted pixel lies in one of the two boxes
    area = patch_area(data)
    side = TINY_DATA["image_size"]
    assert area["big"] == pytest.approx(TINY_DATA["big_size"] ** 2 / side**2)
    assert area["small"] == pytest.approx(TINY_DATA["small_size"] ** 2 / side**2)


def test_attention_maps_of_a_model_have_the_image_shape_and_sum_to_one() -> None:
    model = tiny_model()
    assert stage_names(model)[-1] == "layer4"
    x = torch.randn(3, 3, 16, 16)
    for stage in (-1, -2, 1):
        maps = attention_maps(model, x, stage)
        assert maps.shape == (3, 16, 16) and (maps >= 0).all()
        assert torch.allclose(maps.sum(dim=(1, 2)), torch.ones(3), atol=1e-5)
    assert attention_maps(model, x, -1, (40, 40)).shape == (3, 40, 40)


def test_a_stage_out_of_range_names_the_stages() -> None:
    with pytest.raises(ValueError, match=r"out of range.*layer4"):
        attention_maps(tiny_model(), torch.randn(1, 3, 16, 16), stage=7)


def test_explain_draws_a_png_and_measures_each_checkpoint(tmp_path) -> None:
    ckpts = [tiny_checkpoint(tmp_path / f"{m}{s}.pt", m, s) for m in ("cos", "opt") for s in (0, 1)]
    out = tmp_path / "att.png"
    result = explain(ckpts, out, split="test", images=2, measure_mass=True)
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(out) as image:
        image.verify()
    assert [r["method"] for r in result["checkpoints"]] == ["cos", "cos", "opt", "opt"]
    for row in result["checkpoints"]:
        assert row["stage"] == "layer4" and min(row["big"], row["small"]) >= 0
        assert row["big"] + row["small"] <= 1 + 1e-6
    cos = [r["big"] for r in result["checkpoints"][:2]]
    assert result["methods"]["cos"]["big_mean"] == pytest.approx(np.mean(cos))
    assert result["methods"]["cos"]["big_std"] == pytest.approx(np.std(cos, ddof=1))


def test_summarise_groups_rows_by_method() -> None:
    from coins.train.report.explain import MassRow

    rows = [MassRow("a", "cos", 0, "layer4", 0.5, 0.1), MassRow("b", "cos", 1, "layer4", 0.7, 0.3)]
    s = summarise(rows, {"big": 0.2, "small": 0.05})["cos"]
    assert s["n"] == 2 and s["big_mean"] == pytest.approx(0.6)
    assert s["small_std"] == pytest.approx(math.sqrt(0.02))
    assert s["big_lift"] == pytest.approx(3.0) and s["small_lift"] == pytest.approx(4.0)


def test_explain_cli_writes_the_table_and_json(tmp_path) -> None:
    ckpt = tiny_checkpoint(tmp_path / "cos.pt", "cos")
    out, js = tmp_path / "att.png", tmp_path / "mass.json"
    args = ["explain", str(ckpt), "--dataset", "synthetic-patches", *TINY_OPTIONS,
            "--split", "test", "-o", str(out), "--images", "2", "--stage", "-2",
            "--measure", "--json", str(js)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "layer3" in result.output and "big %" in result.output
    assert json.loads(js.read_text())["checkpoints"][0]["stage"] == "layer3"
    assert out.read_bytes().startswith(PNG_SIGNATURE)


def test_explain_of_a_missing_checkpoint_is_a_clear_error(tmp_path) -> None:
    args = ["explain", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "a.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "nope.pt does not exist" in result.output


def test_measure_on_a_data_set_without_boxes_is_a_clear_error(tmp_path) -> None:
    root = tmp_path / "images"
    for coarse, fine in (("shoes", "a"), ("shoes", "b"), ("bags", "c")):
        (root / coarse / fine).mkdir(parents=True)
        Image.new("RGB", (16, 16), (40, 80, 120)).save(root / coarse / fine / "x.png")
    ckpt = tmp_path / "m.pt"
    torch.manual_seed(0)
    model = Embedder(model_preset("synthetic-patches"))
    save_checkpoint(ckpt, model, method="cos", train_config={"method": "cos"})
    with pytest.raises(DatasetError, match="keeps no patch boxes"):
        explain(
            [ckpt], tmp_path / "a.png", dataset="folder", split="all", root=root, measure_mass=True
        )
    assert not (tmp_path / "a.png").exists()  # failed before drawing
