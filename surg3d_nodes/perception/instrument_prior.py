"""Kinematic instrument prior: each instrument's known geometry projected into the left image as a mask.

An instrument is modelled in its tip frame (dVRK PSM `measured_cp` convention: origin at the jaw tip, z along
the jaws pointing away from the shaft). Without joint values it is straight: the jaws and wrist are a capsule
of radius `jaw_radius` from the tip back to `wrist_length`, the shaft a cylinder of radius `shaft_radius` from
there back along -z for `shaft_length` (long enough to leave the image). With the wrist pitch, wrist yaw and
jaw angle (dVRK `measured_js`, `jaw/measured_js`) it is an EndoWrist (`wrist_links`): two jaws, capsules of
radius `jaw_radius` from the yaw axis to their tips, opened by +-jaw/2 about the yaw axis (the tip frame's x);
the wrist link, a capsule of radius `shaft_radius` from the yaw axis back to the pitch axis; the shaft from
the pitch axis back along the pitch frame's -z. Every pixel's ray is tested against each part's axis (closest
approach between ray and segment), which gives the exact silhouette under perspective.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.params import param


@dataclass(frozen=True)
class InstrumentGeometry:
    """Instrument dimensions in metres. Defaults: an 8 mm da Vinci EndoWrist Large Needle Driver (8 mm shaft,
    wrist pitch axis to yaw axis 9.1 mm, yaw axis to jaw tip 10.2 mm, as in the dVRK tool definition).

    `wrist_length` is the straight model's jaw capsule; `pitch_to_yaw` and `yaw_to_tip` are used with joint
    values (`project_instruments(..., joints=...)`).
    """

    shaft_radius: float = param(0.004, "m, instrument shaft radius (8 mm EndoWrist; 5 mm: 0.0025)", low=1e-4,
                                high=0.05)
    jaw_radius: float = param(0.003, "m, radius of the wrist and jaw capsule", low=1e-4, high=0.05)
    wrist_length: float = param(0.010, "m, wrist + jaws as one straight capsule (without joint states)",
                                low=1e-4, high=0.2)
    shaft_length: float = param(0.40, "m, shaft length drawn from the tip", low=1e-3, high=2.0)
    pitch_to_yaw: float = param(0.0091, "m, wrist pitch axis to yaw axis (Large Needle Driver)", low=1e-4,
                                high=0.1)
    yaw_to_tip: float = param(0.0102, "m, wrist yaw axis to the jaw tip", low=1e-4, high=0.1)

    def __post_init__(self) -> None:
        for name in ("shaft_radius", "jaw_radius", "wrist_length", "shaft_length", "pitch_to_yaw", "yaw_to_tip"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"instrument geometry {name} must be a positive length in metres, got {v}")
        if self.shaft_length <= self.wrist_length:
            raise ValueError(f"shaft_length {self.shaft_length} m must exceed wrist_length "
                             f"{self.wrist_length} m")


def tip_frame(tip: np.ndarray, axis: np.ndarray) -> np.ndarray:
    """dVRK-style tool tip frame in the same frame as the inputs: origin at the tip, z along the jaws
    (away from the shaft, i.e. -axis), x perpendicular to z and to the world y axis (a fixed roll)."""
    z = -np.asarray(axis, dtype=np.float64)
    z /= np.linalg.norm(z)
    ref = np.array([0.0, 1.0, 0.0]) if abs(z[1]) < 0.9 else np.array([1.0, 0.0, 0.0])
    x = np.cross(ref, z)
    x /= np.linalg.norm(x)
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2], T[:3, 3] = x, np.cross(z, x), z, tip
    return T


def _rotation(axis: int, angle: float) -> np.ndarray:
    """4x4 rotation by `angle` radians about the x (0) or y (1) axis."""
    c, s = np.cos(angle), np.sin(angle)
    i, j = (1, 2) if axis == 0 else (2, 0)
    T = np.eye(4)
    T[i, i], T[i, j], T[j, i], T[j, j] = c, -s, s, c
    return T


def wrist_links(pitch: float, yaw: float, pitch_to_yaw: float, yaw_to_tip: float) -> tuple[np.ndarray, np.ndarray]:
    """(T_pitch_yaw, T_yaw_tip): the EndoWrist's link transforms at the given wrist angles (radians).

    Pitch frame: origin on the pitch axis, z along the shaft towards the jaws, y the pitch axis. Yaw frame:
    origin on the yaw axis, z along the wrist link, y the pitch axis, x the yaw axis. Tip frame (dVRK
    `measured_cp`): origin at the jaw tip, z along the jaws, x the yaw axis, about which the jaws open (as the
    dVRK tool-tip offset puts it). Zero angles: a straight instrument. T_world_tip = T_world_pitch @ T_pitch_yaw
    @ T_yaw_tip, so the shaft follows from the tip pose by the inverses.
    """
    T_pitch_yaw = _rotation(1, pitch)
    T_pitch_yaw[:3, 3] = T_pitch_yaw[:3, 2] * pitch_to_yaw
    T_yaw_tip = _rotation(0, yaw)
    T_yaw_tip[:3, 3] = T_yaw_tip[:3, 2] * yaw_to_tip
    return T_pitch_yaw, T_yaw_tip


def jaw_directions(R_tip: np.ndarray, jaw: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit directions of the two jaws (from the yaw axis to their tips), opened by +-jaw/2 about the tip
    frame's x axis (the yaw axis), in the frame of the rotation R_tip."""
    c, s = np.cos(0.5 * jaw), np.sin(0.5 * jaw)
    return R_tip @ np.array([0.0, -s, c]), R_tip @ np.array([0.0, s, c])


def _tool_segments(T: np.ndarray, joints: np.ndarray | None,
                   g: InstrumentGeometry) -> list[tuple[np.ndarray, np.ndarray, float, float, float, bool]]:
    """The capsules and cylinders (start a, unit direction u, q0, q1, radius, caps) of one instrument whose tip
    pose is T: straight without joints, else the EndoWrist chain undone from the tip (tip -> yaw -> pitch)."""
    if joints is None:
        tip, back = T[:3, 3], -T[:3, 2]       # the shaft runs back along -z of the tip frame
        return [(tip, back, 0.0, g.wrist_length, g.jaw_radius, True),
                (tip, back, g.wrist_length, g.shaft_length, g.shaft_radius, False)]
    pitch, yaw, jaw = joints
    T_pitch_yaw, T_yaw_tip = wrist_links(pitch, yaw, g.pitch_to_yaw, g.yaw_to_tip)
    T_yaw = T @ np.linalg.inv(T_yaw_tip)
    T_pitch = T_yaw @ np.linalg.inv(T_pitch_yaw)
    yaw_joint = T_yaw[:3, 3]
    segments = [(yaw_joint, u, 0.0, g.yaw_to_tip, g.jaw_radius, True)
                for u in jaw_directions(T[:3, :3], max(jaw, 0.0))]   # a squeezing (negative) jaw is closed
    segments += [(yaw_joint, -T_yaw[:3, 2], 0.0, g.pitch_to_yaw, g.shaft_radius, True),
                 (T_pitch[:3, 3], -T_pitch[:3, 2], 0.0, g.shaft_length, g.shaft_radius, False)]
    return segments


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


def _segment_hits(rays: np.ndarray, A: np.ndarray, a: np.ndarray, u: np.ndarray, q0: float, q1: float,
                  r: float, caps: bool) -> np.ndarray:
    """Per ray (Nx3 from the camera origin, A = |ray|^2): True where it passes within r of the segment
    a + q u, q0 <= q <= q1 (|u| = 1). Closest approach of ray s*d and axis line, clamped to the segment and
    re-projected; the squared distance is expanded into per-ray scalars (no Nx3 temporaries).

    caps=False drops the rounded ends (a cylinder with flat ends, approximately: the closest point of the
    infinite axis line must lie inside [q0, q1]).
    """
    dt = rays.dtype
    B = rays @ u.astype(dt)                   # d . u
    Da = rays @ a.astype(dt)                  # d . a
    E = -float(u @ a)                         # u . (origin - a)
    aa, au = float(a @ a), float(a @ u)
    den = A - B * B
    with np.errstate(divide="ignore", invalid="ignore"):
        q_line = np.where(den > 1e-12, (A * E + B * Da) / den, E)
    q = np.clip(q_line, q0, q1)
    s = np.maximum((B * q + Da) / A, 0.0)     # ray parameter closest to that axis point (in front only)
    q = np.clip(s * B + E, q0, q1)
    dist2 = s * s * A + aa + q * q - 2 * s * Da - 2 * s * q * B + 2 * q * au
    hit = (dist2 <= r * r) & (s > 0)
    if not caps:
        hit &= (q_line >= q0) & (q_line <= q1)
    return hit


def _ray_range(lo: np.ndarray, hi: np.ndarray, b0: float, b1: float) -> slice:
    """Index range whose [lo, hi] extents (per column or row of rays) overlap [b0, b1]; empty if none."""
    idx = np.flatnonzero((hi >= b0) & (lo <= b1))
    return slice(int(idx[0]), int(idx[-1]) + 1) if idx.size else slice(0, 0)


def _segment_box(rays: np.ndarray, extents: tuple[np.ndarray, ...], a: np.ndarray, u: np.ndarray,
                 q0: float, q1: float, r: float) -> tuple[slice, slice]:
    """Rows and columns of the pixels whose rays can pass within r of the segment (a conservative box).

    Works in normalised coordinates (x/z, y/z), so it holds for distorted raw images too: a column is kept
    when any of its rays' x/z falls in the segment's padded x/z interval, likewise for rows.
    """
    near = 1e-3
    full = (slice(0, rays.shape[0]), slice(0, rays.shape[1]))
    qs = np.array([q0, q1], dtype=np.float64)
    z = a[2] + qs * u[2]
    if z.max() < near:
        return slice(0, 0), slice(0, 0)          # entirely behind the camera
    if z.min() < near:                            # clip the part behind the camera
        qs[np.argmin(z)] = (near - a[2]) / u[2]
        z = a[2] + qs * u[2]
    if z.min() - r <= near:
        return full                               # the tool reaches the lens: it may cover anything
    pts = a[None, :] + qs[:, None] * u[None, :]
    n = pts[:, :2] / pts[:, 2:3]
    rho2 = float(np.max(np.sum(n * n, axis=1)))
    pad = r / (z.min() - r) * (1.0 + rho2)        # projected radius, widened for oblique views
    xlo, xhi, ylo, yhi = extents
    cols = _ray_range(xlo, xhi, n[:, 0].min() - pad, n[:, 0].max() + pad)
    rows = _ray_range(ylo, yhi, n[:, 1].min() - pad, n[:, 1].max() + pad)
    return rows, cols


def project_instruments(cam: CameraModel, T_cam_tips: Iterable[np.ndarray],
                        geometry: InstrumentGeometry = InstrumentGeometry(), rectified: bool = True,
                        rays: np.ndarray | None = None,
                        joints: Sequence[Sequence[float] | None] | None = None,
                        counters: Counter[str] | None = None) -> np.ndarray:
    """uint8 HxW mask (255 = instrument) of the instruments whose tip poses T_camera_tip are given.

    `joints`: per instrument None (straight model) or (wrist pitch, wrist yaw, jaw angle) in radians (the
    EndoWrist model); joint values that are not all finite fall back to the straight model and are counted
    in `counters["straight.not_finite"]`. `rays`: the camera's `pixel_rays` when called per frame (saves
    recomputing them). Only the pixels in each part's conservative image box are ray tested (640x512, two
    tools: a few ms instead of ~300).
    """
    if rays is None:
        rays = pixel_rays(cam, rectified)
    if rays.shape != (cam.height, cam.width, 3):
        raise ValueError(f"rays of shape {rays.shape} do not match the {cam.width}x{cam.height} camera")
    rays = rays.astype(np.float32, copy=False)   # float32 halves the cost; sub-micrometre effect
    A = np.einsum("hwc,hwc->hw", rays, rays)
    extents = (rays[..., 0].min(axis=0), rays[..., 0].max(axis=0),
               rays[..., 1].min(axis=1), rays[..., 1].max(axis=1))
    hit = np.zeros((cam.height, cam.width), dtype=bool)
    tips = list(T_cam_tips)
    per_tool = [None] * len(tips) if joints is None else list(joints)
    if len(per_tool) != len(tips):
        raise ValueError(f"joint values for {len(per_tool)} instruments, tip poses for {len(tips)}")
    for T, q in zip(tips, per_tool, strict=True):
        T = np.asarray(T, dtype=np.float64)
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"instrument tip pose must be a finite 4x4 transform, got {T.tolist()}")
        if q is not None:
            q = np.asarray(q, dtype=np.float64)
            if q.shape != (3,):
                raise ValueError(f"instrument joints must be (wrist pitch, wrist yaw, jaw), got {q.tolist()}")
            if not np.all(np.isfinite(q)):
                q = None
                if counters is not None:
                    counters["straight.not_finite"] += 1
        for a, u, q0, q1, r, caps in _tool_segments(T, q, geometry):
            rows, cols = _segment_box(rays, extents, a, u, q0, q1, r)
            block = rays[rows, cols]
            if block.size == 0:
                continue
            sub = _segment_hits(block.reshape(-1, 3), A[rows, cols].ravel(), a, u, q0, q1, r, caps)
            hit[rows, cols] |= sub.reshape(block.shape[:2])
    return np.where(hit, 255, 0).astype(np.uint8)


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks (> 127 = set); 1.0 when both are empty."""
    a, b = np.asarray(a) > 127, np.asarray(b) > 127
    union = np.count_nonzero(a | b)
    return 1.0 if union == 0 else np.count_nonzero(a & b) / union
