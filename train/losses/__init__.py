"""The losses of CoIns and its peers, one module each; every q, k, queue row is L2-normalised."""

from .cos import CosineClassifier, cos_loss
from .grafit import grafit_loss, grafit_target
from .ins import check_moco, info_nce, instance_logits, same_coarse
from .maskcon import maskcon_loss, maskcon_target
from .proxy import proxy_loss

__all__ = [
    "CosineClassifier",
    "check_moco",
    "cos_loss",
    "grafit_loss",
    "grafit_target",
    "info_nce",
    "instance_logits",
    "maskcon_loss",
    "maskcon_target",
    "proxy_loss",
    "same_coarse",
]
