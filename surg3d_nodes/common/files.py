"""Loading user-supplied files with errors that name the file and the problem."""

from __future__ import annotations

from pathlib import Path

import yaml


def read_yaml_mapping(path: str | Path, error: type[ValueError] = ValueError, expected: str = "a mapping") -> dict:
    """The top-level mapping of a YAML file; `error` (a ValueError subclass) names the file when it is missing,
    malformed or not a mapping (`expected` says what it should hold)."""
    p = Path(path)
    if not p.is_file():
        raise error(f"{p}: file not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise error(f"{p}: malformed YAML: {e}") from None
    if not isinstance(data, dict):
        raise error(f"{p}: expected {expected}, found {type(data).__name__}")
    return data


def onnx_session(path: str | Path, providers: list[str] | None, error: type[Exception], what: str):
    """An onnxruntime InferenceSession on CUDA when this onnxruntime has it, else CPU (unless `providers`
    names others); an unreadable model raises `error` naming `what` and the file."""
    import onnxruntime as ort

    if providers is None:
        avail = ort.get_available_providers()
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in avail]
    try:
        return ort.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises several unrelated types for a bad file
        raise error(f"cannot load {what} {path}: {exc}") from exc
