"""Trainer checkpoints: the reconstruction's `state_dict()` (model, optimizer moments, config, counters, time
range, keyframes with the input poses of refined frames, the pose refiner's estimate) in a torch file.

Files hold tensors and plain containers only (numpy arrays are stored as tagged tensors) and are read with
`torch.load(weights_only=True)`: a crafted file cannot run code, however it reaches `/recon/load`. Written
atomically (temp file in the same folder, fsync, os.replace), so a crash mid-write never leaves a broken file
under the checkpoint's name.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from surg3d_nodes.recon.config import TrainerConfig
from surg3d_nodes.recon.online import OnlineTrainer
from surg3d_nodes.recon.runner import Reconstructor

FORMAT = "surg3d-recon-checkpoint"
VERSION = 4        # 4: no pickled objects (numpy arrays as tagged tensors); 2 and 3 pickled numpy arrays
NDARRAY = "__ndarray__"


def _encode(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, np.ndarray):
        return {NDARRAY: torch.from_numpy(np.ascontiguousarray(x))}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, dict):
        return {k: _encode(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_encode(v) for v in x]
    return x


def _decode(x: Any) -> Any:
    if isinstance(x, dict):
        if set(x) == {NDARRAY} and isinstance(x[NDARRAY], torch.Tensor):
            return x[NDARRAY].numpy()
        return {k: _decode(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_decode(v) for v in x]
    return x


def save_checkpoint(trainer: OnlineTrainer | Reconstructor, path: str | os.PathLike, keyframes: bool = True
                    ) -> Path:
    """Save the full trainer state (an OnlineTrainer's is consistent: taken under its lock)."""
    state = {"format": FORMAT, "version": VERSION, **_encode(trainer.state_dict(keyframes))}
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()
    return out


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The decoded state of a checkpoint file; ValueError naming the file and the problem otherwise (not a
    torch file, a file holding objects other than tensors and containers, another format or version)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for truncated, foreign or object-carrying files
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"checkpoint {p} refused: not a file of tensors and plain containers ({first})") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{p} is not a surg3d reconstruction checkpoint")
    if state.get("version") != VERSION:
        raise ValueError(f"checkpoint {p} has format version {state.get('version')}; this surg3d reads version "
                         f"{VERSION} (train again or use the surg3d release that wrote it)")
    return _decode(state)


def _config_of(state: dict, path: str | os.PathLike, device: str | None,
               trainer: OnlineTrainer | None) -> TrainerConfig:
    try:
        cfg = TrainerConfig.from_dict(state["config"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: bad config: {e}") from e
    if device is not None:
        cfg.device, cfg.backend = device, "auto"
    elif trainer is not None:
        cfg.device, cfg.backend = trainer.cfg.device, trainer.cfg.backend
    # The inpainting model is the host's, not the checkpoint's: a checkpoint names no file to be loaded.
    cfg.inpaint_model, cfg.inpaint_model_output = ((trainer.cfg.inpaint_model, trainer.cfg.inpaint_model_output)
                                                   if trainer is not None else ("", "unit"))
    return cfg


def load_reconstructor(path: str | os.PathLike, device: str | None = None) -> Reconstructor:
    """A new Reconstructor restored from a checkpoint (device and backend: `device`/auto when given, else as
    saved); training can continue from it."""
    state = read_checkpoint(path)
    recon = Reconstructor(_config_of(state, path, device, None))
    try:
        recon.load_state_dict(state)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: {e}") from e
    return recon


def load_checkpoint(path: str | os.PathLike, trainer: OnlineTrainer | None = None,
                    device: str | None = None) -> OnlineTrainer:
    """Restore a checkpoint into `trainer` (its config is replaced by the saved one, except device and
    backend, which are `device`/auto when given, else the trainer's) or into a new trainer; training can
    continue from it. A refused file leaves `trainer` unchanged."""
    state = read_checkpoint(path)
    cfg = _config_of(state, path, device, trainer)
    trainer = trainer if trainer is not None else OnlineTrainer(cfg)
    try:
        trainer.load_state_dict(state, cfg)
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"checkpoint {path}: {e}") from e
    return trainer
