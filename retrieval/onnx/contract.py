"""The contract between `coins export` and every reader of an exported model.

An exported model maps a preprocessed image batch `image` float32 [N, C, S, S] to the
L2-normalised `embedding` [N, D] and, where the method trained a classifier, its softmax
(`coarse_probs` [N, C_coarse], or `fine_probs` [N, C_fine] for `opt`). The JSON under the ONNX
metadata key "coins" holds everything a later step needs: the preprocessing, the EmbedderConfig,
the feature, the method, the class names and, for int8 models, the quantization verdict. The
writer (`export`, `quantize`) and the reader (`runner`) both take their names from here.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnxruntime as ort

from coins import __version__
from coins.retrieval.atomic import file_sha256
from coins.retrieval.configs import Preprocess

if TYPE_CHECKING:  # the writer's types; the reader (runner, `coins serve`) loads without torch
    import torch

    from coins.retrieval.models import Embedder, Which

METADATA_KEY = "coins"  # metadata_props key of the JSON written by `coins export`
METADATA_FORMAT = "coins-onnx"
METADATA_VERSION = 1
INPUT = "image"  # float32 [batch, C, S, S], preprocessed
EMBEDDING = "embedding"  # float32 [batch, D], L2-normalised
COARSE_PROBS = "coarse_probs"  # float32 [batch, C_coarse], softmax of the coarse classifier
FINE_PROBS = "fine_probs"  # the classifier of `opt`, trained on fine labels


class EmbedError(ValueError):
    """A bad model file, input or embedding shard; the message names what was expected."""


@dataclass
class Classifier:
    """The cosine classifier of a run: probabilities softmax(q . normalize(W)^T / T)."""

    weight: torch.Tensor  # CxD, on the head output q
    T: float
    classes: list[str]
    level: str  # "coarse", or "fine" for `opt`
    # the classifier's own projection head (training's classifier_head "own"), as a state dict;
    # None: the classifier reads q, the embedder's head output
    head: dict[str, torch.Tensor] | None = None

    @property
    def output(self) -> str:
        return COARSE_PROBS if self.level == "coarse" else FINE_PROBS


@dataclass
class QuantizeReport:
    """Fine R@1 (percent) of both models on the evaluation split, and the verdict."""

    fine_r1_fp32: float
    fine_r1_int8: float
    max_drop: float
    calibration: dict[str, Any]  # dataset, split, images
    evaluation: dict[str, Any]  # dataset, split, images
    drop: float = field(init=False)  # points: fp32 - int8
    kept: bool = field(init=False)  # drop <= max_drop

    def __post_init__(self) -> None:
        self.drop = self.fine_r1_fp32 - self.fine_r1_int8
        self.kept = self.drop <= self.max_drop

    def summary(self) -> str:
        verdict = "kept" if self.kept else "rejected"
        return (
            f"int8: fine R@1 {self.fine_r1_fp32:.2f} (float) -> {self.fine_r1_int8:.2f} (int8), "
            f"drop {self.drop:.2f} points (allowed {self.max_drop:g}): {verdict}"
        )


def model_sha256(path: str | Path) -> str:
    """Hex SHA-256 of the file's bytes: the model's identity in shards, indexes and servers."""
    return file_sha256(path)


def read_metadata(path: Path, session: ort.InferenceSession) -> dict[str, Any]:
    """The coins metadata of an ONNX model, checked for the fields the runner needs."""
    expected = f"expected an ONNX model written by coins export ({METADATA_KEY!r} metadata)"
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise EmbedError(f"{path}: no {METADATA_KEY!r} metadata; {expected}")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as e:
        raise EmbedError(f"{path}: {METADATA_KEY!r} metadata is not JSON ({e}); {expected}") from e
    if not isinstance(meta, dict) or meta.get("format") != METADATA_FORMAT:
        raise EmbedError(f"{path}: metadata format is not {METADATA_FORMAT!r}; {expected}")
    if meta.get("version") != METADATA_VERSION:
        raise EmbedError(
            f"{path}: metadata version {meta.get('version')!r}, expected {METADATA_VERSION}"
        )
    missing = [k for k in ("preprocess", "embedding_dim", "outputs") if k not in meta]
    if missing:
        raise EmbedError(f"{path}: metadata lacks {missing}; {expected}")
    return meta


def preprocess_from_metadata(meta: dict[str, Any], path: Path) -> Preprocess:
    """The `Preprocess` the model was trained with, from its metadata."""
    pre = meta["preprocess"]
    try:
        interpolation = pre.get("interpolation", "bilinear")  # exports before it was recorded
        size, chans, mean, std = pre["input_size"], pre["in_chans"], pre["mean"], pre["std"]
        return Preprocess(size, chans, tuple(mean), tuple(std), interpolation)
    except (KeyError, TypeError, ValueError) as e:
        raise EmbedError(
            f"{path}: bad preprocess metadata {pre!r}: expected input_size, in_chans, mean, std "
            f"({e})"
        ) from e


def export_metadata(
    model: Embedder,
    which: Which,
    classifier: Classifier | None,
    method: str | None,
    opset: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON stored under metadata key "coins" (read back by OnnxEmbedder)."""
    pre, origin = model.config.preprocess, model.weights_origin
    head = None
    if classifier is not None:
        head = {"level": classifier.level, "output": classifier.output, "T": classifier.T}
        head["classes"] = classifier.classes
    return {
        "format": METADATA_FORMAT,
        "version": METADATA_VERSION,
        "input": INPUT,
        "outputs": [EMBEDDING] + ([classifier.output] if classifier else []),
        "preprocess": dataclasses.asdict(pre)
        | {
            "mode": "RGB" if pre.in_chans == 3 else "L",
            "layout": "NCHW",
            "resize": f"shorter side to input_size ({pre.interpolation}), centre crop",
            "scale": "pixels / 255, then (x - mean) / std per channel",
        },
        "model_config": model.config.to_dict(),
        "which": which,
        "method": method,
        "embedding_dim": model.embedding_dim(which),
        "coarse_classes": classifier.classes
        if classifier and classifier.level == "coarse"
        else None,
        "classifier": head,
        # where the backbone's initial weights came from (name or file, sha256), or None
        "weights_origin": None if origin is None else origin.to_dict(),
        "coins_version": __version__,
        "opset": opset,
        **(extra or {}),
    }


def set_metadata(path: Path, meta: dict[str, Any]) -> None:
    """Replace the "coins" metadata entry of the model at `path`, in place."""
    import onnx  # the writer's alone: readers (`coins serve`) spare its ~16 MiB

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key != METADATA_KEY]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta))
    proto.producer_name, proto.producer_version = "coins", __version__
    onnx.save(proto, str(path))
