"""Checkpoints never execute code, name what they lack, and resume only the run they belong to."""

from __future__ import annotations

import json
import os
import pathlib
import stat
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from train_fixtures import TINY_DATA, TINY_MODEL, tiny_config
from typer.testing import CliRunner

from coins.cli import app
from coins.retrieval.atomic import atomic_path
from coins.retrieval.checkpoint import (
    convert_checkpoint,
    load_checkpoint,
    load_embedder,
    save_checkpoint,
)
from coins.retrieval.models import Embedder, EmbedderConfig
from coins.train import train
from coins.train.loop import LAST, RESUME_KEYS

runner = CliRunner()
TINY_OPTIONS = [arg for key, value in TINY_DATA.items() for arg in ("--option", f"{key}={value}")]
REFUSED = "refuses to unpickle"


class TouchPayload:
    """Unpickling this creates `marker`: a stand-in for any code a pickle can run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


class SystemPayload(TouchPayload):
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.marker}",))


def coins_like_state(**extra: Any) -> dict[str, Any]:
    """Everything a `coins train` checkpoint holds, with real tiny weights."""
    model = Embedder(EmbedderConfig.from_dict(TINY_MODEL))
    cfg = tiny_config()
    return {
        "format": "coins-checkpoint",
        "version": 1,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "method": "coins",
        "train_config": cfg.to_dict(),
        "classifier": None,
        "epoch": 0,
        "step": 4,
        "train_state": {"model": {}, "optimizer": {}},
        **extra,
    }


def evil_checkpoint(path: Path, marker: Path, payload: type[TouchPayload] = TouchPayload) -> Path:
    """A coins-looking checkpoint whose unpickling would create `marker`."""
    torch.save(coins_like_state(classifier={"T": payload(marker)}), path)
    return path


@pytest.fixture
def evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "pwned"
    return evil_checkpoint(tmp_path / "evil.pt", marker), marker


@pytest.mark.parametrize("payload", [TouchPayload, SystemPayload])
def test_the_payload_is_live_when_unpickled_unsafely(tmp_path: Path, payload) -> None:
    # Proves the tests below are not vacuous: the plain pickle loader does run the payload.
    marker = tmp_path / "ran"
    evil_checkpoint(tmp_path / "e.pt", marker, payload)
    torch.load(tmp_path / "e.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("payload", [TouchPayload, SystemPayload])
def test_load_checkpoint_refuses_code_and_says_how_to_convert(tmp_path: Path, payload) -> None:
    marker = tmp_path / "pwned"
    path = evil_checkpoint(tmp_path / "e.pt", marker, payload)
    with pytest.raises(ValueError, match=REFUSED) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert str(path) in message and "other than tensors and plain types" in message
    assert "convert_checkpoint" in message and "trust" in message
    assert not marker.exists()


def test_load_embedder_refuses_code(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    with pytest.raises(ValueError, match=REFUSED):
        load_embedder(path)
    assert not marker.exists()


def _cli(args: list[str], marker: Path) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert REFUSED in result.output and "Traceback" not in result.output
    assert not marker.exists()


def test_coins_export_refuses_code(evil: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = evil
    _cli(["export", str(path), "-o", str(tmp_path / "m.onnx")], marker)
    assert not (tmp_path / "m.onnx").exists()


def test_coins_eval_refuses_code(evil: tuple[Path, Path]) -> None:
    path, marker = evil
    _cli(["eval", str(path), "--dataset", "synthetic-patches", *TINY_OPTIONS], marker)


def test_coins_explain_refuses_code(evil: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = evil
    args = ["explain", str(path), "-o", str(tmp_path / "x.png"), "--dataset", "synthetic-patches"]
    _cli([*args, *TINY_OPTIONS], marker)


def test_coins_report_refuses_code(evil: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = evil
    run = tmp_path / "run"
    run.mkdir()
    path.rename(run / "checkpoint.pt")
    (run / "config.json").write_text(json.dumps(tiny_config().to_dict()))
    _cli(["report", str(run), "-o", str(tmp_path / "report")], marker)


def test_coins_train_resume_refuses_code(evil: tuple[Path, Path], tmp_path: Path) -> None:
    path, marker = evil
    run = tmp_path / "run"
    run.mkdir()
    path.rename(run / LAST)
    _cli(["train", "--out", str(run), "--resume"], marker)


def test_a_trusted_old_file_converts_once_and_then_loads(tmp_path: Path) -> None:
    # An older writer's numpy scalar and Path: harmless, but not weights-only loadable.
    old = tmp_path / "old.pt"
    torch.save(coins_like_state(epoch=np.int64(3), root=Path("/data")), old)
    with pytest.raises(ValueError, match=REFUSED):
        load_checkpoint(old)
    convert_checkpoint(old, tmp_path / "new.pt")
    state = load_checkpoint(tmp_path / "new.pt")
    assert (state["epoch"], state["root"]) == (3, "/data")
    assert type(state["epoch"]) is int
    load_embedder(tmp_path / "new.pt")


def test_save_checkpoint_writes_plain_types_or_nothing(tmp_path: Path) -> None:
    model = Embedder(EmbedderConfig.from_dict(TINY_MODEL))
    save_checkpoint(tmp_path / "a.pt", model, root=Path("/data"), best=np.float32(0.5))
    state = load_checkpoint(tmp_path / "a.pt")
    assert (state["root"], state["best"]) == ("/data", 0.5)
    with pytest.raises(TypeError, match=r"checkpoint\['extra'\]: object is not a tensor"):
        save_checkpoint(tmp_path / "b.pt", model, extra=object())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]


def test_junk_is_still_an_unreadable_file_not_a_code_warning(tmp_path: Path) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch file"):
        load_checkpoint(tmp_path / "junk.pt")


# --- missing keys --------------------------------------------------------------------------


def test_missing_keys_are_named_with_the_file(tmp_path: Path) -> None:
    state = coins_like_state()
    del state["model"], state["model_config"], state["train_state"]["optimizer"]
    torch.save(state, tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare\.pt: missing model_config, model$"):
        load_embedder(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match=r"bare\.pt: missing train_state\.optimizer$"):
        load_checkpoint(tmp_path / "bare.pt", require=RESUME_KEYS)
    result = runner.invoke(app, ["eval", str(tmp_path / "bare.pt"), *TINY_OPTIONS])
    assert result.exit_code == 2 and "missing model_config, model" in result.output


def test_resume_from_a_file_without_train_state_names_the_keys(tmp_path: Path) -> None:
    state = coins_like_state()
    del state["train_state"], state["step"]
    torch.save(state, tmp_path / LAST)
    with pytest.raises(
        ValueError, match=r"missing train_state\.model, train_state\.optimizer, step$"
    ):
        train(tiny_config(), tmp_path, resume=True, progress=False)


def test_resume_without_a_checkpoint_says_so(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"last\.pt does not exist"):
        train(tiny_config(), tmp_path, resume=True, progress=False)


# --- resume checks the flags ---------------------------------------------------------------


@pytest.fixture(scope="module")
def half_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny run stopped after its first epoch (4 of 8 steps)."""
    out = tmp_path_factory.mktemp("run") / "run"
    train(tiny_config(max_steps=4), out, progress=False)
    return out


def test_a_real_run_checkpoint_loads_weights_only(half_run: Path) -> None:
    state = load_checkpoint(half_run / LAST, require=RESUME_KEYS)
    classes = state["classifier"]["classes"]
    assert type(classes) is list and len(classes) == 4 and all(type(c) is str for c in classes)
    assert state["train_state"]["optimizer"]["param_groups"]
    load_embedder(half_run / LAST)


def test_resume_with_other_flags_lists_every_difference(half_run: Path) -> None:
    before = (half_run / LAST).read_bytes()
    changed = tiny_config(max_steps=4, lr=0.1, model={**TINY_MODEL, "head_dim": 16})
    with pytest.raises(ValueError, match="differ from the run") as error:
        train(changed, half_run, resume=True, progress=False)
    message = str(error.value)
    assert "lr: saved 0.05, given 0.1" in message
    assert "model.head_dim: saved 8, given 16" in message
    assert "max_steps" not in message  # a stop condition may change
    assert (half_run / LAST).read_bytes() == before


def test_resume_through_the_cli_reports_the_difference(half_run: Path) -> None:
    config = str(half_run / "config.json")  # JSON is YAML: the run's own options
    result = runner.invoke(app, ["train", "--out", str(half_run), "--resume",
                                 "--config", config, "--epochs", "5"])  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "epochs: saved 2, given 5" in result.output and "Traceback" not in result.output


def test_resume_with_the_same_flags_finishes_and_keeps_config_json(
    half_run: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    run.mkdir()
    for file in half_run.iterdir():  # a copy: the module's run stays half done
        (run / file.name).write_bytes(file.read_bytes())
    config = (run / "config.json").read_bytes()
    # max_steps and num_workers may differ; the rest is the run's own config
    train(tiny_config(max_steps=0, num_workers=0), run, resume=True, progress=False)
    assert (run / "config.json").read_bytes() == config
    assert load_checkpoint(run / LAST)["step"] == 8
    load_embedder(run / "checkpoint.pt")


# --- atomic writes -------------------------------------------------------------------------


def _record_fsyncs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        info = os.fstat(fd)
        events.append("fsync dir" if stat.S_ISDIR(info.st_mode) else f"fsync {info.st_size}")
        real_fsync(fd)

    def replace(src: Any, dst: Any) -> None:
        events.append("replace")
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_atomic_path_fsyncs_the_data_then_the_directory(tmp_path: Path, monkeypatch) -> None:
    events = _record_fsyncs(monkeypatch)
    with atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("12345")
    assert events == ["fsync 5", "replace", "fsync dir"]
    assert (tmp_path / "f.txt").read_text() == "12345"


def test_a_failed_block_fsyncs_nothing_and_leaves_no_temporary(tmp_path: Path, monkeypatch) -> None:
    events = _record_fsyncs(monkeypatch)
    (tmp_path / "f.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "f.txt") as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash")
    assert events == []
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]
    assert (tmp_path / "f.txt").read_text() == "old"
