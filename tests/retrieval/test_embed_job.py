"""`coins embed` as a job: chunks per rank, resume, skipped images, torchrun processes."""

from __future__ import annotations

import json
import multiprocessing
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from coins.cli import app
from coins.retrieval.embed_job import EmbedJob, Rank, embed_job
from coins.retrieval.onnx.contract import EmbedError
from coins.retrieval.onnx.runner import OnnxEmbedder, embed_items, gallery_source
from coins.retrieval.shards import open_embeddings


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """11 small images in two classes; one of them (bags/05.png) undecodable."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(11):
        path = folder / ("shoes" if i % 2 else "bags") / f"{i:02d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (20 + i, 24, 3), dtype=np.uint8)).save(path)
    (folder / "shoes/05.png").write_bytes(b"not an image")
    return folder


def read_all(out: Path) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    found = open_embeddings(out, verify="full")
    chunks = list(found.chunks())
    ids = np.concatenate([c.ids for c in chunks])
    return ids, np.concatenate([c.vectors for c in chunks]), [r for c in chunks for r in c.rows()]


def job(tiny_onnx: Path, photos: Path, out: Path, **kw) -> EmbedJob:
    return EmbedJob(tiny_onnx, out, images=photos, chunk_size=3, batch_size=2, workers=0, **kw)


def test_the_job_embeds_as_the_runner_does_and_lists_the_skipped(tiny_onnx, photos, tmp_path):
    done = embed_job(job(tiny_onnx, photos, tmp_path / "out"), progress=False, log=lambda s: None)
    assert (done["chunks"], done["written"], done["embedded"], done["skipped"]) == (4, 4, 10, 1)
    ids, vectors, rows = read_all(tmp_path / "out")
    gallery = gallery_source(images=photos)
    expected = embed_items(OnnxEmbedder(tiny_onnx), gallery, progress=False)
    np.testing.assert_array_equal(ids, expected.ids)
    np.testing.assert_allclose(vectors, expected.vectors, atol=1e-5)
    assert rows == expected.rows
    # shoes/05.png is position 7 (after bags/00..10): in the middle of chunk 2 (6, 7, 8)
    marker = json.loads((tmp_path / "out/chunk-000002.json").read_text())
    assert marker["count"] == 2 and [Path(s["path"]).name for s in marker["skipped"]] == ["05.png"]
    assert "expected a readable image" in marker["skipped"][0]["reason"]
    manifest = json.loads((tmp_path / "out/embedding.json").read_text())
    assert (manifest["items"], manifest["chunks"], manifest["id_scheme"]) == (11, 4, "path-hash-v1")


def test_strict_refuses_an_undecodable_image(tiny_onnx, photos, tmp_path):
    with pytest.raises(EmbedError, match=r"05\.png: expected a readable image.*--strict"):
        embed_job(job(tiny_onnx, photos, tmp_path, strict=True), progress=False, log=print)


def test_a_killed_job_resumes_without_redoing_finished_chunks(tiny_onnx, photos, tmp_path):
    out = tmp_path / "out"

    def crash_after_two(chunk: int) -> None:
        if chunk == 1:
            raise KeyboardInterrupt("killed")

    with pytest.raises(KeyboardInterrupt):
        embed_job(job(tiny_onnx, photos, out), progress=False, on_chunk=crash_after_two)
    finished = sorted(out.glob("chunk-00000[01].*"))
    assert len(finished) == 6 and not (out / "chunk-000002.json").exists()
    before = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished}
    done = embed_job(job(tiny_onnx, photos, out), progress=False, log=lambda s: None)
    assert (done["resumed"], done["written"]) == (2, 2)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in finished} == before
    ids, _, _ = read_all(out)
    gallery = gallery_source(images=photos)
    good = [i for i, r in zip(gallery.ids, gallery.rows, strict=True) if "05" not in r["path"]]
    np.testing.assert_array_equal(np.sort(ids), np.sort(good))
    # a corrupt finished chunk is redone by a re-run that verifies fully
    npy = out / "chunk-000000.npy"
    data = bytearray(npy.read_bytes())
    data[-1] ^= 0xFF
    npy.write_bytes(bytes(data))
    again = embed_job(job(tiny_onnx, photos, out, verify="full"), progress=False, log=print)
    assert (again["resumed"], again["written"]) == (3, 1)
    read_all(out)


def test_ranks_split_the_chunks_and_their_union_is_the_gallery(tiny_onnx, photos, tmp_path):
    one = tmp_path / "one"
    embed_job(job(tiny_onnx, photos, one), progress=False, log=lambda s: None)
    two = tmp_path / "two"
    for r in (1, 0):  # any order: no rank waits for another
        done = embed_job(job(tiny_onnx, photos, two), Rank(r, 2, 2), False, log=lambda s: None)
        assert done["chunks"] == 2 and done["written"] == 2
    a, b = read_all(one), read_all(two)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_allclose(a[1], b[1], atol=1e-6)


def test_a_rerun_with_another_model_or_chunk_size_is_refused(tiny_onnx, photos, tmp_path):
    embed_job(job(tiny_onnx, photos, tmp_path), progress=False, log=lambda s: None)
    other = EmbedJob(tiny_onnx, tmp_path, images=photos, chunk_size=5, workers=0)
    with pytest.raises(EmbedError, match="another job's output"):
        embed_job(other, progress=False, log=print)


def test_cli_embed_with_loader_workers_shows_the_provider(tiny_onnx, photos, tmp_path):
    args = ["embed", str(tiny_onnx), "--images", str(photos), "-o", str(tmp_path / "out")]
    result = CliRunner().invoke(app, [*args, "--chunk-size", "4", "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert "provider CPUExecutionProvider" in result.output
    assert "3 chunks written, 0 already done; 10 items embedded, 1 skipped" in result.output
    assert "05.png" in result.output
    args[-1] = str(tmp_path / "strict")
    strict = CliRunner().invoke(app, [*args, "--strict", "--chunk-size", "4", "--workers", "2"])
    assert strict.exit_code == 2 and "05.png: expected a readable image" in strict.output
    assert multiprocessing.active_children() == []  # the failed job's workers are gone


FORK_AFTER_GARBAGE = """
import gc, sys
from pathlib import Path
import coins.retrieval.embed_job as ej
from coins.retrieval.onnx.runner import OnnxEmbedder

model, photos, out = map(Path, sys.argv[1:])
real = ej.gallery_source


def collecting(*args, **kwargs):  # the workers' garbage collector runs at every image
    gallery = real(*args, **kwargs)
    load = gallery.load
    gallery.load = lambda i: (gc.collect(), load(i))[1]
    return gallery


ej.gallery_source = collecting
gc.disable()  # keep the garbage until the fork, as a busy process (a test run) may
garbage = [OnnxEmbedder(model)]  # an ONNX Runtime session in a reference cycle
garbage.append(garbage)
del garbage
job = ej.EmbedJob(model, out, images=photos, chunk_size=4, batch_size=2, workers=2)
print("embedded", ej.embed_job(job, progress=False, log=lambda s: None)["embedded"])
"""


@pytest.mark.slow
def test_loader_workers_never_free_a_session_they_inherit(tiny_onnx, photos, tmp_path):
    # Freeing an inherited ONNX Runtime session in a forked worker waits forever on its thread
    # pool; the workers' collector must not reach what they inherit (it hung before the fix).
    argv = [sys.executable, "-c", FORK_AFTER_GARBAGE, str(tiny_onnx), str(photos), str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "embedded 10" in done.stdout, done.stderr


@pytest.mark.slow
def test_two_torchrun_processes_give_the_vectors_of_one(tiny_onnx, photos, tmp_path):
    base = ["embed", str(tiny_onnx), "--images", str(photos), "--chunk-size", "2"]
    one = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    two = CliRunner().invoke(app, [*base, "-o", str(tmp_path / "two"), "--nproc", "2"])
    assert two.exit_code == 0, two.output
    a, b = read_all(tmp_path / "one"), read_all(tmp_path / "two")
    np.testing.assert_array_equal(a[0], b[0])
    assert np.abs(a[1] - b[1]).max() <= 1e-5


def test_cli_embed_takes_the_photos_a_training_run_held_out(tiny_onnx, photos, tmp_path):
    """`coins train --test-fraction 0.5 --seed 3` held out a side of the folder: `coins embed
    --split test --test-fraction 0.5 --split-seed 3` embeds those photos, and torchrun's
    ranks get the same flags."""
    from coins.retrieval.data.split import build_split
    from coins.retrieval.embed_job import job_argv
    from coins.retrieval.gallery import file_paths

    out = tmp_path / "out"
    cut = ["--split", "test", "--test-fraction", "0.5", "--split-seed", "3"]
    args = ["embed", str(tiny_onnx), "--images", str(photos), *cut, "--workers", "0"]
    result = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    held = file_paths(build_split("folder", "test", photos, {}, 0.5, "item", 3)) or []
    broken = (photos / "shoes/05.png").resolve()  # skipped: undecodable
    _, _, rows = read_all(out)
    assert sorted(r["path"] for r in rows) == sorted(
        str(p.resolve()) for p in held if p.resolve() != broken
    )
    again = EmbedJob(tiny_onnx, out, images=photos, split="test", test_fraction=0.5, split_seed=3)
    argv = job_argv(again)
    assert argv[argv.index("--test-fraction") :][:6] == [
        "--test-fraction", "0.5", "--split-by", "item", "--split-seed", "3",
    ]  # fmt: skip
