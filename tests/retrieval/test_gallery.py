"""Galleries: what is enumerated, with which ids, and an index that a second folder joins."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coins.cli import app
from coins.retrieval.data import DatasetError
from coins.retrieval.gallery import gallery_source, path_id, path_ids

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def write_images(folder: Path, names: list[str], shift: int = 0) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (20 + i, 24), COLOURS[(i + shift) % len(COLOURS)]).save(path)
        paths.append(path)
    return paths


def reference_id(relpath: str) -> int:
    """The documented scheme, spelled out: blake2b-64 of the relative path, top bit cleared."""
    digest = hashlib.blake2b(relpath.encode(), digest_size=8).hexdigest()
    return int(digest, 16) % 2**63


def test_path_ids_are_a_63_bit_hash_of_the_relative_path() -> None:
    for rel in ("a.png", "shoes/red/1.jpg", "päth with space/ü.png"):
        assert path_id(rel) == reference_id(rel) and 0 <= path_id(rel) < 2**63


def test_folder_ids_do_not_depend_on_the_other_files_or_the_mount_point(tmp_path) -> None:
    write_images(tmp_path / "a", ["shoes/red/1.png", "bags/3.png"])
    write_images(tmp_path / "b", ["shoes/red/1.png", "bags/0.png", "bags/3.png"])
    first, second = gallery_source(images=tmp_path / "a"), gallery_source(images=tmp_path / "b")
    ids_a = dict(zip((Path(r["path"]).name for r in first.rows), first.ids.tolist(), strict=True))
    ids_b = dict(zip((Path(r["path"]).name for r in second.rows), second.ids.tolist(), strict=True))
    assert ids_a["1.png"] == ids_b["1.png"] == reference_id("shoes/red/1.png")
    assert ids_a["3.png"] == ids_b["3.png"] == reference_id("bags/3.png")
    assert first.id_scheme == first.source["id_scheme"] == "path-hash-v1"
    assert [r["id"] for r in first.rows] == first.ids.tolist()


def test_gallery_of_a_class_folder_has_paths_and_class_names(tmp_path) -> None:
    write_images(tmp_path, ["shoes/red/1.png", "shoes/blue/2.png", "bags/3.png"])
    gallery = gallery_source(images=tmp_path)
    assert gallery.source == {
        "kind": "images", "root": str(tmp_path.resolve()), "split": "all",
        "id_scheme": "path-hash-v1",
    }  # fmt: skip
    assert [(r["coarse"], r["fine"]) for r in gallery.rows] == [
        ("bags", None), ("shoes", "shoes/blue"), ("shoes", "shoes/red"),
    ]  # fmt: skip
    assert gallery.rows[0]["path"] == str((tmp_path / "bags/3.png").resolve())
    want = [reference_id(p) for p in ("bags/3.png", "shoes/blue/2.png", "shoes/red/1.png")]
    np.testing.assert_array_equal(gallery.ids, want)


def test_gallery_of_a_flat_folder_is_unlabelled(tmp_path) -> None:
    write_images(tmp_path, ["b.png", "a.jpg"])
    (tmp_path / "notes.txt").write_text("not an image")
    gallery = gallery_source(images=tmp_path)
    assert [Path(r["path"]).name for r in gallery.rows] == ["a.jpg", "b.png"]
    assert all(r["coarse"] is None and r["fine"] is None for r in gallery.rows)
    np.testing.assert_array_equal(gallery.ids, [reference_id("a.jpg"), reference_id("b.png")])


def test_gallery_of_a_manifest_keeps_ids_and_extra_columns(tmp_path) -> None:
    write_images(tmp_path, ["x.png", "y.png", "z.png"])
    (tmp_path / "items.csv").write_text(
        "path,coarse,fine,id,split,sku\n"
        "x.png,shoes,s1,10,test,A-1\ny.png,bags,,20,train,B-2\nz.png,bags,b1,30,test,C-3\n"
    )
    gallery = gallery_source(manifest=tmp_path / "items.csv", split="test")
    np.testing.assert_array_equal(gallery.ids, [10, 30])
    assert gallery.id_scheme == "column"
    assert [(r["id"], r["coarse"], r["fine"], r["sku"]) for r in gallery.rows] == [
        (10, "shoes", "s1", "A-1"), (30, "bags", "b1", "C-3"),
    ]  # fmt: skip
    with pytest.raises(ValueError, match="expected a split"):
        gallery_source(manifest=tmp_path / "items.csv")


def test_a_manifest_without_ids_hashes_paths_relative_to_its_folder(tmp_path) -> None:
    write_images(tmp_path / "photos", ["x.png", "y.png"])
    (tmp_path / "items.csv").write_text("path,coarse\nphotos/x.png,shoes\nphotos/y.png,bags\n")
    gallery = gallery_source(manifest=tmp_path / "items.csv")
    assert gallery.id_scheme == "path-hash-v1"
    np.testing.assert_array_equal(
        gallery.ids, [reference_id("photos/x.png"), reference_id("photos/y.png")]
    )


def test_a_path_listed_twice_is_refused_naming_it(tmp_path) -> None:
    write_images(tmp_path, ["x.png"])
    (tmp_path / "items.csv").write_text("path,coarse\nx.png,shoes\n./x.png,bags\n")
    with pytest.raises(DatasetError, match=r"'x\.png' and 'x\.png' have the same path-hash id"):
        gallery_source(manifest=tmp_path / "items.csv")


def test_a_hash_collision_is_refused_naming_both_paths(tmp_path, monkeypatch) -> None:
    import coins.retrieval.gallery as gallery_module

    monkeypatch.setattr(gallery_module, "path_id", lambda rel: 7)  # every path collides
    with pytest.raises(DatasetError, match=r"'a\.png' and 'b\.png' have the same path-hash id 7"):
        path_ids([tmp_path / "a.png", tmp_path / "b.png"], tmp_path)


def test_a_test_fraction_gives_the_held_out_side_of_every_source(tmp_path) -> None:
    """The photos `coins train --test-fraction 0.5 --seed 3` held out, by any of the three
    sources, with the ids, paths and extra columns of the whole gallery."""
    from coins.retrieval.data.split import build_split
    from coins.retrieval.gallery import file_paths

    names = [f"{c}/{f}/{i}.png" for c in ("bags", "shoes") for f in ("a", "b") for i in range(4)]
    folder = tmp_path / "photos"
    write_images(folder, names)
    rows = [
        f"photos/{n},{n.split('/')[0]},{n.rsplit('/', 1)[0]},sku-{i}" for i, n in enumerate(names)
    ]
    (tmp_path / "items.csv").write_text("path,coarse,fine,sku\n" + "\n".join(rows) + "\n")

    def held_out(seed: int) -> list[str]:  # the test side as the run cut it
        split = build_split("folder", "test", folder, {}, 0.5, "item", seed)
        return [str(p.resolve()) for p in file_paths(split) or []]

    want = held_out(3)
    assert len(want) == 8 and want != held_out(0)
    cut = {"test_fraction": 0.5, "split_by": "item", "split_seed": 3}
    by_name = gallery_source(dataset="folder", root=folder, split="test", **cut)
    by_folder = gallery_source(images=folder, split="test", **cut)
    by_manifest = gallery_source(manifest=tmp_path / "items.csv", split="test", **cut)
    for gallery in (by_name, by_folder, by_manifest):
        assert [r["path"] for r in gallery.rows] == want
        assert {k: gallery.source[k] for k in cut} == cut and gallery.source["split"] == "test"
    whole = gallery_source(images=folder)  # path-hash ids: the same as in the whole folder
    ids = dict(zip((r["path"] for r in whole.rows), whole.ids.tolist(), strict=True))
    assert by_folder.ids.tolist() == [ids[p] for p in want]
    sku = {str((folder / n).resolve()): f"sku-{i}" for i, n in enumerate(names)}
    assert [r["sku"] for r in by_manifest.rows] == [sku[p] for p in want]
    with pytest.raises(ValueError, match="makes the splits train and test, not 'all'"):
        gallery_source(images=folder, **cut)
    write_images(tmp_path / "flat", ["a.png", "b.png"])
    with pytest.raises(DatasetError, match="a test fraction needs <coarse>/ folders"):
        gallery_source(images=tmp_path / "flat", split="test", **cut)


def test_gallery_needs_exactly_one_source(tmp_path) -> None:
    with pytest.raises(ValueError, match="exactly one of dataset, images, manifest"):
        gallery_source(dataset="synthetic-patches", images=tmp_path)


def test_a_second_folder_appends_and_a_changed_one_replaces(tiny_onnx, tmp_path) -> None:
    from coins.serve.index.store import SearchIndex

    runner, out = CliRunner(), str(tmp_path / "index")
    write_images(tmp_path / "one", ["shoes/a.png", "shoes/b.png", "bags/c.png"])
    write_images(tmp_path / "two", ["shoes/a.png", "bags/d.png"], shift=1)  # same relative path
    base = ["index", str(tiny_onnx), "-o", out, "--type", "flat"]
    assert runner.invoke(app, [*base, "--images", str(tmp_path / "one")]).exit_code == 0
    # "two/shoes/a.png" has the id of "one/shoes/a.png": kept as it is, not embedded again
    result = runner.invoke(app, [*base, "--images", str(tmp_path / "two"), "--append"])
    assert result.exit_code == 0, result.output
    index = SearchIndex.load(out)
    two = gallery_source(images=tmp_path / "two")
    assert index.ntotal == 4
    for gallery in (gallery_source(images=tmp_path / "one"), two):
        for i, row in zip(gallery.ids, index.metadata(gallery.ids), strict=True):
            assert row is not None and row["id"] == i
    a = int(two.ids[two.rows.index(next(r for r in two.rows if r["path"].endswith("a.png")))])
    assert index.metadata(np.array([a]))[0]["path"].startswith(str(tmp_path / "one"))
    before = index.reconstruct(np.array([a]))
    # a file changed in place, re-embedded with --replace: same id, new vector
    Image.new("RGB", (30, 30), (9, 9, 9)).save(tmp_path / "one/shoes/a.png")
    replaced = [*base, "--images", str(tmp_path / "one"), "--append", "--replace"]
    result = runner.invoke(app, replaced)
    assert result.exit_code == 0, result.output
    index = SearchIndex.load(out)
    assert index.ntotal == 4
    assert np.abs(index.reconstruct(np.array([a])) - before).max() > 1e-3
    image = runner.invoke(
        app, ["search", out, "--image", str(tmp_path / "two/bags/d.png"), "--model", str(tiny_onnx)]
    )
    assert image.exit_code == 0 and str(two.ids[0]) in image.output  # found by image
