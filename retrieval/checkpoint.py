"""Checkpoints carry the model config: every later step rebuilds the embedder from the file.

A checkpoint holds only tensors and plain types (dict, list, tuple, str, int, float, bool,
None), and is read with `torch.load(weights_only=True)`: unpickling arbitrary objects can run
arbitrary code, so a file with anything else in it is refused, never executed.
"""

from __future__ import annotations

import dataclasses
import pickle
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch

from .atomic import atomic_path
from .models import Embedder, EmbedderConfig
from .pretrained import WeightsOrigin

FORMAT = "coins-checkpoint"
VERSION = 1

# Leaves torch's weights-only unpickler accepts as they are (exact types: a subclass such as
# numpy.float64 of float pickles as its own class and would be refused).
_PLAIN = (type(None), bool, int, float, str, torch.Size, torch.dtype, torch.device)

_CORRUPT = ("Unsupported operand", "String is too long")  # torch/_weights_only_unpickler.py

CONVERT_HELP = """\
Only if you trust where the file came from, convert it once in Python:
    from coins.retrieval.checkpoint import convert_checkpoint
    convert_checkpoint("old.pt", "new.pt")  # unpickles old.pt: this runs any code it holds"""


def save_checkpoint(path: str | Path, model: Embedder, **extra: Any) -> None:
    """Write `model` (weights, config, where its initial weights came from) and any `extra`
    entries atomically."""
    origin = model.weights_origin
    state = {
        "format": FORMAT,
        "version": VERSION,
        "model_config": model.config.to_dict(),
        "model": model.state_dict(),
        "weights_origin": None if origin is None else origin.to_dict(),
        **extra,
    }
    _write(path, state)


def _write(path: str | Path, state: dict[str, Any]) -> None:
    # Converted before writing, so that coins never writes a file its own loader refuses.
    plain = _plain(state, "checkpoint")
    with atomic_path(path) as tmp:
        torch.save(plain, tmp)


def _plain(obj: Any, where: str) -> Any:
    """`obj` with paths and numpy scalars as plain values; TypeError for anything else."""
    if isinstance(obj, torch.Tensor) or type(obj) in _PLAIN:
        return obj
    if isinstance(obj, PurePath):
        return str(obj)
    if isinstance(obj, np.generic):
        return obj.item()
    if type(obj) in (dict, OrderedDict):
        for key in obj:
            if type(key) not in (str, int):
                raise TypeError(f"{where}: key {key!r} is not a str or int")
        items = {k: _plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
        if all(items[k] is v for k, v in obj.items()):
            return obj  # unchanged: keeps a state_dict's OrderedDict and its _metadata
        return type(obj)(items)
    if type(obj) in (list, tuple):
        values = [_plain(v, f"{where}[{i}]") for i, v in enumerate(obj)]
        return type(obj)(values)
    raise TypeError(f"{where}: {type(obj).__qualname__} is not a tensor or plain type")


def load_checkpoint(path: str | Path, require: Iterable[str] = ()) -> dict[str, Any]:
    """Read a checkpoint written by `save_checkpoint`, with a clear error for anything else.

    `require`: keys the caller reads, dotted for nested ones ("train_state.model"); a missing
    one is a ValueError naming it.
    """
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"checkpoint {file} does not exist")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # The weights-only unpickler refuses objects with UnpicklingError, and corrupt bytes
        # with the same type: only its messages for the latter tell them apart.
        if any(reason in str(e) for reason in _CORRUPT):
            raise ValueError(
                f"checkpoint {file}: not a readable torch file ({_last_line(e)})"
            ) from None
        raise ValueError(_unsafe_message(file)) from None
    except Exception as e:  # torch raises several types for corrupt files
        raise ValueError(f"checkpoint {file}: not a readable torch file ({e})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {file}: expected a {FORMAT} file written by coins train")
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {file}: version {state.get('version')}, expected {VERSION}")
    missing = [key for key in require if not _has(state, key)]
    if missing:
        raise ValueError(f"checkpoint {file}: missing {', '.join(missing)}")
    return state


def _has(state: dict[str, Any], dotted: str) -> bool:
    node: Any = state
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _unsafe_message(file: Path) -> str:
    return (
        f"checkpoint {file} contains objects other than tensors and plain types; coins refuses "
        f"to unpickle it because loading it could run code. {CONVERT_HELP}"
    )


def _last_line(error: Exception) -> str:
    # torch's weights-only messages run to a page of advice about weights_only=False; the
    # last non-empty line before its docs link is the actual reason.
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    reasons = [line for line in lines if not line.startswith("Check the documentation")]
    return reasons[-1] if reasons else type(error).__name__


def load_embedder(path: str | Path) -> Embedder:
    """Rebuild the embedder stored in a checkpoint, in eval mode on the CPU."""
    return embedder_from_state(load_checkpoint(path, require=("model_config", "model")), path)


def embedder_from_state(state: dict[str, Any], path: str | Path) -> Embedder:
    """The embedder of a checkpoint already read (`load_checkpoint` of `path`)."""
    missing = [key for key in ("model_config", "model") if key not in state]
    if missing:
        raise ValueError(f"checkpoint {path}: missing {', '.join(missing)}")
    # The trained weights replace any initial backbone weights: don't require that file here,
    # but keep the config that names it (exports and indexes record where training started).
    saved = EmbedderConfig.from_dict(state["model_config"])
    model = Embedder(dataclasses.replace(saved, weights=None, pretrained=None))
    try:
        model.load_state_dict(state["model"])
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ValueError(f"checkpoint {path}: weights do not fit its model_config ({e})") from e
    model.config = saved
    origin = state.get("weights_origin")  # absent from checkpoints written before it was saved
    model.weights_origin = None if origin is None else WeightsOrigin(**origin)
    return model.eval()


def convert_checkpoint(src: str | Path, dst: str | Path) -> None:
    """Re-save a TRUSTED old checkpoint `src` as `dst`, which `load_checkpoint` accepts.

    This unpickles `src` with weights_only=False, which runs any code the file holds: call it
    only on files you made yourself or got from a source you trust.
    """
    state = torch.load(Path(src), map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"checkpoint {src}: expected a {FORMAT} file written by coins train")
    _write(dst, state)
    load_checkpoint(dst)  # proof that the converted file loads safely


__all__ = [
    "convert_checkpoint",
    "embedder_from_state",
    "load_checkpoint",
    "load_embedder",
    "save_checkpoint",
]
