"""The model of every method (train/methods.py): q = normalize(head(backbone(x))), plus the
momentum key encoder and queue (MoCo v2), the cosine classifier and the instance proxies as the
method needs them. `forward` returns the step's loss and its named parts.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..retrieval.models import Embedder, projection_head
from .config import TrainConfig
from .distributed import concat_all_gather
from .losses import (
    CosineClassifier,
    cos_loss,
    grafit_loss,
    info_nce,
    instance_logits,
    maskcon_loss,
    proxy_loss,
)
from .methods import METHODS
from .proxies import InstanceProxies
from .queue import KeyQueue
from .shuffle_bn import grouped_forward, shuffled_forward
from .stages import freeze, frozen_stages, keep_eval


class CoInsModel(nn.Module):
    """Query encoder, momentum key encoder, queue, cosine classifier and proxies, as the method
    needs them (train/methods.py).

    Args:
        cfg: the run's config (method, K, m, T, alpha, bn_splits, proxy options).
        num_classes: classes of the classifier (of the method's classifier level).
        train_coarse: coarse label of every training example (for the instance proxies).
    """

    def __init__(self, cfg: TrainConfig, num_classes: int, train_coarse: np.ndarray) -> None:
        super().__init__()
        self.cfg = cfg
        self.method = method = METHODS[cfg.method]
        self.encoder_q = Embedder(cfg.model)
        if cfg.freeze_bn:  # before the key encoder copies it: frozen in both
            for bn in _batch_norms(self.encoder_q.backbone):
                bn.requires_grad_(False)
        # the stem and first stages (freeze_stages): frozen in both encoders, for the whole run
        self.frozen = frozen_stages(self.encoder_q.backbone, cfg.freeze_stages)
        freeze(self.encoder_q.backbone, self.frozen)
        self.backbone_frozen = False  # head warm-up: set by the loop per epoch (`freeze_backbone`)
        dim = cfg.model.head_dim
        self.classifier = (
            CosineClassifier(dim, num_classes, cfg.T) if method.classifier is not None else None
        )
        # the classifier's own projection head (classifier_head "own"): the shape of g, off f
        self.classifier_head: nn.Module | None = None
        if self.classifier is not None and cfg.classifier_head == "own":
            m = cfg.model
            self.classifier_head = projection_head(self.encoder_q.num_features, m.head_hidden, dim)
        # uncertainty weighting: one learned log-variance s per loss term (Kendall et al. 2018)
        self.log_vars: nn.ParameterDict | None = None
        if cfg.loss_weighting == "uncertainty":
            terms = method.loss_terms
            self.log_vars = nn.ParameterDict({n: nn.Parameter(torch.zeros(())) for n in terms})
        self.encoder_k: Embedder | None = None
        self.queue: KeyQueue | None = None
        if method.key_encoder:
            self.encoder_k = copy.deepcopy(self.encoder_q).requires_grad_(False)
            self.queue = KeyQueue(dim, cfg.K)
        self.proxies: InstanceProxies | None = None
        if method.proxies:
            P = cfg.proxies or max(1, len(train_coarse) // 5)
            self.proxies = InstanceProxies(
                train_coarse, dim, P, cfg.proxy_per_coarse, cfg.bank_momentum
            )

    def train(self, mode: bool = True) -> CoInsModel:
        """Train mode, except the backbones' BatchNorm while frozen (freeze_bn, head warm-up)
        and the frozen stages (freeze_stages): they normalise with the statistics they have
        and update none."""
        super().train(mode)
        if not mode:
            return self
        for encoder in (self.encoder_q, self.encoder_k):
            if encoder is None:
                continue
            keep_eval(encoder.backbone, self.frozen)
            if self.cfg.freeze_bn or self.backbone_frozen:
                for bn in _batch_norms(encoder.backbone):
                    bn.eval()
        return self

    def freeze_backbone(self, frozen: bool, set_grad: bool) -> None:
        """Head warm-up: the query backbone stops learning (`set_grad`: by dropping its
        gradients, which spares its backward pass; DDP keeps them and the loop sets its
        learning rate to 0 instead)."""
        self.backbone_frozen = frozen
        if set_grad:
            for name, p in self.encoder_q.backbone.named_parameters():
                bn_frozen = self.cfg.freeze_bn and _in_batch_norm(self.encoder_q.backbone, name)
                stage_frozen = name in self.frozen.params  # frozen for the whole run
                p.requires_grad_(not frozen and not bn_frozen and not stage_frozen)
        self.train(self.training)

    @torch.no_grad()
    def _momentum_update_key_encoder(self) -> None:
        assert self.encoder_k is not None
        m = self.cfg.m
        pairs = zip(self.encoder_k.named_parameters(), self.encoder_q.parameters(), strict=True)
        for (name, p_k), p_q in pairs:
            if name.startswith("backbone.") and name[len("backbone.") :] in self.frozen.params:
                continue  # equal to the query's from the start: m p + (1 - m) p could round
            p_k.mul_(m).add_(p_q.detach(), alpha=1 - m)

    def forward(
        self,
        im_q: torch.Tensor,
        im_k: torch.Tensor | None,
        coarse: torch.Tensor,
        fine: torch.Tensor,
        index: torch.Tensor,
        generator: torch.Generator,
        instance_on: bool = True,
        proxy_on: bool = False,
        cos_scale: float = 1.0,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """One training step's loss and its parts; updates the key encoder, queue and bank."""
        cfg = self.cfg
        f = grouped_forward(self.encoder_q.backbone, im_q, cfg.bn_splits)  # NxF pooled
        q = self.encoder_q.project(f)  # NxD
        parts: dict[str, torch.Tensor] = {}
        if self.classifier is not None:
            target = fine if self.method.classifier == "fine" else coarse
            c = q if self.classifier_head is None else F.normalize(self.classifier_head(f), dim=1)
            parts["cos"] = cos_loss(self.classifier(c), target)
        if self.queue is not None and self.encoder_k is not None:
            assert im_k is not None, f"{cfg.method} needs two views"
            self._momentum_update_key_encoder()
            k = shuffled_forward(self.encoder_k, im_k, cfg.bn_splits, generator)  # NxD
            if instance_on:
                parts.update(self._instance_losses(q, k, coarse))
            k_all, coarse_all, index_all = (concat_all_gather(t) for t in (k, coarse, index))
            self.queue.enqueue(k_all, coarse_all, index_all)
            if self.proxies is not None:
                self.proxies.update(index_all, k_all)
        if self.proxies is not None and proxy_on:
            parts["proxy"] = proxy_loss(
                q, self.proxies.proxies, self.proxies.pseudo[index], cfg.T_p
            )
        loss = sum(self._weighted(name, value, cos_scale) for name, value in parts.items())
        assert isinstance(loss, torch.Tensor), f"{cfg.method}: no loss term is active"
        logged = {name: float(v.detach()) for name, v in parts.items()}
        if self.log_vars is not None:  # the weight each term gets from its learned s
            logged |= {f"w_{n}": float(torch.exp(-s.detach())) for n, s in self.log_vars.items()}
        return loss, logged

    def _instance_losses(
        self, q: torch.Tensor, k: torch.Tensor, coarse: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        assert self.queue is not None
        cfg, queue, queue_coarse = self.cfg, self.queue.queue.clone(), self.queue.coarse.clone()
        if self.method.peer == "grafit":
            return {"grafit": grafit_loss(q, k, queue, coarse, queue_coarse, cfg.T, cfg.peer_w)}
        if self.method.peer == "maskcon":
            loss = maskcon_loss(
                q, k, queue, coarse, queue_coarse, cfg.maskcon_T0, cfg.maskcon_T, cfg.peer_w
            )
            return {"maskcon": loss}
        if self.method.negatives_within_coarse(cfg.imp_proxy):
            logits = instance_logits(q, k, queue, cfg.T, coarse, queue_coarse)  # Nx(1+K)
        else:
            logits = instance_logits(q, k, queue, cfg.T)  # Nx(1+K)
        return {"ins": info_nce(logits)}

    def _weighted(self, part: str, value: torch.Tensor, cos_scale: float) -> torch.Tensor:
        """w * L, or with uncertainty weighting exp(-s) * w * L + s (s: the term's log-variance;
        a term weighted 0 this epoch is left out, so its s does not drift)."""
        w = self._weight(part, cos_scale)
        if self.log_vars is None or w == 0:
            return w * value
        s = self.log_vars[part]
        return torch.exp(-s) * w * value + s

    def _weight(self, part: str, cos_scale: float) -> float:
        if part == "cos":
            return self.method.cos_weight(self.cfg.alpha * cos_scale)
        if part == "proxy":
            return self.cfg.lambda_p
        return 1.0


def _batch_norms(module: nn.Module | None) -> list[nn.Module]:
    if module is None:
        return []
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def _in_batch_norm(module: nn.Module, param: str) -> bool:
    owner = module.get_submodule(param.rpartition(".")[0])
    return isinstance(owner, nn.modules.batchnorm._BatchNorm)
