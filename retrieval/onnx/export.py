"""`coins export`: a checkpoint as an ONNX model that checks itself before it is kept.

The graph maps a preprocessed image batch `image` float32 [N, C, S, S] to the L2-normalised
`embedding` [N, D] (pooled backbone feature or head output) and, where the method trained a
classifier, its softmax: `coarse_probs` [N, C_coarse] (cos, coins, coins-imp, coinsp) or, for
`opt`, whose classifier was trained on fine labels, `fine_probs` [N, C_fine]. The batch axis is
symbolic. The JSON under metadata key "coins" holds everything a later step needs: the
preprocessing, the EmbedderConfig, the feature, the method, the class names.

The file is written under a temporary name and renamed into place only after the self-check:
`onnx.checker` (full), a symbolic batch axis, and ONNX Runtime against PyTorch at batch sizes 1
and 7 (max abs difference <= 1e-4, per-row cosine >= 0.9999).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from coins.retrieval.atomic import atomic_path
from coins.retrieval.checkpoint import load_checkpoint, load_embedder
from coins.retrieval.models import Embedder, EmbedderConfig, Which, projection_head
from coins.retrieval.onnx.contract import (
    EMBEDDING,
    INPUT,
    Classifier,
    QuantizeReport,
    export_metadata,
    model_sha256,
    set_metadata,
)
from coins.retrieval.pretrained import with_weights_config

DEFAULT_OPSET = 20
MIN_OPSET = 18  # the torch.export-based exporter's lowest
CHECK_BATCHES = (1, 7)
MAX_ABS_DIFF = 1e-4
MIN_COSINE = 0.9999


class ExportError(RuntimeError):
    """The exported model failed its self-check; nothing was written under the real name."""


@dataclass
class ExportReport:
    """What was written and how closely ONNX Runtime reproduced PyTorch."""

    path: Path
    sha256: str
    outputs: dict[str, list[int | str]]  # name -> shape, "batch" symbolic
    max_abs_diff: float  # over every output and checked batch size
    min_cosine: float  # of the embedding rows
    quantization: QuantizeReport | None = None  # with --quantize


class ExportedEmbedder(nn.Module):
    """image -> (embedding, probabilities?) in one graph, the backbone run once."""

    def __init__(self, model: Embedder, which: Which, classifier: Classifier | None) -> None:
        super().__init__()
        if which not in ("backbone", "head"):
            raise ValueError(f"which must be 'backbone' or 'head', got {which!r}")
        self.model = model.eval()
        self.which = which
        self.classifier = classifier
        self.classifier_head: nn.Module | None = None
        if classifier is not None:
            w = F.normalize(classifier.weight.detach().float(), dim=1) / classifier.T  # CxD
            self.register_buffer("w", w)
            if classifier.head is not None:  # built as training built it: the shape of g
                c = model.config
                head = projection_head(model.num_features, c.head_hidden, c.head_dim)
                head.load_state_dict(classifier.head)
                self.classifier_head = head.eval()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.model.features(x)  # BxF
        q = self.model.project(f) if self.classifier or self.which == "head" else f
        embedding = q if self.which == "head" else F.normalize(f, dim=1)  # BxD
        if self.classifier is None:
            return (embedding,)
        if self.classifier_head is not None:  # the classifier's own head, not q
            q = F.normalize(self.classifier_head(f), dim=1)
        return embedding, torch.softmax(q @ self.get_buffer("w").T, dim=1)  # BxC

    @property
    def output_names(self) -> list[str]:
        return [EMBEDDING] + ([self.classifier.output] if self.classifier else [])


def classifier_from_checkpoint(state: dict[str, Any]) -> Classifier | None:
    """The run's classifier, if it saved one, with the labels it classifies ("level")."""
    saved = state.get("classifier")
    if not saved:
        return None
    level = saved.get("level")
    if level is None:
        # Checkpoints written before the level was saved: of their methods only `opt` had a
        # fine classifier (retrieval cannot ask train/methods.py, which builds on retrieval).
        level = "fine" if state.get("method") == "opt" else "coarse"
    if level not in ("coarse", "fine"):
        raise ValueError(f"checkpoint classifier level {level!r}: expected 'coarse' or 'fine'")
    return Classifier(
        saved["weight"], float(saved["T"]), list(saved["classes"]), level, saved.get("head")
    )


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path,
    which: Which = "backbone",
    opset: int = DEFAULT_OPSET,
) -> ExportReport:
    """`coins export` without quantization: the checkpoint's embedder (and classifier)."""
    state = load_checkpoint(checkpoint)
    model = load_embedder(checkpoint)
    train = state.get("train_config") or {}
    source = {
        "checkpoint": str(Path(checkpoint).resolve()),
        "checkpoint_sha256": model_sha256(checkpoint),
        "trained_on": {k: train.get(k) for k in ("dataset", "root", "dataset_options")},
    }
    classifier = classifier_from_checkpoint(state)
    method = state.get("method")
    return export_model(model, out, which, classifier, method, opset, {"source": source})


def export_pretrained(
    pretrained: str,
    out: str | Path,
    backbone: str | None = None,
    opset: int = DEFAULT_OPSET,
) -> ExportReport:
    """`coins export --pretrained`: an untrained pretrained backbone, no checkpoint (its pooled
    feature; the preprocessing of the weights), so its off-the-shelf features can be indexed
    and compared with a trained model's."""
    config = EmbedderConfig(pretrained=pretrained)
    user = {}
    if backbone is not None:
        config.backbone = user["backbone"] = backbone
    resolved = with_weights_config(config.to_dict(), user)
    model = Embedder(EmbedderConfig.from_dict(resolved)).eval()
    source = {"pretrained": pretrained, "trained": False}
    return export_model(model, out, "backbone", None, None, opset, {"source": source})


def export_model(
    model: Embedder,
    out: str | Path,
    which: Which = "backbone",
    classifier: Classifier | None = None,
    method: str | None = None,
    opset: int = DEFAULT_OPSET,
    extra_metadata: dict[str, Any] | None = None,
) -> ExportReport:
    """Export, annotate and self-check `model`; `out` appears only if every check passes."""
    if opset < MIN_OPSET:
        raise ValueError(f"expected opset >= {MIN_OPSET}, got {opset}")
    module = ExportedEmbedder(model, which, classifier).eval()
    meta = export_metadata(model, which, classifier, method, opset, extra_metadata)
    with atomic_path(out) as tmp:
        _torch_export(module, tmp, opset)
        report = check_export(tmp, module)
        set_metadata(tmp, meta)
    return dataclasses.replace(report, path=Path(out), sha256=model_sha256(out))


def _torch_export(module: ExportedEmbedder, path: Path, opset: int) -> None:
    pre = module.model.config.preprocess
    x = torch.zeros(2, pre.in_chans, pre.input_size, pre.input_size)  # batch 2: not specialised
    names = module.output_names
    batch = torch.export.Dim("batch", min=1)
    with tempfile.TemporaryDirectory() as artifacts:  # the exporter's reports, if any
        torch.onnx.export(
            module,
            (x,),
            str(path),
            input_names=[INPUT],
            output_names=names,
            opset_version=opset,
            dynamic_shapes={"x": {0: batch}},
            dynamo=True,
            external_data=False,
            artifacts_dir=artifacts,
            verbose=False,
        )


def check_export(path: Path, module: ExportedEmbedder) -> ExportReport:
    """The self-check; raises ExportError naming what failed and by how much."""
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ExportError(f"exported model fails onnx.checker: {e}") from e
    outputs = _check_batch_symbolic(onnx.load(str(path)), module.output_names)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    max_diff, min_cos = 0.0, 1.0
    for b in CHECK_BATCHES:
        diff, cos = _parity(session, module, b)
        max_diff, min_cos = max(max_diff, diff), min(min_cos, cos)
    if max_diff > MAX_ABS_DIFF or min_cos < MIN_COSINE:
        raise ExportError(
            f"ONNX Runtime disagrees with PyTorch at batch sizes {CHECK_BATCHES}: max abs "
            f"difference {max_diff:.3g} (expected <= {MAX_ABS_DIFF}), min row cosine "
            f"{min_cos:.6f} (expected >= {MIN_COSINE})"
        )
    return ExportReport(path, "", outputs, max_diff, min_cos)


def _check_batch_symbolic(proto: onnx.ModelProto, outputs: list[str]) -> dict[str, list[int | str]]:
    """Input and output names as expected, each with a symbolic first (batch) axis."""
    shapes: dict[str, list[int | str]] = {}
    for value in [*proto.graph.input, *proto.graph.output]:
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = [d.dim_param or d.dim_value for d in dims]
        if not dims or not dims[0].dim_param or dims[0].HasField("dim_value"):
            raise ExportError(f"{value.name}: expected a symbolic batch axis, got {shapes}")
    expected = [INPUT, *outputs]
    if list(shapes) != expected:
        raise ExportError(f"expected inputs and outputs {expected}, got {list(shapes)}")
    del shapes[INPUT]
    return shapes


@torch.no_grad()
def _parity(session: ort.InferenceSession, module: ExportedEmbedder, b: int) -> tuple[float, float]:
    """Max abs difference over all outputs and min row cosine of the embedding, batch b."""
    pre = module.model.config.preprocess
    generator = torch.Generator().manual_seed(b)
    x = torch.randn(b, pre.in_chans, pre.input_size, pre.input_size, generator=generator)
    expected = [t.numpy() for t in module(x)]
    got = session.run(None, {INPUT: x.numpy()})
    diff = max(float(np.abs(e - g).max()) for e, g in zip(expected, got, strict=True))
    e, g = expected[0], got[0]  # BxD
    cos = (e * g).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(g, axis=1) + 1e-12)
    return diff, float(cos.min())
