"""Data sets of image files: Stanford Online Products, folder trees, CSV manifests."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from coins.retrieval.data import DatasetError, build_dataset, dataset_splits

# --- image files -----------------------------------------------------------------------------


def write_png(path: Path, value: int, mode: str = "RGB", size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 255 - value)).save(path)
    return path


def sop_tree(root: Path) -> None:
    rows = [
        (11, 1, 1, "bicycle_final/100_0.png"),
        (12, 1, 1, "bicycle_final/100_1.png"),
        (13, 7, 3, "cabinet_final/200_0.png"),
        (14, 5, 3, "cabinet_final/300_0.png"),
    ]
    lines = ["image_id class_id super_class_id path"]
    for n, (image_id, class_id, super_id, path) in enumerate(rows):
        write_png(root / path, 10 * n)
        lines.append(f"{image_id} {class_id} {super_id} {path}")
    (root / "Ebay_train.txt").write_text("\n".join(lines) + "\n")


def test_sop_tiny_tree(tmp_path: Path) -> None:
    sop_tree(tmp_path)
    data = build_dataset("sop", root=tmp_path)
    assert data.coarse_classes == ["bicycle_final", "super-2", "cabinet_final"]
    assert data.fine_classes == ["1", "5", "7"]
    assert data.coarse_labels.tolist() == [0, 0, 2, 2]
    assert data.fine_labels is not None and data.fine_labels.tolist() == [0, 0, 2, 1]
    assert data.ids.tolist() == [11, 12, 13, 14]
    item = data[2]
    assert (item.coarse, item.fine, item.id) == (2, 2, 13)
    assert item.image.mode == "RGB" and item.image.getpixel((0, 0)) == (20, 0, 235)


def test_sop_errors(tmp_path: Path) -> None:
    sop_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"Ebay_test\.txt"):
        build_dataset("sop", "test", root=tmp_path)
    (tmp_path / "cabinet_final" / "300_0.png").unlink()
    data = build_dataset("sop", root=tmp_path)  # files are only checked on access
    with pytest.raises(DatasetError, match=r"300_0.png: expected a readable image"):
        data[3]
    listing = tmp_path / "Ebay_train.txt"
    listing.write_text(listing.read_text() + "15 7 1 bicycle_final/100_0.png\n")
    with pytest.raises(DatasetError, match="class_id 7 is in several"):
        build_dataset("sop", root=tmp_path)
    listing.write_text("id class path\n1 1 a.png\n")
    with pytest.raises(DatasetError, match=r"Ebay_train\.txt: expected the header"):
        build_dataset("sop", root=tmp_path)


def test_folder_tree(tmp_path: Path) -> None:
    for coarse in ("shoes", "bags"):
        for fine in ("red", "blue"):
            for n in range(2):
                write_png(tmp_path / coarse / fine / f"{n}.PNG", 50 * n)
    write_png(tmp_path / "bags" / "loose.jpg", 7, mode="L")  # no fine label
    (tmp_path / "bags" / "red" / "notes.txt").write_text("not an image")
    assert dataset_splits("folder", tmp_path) == ("all",)
    data = build_dataset("folder", "all", root=tmp_path)
    assert data.coarse_classes == ["bags", "shoes"]
    assert data.fine_classes == ["bags/blue", "bags/red", "shoes/blue", "shoes/red"]
    assert len(data) == 9
    assert data.fine_labels is not None
    # sorted path order: bags/blue/*, bags/loose.jpg, bags/red/*, shoes/...
    assert data.fine_labels.tolist() == [0, 0, -1, 1, 1, 2, 2, 3, 3]
    assert data.coarse_labels.tolist() == [0] * 5 + [1] * 4
    assert data.summary()["images_with_fine"] == 8
    loose = data[2]
    assert loose.fine is None and loose.id == 2 and loose.image.mode == "L"
    assert data[8].fine == 3 and data[8].image.getpixel((0, 0)) == (50, 0, 205)
    # `coins train` reads split `train`: the message says how to make one
    with pytest.raises(DatasetError, match=r"no split folders .* only split is `all`, not 'train'"):
        build_dataset("folder", "train", root=tmp_path)


def test_folder_split_layout(tmp_path: Path) -> None:
    write_png(tmp_path / "train" / "shoes" / "red" / "a.png", 1)
    write_png(tmp_path / "train" / "shoes" / "red" / "b.png", 2)
    write_png(tmp_path / "test" / "bags" / "blue" / "c.png", 3)
    assert dataset_splits("folder", tmp_path) == ("train", "test")
    train = build_dataset("folder", "train", root=tmp_path)
    test = build_dataset("folder", "test", root=tmp_path)
    assert train.coarse_classes == test.coarse_classes == ["bags", "shoes"]
    assert train.coarse_labels.tolist() == [1, 1] and test.coarse_labels.tolist() == [0]
    assert test.fine_labels is not None and test.fine_labels.tolist() == [0]
    with pytest.raises(DatasetError, match=r"unknown split 'all'.*\['train', 'test'\]"):
        build_dataset("folder", "all", root=tmp_path)
    write_png(tmp_path / "hats" / "x" / "d.png", 4)
    with pytest.raises(DatasetError, match=r"found both \['train', 'test'\] and \['hats'\]"):
        build_dataset("folder", "train", root=tmp_path)


def test_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="expected a folder"):
        build_dataset("folder", "all", root=tmp_path / "missing")
    (tmp_path / "shoes" / "red").mkdir(parents=True)
    with pytest.raises(DatasetError, match="expected images"):
        build_dataset("folder", "all", root=tmp_path)
    write_png(tmp_path / "shoes" / "red" / "deep" / "x.png", 0)
    with pytest.raises(DatasetError, match="deep: expected images only in"):
        build_dataset("folder", "all", root=tmp_path)


# --- CSV manifest ----------------------------------------------------------------------------


def test_csv_manifest(tmp_path: Path) -> None:
    write_png(tmp_path / "img" / "a.png", 10)
    write_png(tmp_path / "img" / "b.png", 20, mode="L")
    outside = write_png(tmp_path / "elsewhere" / "c.png", 30)
    manifest = tmp_path / "lists" / "manifest.csv"
    manifest.parent.mkdir()
    manifest.write_text(
        "path,coarse,fine,id,split\n"
        "../img/a.png,shoe,red,7,train\n"
        f"{outside},bag,,3,train\n"
        "../img/b.png, shoe ,blue,5,test\n"
    )
    assert dataset_splits("csv", manifest) == ("test", "train")
    train = build_dataset("csv", "train", root=manifest)
    test = build_dataset("csv", "test", root=manifest.parent)  # finds manifest.csv
    assert train.coarse_classes == test.coarse_classes == ["bag", "shoe"]
    assert train.fine_classes == ["blue", "red"]
    assert train.coarse_labels.tolist() == [1, 0] and train.ids.tolist() == [7, 3]
    assert train.fine_labels is not None and train.fine_labels.tolist() == [1, -1]
    assert train[1].fine is None and train[1].image.getpixel((0, 0)) == (30, 0, 225)
    item = test[0]
    assert (item.coarse, item.fine, item.id, item.image.mode) == (1, 0, 5, "L")


def test_csv_without_optional_columns(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("coarse,path\nx,a.png\ny,a.png\n")
    data = build_dataset("csv", "all", root=manifest)
    assert data.fine_classes is None and data.fine_labels is None
    assert data.ids.tolist() == [0, 1] and data[1].fine is None and data[1].coarse == 1
    assert data.summary()["fine_classes"] == 0


@pytest.mark.parametrize(
    ("text", "words"),
    [
        (
            "path,label\na.png,x\n",
            r"expected unique columns \['path', 'coarse'\].*found \['path', 'label'\]",
        ),
        (
            "path,coarse,id\na.png,x,1\nb.png,y,1\n",
            "line 3: expected unique ids, 1 is also on line 2",
        ),
        (
            "path,coarse,id,split\na.png,x,1,all\nb.png,y,1,all\n",
            "line 3: expected unique ids within split 'all', 1 is also on line 2",
        ),
        ("path,coarse,id\na.png,x,one\n", "line 2: expected an integer id, got 'one'"),
        ("path,coarse\na.png,\n", r"line 2: expected a value in column\(s\) \['coarse'\]"),
        ("path,coarse\na.png,x,extra\n", "line 2: expected 2 cells, got 3"),
        ("path,coarse\n", "expected at least one row"),
    ],
)
def test_csv_bad_manifest(tmp_path: Path, text: str, words: str) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text(text)
    with pytest.raises(DatasetError, match=words) as err:
        build_dataset("csv", "all", root=manifest)
    assert str(manifest) in str(err.value)


def test_csv_bad_files_fail_on_access(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,coarse\nmissing.png,x\nbroken.png,x\n")
    data = build_dataset("csv", "all", root=manifest)
    with pytest.raises(DatasetError, match=r"missing.png: expected a readable image \(JPEG/PNG"):
        data[0]
    with pytest.raises(DatasetError, match=r"broken.png: expected a readable image \(JPEG/PNG"):
        data[1]
    with pytest.raises(DatasetError, match=r"nope\.csv: expected a CSV manifest"):
        build_dataset("csv", "all", root=tmp_path / "nope.csv")
    with pytest.raises(DatasetError, match=r"manifest\.csv: expected a CSV manifest file \(or a"):
        build_dataset("csv", "all", root=tmp_path)  # a folder without manifest.csv


def test_csv_without_a_split_column_says_what_to_add_for_training(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 1)
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,coarse\na.png,x\n")
    assert dataset_splits("csv", manifest) == ("all",)
    with pytest.raises(
        DatasetError,
        match=r"m\.csv has no `split` column, so its only split is "
        r"`all`, not 'train'; for `coins train` pass --test-fraction 0\.2 .* or add a column "
        r"`split`",
    ):
        build_dataset("csv", "train", root=manifest)


def test_csv_ids_need_to_be_unique_within_a_split_only(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png", 1)
    (tmp_path / "manifest.csv").write_text(
        "path,coarse,id,split\na.png,x,0,train\na.png,y,1,train\na.png,x,0,test\n"
    )
    train = build_dataset("csv", "train", root=tmp_path)  # a folder holding manifest.csv
    test = build_dataset("csv", "test", root=tmp_path)
    assert train.ids.tolist() == [0, 1] and test.ids.tolist() == [0]
