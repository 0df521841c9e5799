"""The selection score against slow references, and a training run that selects on val."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from train_fixtures import TINY_DATA, TINY_MODEL, tiny_config

from coins.retrieval.configs import Augment, EmbedderConfig
from coins.retrieval.data import build_dataset
from coins.retrieval.models import Embedder
from coins.train import train
from coins.train.metrics_log import read_log
from coins.train.selection import (
    embed_views,
    fine_recall_at_1,
    selection_score,
    view_recall_at_1,
)


def unit_rows(rng: np.random.Generator, n: int, d: int = 8) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def view_reference(xa: np.ndarray, xb: np.ndarray, coarse: np.ndarray) -> float:
    hits, queries = 0, 0
    for i in range(len(xa)):
        same = [j for j in range(len(xb)) if coarse[j] == coarse[i]]
        if len(same) < 2:
            continue
        best = max(same, key=lambda j: float(xa[i] @ xb[j]))
        hits += best == i
        queries += 1
    return hits / queries


def fine_reference(x: np.ndarray, fine: np.ndarray) -> float:
    rows = [i for i in range(len(x)) if fine[i] >= 0]
    hits = 0
    for i in rows:
        others = [j for j in rows if j != i]
        best = max(others, key=lambda j: float(x[i] @ x[j]))
        hits += fine[best] == fine[i]
    return hits / len(rows)


@pytest.mark.parametrize("seed", range(3))
def test_view_recall_matches_a_loop_over_queries(seed) -> None:
    rng = np.random.default_rng(seed)
    coarse = np.array([0] * 7 + [1] * 5 + [2])  # class 2 has one image: left out
    xa = unit_rows(rng, len(coarse))
    xb = unit_rows(rng, len(coarse)) + 0.8 * xa  # partners nearer than chance, not always
    assert view_recall_at_1(xa, xb, coarse) == pytest.approx(view_reference(xa, xb, coarse))


def test_view_recall_needs_a_class_of_two() -> None:
    x = unit_rows(np.random.default_rng(0), 3)
    with pytest.raises(ValueError, match="at least 2 images"):
        view_recall_at_1(x, x, np.arange(3))


@pytest.mark.parametrize("seed", range(3))
def test_fine_recall_uses_only_labelled_rows(seed) -> None:
    rng = np.random.default_rng(seed)
    x = unit_rows(rng, 20)
    fine = rng.integers(0, 3, size=20)
    fine[rng.random(20) < 0.4] = -1  # most rows unlabelled, as a user would have them
    assert fine_recall_at_1(x, fine) == pytest.approx(fine_reference(x, fine))
    assert fine_recall_at_1(x, np.full(20, -1)) is None
    assert fine_recall_at_1(x, None) is None


class Pixels(Embedder):
    """The normalised pixels: distinct images, distinct embeddings (a random net may tie), and
    no convolution to wait for."""

    def embed(self, x: torch.Tensor, which: str = "backbone") -> torch.Tensor:
        return torch.nn.functional.normalize(x.flatten(1), dim=1)


@pytest.fixture(scope="module")
def model_and_data():
    model = Pixels(EmbedderConfig.from_dict(TINY_MODEL))
    return model, build_dataset("synthetic-patches", "test", **TINY_DATA)


def test_identical_views_find_their_partner(model_and_data) -> None:
    model, data = model_and_data
    still = Augment(crop_scale=(1.0, 1.0), hflip=False, color_jitter=0.0, grayscale_p=0.0)
    record = selection_score(model, data, still, select_by="view")
    assert record["view_recall@1"] == 1.0
    assert record["criterion"] == "view_recall@1" and record["score"] == 1.0


def test_views_are_seeded_and_leave_the_callers_random_state(model_and_data) -> None:
    model, data = model_and_data
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = embed_views(model, data, Augment(), seed=0)
    assert torch.equal(torch.rand(3), expected)
    assert np.array_equal(a, embed_views(model, data, Augment(), seed=0))
    assert not np.array_equal(a, embed_views(model, data, Augment(), seed=1))


def test_fine_labels_choose_when_present_and_the_record_says_so(model_and_data) -> None:
    model, data = model_and_data
    x = unit_rows(np.random.default_rng(0), len(data))
    auto = selection_score(model, data, Augment(), embeddings=x)
    assert auto["criterion"] == "fine_recall@1"
    assert auto["score"] == fine_recall_at_1(x, data.fine_labels)
    assert 0 <= auto["view_recall@1"] <= 1  # the label-free score is reported as well
    free = selection_score(model, data, Augment(), embeddings=x, select_by="view")
    assert free["score"] == free["view_recall@1"] and "fine_recall@1" not in free
    coarse_only = build_dataset("synthetic-patches", "test", **TINY_DATA)
    coarse_only.fine_labels = None  # as a set without fine labels
    with pytest.raises(ValueError, match="select_by view"):
        selection_score(model, coarse_only, Augment(), embeddings=x, select_by="fine")


@pytest.mark.slow
def test_a_run_with_val_fraction_selects_on_val_and_tests_once(tmp_path) -> None:
    evals: list[dict] = []
    cfg = tiny_config(val_fraction=0.25, eval_every=1, select_by="view")
    train(cfg, tmp_path, progress=False, on_eval=evals.append)
    log = read_log(tmp_path / "metrics.jsonl")
    steps = [r for r in log if r["event"] == "step"]
    assert len(steps) == 2 * 3  # 48 of 64 images train: 3 batches of 16 per epoch
    # the untrained start is a baseline on the reported split (no choice is made among
    # untrained models); the trained ones are watched on val and tested once
    watched = [(r["split"], r.get("untrained", False)) for r in log if r["event"] == "eval"]
    assert watched == [("test", True), ("val", False), ("val", False)]
    assert [r["epoch"] for r in evals] == [1, 2] and evals[-1]["selection"]["split"] == "val"
    assert [r["split"] for r in log if r["event"] == "test"] == ["test"]
    written = json.loads((tmp_path / "eval.json").read_text())
    assert written["selection"]["criterion"] == "view_recall@1"
    assert written["val"]["fine"] == evals[-1]["fine"]
    assert written["fine"] == next(r for r in log if r["event"] == "test")["fine"]
    assert json.loads((tmp_path / "config.json").read_text())["val_fraction"] == 0.25


def test_eval_split_val_never_evaluates_test(tmp_path) -> None:
    train(tiny_config(val_fraction=0.25, eval_split="val", max_steps=2), tmp_path, progress=False)
    log = read_log(tmp_path / "metrics.jsonl")
    evals = [(r["split"], r["epoch"]) for r in log if r["event"] in ("eval", "test")]
    assert evals == [("val", 0), ("val", 1)]  # the untrained start, then the trained one
    with pytest.raises(ValueError, match="val_fraction above 0"):
        tiny_config(eval_split="val")
