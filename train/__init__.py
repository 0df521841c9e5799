"""How an embedding is learned: the CoIns losses, the MoCo machinery and the training loop."""

from .config import METHODS, TrainConfig, load_config
from .loop import TrainingDiverged, train

__all__ = ["METHODS", "TrainConfig", "TrainingDiverged", "load_config", "train"]
