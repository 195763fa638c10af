"""The frames the reconstruction trains on: conversion of an input frame to training tensors, and the store of
the newest frames plus a thinned history of keyframes that the steps sample from."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import cv2
import numpy as np
import torch

from surg3d_nodes.perception.falloff import Falloff
from surg3d_nodes.recon.config import Frame
from surg3d_nodes.recon.render import RenderCamera
from surg3d_nodes.recon.render.camera import EPS2D


@dataclass
class Keyframe:
    """One frame as the trainer uses it, at the training resolution."""

    stamp_ns: int
    t: float                   # model time (s)
    rgb: torch.Tensor          # [H,W,3] float 0..1
    depth: torch.Tensor        # [H,W] metres, 0 where invalid
    tissue: torch.Tensor       # [H,W] float 1 = tissue
    camera: RenderCamera
    pose: np.ndarray           # camera-to-world 4x4 (ROS optical frame)
    K: np.ndarray              # ROS convention
    has_depth: bool
    raw_pose: np.ndarray | None = None   # the input pose, where a pose refinement changed it
    region: Keyframe | None = None       # the box about the operator's regions, finer (`Reconstructor.add_frame`)

    def set_pose(self, pose: np.ndarray) -> None:
        """Move the frame to `pose` (its render camera, and its region's box, follow)."""
        self.pose = pose
        self.camera = RenderCamera.from_ros(pose, self.K, self.camera.width, self.camera.height,
                                            device=self.rgb.device, eps2d=self.camera.eps2d)
        if self.region is not None:
            self.region.set_pose(pose)

    def state_dict(self) -> dict:
        """Plain containers and tensors (checkpoints); the image is stored as 8 bits."""
        return {"stamp_ns": self.stamp_ns, "t": self.t, "pose": self.pose, "K": self.K, "has_depth": self.has_depth,
                "rgb": (self.rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu(), "depth": self.depth.cpu(),
                "tissue": (self.tissue > 0.5).cpu(), "width": self.camera.width, "height": self.camera.height,
                "eps2d": self.camera.eps2d,
                "raw_pose": self.raw_pose, "region": None if self.region is None else self.region.state_dict()}

    @classmethod
    def from_state_dict(cls, k: dict, device: torch.device) -> Keyframe:
        """Inverse of `state_dict`, on `device`."""
        pose, K = np.asarray(k["pose"], np.float64), np.asarray(k["K"], np.float64)
        return cls(int(k["stamp_ns"]), float(k["t"]), k["rgb"].to(device).float() / 255.0, k["depth"].to(device),
                   k["tissue"].to(device).float(),
                   RenderCamera.from_ros(pose, K, int(k["width"]), int(k["height"]), device=device,
                                         eps2d=float(k.get("eps2d", EPS2D))),
                   pose, K, bool(k["has_depth"]),
                   None if k.get("raw_pose") is None else np.asarray(k["raw_pose"], np.float64),
                   # a box has no box of its own (a crafted file nesting them deeper is not followed)
                   None if k.get("region") is None else cls.from_state_dict({**k["region"], "region": None}, device))


def to_keyframe(f: Frame, image_scale: float, t: float, device: torch.device,
                falloff: Falloff | None = None, box: tuple[int, int, int, int] | None = None,
                eps2d: float = EPS2D) -> Keyframe:
    """Resize a validated input frame by `image_scale` and turn it into training tensors (instrument pixels
    become non-tissue; invalid depth becomes 0); with `falloff`, the image divided by the camera's V (the tissue's
    own colour, perception.falloff); with `box` (x0, y0, width, height), only that part of the image; `eps2d`, the
    render camera's low-pass (px^2)."""
    rgb, depth, mask, cam = f.rgb, f.depth, f.mask, f.camera
    if box is not None:
        x0, y0, w, h = box
        cam = cam.cropped(x0, y0, w, h)
        rgb, depth, mask = (None if a is None else a[y0:y0 + h, x0:x0 + w] for a in (rgb, depth, mask))
    if image_scale != 1.0:
        cam = cam.scaled(image_scale)
        size = (cam.width, cam.height)
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
        if depth is not None:
            depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
        if mask is not None:
            mask = (cv2.resize(mask, size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) * 255
    h, w = rgb.shape[:2]
    tissue = np.ones((h, w), np.float32) if mask is None else (mask == 0).astype(np.float32)
    if depth is None:
        d = np.zeros((h, w), np.float32)
    else:
        d = np.asarray(depth, dtype=np.float32)
        d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
    K = cam.intrinsics()
    pose = np.asarray(f.pose, dtype=np.float64)
    colour = torch.as_tensor(np.ascontiguousarray(rgb), device=device).float() / 255.0
    if falloff is not None and not falloff.is_identity:
        colour = colour / torch.as_tensor(falloff.gain(K, w, h), device=device)[..., None]
    return Keyframe(int(f.stamp_ns), t, colour,
                    torch.as_tensor(d, device=device), torch.as_tensor(tissue, device=device),
                    RenderCamera.from_ros(pose, K, w, h, device=device, eps2d=eps2d), pose, K,
                    bool((d * tissue > 0).any()))


class KeyframeStore:
    """The newest `recent_window` frames and a history of keyframes (every `keyframe_every`-th used frame,
    thinned uniformly at random beyond `max_keyframes`, never among the newest)."""

    def __init__(self, recent_window: int, keyframe_every: int, max_keyframes: int, rng: np.random.Generator):
        self.recent: deque[Keyframe] = deque(maxlen=max(1, recent_window))
        self.keyframes: list[Keyframe] = []
        self.keyframe_every = max(1, keyframe_every)
        self.max_keyframes = max_keyframes
        self._rng = rng

    def add(self, kf: Keyframe, used_index: int) -> None:
        """Store the `used_index`-th (0-based) used frame."""
        self.recent.append(kf)
        if used_index % self.keyframe_every == 0:
            self.keyframes.append(kf)
            if len(self.keyframes) > self.max_keyframes:
                j = int(self._rng.integers(0, len(self.keyframes) - self.recent.maxlen))
                self.keyframes.pop(j)

    def stored(self) -> list[Keyframe]:
        """Every stored frame (keyframes and the newest; a frame may be in both)."""
        return [*self.keyframes, *self.recent]

    def newest(self) -> Keyframe | None:
        """The newest used frame (None before the first)."""
        if self.recent:
            return self.recent[-1]
        return self.keyframes[-1] if self.keyframes else None

    def sample(self, recent_fraction: float) -> Keyframe:
        """A frame to train on: one of the newest with probability `recent_fraction`, else any keyframe."""
        if recent_fraction > 0 and self.recent and self._rng.random() < recent_fraction:
            return self.recent[int(self._rng.integers(len(self.recent)))]
        return self.keyframes[int(self._rng.integers(len(self.keyframes)))]

    def __len__(self) -> int:
        return len(self.keyframes)

    def state_dict(self) -> list[dict]:
        """The keyframes (checkpoints; the newest frames are restored from them)."""
        return [k.state_dict() for k in self.keyframes]

    def load_state_dict(self, frames: list[dict], device: torch.device) -> None:
        """Restore `state_dict` output."""
        for k in frames:
            kf = Keyframe.from_state_dict(k, device)
            self.keyframes.append(kf)
            self.recent.append(kf)
