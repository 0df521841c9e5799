"""Presets: the data sets' resolve exactly as before the table, image galleries get the closest
image kind, and a new user trains on a csv gallery of small grey images without --set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from coins.retrieval.data import dataset_names
from coins.retrieval.evaluate import evaluate_model_on
from coins.retrieval.presets import closest_preset, preset_for_data
from coins.train import load_config, train
from coins.train.config import preset_names

TESTS = Path(__file__).parent
CONFIGS = TESTS.parents[1] / "configs"  # the repository root


def grey_gallery(folder: Path, train: int = 128, test: int = 16, size: int = 28) -> Path:
    """`folder/manifest.csv` over `train` + `test` grey PNGs of 4 coarse and 8 fine classes."""
    (folder / "img").mkdir(parents=True)
    rows = ["path,coarse,fine,split"]
    for i in range(train + test):
        fine = i % 8
        Image.new("L", (size, size), 30 * fine).save(folder / "img" / f"{i}.png")
        split = "train" if i < train else "test"
        rows.append(f"img/{i}.png,c{fine // 2},f{fine},{split}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder


def image_folder(root: Path, size: tuple[int, int], mode: str) -> Path:
    for coarse in ("a", "b"):
        (root / coarse).mkdir(parents=True)
        Image.new(mode, size).save(root / coarse / "0.png")
    return root


# Captured from load_config(dataset=X).to_dict() before the preset table replaced the two
# per-data-set tables: the data sets' presets must not change a run.
BEFORE = json.loads((TESTS / "preset_configs.json").read_text())


@pytest.mark.parametrize("dataset", sorted(BEFORE))
def test_data_set_presets_resolve_exactly_as_before(dataset: str) -> None:
    resolved = json.loads(json.dumps(load_config(dataset=dataset).to_dict()))
    assert resolved == BEFORE[dataset]
    named = json.loads(json.dumps(load_config(preset=dataset).to_dict()))
    assert named == BEFORE[dataset]  # a data set's preset also names its data set


def test_image_kind_presets_are_the_recipes_they_come_from() -> None:
    assert {"grey-28", "rgb-32", "rgb-224"} <= set(preset_names())
    assert {"synthetic-patches", "fashion-mnist", "cifar100", "sop"} <= set(preset_names())
    grey = load_config(preset="grey-28", dataset="fashion-mnist").to_dict()
    assert grey == load_config(dataset="fashion-mnist").to_dict()
    rgb = load_config(preset="rgb-32", dataset="cifar100").to_dict()
    assert rgb == load_config(dataset="cifar100").to_dict()
    pre = load_config(preset="grey-28").model.preprocess
    assert (pre.input_size, pre.in_chans) == (28, 1)
    with pytest.raises(ValueError, match="unknown preset 'grey-32'; expected one of grey-28"):
        load_config(preset="grey-32")


@pytest.mark.parametrize(
    ("side", "channels", "name"),
    [
        (28, 1, "grey-28"),
        (28, 3, "rgb-32"),  # colour stays colour rather than 28 px
        (32, 1, "grey-28"),
        (64, 3, "rgb-32"),
        (96, 3, "rgb-224"),
        (150, 1, "rgb-224"),  # grey repeats into RGB rather than shrinking 5x
        (800, 3, "rgb-224"),
    ],
)
def test_closest_preset(side: int, channels: int, name: str) -> None:
    assert closest_preset(side, channels).name == name


def test_a_gallery_without_a_preset_gets_the_closest_image_kind(tmp_path, capsys) -> None:
    gallery = grey_gallery(tmp_path / "g", train=4, test=2)
    cfg = load_config(dataset="csv", root=str(gallery))
    pre = cfg.model.preprocess
    assert (pre.input_size, pre.in_chans, cfg.model.backbone_kwargs) == (
        28,
        1,
        {"channels": [32, 64, 128, 256]},
    )
    assert cfg.augment.crop_scale == (0.5, 1.0)
    said = capsys.readouterr().err
    assert "preset grey-28" in said and "28x28 grey (mode L)" in said and "0.png" in said
    photos = image_folder(tmp_path / "photos", (300, 200), "RGB")
    assert load_config(dataset="folder", root=str(photos)).model.preprocess.input_size == 224
    assert "300x200 colour (mode RGB)" in capsys.readouterr().err
    small = image_folder(tmp_path / "small", (40, 40), "RGB")
    assert preset_for_data("folder", small)[0].name == "rgb-32"


def test_a_named_preset_wins_and_reads_no_files(tmp_path, capsys) -> None:
    gallery = grey_gallery(tmp_path / "g", train=4, test=2)
    cfg = load_config(dataset="csv", root=str(gallery), preset="rgb-32")
    assert cfg.model.preprocess.in_chans == 3 and capsys.readouterr().err == ""
    missing = load_config(dataset="csv", root=str(tmp_path / "nowhere"), preset="grey-28")
    assert missing.dataset == "csv" and missing.model.preprocess.input_size == 28
    file = tmp_path / "c.yaml"
    file.write_text(f"dataset: csv\nroot: {gallery}\npreset: rgb-224\nepochs: 3\n")
    from_file = load_config(file)
    assert (from_file.model.preprocess.input_size, from_file.epochs) == (224, 3)
    assert load_config(file, preset="grey-28").model.preprocess.input_size == 28


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.dataset in dataset_names()


def test_there_are_example_configs() -> None:
    names = {p.name for p in CONFIGS.glob("*.yaml")}
    assert {"synthetic-coins.yaml", "fashion-mnist-coins.yaml", "csv-grey-28.yaml"} <= names


def test_coins_eval_of_a_random_init_on_a_gallery_uses_its_preset(tmp_path) -> None:
    gallery = grey_gallery(tmp_path / "g", train=4, test=8)
    metrics = evaluate_model_on("csv", "test", root=gallery, batch_size=8)
    assert metrics["fine"] is not None and 0 <= metrics["coarse"]["recall@1"] <= 1  # type: ignore[index]


@pytest.mark.slow
def test_a_new_user_trains_on_a_csv_gallery_of_small_grey_images(tmp_path, capsys) -> None:
    # Only what a first run would give: the gallery, where to write, a short stop; no --set.
    gallery = grey_gallery(tmp_path / "gallery")
    cfg = load_config(dataset="csv", root=str(gallery / "manifest.csv"), max_steps=2)
    assert "preset grey-28" in capsys.readouterr().err
    metrics = train(cfg, tmp_path / "run", progress=False)
    assert set(metrics) == {"fine", "coarse"} and metrics["fine"] is not None
    saved = json.loads((tmp_path / "run" / "config.json").read_text())
    assert saved["model"]["preprocess"]["input_size"] == 28
