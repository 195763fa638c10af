"""Tiny ONNX models built by the tests (no weights are downloaded): saving one checked."""

from __future__ import annotations

from pathlib import Path

import onnx


def save_onnx(model: onnx.ModelProto, path: Path, opset: int = 18) -> Path:
    """Check `model` at `opset` (IR version 8, what the wheels' onnxruntime reads) and write it to `path`."""
    model.opset_import[0].version = opset
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path
