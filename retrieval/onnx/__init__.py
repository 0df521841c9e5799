"""The ONNX contract of an exported embedder: its writer (export, quantize), its reader (runner)."""
