"""An untrained pretrained backbone exports and indexes with no checkpoint, and every artifact
names the weights it came from."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import TINY_DATA

from coins.retrieval.atomic import file_sha256
from coins.retrieval.configs import EmbedderConfig, Preprocess
from coins.retrieval.models import Embedder
from coins.retrieval.onnx.export import export_pretrained
from coins.retrieval.onnx.runner import OnnxEmbedder
from coins.retrieval.pretrained import save_backbone


@pytest.mark.slow  # an ONNX export with its self-check, then an index: ~30 s on a loaded CPU
def test_an_untrained_pretrained_backbone_is_exported_and_indexed(tmp_path: Path) -> None:
    from coins.serve.index.build import build_index_from_model

    torch.manual_seed(0)
    pre = Preprocess(16, 3, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), "bicubic")
    config = EmbedderConfig("resnet18", {"channels": [8, 8, 16, 16]}, preprocess=pre)
    weights = save_backbone(Embedder(config), tmp_path / "start.safetensors")
    report = export_pretrained(str(weights), tmp_path / "model.onnx")
    model = OnnxEmbedder(report.path)
    origin = model.metadata["weights_origin"]
    assert origin["pretrained"] == str(weights) and origin["sha256"] == file_sha256(weights)
    assert model.metadata["source"] == {"pretrained": str(weights), "trained": False}
    assert model.preprocess == pre and model.metadata["which"] == "backbone"
    build_index_from_model(
        report.path, tmp_path / "index", dataset="synthetic-patches", split="test",
        dataset_options=TINY_DATA, progress=False, index_key="flat",
    )  # fmt: skip
    manifest = json.loads((tmp_path / "index" / "index.json").read_text())
    assert manifest["source"]["weights_origin"] == origin
