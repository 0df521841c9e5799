"""Artifacts shared by the whole test session: one tiny trained `coins` model (a one-epoch run,
4 steps, on the tiny synthetic set), its ONNX export and a flat index of the tiny test split.

Training and exporting take seconds each on a CPU; before, five modules paid for their own copy.
Each artifact is built lazily, on the first test that asks for it, then reused. Tests read them
and copy to tmp_path before writing: a session-end check fails if any shared file changed.
Tests of training itself (resume, DDP, divergence) still train their own runs."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # torch and the serve stack load only for the tests that ask for them
    from serve_real import Built


def fingerprint(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


def unchanged(folder: Path, artifact: Path) -> Iterator[Path]:
    """Yield `artifact`, then fail if a test added, removed or rewrote a file in `folder`."""
    before = fingerprint(folder)
    yield artifact
    after = fingerprint(folder)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote into the shared artifacts {folder}: {changed}"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The run folder of a one-epoch `coins` training (checkpoint.pt, last.pt, config.json,
    its log): read only; copy it (shutil.copytree) to change it."""
    from train_fixtures import tiny_config

    from coins.train import train

    run = tmp_path_factory.mktemp("tiny-model") / "run"
    train(tiny_config(method="coins", epochs=1, amp=False), run, progress=False)
    yield from unchanged(run, run)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_run: Path) -> Path:
    return tiny_run / "checkpoint.pt"


@pytest.fixture(scope="session")
def tiny_onnx(tiny_checkpoint: Path) -> Iterator[Path]:
    """The checkpoint exported as `coins export` does: backbone embedding and coarse head."""
    from coins.retrieval.onnx.export import export_checkpoint

    folder = tiny_checkpoint.parent.parent / "onnx"
    folder.mkdir()
    export_checkpoint(tiny_checkpoint, folder / "model.onnx")
    yield from unchanged(folder, folder / "model.onnx")


@pytest.fixture(scope="session")
def tiny_index(tiny_onnx: Path) -> Iterator[Path]:
    """A flat index of the tiny synthetic-patches test split (48 items) by the tiny model."""
    from train_fixtures import TINY_DATA

    from coins.serve.index.build import build_index_from_model

    index_dir = tiny_onnx.parent.parent / "index"
    build_index_from_model(
        tiny_onnx, index_dir, dataset="synthetic-patches", split="test",
        dataset_options=TINY_DATA, progress=False, index_key="flat",
    )  # fmt: skip
    yield from unchanged(index_dir, index_dir)


@pytest.fixture(scope="session")
def tiny_built(tiny_onnx: Path, tiny_index: Path) -> Built:
    """The tiny model and its index, as the serve tests take them."""
    from serve_real import Built

    return Built(tiny_onnx, tiny_index)
