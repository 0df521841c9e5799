"""Each loss against a slow, explicit reference (loops, scalar math), then its behaviour.

References follow docs/method.md#the-losses and #peer-methods; the vectorised losses must agree
with them in float64 to 1e-6 relative tolerance.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from coins.train.losses import (
    CosineClassifier,
    cos_loss,
    grafit_loss,
    info_nce,
    instance_logits,
    maskcon_loss,
    maskcon_target,
    proxy_loss,
)

SEEDS = [0, 1, 2, 3]
N, K, D, C = 6, 10, 5, 3
RTOL = 1e-6
NEG_INF = float("-inf")


@dataclass
class Moco:
    q: Tensor  # NxD
    k: Tensor  # NxD
    queue: Tensor  # KxD
    q_coarse: Tensor  # N
    queue_coarse: Tensor  # K


def moco_inputs(seed: int) -> Moco:
    """Random unit vectors in float64; coarse labels from C classes, 3 empty (-1) queue slots,
    and a last query whose coarse class C is absent from the queue."""
    g = torch.Generator().manual_seed(seed)

    def unit(n: int) -> Tensor:
        return F.normalize(torch.randn(n, D, generator=g, dtype=torch.float64), dim=1)

    q_coarse = torch.randint(0, C, (N,), generator=g)
    q_coarse[-1] = C
    queue_coarse = torch.randint(0, C, (K,), generator=g)
    queue_coarse[torch.randperm(K, generator=g)[:3]] = -1
    return Moco(unit(N), unit(N), unit(K), q_coarse, queue_coarse)


# ---- slow references: Python loops over queries and queue entries, scalar math ---------------


def dot(a: Tensor, b: Tensor) -> float:
    return sum(float(a[d]) * float(b[d]) for d in range(a.shape[0]))


def ref_logits(m: Moco, T: float, imp: bool = False) -> list[list[float]]:
    """[q·k, q·queue_j] / T per query; under coins-imp other-coarse and -1 slots are -inf."""
    rows = []
    for i in range(m.q.shape[0]):
        row = [dot(m.q[i], m.k[i]) / T]
        for j in range(m.queue.shape[0]):
            c_j, c_i = int(m.queue_coarse[j]), int(m.q_coarse[i])
            masked = imp and (c_j == -1 or c_j != c_i)
            row.append(NEG_INF if masked else dot(m.q[i], m.queue[j]) / T)
        rows.append(row)
    return rows


def log_softmax_at(row: Sequence[float], p: int) -> float:
    return row[p] - math.log(sum(math.exp(x) for x in row if x != NEG_INF))


def ref_info_nce(rows: list[list[float]]) -> float:
    return sum(-log_softmax_at(row, 0) for row in rows) / len(rows)


def same_coarse_entries(m: Moco, i: int) -> list[int]:
    c_i = int(m.q_coarse[i])
    return [j for j in range(m.queue.shape[0]) if int(m.queue_coarse[j]) == c_i]


def ref_grafit(m: Moco, T: float, w: float) -> float:
    rows = ref_logits(m, T)
    total = 0.0
    for i, row in enumerate(rows):
        positives = [0] + [1 + j for j in same_coarse_entries(m, i)]
        supcon = -sum(log_softmax_at(row, p) for p in positives) / len(positives)
        total += w * supcon + (1 - w) * -log_softmax_at(row, 0)
    return total / len(rows)


def ref_maskcon_target(m: Moco, T: float, w: float) -> list[list[float]]:
    targets = []
    for i in range(m.q.shape[0]):
        a = [0.0] * m.queue.shape[0]
        same = same_coarse_entries(m, i)
        if same:
            e = {j: math.exp(dot(m.k[i], m.queue[j]) / T) for j in same}
            soft = {j: e[j] / sum(e.values()) for j in same}  # softmax over same-coarse
            for j in same:
                a[j] = soft[j] / max(soft.values())  # rescaled: the largest is 1
        z = [1.0 / (1 + sum(a))] + [a_j / (1 + sum(a)) for a_j in a]
        targets.append([w * z_j + (1 - w) * (p == 0) for p, z_j in enumerate(z)])
    return targets


def ref_maskcon(m: Moco, T0: float, T: float, w: float) -> float:
    rows, targets = ref_logits(m, T0), ref_maskcon_target(m, T, w)
    losses = [
        -sum(y[p] * log_softmax_at(row, p) for p in range(len(row)))
        for row, y in zip(rows, targets, strict=True)
    ]
    return sum(losses) / len(losses)


def ref_proxy(q: Tensor, proxies: Tensor, labels: Tensor, T_P: float) -> float:
    losses = []
    for i in range(q.shape[0]):
        if int(labels[i]) == -1:
            continue
        row = [
            dot(q[i], proxies[p]) / (math.sqrt(dot(proxies[p], proxies[p])) * T_P)
            for p in range(proxies.shape[0])
        ]
        losses.append(-log_softmax_at(row, int(labels[i])))
    return sum(losses) / len(losses)


def close(actual: Tensor, expected: float | list[list[float]]) -> None:
    torch.testing.assert_close(
        actual, torch.tensor(expected, dtype=torch.float64), rtol=RTOL, atol=1e-12
    )


# ---- vectorised == reference -----------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("imp", [False, True])
def test_instance_logits_and_info_nce_match_reference(seed: int, imp: bool) -> None:
    m = moco_inputs(seed)
    labels = (m.q_coarse, m.queue_coarse) if imp else (None, None)
    logits = instance_logits(m.q, m.k, m.queue, 0.2, *labels)
    expected = ref_logits(m, 0.2, imp)
    close(logits, expected)
    close(info_nce(logits), ref_info_nce(expected))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_grafit_matches_reference(seed: int, w: float) -> None:
    m = moco_inputs(seed)
    loss = grafit_loss(m.q, m.k, m.queue, m.q_coarse, m.queue_coarse, T=0.1, w=w)
    close(loss, ref_grafit(m, 0.1, w))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize(("T0", "T", "w"), [(0.1, 0.05, 0.5), (0.2, 0.1, 0.8), (0.1, 0.05, 1.0)])
def test_maskcon_matches_reference(seed: int, T0: float, T: float, w: float) -> None:
    m = moco_inputs(seed)
    target = maskcon_target(m.k, m.queue, m.q_coarse, m.queue_coarse, T, w)
    close(target, ref_maskcon_target(m, T, w))
    loss = maskcon_loss(m.q, m.k, m.queue, m.q_coarse, m.queue_coarse, T0=T0, T=T, w=w)
    close(loss, ref_maskcon(m, T0, T, w))


@pytest.mark.parametrize("seed", SEEDS)
def test_proxy_loss_matches_reference(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(N, D, generator=g, dtype=torch.float64), dim=1)
    proxies = 3.0 * torch.randn(4, D, generator=g, dtype=torch.float64)  # not unit: means
    labels = torch.randint(0, 4, (N,), generator=g)
    labels[[1, 4]] = -1
    close(proxy_loss(q, proxies, labels, 0.1), ref_proxy(q, proxies, labels, 0.1))


@pytest.mark.parametrize("seed", SEEDS)
def test_cosine_classifier_and_cos_loss_match_reference(seed: int) -> None:
    torch.manual_seed(seed)
    clf = CosineClassifier(D, C, T=0.2).double()
    q = F.normalize(torch.randn(N, D, dtype=torch.float64), dim=1)
    target = torch.randint(0, C, (N,))
    W = clf.weight.detach()
    expected = [
        [dot(q[i], W[c]) / (math.sqrt(dot(W[c], W[c])) * 0.2) for c in range(C)] for i in range(N)
    ]
    logits = clf(q)
    close(logits, expected)
    ref = sum(-log_softmax_at(expected[i], int(target[i])) for i in range(N)) / N
    close(cos_loss(logits, target), ref)
    close(CosineClassifier.cos_loss(logits, target), ref)


# ---- gradients -------------------------------------------------------------------------------


def leaf(t: Tensor) -> Tensor:
    return t.clone().requires_grad_(True)


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_gradcheck_info_nce_with_coins_imp_mask(seed: int) -> None:
    m = moco_inputs(seed)

    def f(q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        return info_nce(instance_logits(q, k, queue, 0.2, m.q_coarse, m.queue_coarse))

    assert torch.autograd.gradcheck(f, (leaf(m.q), leaf(m.k), leaf(m.queue)))


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_gradcheck_grafit(seed: int) -> None:
    m = moco_inputs(seed)

    def f(q: Tensor, k: Tensor, queue: Tensor) -> Tensor:
        return grafit_loss(q, k, queue, m.q_coarse, m.queue_coarse, T=0.1, w=0.5)

    assert torch.autograd.gradcheck(f, (leaf(m.q), leaf(m.k), leaf(m.queue)))


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_gradcheck_maskcon_in_q(seed: int) -> None:
    # Only q: k and queue also move the target, which carries no gradient by design.
    m = moco_inputs(seed)

    def f(q: Tensor) -> Tensor:
        return maskcon_loss(q, m.k, m.queue, m.q_coarse, m.queue_coarse)

    assert torch.autograd.gradcheck(f, (leaf(m.q),))


def test_maskcon_target_carries_no_gradient_into_k() -> None:
    # k enters the loss only through l_pos = q·k / T0: d loss / d k_i = (p_i0 - y_i0) q_i / (N T0).
    m, T0 = moco_inputs(0), 0.1
    k = leaf(m.k)
    maskcon_loss(m.q, k, m.queue, m.q_coarse, m.queue_coarse, T0=T0).backward()
    p0 = instance_logits(m.q, m.k, m.queue, T0).softmax(dim=1)[:, :1]  # Nx1
    y0 = maskcon_target(m.k, m.queue, m.q_coarse, m.queue_coarse, 0.05, 0.5)[:, :1]  # Nx1
    torch.testing.assert_close(k.grad, (p0 - y0) * m.q / (N * T0))
    assert not maskcon_target(k, leaf(m.queue), m.q_coarse, m.queue_coarse, 0.05, 0.5).requires_grad


# ---- behaviour -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_coins_imp_masks_exactly_other_coarse_and_empty_slots(seed: int) -> None:
    m = moco_inputs(seed)
    plain = instance_logits(m.q, m.k, m.queue, 0.2)
    imp = instance_logits(m.q, m.k, m.queue, 0.2, m.q_coarse, m.queue_coarse)
    keep = (m.q_coarse[:, None] == m.queue_coarse[None, :]) & (m.queue_coarse >= 0)  # NxK
    assert torch.isfinite(imp[:, 0]).all(), "the positive is never masked"
    assert torch.equal(torch.isneginf(imp[:, 1:]), ~keep)
    assert torch.equal(imp[:, 1:][keep], plain[:, 1:][keep])
    assert torch.equal(imp[:, 0], plain[:, 0])
    assert torch.isneginf(imp[-1, 1:]).all(), "a class absent from the queue masks it all"


def test_info_nce_is_finite_when_every_queue_entry_is_masked() -> None:
    m = moco_inputs(0)
    q = leaf(m.q)
    empty = torch.full((K,), -1)
    loss = info_nce(instance_logits(q, m.k, m.queue, 0.2, m.q_coarse, empty))
    loss.backward()
    assert loss.item() == 0.0  # only the positive is left in each softmax
    assert q.grad is not None and torch.isfinite(q.grad).all()
    # A query labelled -1 must not match the -1 slots either.
    logits = instance_logits(m.q, m.k, m.queue, 0.2, torch.full((N,), -1), empty)
    assert torch.isneginf(logits[:, 1:]).all()


@pytest.mark.parametrize("seed", SEEDS)
def test_grafit_and_maskcon_with_w_0_are_info_nce(seed: int) -> None:
    m = moco_inputs(seed)
    labels = (m.q_coarse, m.queue_coarse)
    ins_T = info_nce(instance_logits(m.q, m.k, m.queue, 0.2))
    ins_T0 = info_nce(instance_logits(m.q, m.k, m.queue, 0.1))
    torch.testing.assert_close(grafit_loss(m.q, m.k, m.queue, *labels, T=0.2, w=0.0), ins_T)
    torch.testing.assert_close(maskcon_loss(m.q, m.k, m.queue, *labels, T0=0.1, w=0.0), ins_T0)


@pytest.mark.parametrize("seed", SEEDS)
def test_losses_differ_on_the_test_data(seed: int) -> None:
    # Guards the references above: the data must tell the methods and their options apart.
    m = moco_inputs(seed)
    labels = (m.q_coarse, m.queue_coarse)
    values = [
        info_nce(instance_logits(m.q, m.k, m.queue, 0.1)),
        info_nce(instance_logits(m.q, m.k, m.queue, 0.1, *labels)),
        grafit_loss(m.q, m.k, m.queue, *labels, T=0.1),
        maskcon_loss(m.q, m.k, m.queue, *labels, T0=0.1, T=0.05),
        maskcon_loss(m.q, m.k, m.queue, *labels, T0=0.1, T=0.5),
    ]
    for a in range(len(values)):
        for b in range(a):
            assert not torch.isclose(values[a], values[b], rtol=1e-4), (a, b)


@pytest.mark.parametrize("seed", SEEDS)
def test_maskcon_target_rows_sum_to_one_and_live_on_the_coarse_class(seed: int) -> None:
    m = moco_inputs(seed)
    y = maskcon_target(m.k, m.queue, m.q_coarse, m.queue_coarse, 0.05, 0.5)
    torch.testing.assert_close(y.sum(dim=1), torch.ones(N, dtype=torch.float64))
    assert (y >= 0).all()
    keep = (m.q_coarse[:, None] == m.queue_coarse[None, :]) & (m.queue_coarse >= 0)
    assert (y[:, 1:][~keep] == 0).all()
    # The best same-coarse entry gets the key's share of z: a_max = 1.
    has = keep.any(dim=1)
    z = (y - 0.5 * F.one_hot(torch.zeros(N, dtype=torch.long), K + 1)) / 0.5
    torch.testing.assert_close(z[has, 1:].max(dim=1).values, z[has, 0])
    assert torch.equal(y[-1], F.one_hot(torch.tensor(0), K + 1).double()), "no same-coarse entry"


def test_proxy_loss_ignores_unassigned_examples() -> None:
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(N, D, generator=g), dim=1)
    proxies = torch.randn(4, D, generator=g)
    labels = torch.tensor([0, -1, 3, -1, 2, 1])
    kept = labels >= 0
    torch.testing.assert_close(
        proxy_loss(q, proxies, labels, 0.1), proxy_loss(q[kept], proxies, labels[kept], 0.1)
    )
    q = leaf(q)
    zero = proxy_loss(q, proxies, torch.full((N,), -1), 0.1)
    assert zero.item() == 0.0 and zero.grad_fn is not None
    zero.backward()
    assert q.grad is not None and (q.grad == 0).all()


def test_cosine_classifier_is_invariant_to_weight_row_scale() -> None:
    torch.manual_seed(0)
    clf = CosineClassifier(D, C)
    q = F.normalize(torch.randn(N, D), dim=1)
    before = clf(q)
    with torch.no_grad():
        clf.weight.mul_(torch.rand(C, 1) * 10 + 0.1)
    torch.testing.assert_close(clf(q), before)
    assert before.shape == (N, C) and before.abs().max() <= 1 / 0.2 + 1e-5


# ---- validation ------------------------------------------------------------------------------

Q, KEY, QUEUE = torch.randn(N, D), torch.randn(N, D), torch.randn(K, D)
QC, QUEUEC = torch.zeros(N, dtype=torch.long), torch.zeros(K, dtype=torch.long)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((Q, torch.randn(N + 1, D), QUEUE, QC, QUEUEC), "q and k both NxD"),
        ((Q, KEY, torch.randn(K, D + 1), QC, QUEUEC), "queue Kx5"),
        ((Q, KEY, torch.randn(0, D), QC, QUEUEC), "K >= 1"),
        ((Q, KEY, QUEUE, QC[:-1], QUEUEC), r"q_coarse of shape \(6,\)"),
        ((Q, KEY, QUEUE, QC, QUEUEC[:-1]), r"queue_coarse of shape \(10,\)"),
        ((Q, KEY, QUEUE, QC.float(), QUEUEC), "integer q_coarse"),
    ],
)
def test_moco_losses_reject_bad_shapes(args: tuple[Tensor, ...], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        instance_logits(*args[:3], 0.2, *args[3:])
    with pytest.raises(ValueError, match=match):
        grafit_loss(*args, T=0.2)
    with pytest.raises(ValueError, match=match):
        maskcon_loss(*args)


def test_other_validation_errors() -> None:
    with pytest.raises(ValueError, match="both q_coarse and queue_coarse"):
        instance_logits(Q, KEY, QUEUE, 0.2, QC)
    with pytest.raises(ValueError, match="w must lie in"):
        grafit_loss(Q, KEY, QUEUE, QC, QUEUEC, T=0.2, w=1.5)
    with pytest.raises(ValueError, match="temperature"):
        maskcon_loss(Q, KEY, QUEUE, QC, QUEUEC, T=0.0)
    with pytest.raises(ValueError, match="logits Nx"):
        info_nce(torch.randn(N))
    with pytest.raises(ValueError, match="proxies PxD"):
        proxy_loss(Q, torch.randn(4, D + 1), QC, 0.1)
    with pytest.raises(ValueError, match=r"pseudo_labels of shape \(6,\)"):
        proxy_loss(Q, torch.randn(4, D), QC[:-1], 0.1)
    with pytest.raises(ValueError, match=r"lie in \[-1, 4\)"):
        proxy_loss(Q, torch.randn(4, D), torch.full((N,), 4), 0.1)
    with pytest.raises(ValueError, match="q Nx5"):
        CosineClassifier(D, C)(torch.randn(N, D + 1))
    with pytest.raises(ValueError, match="logits NxC and target N"):
        cos_loss(torch.randn(N, C), QC[:-1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_losses_on_cuda_match_cpu() -> None:
    def losses(x: Moco) -> Tensor:
        labels = (x.q_coarse, x.queue_coarse)
        return torch.stack(
            [
                info_nce(instance_logits(x.q, x.k, x.queue, 0.2, *labels)),
                grafit_loss(x.q, x.k, x.queue, *labels, T=0.2),
                maskcon_loss(x.q, x.k, x.queue, *labels),
                proxy_loss(x.q, x.queue[:4], x.q_coarse.clamp(max=3), 0.1),
            ]
        )

    m = moco_inputs(0)
    on_cuda = Moco(m.q.cuda(), m.k.cuda(), m.queue.cuda(), m.q_coarse.cuda(), m.queue_coarse.cuda())
    torch.testing.assert_close(losses(on_cuda).cpu(), losses(m))
