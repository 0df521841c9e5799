"""Pretrained backbones, the timm way, and the record of where their weights came from.

`model.pretrained` is either a timm name with its pretrained tag (`resnet18.a1_in1k`), loaded
by timm's own loader from the Hugging Face hub through its cache, or a local `.safetensors` /
`.pth` file, given to timm as `pretrained_cfg_overlay=dict(file=...)`. Either way timm adapts
the input convolution to the model's channels and drops the classifier, as for its own weights.

The preprocessing (input size, mean, std, interpolation) comes from the weights' pretrained
config: timm's for a name (and, for a foreign file, timm's default config of `model.backbone`),
or the coins config stored in the metadata of a file written by `save_backbone`, which also
names the architecture it fits. Layers that the model replaces after creation (the small-image
stem) keep their fresh initialisation where the file's tensors do not fit them; they are
reported as re-initialised. Any other tensor that does not fit is an error naming it.
"""

from __future__ import annotations

import json
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .atomic import atomic_path, file_sha256
from .configs import INTERPOLATIONS, EmbedderConfig

if TYPE_CHECKING:  # the config side (`coins train` reading options) stays free of torch
    import torch
    from torch import nn

    from .models import Embedder

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
METADATA_KEY = "coins"  # safetensors metadata: the EmbedderConfig the weights were trained as
OFFLINE_HINT = (
    "download it where there is a network (timm.create_model(NAME, pretrained=True) fills the "
    "Hugging Face cache, or save the model's state_dict as .safetensors), then pass the local "
    "file: --pretrained PATH.safetensors --set model.backbone=ARCHITECTURE"
)


class PretrainedError(ValueError):
    """Weights that cannot be loaded; the message names the file or name and what was expected."""


@dataclass
class WeightsOrigin:
    """Where a backbone's initial weights came from: saved in every artifact made from it."""

    pretrained: str  # what was asked for: a timm name.tag or a file path
    file: str  # the file the tensors were read from (for a name: timm's cached copy)
    sha256: str  # of that file
    reinitialised: list[str] = field(default_factory=list)  # tensors left at their fresh init

    def to_dict(self) -> dict[str, Any]:
        return {
            "pretrained": self.pretrained,
            "file": self.file,
            "sha256": self.sha256,
            "reinitialised": list(self.reinitialised),
        }


def is_file(spec: str) -> bool:
    """Whether `pretrained` names a local file (a path or a weights suffix), not a timm name."""
    return spec.endswith(WEIGHT_SUFFIXES) or "/" in spec or Path(spec).exists()


def file_config(path: str | Path) -> dict[str, Any] | None:
    """The coins EmbedderConfig (as a dict) in a safetensors file's metadata, or None."""
    file = Path(path)
    if file.suffix != ".safetensors":
        return None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise PretrainedError(
            f"pretrained file {file}: not a readable safetensors file ({e})"
        ) from e
    raw = meta.get(METADATA_KEY)
    return json.loads(raw) if raw else None


def weights_config(spec: str, backbone: str) -> tuple[dict[str, Any], str]:
    """The pretrained config that `spec` brings (timm's cfg dict: input_size (C, H, W), mean,
    std, interpolation; with "coins": the EmbedderConfig dict of a coins file), and its source.

    Reads no weights and downloads nothing: timm's configs ship with timm.
    """
    if is_file(spec):
        file = _existing_file(spec)
        coins = file_config(file)
        if coins is not None:
            pre = coins["preprocess"]
            size = (pre["in_chans"], pre["input_size"], pre["input_size"])
            cfg = {"input_size": size, "mean": tuple(pre["mean"]), "std": tuple(pre["std"])}
            cfg["interpolation"] = pre.get("interpolation", "bilinear")
            return {**cfg, "coins": coins}, f"the coins config saved in {file}"
        return _timm_cfg(backbone), f"timm's pretrained config of {backbone}"
    return _timm_cfg(spec), f"timm's pretrained config of {spec}"


def _timm_cfg(name: str) -> dict[str, Any]:
    import timm.models

    if not timm.models.is_model(name.split(".")[0]):
        raise PretrainedError(
            f"pretrained {name!r}: not a timm model name; expected a timm name with its tag "
            f"(e.g. resnet18.a1_in1k, see timm.list_pretrained()) or a local "
            f"{'/'.join(WEIGHT_SUFFIXES)} file"
        )
    cfg = timm.models.get_pretrained_cfg(name, allow_unregistered=False)
    if cfg is None:
        raise PretrainedError(
            f"pretrained {name!r}: timm has no pretrained config of that name; expected a name "
            f"from timm.list_pretrained() (e.g. resnet18.a1_in1k) or a local file"
        )
    return cfg.to_dict()


def _existing_file(spec: str) -> Path:
    file = Path(spec)
    if not file.is_file():
        raise PretrainedError(
            f"pretrained file {file} does not exist; expected a local "
            f"{'/'.join(WEIGHT_SUFFIXES)} file or a timm name with its tag (resnet18.a1_in1k)"
        )
    return file


def timm_overlay(config: EmbedderConfig) -> dict[str, Any] | None:
    """`pretrained_cfg_overlay` for timm.create_model: the file, and its own config if coins
    wrote it (so timm adapts channels from the file's, not ImageNet's)."""
    if not config.pretrained or not is_file(config.pretrained):
        return None
    file = _existing_file(config.pretrained)
    overlay: dict[str, Any] = {"file": str(file.resolve())}
    coins = file_config(file)
    if coins is not None:
        pre = coins["preprocess"]
        overlay |= {
            "input_size": (pre["in_chans"], pre["input_size"], pre["input_size"]),
            "mean": tuple(pre["mean"]),
            "std": tuple(pre["std"]),
            "num_classes": 0,  # a coins backbone has no classifier to drop
        }
    return overlay


def load_pretrained(
    backbone: nn.Module, config: EmbedderConfig, replaced: list[str]
) -> WeightsOrigin:
    """Load `config.pretrained` into `backbone` (created by timm with `timm_overlay`) through
    timm's `load_pretrained`; `replaced`: module names coins swapped after creation."""
    import timm.models

    assert config.pretrained is not None
    cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
    if not cfg:
        raise PretrainedError(
            f"model.backbone {config.backbone!r}: timm gave it no pretrained config"
        )
    reinit: list[str] = []

    def fit(state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        return _fit_state(state, model, cfg, replaced, reinit, config.pretrained or "")

    try:
        timm.models.load_pretrained(
            backbone,
            pretrained_cfg=cfg,
            num_classes=0,
            in_chans=config.preprocess.in_chans,
            filter_fn=fit,
            strict=True,
        )
    except PretrainedError:
        raise
    except OSError as e:
        raise _unavailable(config.pretrained, e) from e
    except (RuntimeError, ValueError, EOFError, pickle.UnpicklingError) as e:  # corrupt files
        where = cfg.get("file") or cfg.get("hf_hub_id") or config.pretrained
        raise PretrainedError(f"pretrained weights {where}: not readable ({e})") from e
    file = _source_file(cfg)
    origin = WeightsOrigin(config.pretrained, str(file), file_sha256(file), reinit)
    print(f"coins: pretrained weights {file} (sha256 {origin.sha256[:12]}...)", file=sys.stderr)
    if reinit:  # layers the model replaced (the small-image stem) and the weights do not fit
        print(f"coins: re-initialised, not from the weights: {'; '.join(reinit)}", file=sys.stderr)
    return origin


def _unavailable(spec: str, error: OSError) -> PretrainedError:
    if is_file(spec):
        return PretrainedError(f"pretrained file {spec}: cannot be read ({error})")
    return PretrainedError(
        f"pretrained {spec!r}: timm could not fetch the weights from the Hugging Face hub and "
        f"its cache holds no copy (offline, or no network: {type(error).__name__}); " + OFFLINE_HINT
    )


def _source_file(cfg: dict[str, Any]) -> Path:
    """The file timm read the tensors from: the overlay's, or its hub cache's copy."""
    if cfg.get("file"):
        return Path(cfg["file"])
    from huggingface_hub import try_to_load_from_cache

    hub_id = cfg.get("hf_hub_id")
    for name in (cfg.get("hf_hub_filename"), "model.safetensors", "pytorch_model.bin"):
        if hub_id and name:
            cached = try_to_load_from_cache(hub_id, name)
            if isinstance(cached, str):
                return Path(cached)
    raise PretrainedError(
        f"pretrained {cfg.get('architecture')}: the weights' file is not in the hub cache"
    )


def _fit_state(
    state: dict[str, torch.Tensor],
    model: nn.Module,
    cfg: dict[str, Any],
    replaced: list[str],
    reinit: list[str],
    spec: str,
) -> dict[str, torch.Tensor]:
    """The file's tensors checked against the model before timm adapts and loads them.

    Tensors of replaced modules that do not fit keep the model's own (fresh) values and are
    listed in `reinit`; the input convolution may differ in its channels (timm adapts it); the
    classifier is timm's to drop. Anything else missing, extra or of another shape is an error.
    """
    own = model.state_dict()
    first = cfg.get("first_conv") or ()
    firsts = {f"{c}.weight" for c in ([first] if isinstance(first, str) else first)}
    heads = cfg.get("classifier") or ()
    heads = [heads] if isinstance(heads, str) else list(heads)
    missing, unexpected, differ = [], [], []
    out = dict(state)
    for key, mine in own.items():
        theirs = state.get(key)
        in_replaced = any(key == r or key.startswith(f"{r}.") for r in replaced)
        if theirs is not None and _fits(theirs.shape, mine.shape, key in firsts):
            continue
        if in_replaced or key.endswith("num_batches_tracked"):
            out[key] = mine.clone()
            if in_replaced:
                was = "absent" if theirs is None else tuple(theirs.shape)
                reinit.append(f"{key} (file {was}, model {tuple(mine.shape)})")
        elif theirs is None:
            missing.append(key)
        else:
            differ.append(f"{key}: file {tuple(theirs.shape)}, model {tuple(mine.shape)}")
    for key in state:
        if key in own or any(key.startswith(f"{h}.") for h in heads):
            continue
        if any(key.startswith(f"{r}.") for r in replaced):  # the replaced module's old tensors
            del out[key]
        else:
            unexpected.append(key)
    if missing or unexpected or differ:
        raise PretrainedError(_mismatch(spec, cfg, missing, unexpected, differ))
    return out


def _fits(theirs: torch.Size, mine: torch.Size, input_conv: bool) -> bool:
    """Same shape; the input convolution may differ in its input channels (timm adapts them)."""
    if input_conv and len(theirs) == len(mine) == 4:
        return theirs[0] == mine[0] and theirs[2:] == mine[2:]
    return theirs == mine


def _mismatch(
    spec: str, cfg: dict[str, Any], missing: list[str], unexpected: list[str], differ: list[str]
) -> str:
    def first(items: list[str]) -> str:
        more = f" and {len(items) - 5} more" if len(items) > 5 else ""
        return ", ".join(items[:5]) + more

    parts = [f"{len(differ)} of another shape ({first(differ)})"] if differ else []
    parts += [f"{len(missing)} missing ({first(missing)})"] if missing else []
    parts += [f"{len(unexpected)} not in the model ({first(unexpected)})"] if unexpected else []
    arch = cfg.get("architecture", "the model")
    return (
        f"pretrained weights {spec}: do not fit {arch}: tensors {'; '.join(parts)}; expected "
        f"weights of the same architecture (set model.backbone and model.backbone_kwargs to the "
        f"ones the weights were trained with)"
    )


def with_weights_config(model: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    """The model options with the architecture and preprocessing of its pretrained weights,
    except those the user set (`user`: the model options of the file and flags); printed.

    A timm name fixes the backbone (its tag: the weights); a file written by coins names its
    architecture in its metadata; any other file fits `model.backbone` as set.
    """
    spec = model["pretrained"]
    if model.get("weights"):
        raise ValueError(
            f"model.pretrained {spec!r} and model.weights {model['weights']!r}: expected one "
            "source of initial weights; drop model.weights (--pretrained also takes a file)"
        )
    weights, source = weights_config(spec, model.get("backbone", "resnet18"))
    arch: dict[str, Any] = {}
    if "coins" in weights:
        arch = {k: weights["coins"][k] for k in ("backbone", "backbone_kwargs", "small_stem")}
    elif not is_file(spec):
        arch = {"backbone": spec.split(".")[0], "backbone_kwargs": {}}
        if "backbone" in user and user["backbone"] != arch["backbone"]:
            raise ValueError(
                f"model.backbone {user['backbone']!r} and model.pretrained {spec!r}: the timm "
                f"name's weights are a {arch['backbone']}; drop model.backbone"
            )
    out = {**model, **{k: v for k, v in arch.items() if k not in user}}
    C, S = weights["input_size"][0], weights["input_size"][-1]
    theirs = {
        "input_size": S,
        "in_chans": C,
        "mean": list(weights["mean"]),
        "std": list(weights["std"]),
        "interpolation": weights.get("interpolation"),
    }
    if theirs["interpolation"] not in INTERPOLATIONS:
        theirs["interpolation"] = "bicubic"  # the nearest filter coins resizes with
    mine = user.get("preprocess") or {}
    pre = {**out["preprocess"], **{k: v for k, v in theirs.items() if k not in mine}}
    if len(pre["mean"]) != pre["in_chans"]:  # channels set by the user: one value, or three
        pre["mean"], pre["std"] = (
            [sum(pre[k]) / len(pre[k])] * pre["in_chans"] for k in ("mean", "std")
        )
    out["preprocess"] = pre
    shown = ", ".join(f"{k} {pre[k]}" + (" (yours)" if k in mine else "") for k in theirs)
    print(f"coins: preprocessing from {source}: {shown}", file=sys.stderr)
    if arch:
        print(f"coins: architecture of the weights: {', '.join(f'{k} {out[k]}' for k in arch)}",
              file=sys.stderr)  # fmt: skip
    return out


def save_backbone(model: Embedder, path: str | Path) -> Path:
    """Write the backbone's weights as .safetensors, with the EmbedderConfig in its metadata so
    that `--pretrained FILE` rebuilds the same architecture and preprocessing; atomic."""
    from safetensors.torch import save_file

    file = Path(path)
    if file.suffix != ".safetensors":
        raise ValueError(f"{file}: expected a .safetensors file name")
    config = model.config.to_dict() | {"weights": None, "pretrained": None}
    state = {k: v.detach().cpu().contiguous() for k, v in model.backbone.state_dict().items()}
    with atomic_path(file) as tmp:
        save_file(state, str(tmp), metadata={METADATA_KEY: json.dumps(config)})
    return file


__all__ = [
    "PretrainedError",
    "WeightsOrigin",
    "file_config",
    "is_file",
    "load_pretrained",
    "save_backbone",
    "timm_overlay",
    "weights_config",
    "with_weights_config",
]
