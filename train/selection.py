"""Choose among trained models without fine labels: retrieve another view of the same image.

The score ("view R@1 within coarse class"): every validation image is augmented twice, with
the training augmentation under fixed seeds, so every model sees the same pairs; view A of
image i queries the B views of the images of its coarse class, and it is a hit when its
nearest one is its own B view. This is augmentation-based instance retrieval, the pretext
task of instance discrimination (Wu et al., CVPR 2018) and of MoCo (He et al., CVPR 2020)
measured on held-out images, restricted to the coarse class because telling apart images that
the coarse label lumps together is exactly what fine-grained search needs; a model that keeps
only coarse information cannot find the partner. It needs images and coarse labels only.

Where some validation rows carry a fine label, fine R@1 among those rows is the better
criterion and `select_by="auto"` uses it; the record says which criterion chose.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..retrieval.configs import Augment
from ..retrieval.data import RetrievalDataset, TransformedDataset, train_transform
from ..retrieval.metrics import recall_at_k
from ..retrieval.models import Embedder, Which

SELECT_BY = ("auto", "view", "fine")
VIEW_SEEDS = (0, 1)  # the two augmentation passes; fixed so every model sees the same pairs


def view_recall_at_1(xa: np.ndarray, xb: np.ndarray, coarse: np.ndarray) -> float:
    """Fraction of items i whose nearest B view among their coarse class is their own.

    xa, xb: [N, D] L2-normalised embeddings of two views of the same N images; coarse: [N].
    Classes with one item are left out (their only candidate is their own view).
    """
    assert xa.shape == xb.shape and xa.shape[0] == coarse.shape[0], "one row per image"
    hits, queries = 0, 0
    for c in np.unique(coarse):
        members = np.flatnonzero(coarse == c)  # [n_c]
        if len(members) < 2:
            continue
        S = xa[members] @ xb[members].T  # [n_c, n_c] cosine similarity A -> B
        hits += int((S.argmax(axis=1) == np.arange(len(members))).sum())
        queries += len(members)
    if queries == 0:
        raise ValueError("view R@1 needs a coarse class with at least 2 images; found none")
    return hits / queries


def fine_recall_at_1(x: np.ndarray, fine: np.ndarray | None) -> float | None:
    """Fine R@1 among the rows with a fine label (the others are neither queries nor gallery);
    None where no fine class has two labelled rows."""
    if fine is None:
        return None
    labelled = fine >= 0
    _, sizes = np.unique(fine[labelled], return_counts=True)
    if not (sizes >= 2).any():
        return None
    return recall_at_k(x[labelled], fine[labelled], ks=(1,))[1]


@torch.no_grad()
def embed_views(
    model: Embedder,
    dataset: RetrievalDataset,
    augment: Augment,
    seed: int,
    which: Which = "backbone",
    batch_size: int = 256,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """[N, D] embeddings of one training-augmented view per item, the view fixed by `seed`.

    The caller's random state is left as it was (training resumes exactly after an evaluation).
    """
    was_training = model.training
    model.eval().to(device)
    transform = train_transform(model.config.preprocess, augment)
    loader = DataLoader(TransformedDataset(dataset, transform), batch_size=batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # workers=0: the views are drawn here, in order
        chunks = [model.embed(images.to(device), which).float().cpu() for images, *_ in loader]
    model.train(was_training)
    return torch.cat(chunks).numpy()


def selection_score(
    model: Embedder,
    dataset: RetrievalDataset,
    augment: Augment,
    embeddings: np.ndarray | None = None,
    select_by: str = "auto",
    which: Which = "backbone",
    device: str | torch.device = "cpu",
) -> dict[str, Any]:
    """The selection record of `model` on `dataset` (a validation split); higher is better.

    `embeddings`: the evaluation embeddings [N, D] of `dataset` if already computed (for fine
    R@1). `select_by`: "view" (label-free), "fine" (fine R@1 on labelled rows, which must
    exist) or "auto" (fine where possible). The record always holds view R@1.
    """
    if select_by not in SELECT_BY:
        raise ValueError(f"select_by {select_by!r}: expected one of {', '.join(SELECT_BY)}")
    xa, xb = (embed_views(model, dataset, augment, s, which, device=device) for s in VIEW_SEEDS)
    record: dict[str, Any] = {
        "split": dataset.split,
        "images": len(dataset),
        "view_recall@1": view_recall_at_1(xa, xb, dataset.coarse_labels),
    }
    fine = None
    if select_by != "view" and embeddings is not None:
        fine = fine_recall_at_1(embeddings, dataset.fine_labels)
    if select_by == "fine" and fine is None:
        raise ValueError(
            f"select_by fine: the {dataset.split} split has no fine class with 2 labelled "
            "rows; use select_by view (label-free) or label more rows"
        )
    labelled = 0 if dataset.fine_labels is None else int((dataset.fine_labels >= 0).sum())
    if fine is not None:
        record.update({"fine_recall@1": fine, "fine_labelled": labelled})
    record["criterion"] = "view_recall@1" if fine is None else "fine_recall@1"
    record["score"] = record[record["criterion"]]
    return record
