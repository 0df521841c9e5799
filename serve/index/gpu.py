"""FAISS on a GPU where there is one: k-means of IVF training, and a GPU copy for searching.

Used only when the FAISS build has GPU support and sees a device (`gpu_count() > 0`: the `gpu`
extra on a CUDA machine); everything else runs on the CPU, and the output says which was used.

**[design]** Only what FAISS's GPU code supports is moved: the k-means of an IVF's coarse
quantizer (the costly part of training; PQ codebooks and OPQ stay on the CPU), and for
serving, Flat and IVF-Flat / IVF-PQ indexes that fit the device. HNSW and on-disk or
memory-mapped indexes stay on the CPU. GPU indexes take no ID selector: filtered searches
use the CPU index (`SearchIndex.search`).

These paths are covered by tests marked `gpu`, which have not run on a GPU so far (the
machines this was written on have none).
"""

from __future__ import annotations

from typing import Any, Literal

import faiss

from coins.serve.index.tuning import hnsw_of, ivf_of

GpuMode = Literal["auto", "on", "off"]
GPU_MODES: tuple[GpuMode, ...] = ("auto", "on", "off")
GPU_MEMORY_FRACTION = 0.8  # an index is moved when its bytes fit in this much of the device

_faiss: Any = faiss  # the CPU build's stubs lack the GPU names


class GpuError(RuntimeError):
    """A GPU asked for (`on`) that is absent, or an index that cannot move to it."""


def gpu_count() -> int:
    """GPUs FAISS can use: 0 for a CPU-only FAISS build or a machine without a device."""
    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get is not None else 0


def train_on_gpu(index: faiss.Index) -> bool:
    """Give an IVF's k-means a GPU flat index to assign points with; True if it did.
    Call before `index.train`; the trained centroids are the same kind of CPU index."""
    ivf = ivf_of(index)
    if ivf is None or gpu_count() == 0:
        return False
    flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
    ivf.clustering_index = _faiss.index_cpu_to_all_gpus(flat)
    return True


def movable(index: faiss.Index, read_only: str | None) -> str | None:
    """Why `index` stays on the CPU, or None if it can move to a GPU."""
    if read_only is not None:
        return f"read-only: {read_only}"
    if hnsw_of(index) is not None:
        return "FAISS has no GPU HNSW"
    ivf = ivf_of(index)
    if ivf is not None and not isinstance(ivf.invlists, faiss.ArrayInvertedLists):
        return "its inverted lists are not in memory"
    return None


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A copy of `index` on the GPUs (sharded across them when there are several)."""
    try:
        return _faiss.index_cpu_to_all_gpus(index)
    except RuntimeError as e:
        raise GpuError(f"cannot move the index to the GPU: {str(e).splitlines()[-1]}") from e


def choose_gpu(mode: GpuMode, index: faiss.Index, index_bytes: int, read_only: str | None) -> bool:
    """Whether to search on the GPU: `on` requires it (GpuError otherwise), `off` never, `auto`
    when there is a GPU, the index can move and it fits GPU_MEMORY_FRACTION of the device."""
    if mode not in GPU_MODES:
        raise ValueError(f"gpu must be one of {GPU_MODES}, got {mode!r}")
    if mode == "off":
        return False
    reason = "no GPU visible to FAISS" if gpu_count() == 0 else movable(index, read_only)
    if reason is None and mode == "auto" and index_bytes > GPU_MEMORY_FRACTION * _device_bytes():
        reason = f"{index_bytes / 2**30:.1f} GiB does not fit the GPU"
    if reason is not None and mode == "on":
        raise GpuError(f"gpu=on but the index cannot be searched on a GPU: {reason}")
    return reason is None


def _device_bytes() -> int:
    """Memory of GPU 0 in bytes (through torch, installed with the training extra)."""
    import torch

    return int(torch.cuda.get_device_properties(0).total_memory)
