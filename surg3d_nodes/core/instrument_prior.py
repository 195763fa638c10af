"""Kinematic instrument prior: each instrument's known geometry projected into the left image as a mask.

An instrument is modelled in its tip frame (dVRK PSM `measured_cp` convention: origin at the jaw tip, z along
the jaws pointing away from the shaft): the jaws and wrist are a capsule of radius `jaw_radius` from the tip
back to `wrist_length`, the shaft a cylinder of radius `shaft_radius` from there back along -z for
`shaft_length` (long enough to leave the image). The wrist joints are not modelled: the shaft is taken
along the tip frame's z, so a strongly articulated wrist is covered only up to `jaw_radius` (dilate the prior
for fusion, see core.segmentation.fuse_masks). Every pixel's ray is tested against the tool axis
(closest approach between ray and segment), which gives the exact silhouette under perspective.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import cv2
import numpy as np

from surg3d_nodes.core.camera import CameraModel


@dataclass(frozen=True)
class InstrumentGeometry:
    """Instrument dimensions in metres. Defaults: an 8 mm da Vinci EndoWrist (8 mm shaft, ~10 mm wrist)."""

    shaft_radius: float = 0.004
    jaw_radius: float = 0.003
    wrist_length: float = 0.010
    shaft_length: float = 0.40

    def __post_init__(self) -> None:
        for name in ("shaft_radius", "jaw_radius", "wrist_length", "shaft_length"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"instrument geometry {name} must be a positive length in metres, got {v}")
        if self.shaft_length <= self.wrist_length:
            raise ValueError(f"shaft_length {self.shaft_length} m must exceed wrist_length "
                             f"{self.wrist_length} m")


def pixel_rays(cam: CameraModel, rectified: bool = True) -> np.ndarray:
    """HxWx3 camera-frame ray directions with z = 1 of every pixel of the camera's image.

    rectified=True: the rectified image (P, and R maps the rectified frame back to the camera frame);
    False: the raw image (K and distortion D).
    """
    uu, vv = np.meshgrid(np.arange(cam.width, dtype=np.float64), np.arange(cam.height, dtype=np.float64))
    if rectified:
        P = cam.P
        rays = np.stack([(uu - P[0, 2]) / P[0, 0], (vv - P[1, 2]) / P[1, 1], np.ones_like(uu)], axis=-1)
        rays = rays @ cam.R  # rectified -> camera frame: R^T x, written for row vectors
        return rays / rays[..., 2:3]
    pts = np.stack([uu, vv], axis=-1).reshape(-1, 1, 2)
    norm = cv2.undistortPoints(pts, cam.K, cam.D).reshape(cam.height, cam.width, 2)
    return np.concatenate([norm, np.ones((cam.height, cam.width, 1))], axis=-1)


def _segment_hits(rays: np.ndarray, a: np.ndarray, u: np.ndarray, q0: float, q1: float, r: float,
                  caps: bool) -> np.ndarray:
    """Per ray (Nx3, from the camera origin): True where it passes within r of the segment a + q u, q0<=q<=q1.

    caps=False drops the rounded ends (a cylinder with flat ends, approximately: the closest point of the
    infinite axis line must lie inside [q0, q1]).
    """
    w = -a                                    # ray origin (camera centre) minus segment origin
    A = np.einsum("ij,ij->i", rays, rays)
    B = rays @ u
    D = rays @ w
    E = float(u @ w)
    den = A - B * B                           # |u| = 1
    with np.errstate(divide="ignore", invalid="ignore"):
        q_line = np.where(den > 1e-12, (A * E - B * D) / den, E)
    q = np.clip(q_line, q0, q1)
    s = np.maximum((B * q - D) / A, 0.0)      # ray parameter closest to that axis point (in front only)
    q = np.clip(s * B + E, q0, q1)            # re-project: exact for the clamped case
    diff = s[:, None] * rays - (a + q[:, None] * u)
    hit = np.einsum("ij,ij->i", diff, diff) <= r * r
    hit &= s > 0
    if not caps:
        hit &= (q_line >= q0) & (q_line <= q1)
    return hit


def project_instruments(cam: CameraModel, T_cam_tips: Iterable[np.ndarray],
                        geometry: InstrumentGeometry = InstrumentGeometry(), rectified: bool = True,
                        rays: np.ndarray | None = None) -> np.ndarray:
    """uint8 HxW mask (255 = instrument) of the instruments whose tip poses T_camera_tip are given.

    `rays`: the camera's `pixel_rays` when called per frame (saves recomputing them).
    """
    if rays is None:
        rays = pixel_rays(cam, rectified)
    if rays.shape != (cam.height, cam.width, 3):
        raise ValueError(f"rays of shape {rays.shape} do not match the {cam.width}x{cam.height} camera")
    flat = rays.reshape(-1, 3)
    hit = np.zeros(flat.shape[0], dtype=bool)
    g = geometry
    for T in T_cam_tips:
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"instrument tip pose must be a finite 4x4 transform, got {T.tolist()}")
        tip, back = T[:3, 3], -T[:3, 2]       # the shaft runs back along -z of the tip frame
        hit |= _segment_hits(flat, tip, back, 0.0, g.wrist_length, g.jaw_radius, caps=True)
        hit |= _segment_hits(flat, tip, back, g.wrist_length, g.shaft_length, g.shaft_radius, caps=False)
    return np.where(hit, 255, 0).astype(np.uint8).reshape(cam.height, cam.width)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (> 127 = set); 1.0 when both are empty."""
    a, b = np.asarray(a) > 127, np.asarray(b) > 127
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union
