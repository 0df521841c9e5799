"""The method table: each method gets exactly the parts and losses it had when the code tested
method names, and the checkpoint says which labels its classifier classifies."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image
from train_fixtures import tiny_config

from coins.retrieval.checkpoint import load_checkpoint
from coins.retrieval.onnx.export import classifier_from_checkpoint
from coins.train import train
from coins.train.builder import CoInsModel
from coins.train.methods import METHODS

ALPHA = 0.3


# The string tests the table replaced, kept as the slow obvious reference.
def old_uses_queue(m: str) -> bool:
    return m not in ("cos", "opt")


def old_classifier(m: str) -> str | None:
    if m not in ("cos", "opt", "coins", "coins-imp", "coinsp", "coins-soft"):
        return None
    return "fine" if m == "opt" else "coarse"


def old_within_coarse(m: str, imp_proxy: bool) -> bool:
    return m == "coins-imp" or (m == "coinsp" and imp_proxy)


def old_cos_weight(m: str) -> float:
    return ALPHA if m not in ("cos", "opt") else 1.0


def old_parts(m: str) -> set[str]:
    if m in ("grafit", "maskcon"):
        return {m}
    if m == "coins-soft":  # added after the string tests: MaskCon's loss + alpha L_cos
        return {"maskcon", "cos"}
    parts = {"cos"} if old_classifier(m) is not None else set()
    return parts | {"ins"} if old_uses_queue(m) else parts


def test_the_table_holds_the_methods_of_the_paper() -> None:
    names = ("cos", "ins", "coins", "coins-imp", "coinsp", "coins-soft", "opt", "grafit", "maskcon")
    assert tuple(METHODS) == names
    for name, method in METHODS.items():
        assert method.name == name and method.about
        assert method.key_encoder == old_uses_queue(name)
        assert method.classifier == old_classifier(name)
        assert method.proxies == (name == "coinsp")
        peer = "maskcon" if name == "coins-soft" else name
        assert method.peer == (peer if peer in ("grafit", "maskcon") else None)
        assert method.cos_weight(ALPHA) == old_cos_weight(name)
        for imp in (True, False):
            assert method.negatives_within_coarse(imp) == old_within_coarse(name, imp)
        assert ("fine" in method.labels) == (name == "opt")


def one_step(
    method: str, cos_scale: float = 1.0, **options: object
) -> tuple[CoInsModel, torch.Tensor, dict[str, float]]:
    cfg = tiny_config(method=method, alpha=ALPHA, **options)
    torch.manual_seed(0)
    model = CoInsModel(cfg, 8 if method == "opt" else 4, np.repeat(np.arange(4), 16))
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 3, 16, 16, generator=g)
    k = x + 0.1 * torch.randn(16, 3, 16, 16, generator=g)
    coarse = torch.arange(16) % 4
    fine, index = torch.arange(16) % 8, torch.arange(16)
    im_k = k if METHODS[method].key_encoder else None
    generator = torch.Generator().manual_seed(2)
    loss, parts = model(x, im_k, coarse, fine, index, generator, cos_scale=cos_scale)
    return model, loss, parts


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_builds_its_parts_and_weighs_its_losses(method: str) -> None:
    model, loss, parts = one_step(method)
    assert (model.classifier is not None) == (old_classifier(method) is not None)
    assert (model.queue is not None) == (model.encoder_k is not None) == old_uses_queue(method)
    assert (model.proxies is not None) == (method == "coinsp")
    assert set(parts) == old_parts(method)
    expected = sum(old_cos_weight(method) * v if n == "cos" else v for n, v in parts.items())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("where", ["shared", "own"])
def test_l_cos_reaches_the_instance_head_only_when_the_classifier_shares_it(where: str) -> None:
    model, loss, _ = one_step("cos", classifier_head=where)
    loss.backward()
    head_grads = [p.grad for p in model.encoder_q.head.parameters()]
    backbone_grad = next(model.encoder_q.backbone.parameters()).grad
    assert backbone_grad is not None and float(backbone_grad.abs().sum()) > 0
    if where == "shared":
        assert model.classifier_head is None
        assert all(g is not None and float(g.abs().sum()) > 0 for g in head_grads)
    else:
        assert model.classifier_head is not None
        assert all(g is None for g in head_grads)  # q's head answers to L_ins alone
        assert all(p.grad is not None for p in model.classifier_head.parameters())


def test_an_own_classifier_head_needs_a_known_name() -> None:
    with pytest.raises(ValueError, match="classifier_head 'mine'"):
        tiny_config(classifier_head="mine")


@pytest.mark.parametrize("method", list(METHODS))
def test_each_method_names_the_terms_its_steps_train(method: str) -> None:
    extra = {"proxy"} if method == "coinsp" else set()  # L_proxy joins after epoch M
    assert set(METHODS[method].loss_terms) == old_parts(method) | extra


@pytest.mark.parametrize("method", ["coins", "coins-soft", "coinsp"])
def test_uncertainty_weighting_weighs_each_term_by_its_learned_log_variance(method: str) -> None:
    model, _, _ = one_step(method, loss_weighting="uncertainty")
    assert model.log_vars is not None and set(model.log_vars) == set(METHODS[method].loss_terms)
    with torch.no_grad():
        for i, s in enumerate(model.log_vars.values()):
            s.fill_(0.5 - i)  # a different s for every term
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 3, 16, 16, generator=g)
    coarse, fine, index = torch.arange(16) % 4, torch.arange(16) % 8, torch.arange(16)
    loss, parts = model(x, x + 0.1, coarse, fine, index, g, proxy_on=True)
    s = {n: float(v.detach()) for n, v in model.log_vars.items()}
    weight = {"cos": ALPHA, "ins": 1.0, "maskcon": 1.0, "proxy": model.cfg.lambda_p}
    terms = METHODS[method].loss_terms
    expected = sum(math.exp(-s[n]) * weight[n] * parts[n] + s[n] for n in terms)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    assert all(parts[f"w_{n}"] == pytest.approx(math.exp(-s[n])) for n in terms)
    loss.backward()
    assert all(v.grad is not None and float(v.grad) != 0 for v in model.log_vars.values())


def test_uncertainty_weighting_needs_two_terms() -> None:
    with pytest.raises(ValueError, match="cos alone"):
        tiny_config(method="cos", loss_weighting="uncertainty")


@pytest.mark.parametrize("method", ["coins", "coins-soft", "cos"])
def test_the_alpha_schedule_scales_l_cos_only_beside_a_loss_over_keys(method: str) -> None:
    _, loss, parts = one_step(method, cos_scale=0.25)
    weight = ALPHA * 0.25 if METHODS[method].key_encoder else 1.0  # cos alone: always in full
    expected = sum(weight * v if n == "cos" else v for n, v in parts.items())
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_coinsp_builds_on_coins_imp_or_coins_as_imp_proxy_says() -> None:
    imp = one_step("coins-imp")[2]["ins"]
    plain = one_step("coins")[2]["ins"]
    assert imp != pytest.approx(plain)  # an empty queue: within-coarse negatives differ
    assert one_step("coinsp", imp_proxy=True)[2]["ins"] == pytest.approx(imp)
    assert one_step("coinsp", imp_proxy=False)[2]["ins"] == pytest.approx(plain)


@pytest.mark.parametrize(("method", "level"), [("opt", "fine"), ("coins", "coarse")])
def test_checkpoint_classifier_carries_its_level(method: str, level: str, tmp_path) -> None:
    train(tiny_config(method=method, max_steps=1, epochs=1), tmp_path, progress=False)
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["classifier"]["level"] == level
    assert len(state["classifier"]["classes"]) == (8 if level == "fine" else 4)
    classifier = classifier_from_checkpoint(state)
    assert classifier is not None and classifier.level == level
    # A level in the checkpoint wins over the method name
    state["classifier"]["level"] = "coarse"
    assert classifier_from_checkpoint(state).level == "coarse"  # type: ignore[union-attr]


def test_export_reads_old_checkpoints_by_method_and_refuses_unknown_levels() -> None:
    saved = {"weight": torch.zeros(2, 4), "T": 0.2, "classes": ["a", "b"]}
    for method, level in (("opt", "fine"), ("coins", "coarse"), ("cos", "coarse")):
        old = classifier_from_checkpoint({"method": method, "classifier": dict(saved)})
        assert old is not None and old.level == level
    with pytest.raises(ValueError, match="level 'middle': expected 'coarse' or 'fine'"):
        classifier_from_checkpoint({"method": "opt", "classifier": saved | {"level": "middle"}})


def test_a_method_that_needs_fine_labels_says_so(tmp_path) -> None:
    rows = ["path,coarse,split"]
    for i in range(40):
        Image.new("RGB", (16, 16), (6 * i, 0, 0)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,c{i % 2},{'train' if i < 32 else 'test'}")
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = tiny_config(method="opt", dataset="csv", root=str(tmp_path), dataset_options={})
    with pytest.raises(ValueError, match="method opt needs fine labels; csv has none"):
        train(cfg, tmp_path / "run", progress=False)
