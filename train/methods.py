"""Every method of the toolkit as one row of a table: what it trains and which labels it reads.

The builder, the loop and the config ask a method what it needs (`METHODS[cfg.method]`), never
test its name, so a new method is one new row here plus whatever loss it brings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Level = Literal["coarse", "fine"]
Peer = Literal["grafit", "maskcon"]


@dataclass(frozen=True)
class Method:
    """What one method trains. Without a key encoder a step sees one view and no queue."""

    name: str
    about: str  # one line: the loss as the paper writes it
    key_encoder: bool  # momentum key encoder, key queue and two views per image (MoCo v2)
    classifier: Level | None  # the cosine classifier's labels (L_cos), or no classifier
    # L_ins negatives only from the query's coarse class; None: the `imp_proxy` option decides
    # (coinsp builds on coins-imp or on coins)
    within_coarse: bool | None = False
    proxies: bool = False  # instance proxies from k-means and their loss L_proxy after epoch M
    peer: Peer | None = None  # a supervised contrastive loss over the queue in place of L_ins
    labels: tuple[Level, ...] = ("coarse",)  # the labels a training step reads

    def __post_init__(self) -> None:
        assert self.key_encoder or not (self.peer or self.proxies), "queue losses need keys"
        assert self.classifier is None or self.classifier in self.labels, "classifier labels"

    @property
    def instance_loss(self) -> bool:
        """L_ins (InfoNCE against the queue), alone or joined by L_cos."""
        return self.key_encoder and self.peer is None

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """The names of the terms a step can train, as `CoInsModel.forward` names them."""
        keys = ("ins",) if self.instance_loss else (self.peer,) if self.peer else ()
        cos = ("cos",) if self.classifier else ()
        return cos + keys + (("proxy",) if self.proxies else ())

    def negatives_within_coarse(self, imp_proxy: bool) -> bool:
        return imp_proxy if self.within_coarse is None else self.within_coarse

    def cos_weight(self, alpha: float) -> float:
        """L_cos counts alpha when it joins a loss over keys, in full when it is the loss."""
        return alpha if self.key_encoder else 1.0


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("cos", "L_cos: a cosine classifier on the coarse labels", False, "coarse"),
        Method("ins", "L_ins: MoCo v2 instance discrimination, no labels", True, None, labels=()),
        Method(
            "coins", "L_ins + alpha L_cos: instances apart within coarse classes", True, "coarse"
        ),
        Method(
            "coins-imp",
            "L_ins with negatives only from the query's coarse class + alpha L_cos",
            True,
            "coarse",
            within_coarse=True,
        ),
        Method(
            "coinsp",
            "coins-imp (or coins) + lambda_P L_proxy to k-means instance proxies after epoch M",
            True,
            "coarse",
            within_coarse=None,
            proxies=True,
        ),
        Method(
            "coins-soft",
            "L_ins with MaskCon's soft in-coarse targets + alpha L_cos",
            True,
            "coarse",
            peer="maskcon",
        ),
        Method(
            "opt",
            "L_cos on the fine labels: the reference upper bound, not a coarse-label method",
            False,
            "fine",
            labels=("fine",),
        ),
        Method(
            "grafit",
            "Grafit: w SupCon(coarse) + (1 - w) L_ins over the queue",
            True,
            None,
            peer="grafit",
        ),
        Method(
            "maskcon",
            "MaskCon: contrastive loss with soft targets from coarse-masked key similarities",
            True,
            None,
            peer="maskcon",
        ),
    )
}
