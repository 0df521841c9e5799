"""`coins export --quantize int8`: static QDQ int8, kept only if fine Recall@1 holds.

Calibration images come from the training split, preprocessed exactly as the model's metadata
says (through OnnxEmbedder). Both the float and the int8 model then embed the test split under
ONNX Runtime; the int8 model is written only if its fine R@1 is at most `max_drop` points (1 by
default) below the float model's. Either way the two numbers and the drop are reported.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from coins.retrieval.data import RetrievalDataset, build_dataset
from coins.retrieval.evaluate import metrics_from_embeddings
from coins.retrieval.models import Which
from coins.retrieval.onnx.contract import INPUT, QuantizeReport, model_sha256, set_metadata
from coins.retrieval.onnx.export import DEFAULT_OPSET, ExportReport, export_checkpoint
from coins.retrieval.onnx.runner import OnnxEmbedder

MAX_DROP = 1.0  # points of fine R@1
CALIBRATION_IMAGES = 256
QUANTIZED_OPS = ["Conv", "Gemm", "MatMul"]  # the weights; normalisation and softmax stay float


class QuantizationRejected(ValueError):
    """The int8 model lost more fine R@1 than allowed; nothing was written."""

    def __init__(self, report: QuantizeReport) -> None:
        super().__init__(
            f"int8 model rejected: fine R@1 {report.fine_r1_fp32:.2f} (float) -> "
            f"{report.fine_r1_int8:.2f} (int8), a drop of {report.drop:.2f} points "
            f"> {report.max_drop:g} allowed; nothing written"
        )
        self.report = report


class ImageCalibration(CalibrationDataReader):
    """Batches {"image": float32 [B, C, S, S]} of `indices` of `data`, preprocessed by `model`."""

    def __init__(
        self, model: OnnxEmbedder, data: RetrievalDataset, indices: np.ndarray, batch_size: int
    ) -> None:
        self.batches = self._batches(model, data, indices, batch_size)

    @staticmethod
    def _batches(
        model: OnnxEmbedder, data: RetrievalDataset, indices: np.ndarray, batch_size: int
    ) -> Iterator[dict[str, np.ndarray]]:
        for start in range(0, len(indices), batch_size):
            chunk = indices[start : start + batch_size]
            yield {INPUT: np.stack([model.to_array(data.image(int(i))) for i in chunk])}

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)


def fine_recall_at_1(
    model: OnnxEmbedder, data: RetrievalDataset, batch_size: int = 64, progress: bool = True
) -> float:
    """Fine R@1 in percent of `model` on `data` (leave-one-out, as `coins eval`)."""
    vectors = model.embed_dataset(data, batch_size, progress).vectors
    metrics = metrics_from_embeddings(vectors, data.coarse_labels, data.fine_labels, ks=(1,))
    fine = metrics["fine"]
    if fine is None:
        raise ValueError(f"{data.name}/{data.split}: no fine labels to judge the int8 model by")
    return 100 * fine["recall@1"]


def quantize_int8(
    fp32: str | Path,
    out: str | Path,
    dataset: str,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    calibration_split: str = "train",
    eval_split: str = "test",
    calibration_images: int = CALIBRATION_IMAGES,
    max_drop: float = MAX_DROP,
    seed: int = 0,
    progress: bool = True,
) -> QuantizeReport:
    """Quantize the exported model `fp32` to `out`; raises QuantizationRejected (writing
    nothing) when fine R@1 on `eval_split` drops by more than `max_drop` points."""
    model = OnnxEmbedder(fp32, providers=["CPUExecutionProvider"])
    calib = build_dataset(dataset, calibration_split, root, **(options or {}))
    test = build_dataset(dataset, eval_split, root, **(options or {}))
    indices = np.random.default_rng(seed).permutation(len(calib))[:calibration_images]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        int8 = Path(work) / "int8.onnx"
        _quantize(model.path, int8, ImageCalibration(model, calib, indices, 32), Path(work))
        set_metadata(int8, model.metadata)  # the quantizer does not keep metadata_props
        r1_fp32, r1_int8 = (
            fine_recall_at_1(m, test, progress=progress)
            for m in (model, OnnxEmbedder(int8, providers=model.session.get_providers()))
        )
        report = QuantizeReport(
            r1_fp32,
            r1_int8,
            max_drop,
            calibration={"dataset": dataset, "split": calibration_split, "images": len(indices)},
            evaluation={"dataset": dataset, "split": eval_split, "images": len(test)},
        )
        if not report.kept:
            raise QuantizationRejected(report)
        quantization = {"type": "int8", "format": "QDQ", **dataclasses.asdict(report)}
        set_metadata(int8, model.metadata | {"quantization": quantization})
        os.replace(int8, out)  # same folder: atomic
    return report


def _quantize(fp32: Path, int8: Path, reader: CalibrationDataReader, work: Path) -> None:
    prepared = work / "prepared.onnx"
    # onnx shape inference and graph optimisation; the symbolic pass fails on the exporter's Expand
    quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
    quantize_static(
        str(prepared),
        str(int8),
        reader,
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=QUANTIZED_OPS,
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
    )


def export_int8(
    checkpoint: str | Path,
    out: str | Path,
    which: Which = "backbone",
    opset: int = DEFAULT_OPSET,
    dataset: str | None = None,
    root: str | Path | None = None,
    options: dict[str, Any] | None = None,
    **kwargs: Any,
) -> ExportReport:
    """`coins export --quantize int8`: export the float model (self-checked), then quantize it
    with the checkpoint's own data set unless `dataset` is given."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.") as work:
        fp32 = Path(work) / "fp32.onnx"
        report = export_checkpoint(checkpoint, fp32, which, opset)
        trained_on = OnnxEmbedder(fp32).metadata["source"]["trained_on"]
        if dataset is None:
            dataset, root = trained_on["dataset"], trained_on["root"]
            options = trained_on["dataset_options"] if options is None else options
        if dataset is None:
            raise ValueError(
                f"{checkpoint}: no training data set recorded; pass the data set to quantize with"
            )
        quantized = quantize_int8(fp32, out, dataset, root, options, **kwargs)
    return dataclasses.replace(report, path=out, sha256=model_sha256(out), quantization=quantized)
