import itertools
import json

import pytest
import torch
import yaml
from train_fixtures import tiny_config

from coins.retrieval.checkpoint import load_checkpoint, load_embedder
from coins.train import METHODS, TrainingDiverged, load_config, train
from coins.train.metrics_log import read_log
from coins.train.schedule import alpha_scale, lr_at

METRIC_KEYS = {"recall@1", "recall@2", "recall@4", "recall@8", "map@r", "knn_acc"}


@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_and_writes_its_run_directory(method, tmp_path) -> None:
    cfg = tiny_config(method=method, max_steps=6)
    metrics = train(cfg, tmp_path, progress=False)
    assert set(metrics) == {"fine", "coarse"}
    assert set(metrics["fine"]) == METRIC_KEYS
    written = json.loads((tmp_path / "eval.json").read_text())  # and the selection score
    assert {k: written[k] for k in metrics} == metrics and "score" in written["selection"]
    steps = [r for r in read_log(tmp_path / "metrics.jsonl") if r["event"] == "step"]
    assert len(steps) == 6 and all(torch.isfinite(torch.tensor(r["loss"])) for r in steps)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["method"] == method and state["train_config"]["method"] == method
    load_embedder(tmp_path / "checkpoint.pt")  # rebuilt from the file alone
    if method == "coinsp":  # the proxy loss is on after epoch M = 1
        assert any("proxy" in r for r in steps)


@pytest.mark.slow  # three runs: about 7 s on a loaded 2-core machine
def test_resume_continues_exactly(tmp_path) -> None:
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train(tiny_config(method="coinsp"), straight, progress=False)
    # Stop after the first epoch (4 steps), then resume for the second.
    train(tiny_config(method="coinsp", max_steps=4), interrupted, progress=False)
    train(tiny_config(method="coinsp"), interrupted, resume=True, progress=False)

    def second_epoch(run):
        return [
            r["loss"]
            for r in read_log(run / "metrics.jsonl")
            if r["event"] == "step" and r["epoch"] == 2
        ]

    a, b = second_epoch(straight), second_epoch(interrupted)
    assert len(a) == len(b) == 4
    assert a == pytest.approx(b, abs=1e-6)


def test_a_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch) -> None:
    train(tiny_config(max_steps=4), tmp_path, progress=False)
    before = (tmp_path / "last.pt").read_bytes()
    # --resume refuses a different --lr, so the resumed run diverges through its schedule.
    monkeypatch.setattr("coins.train.loop.lr_at", lambda *args: float("inf"))
    with pytest.raises(TrainingDiverged, match="last good checkpoint is kept"):
        train(tiny_config(), tmp_path, resume=True, progress=False)
    assert (tmp_path / "last.pt").read_bytes() == before


def test_a_fresh_run_never_overwrites_an_existing_one(tmp_path) -> None:
    train(tiny_config(max_steps=1), tmp_path, progress=False)
    log = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_config(max_steps=1), tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == log


def test_queue_size_must_be_a_multiple_of_the_batch(tmp_path) -> None:
    with pytest.raises(ValueError, match="multiple of the global batch"):
        train(tiny_config(K=50), tmp_path, progress=False)


def test_config_layers_preset_then_file_then_flags(tmp_path) -> None:
    file = tmp_path / "c.yaml"
    file.write_text(yaml.safe_dump({"dataset": "fashion-mnist", "alpha": 0.3, "epochs": 9}))
    cfg = load_config(file, epochs=3, model={"head_dim": 64})
    assert (cfg.alpha, cfg.epochs, cfg.model.head_dim) == (0.3, 3, 64)
    assert cfg.model.preprocess.in_chans == 1  # from the fashion-mnist preset, kept by the merge
    with pytest.raises(ValueError, match="unknown training options"):
        load_config(alpah=0.3)
    with pytest.raises(ValueError, match="expected one of"):
        load_config(method="simclr")


def test_resolved_config_is_saved_and_reloads(tmp_path) -> None:
    cfg = tiny_config(max_steps=1)
    train(cfg, tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert load_config(**saved) == cfg


def test_schedule_warms_up_then_decays() -> None:
    cfg = tiny_config(epochs=10, warmup_epochs=2, lr=1.0)
    lrs = [lr_at(cfg, s, 10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.05) and lrs[19] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[20:]))
    step = tiny_config(epochs=10, schedule="step", lr_steps=[5, 8], lr=1.0)
    assert [lr_at(step, e * 10, 10) for e in (0, 5, 8)] == pytest.approx([1.0, 0.1, 0.01])


def test_alpha_schedule_holds_through_the_cos_warm_up_then_falls_to_zero() -> None:
    flat = tiny_config(epochs=10, cos_warmup_epochs=2)
    assert [alpha_scale(flat, e) for e in range(10)] == [1.0] * 10
    cfg = tiny_config(epochs=10, cos_warmup_epochs=2, alpha_schedule="cosine")
    scales = [alpha_scale(cfg, e) for e in range(10)]
    assert scales[:3] == [1.0, 1.0, 1.0]  # alone, then at full weight when L_ins joins
    assert scales[6] == pytest.approx(0.5) and 0 < scales[9] < 0.05
    assert all(a > b for a, b in itertools.pairwise(scales[2:]))
    with pytest.raises(ValueError, match="expected constant or cosine"):
        tiny_config(alpha_schedule="linear")


@pytest.mark.parametrize("method", ["maskcon", "cos"])
def test_strong_query_augments_the_query_view_only(method: str) -> None:
    from coins.retrieval.data import build_dataset
    from coins.train.loop import _loader

    cfg = tiny_config(method=method, strong_query=True)
    data = build_dataset(cfg.dataset, "train", **cfg.dataset_options)
    transform = _loader(data, cfg, epoch=0).dataset.transform  # type: ignore[attr-defined]
    if method == "cos":  # one view: it is the query
        assert "AutoAugment" in repr(transform)
        return
    assert "AutoAugment" in repr(transform.transform)
    assert "AutoAugment" not in repr(transform.key_transform)
    plain = _loader(data, tiny_config(method=method), epoch=0).dataset.transform  # type: ignore[attr-defined]
    assert "AutoAugment" not in repr(plain)
