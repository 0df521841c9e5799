"""FAISS on a GPU: training and serving. These need a CUDA device and a GPU FAISS build; they
have not run yet (no machine used so far has one)."""

from __future__ import annotations

import numpy as np
import pytest

from coins.serve.index.build import build_index
from coins.serve.index.gpu import GpuError, choose_gpu, gpu_count, to_gpu, train_on_gpu
from coins.serve.index.store import SearchIndex, new_faiss_index


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_gpu_on_without_a_gpu_is_a_clear_error(tmp_path) -> None:
    if gpu_count() > 0:
        pytest.skip("a GPU is present")
    index, _ = new_faiss_index("IDMap2,Flat", 8)
    with pytest.raises(GpuError, match="no GPU visible"):
        choose_gpu("on", index, 1000, None)
    assert choose_gpu("auto", index, 1000, None) is False
    assert train_on_gpu(new_faiss_index("IVF4,Flat", 8)[0]) is False


needs_gpu = pytest.mark.skipif(gpu_count() == 0, reason="needs a CUDA device and GPU FAISS")


@pytest.mark.gpu
@needs_gpu
def test_gpu_training_and_search_agree_with_the_cpu(tmp_path) -> None:
    rng = np.random.default_rng(0)
    xb = unit(rng.standard_normal((20_000, 32)))
    ids = np.arange(len(xb), dtype=np.int64)
    index, _ = new_faiss_index("IVF64,Flat", 32)
    assert train_on_gpu(index)
    index.train(xb)
    build_index(ids, xb, [{"id": int(i)} for i in ids], tmp_path / "i", "IVF64,Flat")
    cpu = SearchIndex.load(tmp_path / "i")
    gpu = SearchIndex.load(tmp_path / "i")
    assert choose_gpu("on", gpu.index, 10**6, gpu.read_only)
    gpu.use_gpu(to_gpu(gpu.index))
    xq = unit(rng.standard_normal((100, 32)))
    hits = (cpu.search(xq, 10)[1] == gpu.search(xq, 10)[1]).mean()
    assert hits > 0.95  # same lists probed; float order may swap near ties
