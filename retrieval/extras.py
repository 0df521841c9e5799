"""Which optional extra provides a missing module: FAISS and ONNX Runtime come with `cpu` or `gpu`.

The two builds of each (faiss-cpu / faiss-gpu-cu12, onnxruntime / onnxruntime-gpu) install the
same module, so neither is a base dependency: one of the extras must be chosen, and a missing
module is named with the command that installs it instead of a bare ModuleNotFoundError
(`coins` turns one into that message: cli.py).
"""

from __future__ import annotations

EXTRAS = {  # module -> (CPU package, GPU package)
    "faiss": ("faiss-cpu", "faiss-gpu-cu12"),
    "onnxruntime": ("onnxruntime", "onnxruntime-gpu"),
}


def missing_extra(module: str | None) -> str | None:
    """What to install for a missing top-level `module`, or None if no extra provides it."""
    top = (module or "").split(".")[0]
    if top not in EXTRAS:
        return None
    cpu, gpu = EXTRAS[top]
    return (
        f"the module {top!r} is not installed; install coins with one of its extras: "
        f"pip install 'coins[cpu]' ({cpu}) or, with CUDA 12, pip install 'coins[gpu]' ({gpu})"
    )
