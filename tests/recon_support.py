"""Helpers shared by the reconstruction tests."""

from __future__ import annotations

from surg3d_nodes.data.synthetic import SynthScene
from surg3d_nodes.recon.config import Frame


def scene_frames(scene: SynthScene) -> list[Frame]:
    """The trainer's input frames (left image, depth, mask, pose) of a synthetic scene."""
    return [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
