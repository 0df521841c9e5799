"""The embedding runner: an exported ONNX model, images in, L2-normalised vectors out.

The preprocessing comes only from the model's own metadata (written by `coins export`), so
training, indexing and serving cannot disagree on it. Galleries (a data set split, a folder of
images, a CSV manifest) are enumerated once, with stable ids and metadata rows, by
`gallery_source`; `embed_items` embeds one in memory (`coins index MODEL`), and
`retrieval/embed_job.py` streams one into shards (`coins embed`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnxruntime as ort
from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors
from PIL import Image

from coins.retrieval.data import DatasetError
from coins.retrieval.data.images import load_image
from coins.retrieval.data.preprocess import EvalPreprocess
from coins.retrieval.gallery import Gallery, gallery_source, metadata_rows
from coins.retrieval.onnx.contract import (
    COARSE_PROBS,
    EMBEDDING,
    FINE_PROBS,
    INPUT,
    EmbedError,
    model_sha256,
    preprocess_from_metadata,
    read_metadata,
)
from coins.retrieval.progress import Progress

PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")

_ORT_ERRORS = (
    ort_errors.Fail,
    ort_errors.InvalidArgument,
    ort_errors.InvalidGraph,
    ort_errors.InvalidProtobuf,
    ort_errors.NoSuchFile,
    ort_errors.NotImplemented,
    ort_errors.RuntimeException,
)


__all__ = [
    "EmbedError",
    "EmbedResult",
    "Gallery",
    "GalleryEmbedding",
    "OnnxEmbedder",
    "embed_items",
    "gallery_source",
    "metadata_rows",
    "model_sha256",
]


class ImageSource(Protocol):
    """Anything with images by position: a RetrievalDataset, a Gallery."""

    def __len__(self) -> int: ...

    def image(self, index: int) -> Image.Image: ...


@dataclass
class EmbedResult:
    """Embeddings of a batch; `rows` are the input positions the vectors belong to."""

    vectors: np.ndarray  # float32 [N, D], L2-normalised
    coarse_probs: np.ndarray | None = None  # float32 [N, C]; None without a coarse head
    rows: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # int64 [N]
    fine_probs: np.ndarray | None = None  # float32 [N, F]; only `opt` models have it

    def __post_init__(self) -> None:
        n = len(self.vectors)
        if len(self.rows) == 0 and n:
            self.rows = np.arange(n, dtype=np.int64)  # default: every input, in order
        assert self.vectors.ndim == 2 and self.rows.shape == (n,), "vectors [N, D], rows [N]"

    def __len__(self) -> int:
        return len(self.vectors)


def select_providers(requested: Sequence[str] | None) -> list[str]:
    """CUDA when this onnxruntime has it, else CPU; requested ones must all be available."""
    available = ort.get_available_providers()
    if requested is None:
        return [p for p in PREFERRED_PROVIDERS if p in available]
    missing = [p for p in requested if p not in available]
    if missing:
        raise EmbedError(f"providers {missing} not available; this onnxruntime has {available}")
    return list(requested)


class OnnxEmbedder:
    """An exported coins model under ONNX Runtime, with the preprocessing from its metadata.

    Args:
        model_path: the .onnx file written by `coins export`.
        threads: intra-op threads (None: onnxruntime's default, one per core).
        providers: execution providers (None: CUDA when available, CPU otherwise).
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        threads: int | None = None,
        providers: Sequence[str] | None = None,
    ) -> None:
        self.path = Path(model_path)
        if not self.path.is_file():
            raise EmbedError(f"model {self.path} does not exist: expected a coins .onnx file")
        self.sha256 = model_sha256(self.path)
        self.session = _session(self.path, threads, select_providers(providers))
        self.metadata = read_metadata(self.path, self.session)
        self.preprocess = preprocess_from_metadata(self.metadata, self.path)
        self.dim = int(self.metadata["embedding_dim"])
        self.which = str(self.metadata.get("which", "backbone"))
        head = self.metadata.get("classifier") or {}
        level = head.get("level")
        self.coarse_classes: list[str] | None = head["classes"] if level == "coarse" else None
        self.fine_classes: list[str] | None = head["classes"] if level == "fine" else None
        self._outputs = [o.name for o in self.session.get_outputs()]
        self._check_signature()
        self._transform = EvalPreprocess(self.preprocess)  # = eval_transform, without torch

    def _check_signature(self) -> None:
        pre, inputs = self.preprocess, self.session.get_inputs()
        want = [pre.in_chans, pre.input_size, pre.input_size]
        if [i.name for i in inputs] != [INPUT] or list(inputs[0].shape[1:]) != want:
            got = [(i.name, i.shape) for i in inputs]
            raise EmbedError(
                f"{self.path}: expected one input {INPUT!r} [batch, {want}], got {got}"
            )
        shape = self.session.get_outputs()[0].shape
        if self._outputs[0] != EMBEDDING or shape[-1] != self.dim:
            raise EmbedError(
                f"{self.path}: expected first output {EMBEDDING!r} [batch, {self.dim}], "
                f"got {self._outputs[0]!r} {shape}"
            )
        head = {COARSE_PROBS: self.coarse_classes, FINE_PROBS: self.fine_classes}
        for name, classes in head.items():
            if (classes is not None) != (name in self._outputs):
                raise EmbedError(f"{self.path}: metadata and outputs disagree on {name!r}")

    @property
    def provider(self) -> str:
        """The execution provider running the model (CUDA when chosen, else CPU)."""
        return str(self.session.get_providers()[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, S, S) of one preprocessed image."""
        pre = self.preprocess
        return (pre.in_chans, pre.input_size, pre.input_size)

    def embed_arrays(self, x: np.ndarray) -> EmbedResult:
        """Embed preprocessed images, float32 [N, C, S, S]."""
        want = self.input_shape
        if not isinstance(x, np.ndarray) or x.dtype != np.float32 or x.shape[1:] != want:
            got = (type(x).__name__, getattr(x, "dtype", None), getattr(x, "shape", None))
            raise EmbedError(f"expected float32 images [N, {', '.join(map(str, want))}], got {got}")
        if len(x) == 0:
            return EmbedResult(np.zeros((0, self.dim), np.float32), *self._empty_probs())
        out = dict(zip(self._outputs, self.session.run(None, {INPUT: x}), strict=True))
        return EmbedResult(
            vectors=out[EMBEDDING],
            coarse_probs=out.get(COARSE_PROBS),
            fine_probs=out.get(FINE_PROBS),
        )

    def _empty_probs(self) -> tuple[np.ndarray | None, np.ndarray, np.ndarray | None]:
        def empty(classes: list[str] | None) -> np.ndarray | None:
            return None if classes is None else np.zeros((0, len(classes)), np.float32)

        return empty(self.coarse_classes), np.empty(0, np.int64), empty(self.fine_classes)

    def to_array(self, image: Image.Image) -> np.ndarray:
        """One image preprocessed as the model expects, float32 [C, S, S]."""
        if not isinstance(image, Image.Image):
            raise EmbedError(f"expected a PIL image, got {type(image).__name__}")
        return self._transform(image)

    def embed_images(self, images: Sequence[Image.Image]) -> EmbedResult:
        """Embed one batch of PIL images (any size and mode)."""
        x = np.empty((len(images), *self.input_shape), np.float32)
        for i, image in enumerate(images):
            x[i] = self.to_array(image)
        return self.embed_arrays(x)

    def embed_dataset(
        self, dataset: ImageSource, batch_size: int = 64, progress: bool = True
    ) -> EmbedResult:
        """Every item of `dataset`, in order; an unreadable image raises EmbedError."""
        result, _ = self._embed_loaded(dataset.image, len(dataset), batch_size, True, progress)
        return result

    def embed_files(
        self,
        paths: Sequence[str | Path],
        batch_size: int = 64,
        strict: bool = False,
        progress: bool = True,
    ) -> tuple[EmbedResult, list[tuple[Path, str]]]:
        """Embed image files; undecodable ones are skipped and returned as (path, reason),
        or raise EmbedError when `strict`. `result.rows` are the positions of the good files."""
        files = [Path(p) for p in paths]
        result, failed = self._embed_loaded(
            lambda i: load_image(files[i]), len(files), batch_size, strict, progress
        )
        return result, [(files[i], reason) for i, reason in failed]

    def _embed_loaded(
        self,
        load: Callable[[int], Image.Image],
        n: int,
        batch_size: int,
        strict: bool,
        progress: bool,
    ) -> tuple[EmbedResult, list[tuple[int, str]]]:
        """Load, preprocess and embed items 0..n-1 in batches; failures as (position, reason)."""
        if batch_size < 1:
            raise EmbedError(f"expected batch_size >= 1, got {batch_size}")
        parts, failed = [], []
        report = Progress("embed", n, enabled=progress)  # a bar, or a line every 10 s
        for start in range(0, n, batch_size):
            batch, rows = [], []
            for i in range(start, min(start + batch_size, n)):
                try:
                    batch.append(self.to_array(load(i)))
                except DatasetError as e:  # an undecodable image names itself
                    if strict:
                        raise EmbedError(str(e)) from e
                    failed.append((i, str(e)))
                    continue
                rows.append(i)
            if batch:
                part = self.embed_arrays(np.stack(batch))
                part.rows = np.array(rows, dtype=np.int64)
                parts.append(part)
            report.update(min(start + batch_size, n) - start)
        report.close()
        return _concat(parts, self), failed


@dataclass
class GalleryEmbedding:
    """A gallery's embeddings: the good items' ids, vectors and rows, and what was skipped."""

    ids: np.ndarray  # int64 [n]
    vectors: np.ndarray  # float32 [n, D], L2-normalised
    rows: list[dict[str, Any]]  # [n] metadata rows, in the order of ids
    skipped: list[dict[str, Any]]  # {"id", "path", "reason"} of each undecodable file


def embed_items(
    model: OnnxEmbedder,
    gallery: Gallery,
    batch_size: int = 64,
    strict: bool = False,
    progress: bool = True,
) -> GalleryEmbedding:
    """Embed every item of `gallery` in memory; undecodable files are skipped and listed, or
    raise EmbedError when `strict`."""
    if gallery.paths is not None:
        result, failed = model.embed_files(gallery.paths, batch_size, strict, progress)
    else:
        result, failed = model.embed_dataset(gallery, batch_size, progress), []
    failed_rows = np.setdiff1d(np.arange(len(gallery)), result.rows)  # ascending, as `failed`
    skipped = [
        {"id": int(gallery.ids[i]), "path": str(p), "reason": reason}
        for i, (p, reason) in zip(failed_rows, failed, strict=True)
    ]
    rows = [gallery.rows[i] for i in result.rows]
    return GalleryEmbedding(gallery.ids[result.rows], result.vectors, rows, skipped)


def _session(path: Path, threads: int | None, providers: list[str]) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no graph-optimisation chatter
    if threads is not None:
        if threads < 1:
            raise EmbedError(f"expected threads >= 1, got {threads}")
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except _ORT_ERRORS as e:
        raise EmbedError(f"{path}: not a loadable ONNX model ({e})") from e


def _concat(parts: list[EmbedResult], model: OnnxEmbedder) -> EmbedResult:
    if not parts:
        return model.embed_arrays(np.zeros((0, *model.input_shape), np.float32))

    def cat(arrays: list[np.ndarray | None]) -> np.ndarray | None:
        return None if arrays[0] is None else np.concatenate(arrays)  # type: ignore[arg-type]

    return EmbedResult(
        vectors=np.concatenate([p.vectors for p in parts]),
        coarse_probs=cat([p.coarse_probs for p in parts]),
        rows=np.concatenate([p.rows for p in parts]),
        fine_probs=cat([p.fine_probs for p in parts]),
    )
