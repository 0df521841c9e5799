"""Checkpoints carry the model config: every later step rebuilds the embedder from the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_path
from .models import Embedder, EmbedderConfig

FORMAT = "coins-checkpoint"
VERSION = 1


def save_checkpoint(path: str | Path, model: Embedder, **extra: Any) -> None:
    """Write `model` (weights and config) and any `extra` entries atomically."""
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, with a clear error for anything else."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for corrupt files
        raise ValueError(f"checkpoint {file}: not a readable torch file ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {file}: expected a {FORMAT} file written by coins train")
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {file}: version {state.get('version')}, expected {VERSION}")
    return state


def load_embedder(path: str | Path) -> Embedder:
    """Rebuild the embedder stored in a checkpoint, in eval mode on the CPU."""
    state = load_checkpoint(path)
    # The trained weights replace any initial backbone weights: don't require that file here.
    config = dataclasses.replace(EmbedderConfig.from_dict(state["model_config"]), weights=None)
    model = Embedder(config)
    model.load_state_dict(state["model"])
    return model.eval()
