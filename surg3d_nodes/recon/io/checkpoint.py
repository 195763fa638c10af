"""Trainer checkpoints: model, optimizer moments, config, counters, time range, keyframes (with the input
poses of refined frames) and the pose refiner's estimate.

Written atomically (temp file in the same folder, fsync, os.replace), so a crash mid-write never leaves a
broken file under the checkpoint's name; `load_checkpoint` restores a trainer that continues training.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from surg3d_nodes.recon.render import RenderCamera
from surg3d_nodes.recon.trainer import OnlineTrainer, TrainerConfig, _Keyframe

FORMAT = "surg3d-recon-checkpoint"
VERSION = 3
READS = (2, 3)     # version 2 lacks the pose refiner state: it loads with none (refinement starts over)


def _cpu(x):
    if isinstance(x, torch.Tensor):
        return x.detach().cpu()
    if isinstance(x, dict):
        return {k: _cpu(v) for k, v in x.items()}
    return x


def save_checkpoint(trainer: OnlineTrainer, path: str | os.PathLike, keyframes: bool = True) -> Path:
    """Save the full trainer state (consistent: taken under the trainer's lock)."""
    with trainer._lock:
        m = trainer.model
        state = {
            "format": FORMAT, "version": VERSION,
            "config": asdict(trainer.cfg),
            "params": _cpu(m.params), "knot_times": list(m.knot_times),
            "optimizer": _cpu(trainer.optimizer.state_dict()) if trainer.optimizer else None,
            "clock": trainer.clock.state_dict(), "live_stamp_ns": trainer.live_stamp_ns,
            "last_pose": trainer._last_pose, "scene_depth": trainer.scene_depth,
            "pose_refiner": trainer._pose_refiner.state_dict(),
            "stats": asdict(trainer.get_stats()),
            "keyframes": [{
                "stamp_ns": k.stamp_ns, "t": k.t, "pose": k.pose, "K": k.K, "has_depth": k.has_depth,
                "rgb": (k.rgb * 255 + 0.5).to(torch.uint8).cpu(), "depth": k.depth.cpu(),
                "tissue": (k.tissue > 0.5).cpu(), "width": k.camera.width, "height": k.camera.height,
                "raw_pose": k.raw_pose,
            } for k in trainer.keyframes] if keyframes else [],
        }
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


def load_checkpoint(path: str | os.PathLike, trainer: OnlineTrainer | None = None,
                    device: str | None = None) -> OnlineTrainer:
    """Restore a checkpoint into `trainer` (its config is replaced by the saved one, except device and
    backend when `device` is given) or into a new trainer; training can continue from it."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"checkpoint {p} does not exist")
    try:
        state = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for truncated/foreign files
        raise ValueError(f"checkpoint {p} is not readable: {e}") from e
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{p} is not a surg3d reconstruction checkpoint")
    if state.get("version") not in READS:
        raise ValueError(f"checkpoint {p} has format version {state.get('version')}; this surg3d reads versions "
                         f"{', '.join(map(str, READS))} (train again or use the surg3d release that wrote it)")
    cfg = TrainerConfig.from_dict(state["config"])
    if device is not None:
        cfg.device, cfg.backend = device, "auto"
    if trainer is None:
        trainer = OnlineTrainer(cfg)
    elif device is None:
        cfg.device, cfg.backend = trainer.cfg.device, trainer.cfg.backend
    with trainer._lock:
        trainer.cfg = cfg
        trainer._reset_state()
        dev = trainer.device
        trainer.model.load_params(state["params"], state["knot_times"])
        trainer.clock.load_state_dict(state["clock"])
        trainer.live_stamp_ns = state["live_stamp_ns"]
        trainer._last_pose = state["last_pose"]
        trainer.scene_depth = float(state["scene_depth"])
        if state.get("pose_refiner") is not None:
            try:
                trainer._pose_refiner.load_state_dict(state["pose_refiner"])
            except ValueError as e:
                raise ValueError(f"checkpoint {p}: {e}") from e
        trainer._make_optimizer()
        if state["optimizer"] is not None:
            trainer.optimizer.load_state_dict({k: ({n: t.to(dev) for n, t in v.items()} if k != "lrs" else v)
                                               for k, v in state["optimizer"].items()})
        trainer._grow_stats(trainer.model.num_gaussians)
        for k in state["keyframes"]:
            kf = _Keyframe(int(k["stamp_ns"]), float(k["t"]), k["rgb"].to(dev).float() / 255.0,
                           k["depth"].to(dev), k["tissue"].to(dev).float(),
                           RenderCamera.from_ros(np.asarray(k["pose"]), np.asarray(k["K"]), k["width"],
                                                 k["height"], device=dev),
                           np.asarray(k["pose"]), np.asarray(k["K"]), bool(k["has_depth"]),
                           None if k.get("raw_pose") is None else np.asarray(k["raw_pose"]))
            trainer.keyframes.append(kf)
            trainer._recent.append(kf)
        st = state["stats"]
        for key in ("frames_received", "frames_used", "frames_skipped", "iterations", "frames_past",
                    "time_gaps_shortened", "pose_refined", "pose_refine_rejected"):
            setattr(trainer.stats, key, int(st.get(key, 0)))
        for key in ("pose_correction_mm", "pose_correction_deg"):
            setattr(trainer.stats, key, float(st.get(key, 0.0)))
        trainer.stats.pose_refine_last = str(st.get("pose_refine_last", ""))
        trainer._skip.update(st.get("skip_reasons", {}))
    return trainer
