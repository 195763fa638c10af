"""Synthetic surgical stereo scene with exact ground truth (depth, instrument masks, tissue-only view, poses).

The tissue is a textured heightfield in the world frame, z_world = distance + h(x, y, t): breathing
lifts the centre, and the first instrument grasps a tissue point and pulls it towards the camera over the
clip. One or two grey metal instruments (cylindrical shaft + thinner tip with a spherical end) move above it
and occlude it; with `articulated` they are EndoWrists instead (core.instrument_prior.wrist_links): a wrist
that pitches and yaws between the shaft and two jaws that open and close, all smooth over the clip.
Every pixel of both views of a rectified stereo pair is ray cast exactly: analytic
ray-cylinder/sphere hits for the tools, fixed-point + secant iterations for the heightfield. Lighting comes
from a headlight between the two lenses (like an endoscope), so diffuse shading is shared by both views while
specular highlights move with the viewpoint. The world frame is the left optical frame of the first frame
(x right, y down, z forward).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.data.datasets.base import DatasetFrame
from surg3d_nodes.data.datasets.endonerf import write_endonerf_layout
from surg3d_nodes.perception.instrument_prior import jaw_directions, tip_frame, wrist_links

MOTIONS = ("static", "moving", "pivot")
_LATTICE = 256
_GRASP_SIGMA = 0.004        # m, extent of the tissue lifted by the grasping instrument


@dataclass
class SynthConfig:
    """Parameters of a synthetic clip (lengths in metres, noise in 8-bit grey levels)."""

    width: int = 160
    height: int = 128
    frames: int = 30
    fps: float = 30.0
    baseline: float = 0.0045
    focal_scale: float = 0.9                 # fx = fy = focal_scale * width
    camera_motion: str = "static"
    instruments: int = 1
    noise_std: float = 2.0
    seed: int = 0
    tissue_distance: float = 0.08
    breathing_amplitude: float = 0.0015
    breathing_hz: float = 0.5
    pull_amplitude: float = 0.004
    vignetting: float = 0.9                  # brightness loss at the image corners ~ vignetting * 0.4
    start_ns: int = 1_700_000_000 * 10**9
    articulated: bool = False                # EndoWrist instruments (wrist pitch / yaw, opening jaws)
    wrist_articulation_deg: float = 40.0     # amplitude of wrist pitch and yaw (articulated only)
    jaw_opening_deg: float = 60.0            # widest jaw opening (articulated only)

    def validate(self) -> None:
        """Raise ValueError naming the first parameter outside its range."""
        if self.width < 16 or self.height < 16:
            raise ValueError(f"image size must be at least 16x16, got {self.width}x{self.height}")
        if self.frames < 1:
            raise ValueError(f"frames must be >= 1, got {self.frames}")
        if not self.fps > 0:
            raise ValueError(f"fps must be > 0, got {self.fps}")
        if not 0 < self.baseline < 0.05:
            raise ValueError(f"baseline must be in (0, 0.05) m, got {self.baseline}")
        if not 0.3 <= self.focal_scale <= 3.0:
            raise ValueError(f"focal_scale must be in [0.3, 3], got {self.focal_scale}")
        if self.camera_motion not in MOTIONS:
            raise ValueError(f"camera_motion must be one of {MOTIONS}, got {self.camera_motion!r}")
        if self.instruments not in (0, 1, 2):
            raise ValueError(f"instruments must be 0, 1 or 2, got {self.instruments}")
        if not 0 <= self.vignetting <= 1.5:
            raise ValueError(f"vignetting must be in [0, 1.5], got {self.vignetting}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        if not 0.03 <= self.tissue_distance <= 0.2:
            raise ValueError(f"tissue_distance must be in [0.03, 0.2] m, got {self.tissue_distance}")
        if not 0 <= self.wrist_articulation_deg <= 80:
            raise ValueError(f"wrist_articulation_deg must be in [0, 80], got {self.wrist_articulation_deg}")
        if not 0 <= self.jaw_opening_deg <= 120:
            raise ValueError(f"jaw_opening_deg must be in [0, 120], got {self.jaw_opening_deg}")


@dataclass
class SynthFrame:
    """One rendered stereo frame and its ground truth (left view unless named otherwise)."""

    stamp_ns: int
    left: np.ndarray            # HxWx3 uint8 RGB
    right: np.ndarray           # HxWx3 uint8 RGB
    depth: np.ndarray           # HxW float32 metres of what is visible (instruments included), NaN = nothing
    tissue_depth: np.ndarray    # HxW float32 metres of the tissue alone
    mask: np.ndarray            # HxW uint8, 255 = instrument
    tissue_left: np.ndarray     # left view without instruments (same noise), for de-occlusion scores
    pose: np.ndarray            # 4x4 float64 T_world_cam of the left optical frame


@dataclass
class SynthScene:
    """A rendered clip: the rectified camera pair and its frames."""

    config: SynthConfig
    cam_left: CameraModel
    cam_right: CameraModel
    frames: list[SynthFrame] = field(default_factory=list)


# Ray-cast primitive of a tool: (shape "sphere" | "cyl", centre / axis start, unit axis, radius, q0, q1, part).
_Primitive = tuple[str, np.ndarray, np.ndarray, float, float, float, int]


@dataclass
class _Tool:
    tip: np.ndarray             # tip frame origin (world): centre of the spherical tip end / jaw tip
    axis: np.ndarray            # unit vector along the shaft, away from the tissue
    pose: np.ndarray            # T_world_tip, the dVRK tip frame (measured_cp)
    joints: tuple[float, float, float] = (0.0, 0.0, 0.0)   # wrist pitch, wrist yaw, jaw (rad)
    wrist: tuple[np.ndarray, np.ndarray] | None = None     # EndoWrist: T_world_pitch, T_world_yaw

    def primitives(self) -> list[_Primitive]:
        """The shapes to ray cast; part 1 = shaft (and wrist link), 2 = tip (jaws)."""
        if self.wrist is None:
            return [("sphere", self.tip, self.axis, _TIP_R, 0.0, 0.0, 2),
                    ("cyl", self.tip, self.axis, _TIP_R, 0.0, _TIP_LEN, 2),
                    ("cyl", self.tip, self.axis, _SHAFT_R, _TIP_LEN, _SHAFT_LEN, 1)]
        T_pitch, T_yaw = self.wrist
        pitch_joint, yaw_joint = T_pitch[:3, 3], T_yaw[:3, 3]
        out: list[_Primitive] = [
            ("cyl", pitch_joint, self.axis, _SHAFT_R, 0.0, _SHAFT_LEN, 1),
            ("sphere", pitch_joint, self.axis, _SHAFT_R, 0.0, 0.0, 1),
            ("cyl", pitch_joint, T_yaw[:3, 2], _SHAFT_R, 0.0, _PITCH_TO_YAW, 1),   # the wrist link
            ("sphere", yaw_joint, self.axis, _SHAFT_R, 0.0, 0.0, 1)]
        for u in jaw_directions(self.pose[:3, :3], self.joints[2]):
            out += [("cyl", yaw_joint, u, _TIP_R, 0.0, _YAW_TO_TIP, 2),
                    ("sphere", yaw_joint + _YAW_TO_TIP * u, u, _TIP_R, 0.0, 0.0, 2)]
        return out


class _Scene:
    """World content of one clip; all methods are vectorised over points or rays."""

    def __init__(self, cfg: SynthConfig) -> None:
        rng = np.random.default_rng(cfg.seed)
        self.cfg = cfg
        self.duration = max(cfg.frames - 1, 1) / cfg.fps
        self.lattices = rng.random((6, _LATTICE, _LATTICE))
        wrapped = np.concatenate([self.lattices, self.lattices[:, :1]], axis=1)
        wrapped = np.concatenate([wrapped, wrapped[:, :, :1]], axis=2)
        self.lattices_flat = wrapped.reshape(6, -1).astype(np.float32)
        self.offsets = rng.uniform(0, _LATTICE, size=(6, 2))
        n_waves = 4
        ang = rng.uniform(0, np.pi, n_waves)
        k = 2 * np.pi / rng.uniform(0.015, 0.04, n_waves)
        self.wave_k = np.stack([k * np.cos(ang), k * np.sin(ang)], axis=1)
        self.wave_a = rng.uniform(0.0006, 0.0015, n_waves)
        self.wave_phase = rng.uniform(0, 2 * np.pi, n_waves)
        self.tilt = rng.uniform(-0.12, 0.12, 2)
        half_w = 0.5 * cfg.width / (cfg.focal_scale * cfg.width) * cfg.tissue_distance
        self.half_w = half_w
        self.grasp = np.array([rng.uniform(-0.3, 0.1), rng.uniform(-0.2, 0.2)]) * half_w
        self.sweep_phase = rng.uniform(0, 2 * np.pi, 2)

    # ---------------------------------------------------------------- tissue geometry
    def _pull(self, t: float) -> float:
        return self.cfg.pull_amplitude * 0.5 * (1 - np.cos(2 * np.pi * t / self.duration)) \
            if self.cfg.instruments > 0 else 0.0

    def surface_z(self, x: np.ndarray, y: np.ndarray, t: float) -> np.ndarray:
        """World z of the tissue under (x, y) at time t (bigger z = farther from the first camera)."""
        return self.surface(x, y, t, grad=False)[0]

    def surface(self, x: np.ndarray, y: np.ndarray, t: float,
                grad: bool = True) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(z, dz/dx, dz/dy) of the tissue heightfield at time t; the derivatives are analytic."""
        # float32 is ample (5e-10 m at 8 cm) and twice as fast; python-float constants keep it float32
        x, y = np.broadcast_arrays(np.asarray(x, np.float32), np.asarray(y, np.float32))
        tx, ty = (float(v) for v in self.tilt)
        z = self.cfg.tissue_distance + tx * x + ty * y
        zx = np.full(x.shape, tx, np.float32) if grad else None
        zy = np.full(x.shape, ty, np.float32) if grad else None
        for (kx, ky), a, ph in zip(self.wave_k.tolist(), self.wave_a.tolist(), self.wave_phase.tolist(),
                                   strict=True):
            arg = kx * x + ky * y + ph
            z = z + a * np.sin(arg)
            if grad:
                c = a * np.cos(arg)
                zx, zy = zx + c * kx, zy + c * ky
        sig2 = float((1.5 * self.half_w) ** 2)
        bump = float(-self.cfg.breathing_amplitude * np.sin(2 * np.pi * self.cfg.breathing_hz * t)) \
            * np.exp(-(x * x + y * y) / (2 * sig2))
        z = z + bump
        if grad:
            zx, zy = zx - bump * x / sig2, zy - bump * y / sig2
        pull = float(self._pull(t))
        if pull > 0:
            gx, gy = x - float(self.grasp[0]), y - float(self.grasp[1])
            lift = -pull * np.exp(-(gx * gx + gy * gy) / (2 * _GRASP_SIGMA ** 2))
            z = z + lift
            if grad:
                zx, zy = zx - lift * gx / _GRASP_SIGMA ** 2, zy - lift * gy / _GRASP_SIGMA ** 2
        return z, zx, zy

    @staticmethod
    def normal_from_grad(zx: np.ndarray, zy: np.ndarray) -> np.ndarray:
        """Unit normals (..., 3) of a heightfield with these slopes, facing the camera (negative z)."""
        n = np.stack([zx, zy, -np.ones_like(zx)], axis=-1)
        return n / np.linalg.norm(n, axis=-1, keepdims=True)

    def intersect_tissue(self, o: np.ndarray, d: np.ndarray, t: float) -> tuple[np.ndarray, np.ndarray]:
        """(s, normals): ray parameters where o + s d hits the heightfield (NaN where it does not
        converge) and the surface normals there."""
        dx, dy, dz = d[:, 0], d[:, 1], d[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            s = (self.cfg.tissue_distance - o[2]) / dz
            for _ in range(2):    # fixed point: a contraction (slopes x ray obliquity << 1), gets close fast
                s = (self.surface_z(o[0] + s * dx, o[1] + s * dy, t) - o[2]) / dz
            for _ in range(3):    # Newton on f(s) = ray z - surface z, with the analytic slopes
                z, zx, zy = self.surface(o[0] + s * dx, o[1] + s * dy, t)
                f = o[2] + s * dz - z
                s = s - f / (dz - zx * dx - zy * dy)
            z, zx, zy = self.surface(o[0] + s * dx, o[1] + s * dy, t)
            f = o[2] + s * dz - z
        ok = (dz > 0) & np.isfinite(s) & (s > 0) & (np.abs(f) < 1e-6)
        return np.where(ok, s, np.nan), self.normal_from_grad(zx, zy)

    # ---------------------------------------------------------------- tissue appearance
    def _noise(self, i: int, x: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
        """Smooth value noise in [0, 1] of lattice i at feature size `scale` metres (float32)."""
        u = (x / scale + self.offsets[i, 0]).astype(np.float32)
        v = (y / scale + self.offsets[i, 1]).astype(np.float32)
        iu, iv = np.floor(u), np.floor(v)
        fu, fv = u - iu, v - iv
        fu, fv = fu * fu * (3 - 2 * fu), fv * fv * (3 - 2 * fv)
        # flat index into the wrapped (L+1)x(L+1) lattice: the +1 neighbours need no modulo
        k = (iv.astype(np.int32) % _LATTICE) * (_LATTICE + 1) + iu.astype(np.int32) % _LATTICE
        lat = self.lattices_flat[i]
        a = lat[k] * (1 - fu) + lat[k + 1] * fu
        b = lat[k + _LATTICE + 1] * (1 - fu) + lat[k + _LATTICE + 2] * fu
        return (a * (1 - fv) + b * fv).astype(np.float64)

    def albedo(self, x: np.ndarray, y: np.ndarray, footprint: np.ndarray) -> np.ndarray:
        """Tissue colour (..., 3) in [0, 1]: pink/red base, darker vessels, yellowish fat patches.

        `footprint` (metres per pixel at each point) band-limits the texture: octaves finer than ~3 pixels
        fade out and vessel edges widen to a pixel, so the views do not alias differently.
        """
        def fade(scale: float) -> np.ndarray:
            return np.clip(scale / footprint / 2.0 - 1.0, 0.0, 1.0)

        def band(r: np.ndarray, thr: float, width: float, scale: float) -> np.ndarray:
            wd = np.maximum(width, 2.5 * footprint / scale)
            return np.clip((r - thr) / wd + 0.5, 0.0, 1.0)

        fbm = (0.5 * self._noise(0, x, y, 0.006) + 0.3 * fade(0.003) * (self._noise(1, x, y, 0.003) - 0.5)
               + 0.2 * fade(0.0012) * (self._noise(2, x, y, 0.0012) - 0.5) + 0.25)
        base = np.array([0.78, 0.33, 0.33]) + fbm[..., None] * np.array([0.16, 0.2, 0.16])
        warp = 0.002 * (self._noise(5, x, y, 0.004) - 0.5)
        ridge = 1 - np.abs(2 * self._noise(3, x + warp, y - warp, 0.01) - 1)
        ridge_fine = 1 - np.abs(2 * self._noise(4, x - warp, y + warp, 0.004) - 1)
        vessel = band(ridge, 0.965, 0.035, 0.01) + 0.5 * fade(0.002) * band(ridge_fine, 0.985, 0.02, 0.004)
        vessel = np.clip(vessel, 0, 1)[..., None]
        fat = 0.8 * np.clip((self._noise(2, y, x, 0.008) - 0.68) / 0.12, 0, 1)[..., None]
        col = base * (1 - fat) + np.array([0.93, 0.8, 0.45]) * fat
        return col * (1 - vessel) + np.array([0.42, 0.07, 0.09]) * vessel

    # ---------------------------------------------------------------- instruments
    def tools(self, t: float) -> list[_Tool]:
        """Instrument poses at time t: tool 0 grasps and lifts the tissue, tool 1 sweeps above it."""
        out: list[_Tool] = []
        if self.cfg.instruments >= 1:
            gx, gy = self.grasp
            tip_z = float(self.surface_z(np.array(gx), np.array(gy), t)) - 0.0012
            axis = np.array([-0.55, 0.45, -1.0])
            out.append(self._tool(0, np.array([gx, gy, tip_z]), axis / np.linalg.norm(axis), t))
        if self.cfg.instruments >= 2:
            w = 2 * np.pi * t / max(self.duration, 1e-9)
            x = self.half_w * (0.35 + 0.25 * np.sin(0.8 * w + self.sweep_phase[0]))
            y = self.half_w * (0.05 + 0.35 * np.sin(1.3 * w + self.sweep_phase[1]))
            z = float(self.surface_z(np.array(x), np.array(y), t)) - 0.004 - 0.002 * np.sin(w)
            axis = np.array([0.6, 0.35, -1.0])
            out.append(self._tool(1, np.array([x, y, z]), axis / np.linalg.norm(axis), t))
        return out

    def joints(self, index: int, t: float) -> tuple[float, float, float]:
        """(wrist pitch, wrist yaw, jaw) in radians of articulated tool `index` at time t: the bend keeps its
        size (the amplitude) and turns around the shaft every 3 s; the jaws open and close every 2 s (a
        surgeon's pace, in seconds rather than per clip: a short clip must not whirl the wrist)."""
        a = np.radians(self.cfg.wrist_articulation_deg)
        bend_phase, jaw_phase = _WRIST_PHASES[index]
        bend = 2 * np.pi * t / _BEND_PERIOD_S + bend_phase
        jaw = np.radians(self.cfg.jaw_opening_deg) * 0.5 * (1 - np.cos(2 * np.pi * t / _JAW_PERIOD_S + jaw_phase))
        return float(a * np.sin(bend)), float(a * np.cos(bend)), float(jaw)

    def _tool(self, index: int, tip: np.ndarray, axis: np.ndarray, t: float) -> _Tool:
        """Tool `index` with its tip frame origin at `tip` and its shaft along `axis`; an articulated one bends
        its wrist with the tip in place, the shaft moving along (forward kinematics shaft -> pitch -> yaw -> tip)."""
        pose = tip_frame(tip, axis)
        if not self.cfg.articulated:
            return _Tool(tip, axis, pose)
        joints = self.joints(index, t)
        T_pitch_yaw, T_yaw_tip = wrist_links(joints[0], joints[1], _PITCH_TO_YAW, _YAW_TO_TIP)
        T_pitch = pose.copy()                  # the straight tip frame's axes: a pitch frame along the shaft
        T_pitch[:3, 3] = tip - pose[:3, :3] @ (T_pitch_yaw @ T_yaw_tip)[:3, 3]
        T_yaw = T_pitch @ T_pitch_yaw
        return _Tool(tip, axis, T_yaw @ T_yaw_tip, joints, (T_pitch, T_yaw))


# Tool dimensions (metres): tip sphere/cylinder radius, tip length, shaft radius, shaft length; the articulated
# tools' jaws have the tip radius, their wrist link the shaft radius, and the dVRK Large Needle Driver's links.
_TIP_R, _TIP_LEN, _SHAFT_R, _SHAFT_LEN = 0.0011, 0.006, 0.0024, 0.25
_PITCH_TO_YAW, _YAW_TO_TIP = 0.0091, 0.0102
_WRIST_PHASES = ((0.4, 2.0), (2.6, 4.2))     # per articulated tool: phase of the bend, of the jaws (rad)
_BEND_PERIOD_S, _JAW_PERIOD_S = 3.0, 2.0


def _ray_cylinder(o: np.ndarray, d: np.ndarray, a: np.ndarray, u: np.ndarray, r: float,
                  q0: float, q1: float) -> np.ndarray:
    """Nearest positive s where o + s d hits the side of the cylinder (axis a + q u, q in [q0, q1])."""
    w = o - a
    du = d @ u
    d_perp = d - du[:, None] * u
    w_perp = w - (w @ u) * u
    A = np.einsum("ij,ij->i", d_perp, d_perp)
    B = 2 * d_perp @ w_perp
    C = w_perp @ w_perp - r * r
    disc = B * B - 4 * A * C
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (-B - np.sqrt(disc)) / (2 * A)
    q = w @ u + s * du
    return np.where((disc >= 0) & (s > 0) & (q >= q0) & (q <= q1), s, np.nan)


def _ray_sphere(o: np.ndarray, d: np.ndarray, c: np.ndarray, r: float) -> np.ndarray:
    """Nearest positive s where o + s d hits the sphere (c, r)."""
    w = o - c
    A = np.einsum("ij,ij->i", d, d)
    B = 2 * d @ w
    C = w @ w - r * r
    disc = B * B - 4 * A * C
    with np.errstate(invalid="ignore"):
        s = (-B - np.sqrt(disc)) / (2 * A)
    return np.where((disc >= 0) & (s > 0), s, np.nan)


def _intersect_tools(o: np.ndarray, d: np.ndarray, tools: list[_Tool]) -> tuple[np.ndarray, np.ndarray,
                                                                                np.ndarray]:
    """(s, normal, part) of the nearest tool hit per ray; part 0 = none, else as in _Tool.primitives.

    Computed in float32 (3e-9 m at 5 cm), twice as fast as float64 over every pixel.
    """
    o, d = o.astype(np.float32), d.astype(np.float32)
    n = d.shape[0]
    best = np.full(n, np.inf, np.float32)
    normal = np.zeros((n, 3), np.float32)
    part = np.zeros(n, dtype=np.int8)
    for tool in tools:
        for shape, a, u, r, q0, q1, kind in tool.primitives():
            a, u = a.astype(np.float32), u.astype(np.float32)
            s = _ray_sphere(o, d, a, r) if shape == "sphere" else _ray_cylinder(o, d, a, u, r, q0, q1)
            hit = np.isfinite(s) & (s < best)
            if not hit.any():
                continue
            p = o + s[hit, None] * d[hit]
            if shape == "sphere":
                nrm = p - a
            else:
                rel = p - a
                nrm = rel - (rel @ u)[:, None] * u
            normal[hit] = nrm / np.linalg.norm(nrm, axis=1, keepdims=True)
            best[hit] = s[hit]
            part[hit] = kind
    best[part == 0] = np.nan
    return best, normal, part


def _shade(p: np.ndarray, n: np.ndarray, albedo: np.ndarray, light: np.ndarray, eye: np.ndarray,
           spec: float, shininess: float, ref_dist: float) -> np.ndarray:
    """Headlight Blinn-Phong with inverse-square falloff; the eye position makes highlights view dependent."""
    to_l = light - p
    dist = np.linalg.norm(to_l, axis=1, keepdims=True)
    lv = to_l / dist
    ev = eye - p
    ev /= np.linalg.norm(ev, axis=1, keepdims=True)
    h = lv + ev
    h /= np.linalg.norm(h, axis=1, keepdims=True)
    ndl = np.clip(np.einsum("ij,ij->i", n, lv), 0, 1)[:, None]
    ndh = np.clip(np.einsum("ij,ij->i", n, h), 0, 1)[:, None]
    fall = np.clip((ref_dist / dist) ** 2, 0, 2.0)
    return fall * (albedo * (0.15 + 0.85 * ndl) + spec * ndh ** shininess)


def ecm_pivot(s: float) -> np.ndarray:
    """Fraction s (0..1) of a clinical-size ECM move, as a motion of the camera in its first frame: a
    20 degree pivot about the remote centre of motion 10 cm behind the tip, plus 2 cm insertion."""
    rcm = np.eye(4)
    rcm[2, 3] = -0.10
    piv = np.eye(4)
    piv[:3, :3] = cv2.Rodrigues(s * np.radians([12.0, 16.0, 0.0]).reshape(3, 1))[0]
    ins = np.eye(4)
    ins[2, 3] = 0.02 * s
    return rcm @ piv @ np.linalg.inv(rcm) @ ins


def _camera_pose(cfg: SynthConfig, t: float) -> np.ndarray:
    """T_world_cam of the left camera at time t (identity for a static camera); "pivot" is one smooth
    clinical ECM move (`ecm_pivot`) over the clip, "moving" a small hand-held-like wobble."""
    if cfg.camera_motion == "static":
        return np.eye(4)
    if cfg.camera_motion == "pivot":
        return ecm_pivot(0.5 * (1.0 - np.cos(np.pi * t / max((cfg.frames - 1) / cfg.fps, 1e-9))))
    w = 2 * np.pi * t / max((cfg.frames - 1) / cfg.fps, 1e-9)
    trans = np.array([0.004 * np.sin(0.5 * w), 0.0025 * (1 - np.cos(0.5 * w)), 0.003 * np.sin(0.25 * w)])
    angles = np.radians([1.5 * np.sin(0.5 * w), -2.0 * np.sin(0.5 * w), 1.0 * np.sin(0.25 * w)])
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues(angles.reshape(3, 1))[0]
    T[:3, 3] = trans
    return T


class SceneKinematics:
    """Continuous-time ground truth of a clip's motion, for robot-kinematics emulation (dVRK emulator).

    `camera_pose(t)`: T_world_cam of the left camera; `tip_poses(t)`: T_world_tip per instrument (the dVRK
    tip frame: origin at the jaw tip, the centre of a straight tool's spherical tip end, z along the jaws away
    from the shaft); `joints(t)`: (wrist pitch, wrist yaw, jaw angle) per instrument in radians (zeros for
    straight tools); t in seconds from the first frame, any value (also between frames). The tool dimensions
    are attributes (pitch_to_yaw, yaw_to_tip: the articulated tools' wrist links).
    """

    tip_radius = _TIP_R
    tip_length = _TIP_LEN
    shaft_radius = _SHAFT_R
    shaft_length = _SHAFT_LEN
    pitch_to_yaw = _PITCH_TO_YAW
    yaw_to_tip = _YAW_TO_TIP

    def __init__(self, cfg: SynthConfig) -> None:
        cfg.validate()
        self.cfg = cfg
        self._scene = _Scene(cfg)

    def camera_pose(self, t: float) -> np.ndarray:
        """T_world_cam of the left optical frame at time t."""
        return _camera_pose(self.cfg, t)

    def tip_poses(self, t: float) -> list[np.ndarray]:
        """T_world_tip of each instrument at time t."""
        return [tool.pose.copy() for tool in self._scene.tools(t)]

    def joints(self, t: float) -> list[tuple[float, float, float]]:
        """(wrist pitch, wrist yaw, jaw angle) of each instrument at time t, radians."""
        return [tool.joints for tool in self._scene.tools(t)]


class _Renderer:
    """Renders one view of the scene: per-pixel rays from a camera pose and the shared rectified K."""

    def __init__(self, scene: _Scene, K: np.ndarray, width: int, height: int) -> None:
        self.scene = scene
        uu, vv = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
        # Camera-frame rays with unit z, so the ray parameter of a hit is its optical depth.
        self.rays_cam = np.stack([(uu - K[0, 2]) / K[0, 0], (vv - K[1, 2]) / K[1, 1],
                                  np.ones_like(uu)], axis=-1).reshape(-1, 3)
        self.shape = (height, width)
        self.fx = float(K[0, 0])

    def render(self, T_world_cam: np.ndarray, t: float, tools: list[_Tool], light: np.ndarray,
               with_tissue_only: bool) -> dict[str, np.ndarray]:
        """Linear colour images (float, before noise), depth and mask of one view."""
        sc = self.scene
        R, o = T_world_cam[:3, :3], T_world_cam[:3, 3]
        d = self.rays_cam @ R.T
        s_t, n_t = sc.intersect_tissue(o, d, t)
        p_t = o + np.nan_to_num(s_t)[:, None] * d
        ref = sc.cfg.tissue_distance
        footprint = np.nan_to_num(s_t, nan=1.0) / self.fx
        tissue = _shade(p_t, n_t, sc.albedo(p_t[:, 0], p_t[:, 1], footprint), light, o, 0.3, 90.0, ref)
        tissue[~np.isfinite(s_t)] = 0.0
        s_i, n_i, part = _intersect_tools(o, d, tools) if tools else (
            np.full_like(s_t, np.nan), np.zeros_like(d), np.zeros(len(s_t), np.int8))
        tool_vis = np.isfinite(s_i) & ~(s_t <= s_i)
        color = tissue.copy()
        if tool_vis.any():
            p_i = o + s_i[tool_vis, None] * d[tool_vis]
            grey = np.where(part[tool_vis, None] == 2, 0.32, 0.58) * np.ones((1, 3))
            grey = grey * np.array([1.0, 1.0, 1.04])
            color[tool_vis] = _shade(p_i, n_i[tool_vis], grey, light, o, 0.9, 60.0, ref)
        depth = np.where(tool_vis, s_i, s_t)
        h, w = self.shape
        out = {"color": color.reshape(h, w, 3), "depth": depth.reshape(h, w),
               "mask": tool_vis.reshape(h, w)}
        if with_tissue_only:
            out["tissue"] = tissue.reshape(h, w, 3)
            out["tissue_depth"] = s_t.reshape(h, w)
        return out


def _to_uint8(img: np.ndarray, vignette: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
    v = img * vignette[..., None] * 255.0
    if noise is not None:
        v = v + noise
    return np.clip(np.rint(v), 0, 255).astype(np.uint8)


def cameras(cfg: SynthConfig) -> tuple[CameraModel, CameraModel]:
    """The rectified left and right cameras of a clip (right P carries -fx * baseline)."""
    fx = cfg.focal_scale * cfg.width
    return (CameraModel.pinhole(cfg.width, cfg.height, fx, frame_id="stereo_left_optical"),
            CameraModel.pinhole(cfg.width, cfg.height, fx, baseline=cfg.baseline,
                                frame_id="stereo_right_optical"))


def iter_frames(cfg: SynthConfig | None = None,
                progress: Callable[[int, int], None] | None = None) -> Iterator[SynthFrame]:
    """Render the frames of a clip one at a time (constant memory); `progress(done, total)` per frame."""
    cfg = cfg or SynthConfig()
    cfg.validate()
    scene = _Scene(cfg)
    K = cameras(cfg)[0].intrinsics()
    renderer = _Renderer(scene, K, cfg.width, cfg.height)
    yy, xx = np.mgrid[0:cfg.height, 0:cfg.width]
    r2 = ((xx - K[0, 2]) / cfg.width) ** 2 + ((yy - K[1, 2]) / cfg.width) ** 2
    vignette = 1.0 - cfg.vignetting * r2   # endoscope light falls off towards the corners
    rng = np.random.default_rng(cfg.seed + 1)
    T_left_right = np.eye(4)
    T_left_right[0, 3] = cfg.baseline
    for i in range(cfg.frames):
        t = i / cfg.fps
        T_wl = _camera_pose(cfg, t)
        T_wr = T_wl @ T_left_right
        light = T_wl[:3, 3] + T_wl[:3, 0] * (0.5 * cfg.baseline)
        tools = scene.tools(t)
        left = renderer.render(T_wl, t, tools, light, with_tissue_only=True)
        right = renderer.render(T_wr, t, tools, light, with_tissue_only=False)
        shape = (cfg.height, cfg.width, 3)
        nl = rng.normal(0, cfg.noise_std, shape) if cfg.noise_std > 0 else None
        nr = rng.normal(0, cfg.noise_std, shape) if cfg.noise_std > 0 else None
        yield SynthFrame(
            stamp_ns=cfg.start_ns + round(i * 1e9 / cfg.fps),
            left=_to_uint8(left["color"], vignette, nl),
            right=_to_uint8(right["color"], vignette, nr),
            depth=left["depth"].astype(np.float32),
            tissue_depth=left["tissue_depth"].astype(np.float32),
            mask=np.where(left["mask"], 255, 0).astype(np.uint8),
            tissue_left=_to_uint8(left["tissue"], vignette, nl),
            pose=T_wl,
        )
        if progress is not None:
            progress(i + 1, cfg.frames)


def generate(cfg: SynthConfig | None = None,
             progress: Callable[[int, int], None] | None = None) -> SynthScene:
    """Render a whole synthetic clip in memory; `progress(done, total)` is called after every frame."""
    cfg = cfg or SynthConfig()
    return SynthScene(cfg, *cameras(cfg), list(iter_frames(cfg, progress)))


def to_dataset_frame(index: int, f: SynthFrame, cam_left: CameraModel,
                     cam_right: CameraModel) -> DatasetFrame:
    """A SynthFrame as a common DatasetFrame (extras: tissue image, exact mask and tissue depth)."""
    return DatasetFrame(index=index, stamp_ns=f.stamp_ns, left=f.left, right=f.right, cam_left=cam_left,
                        cam_right=cam_right, pose=f.pose, depth=f.depth, mask=f.mask,
                        extras={"tissue": f.tissue_left, "gt_mask": f.mask, "tissue_depth": f.tissue_depth})


def scene_frames(scene: SynthScene) -> list[DatasetFrame]:
    """The clip as common DatasetFrames."""
    return [to_dataset_frame(i, f, scene.cam_left, scene.cam_right) for i, f in enumerate(scene.frames)]


def write_endonerf(scene: SynthScene, out_dir: str | os.PathLike,
                   progress: Callable[[int, int], None] | None = None, overwrite: bool = False) -> Path:
    """Write the clip in the EndoNeRF layout (see core.datasets.endonerf), readable by EndoNeRFReader."""
    return write_endonerf_layout(out_dir, scene_frames(scene), len(scene.frames), scene.config.fps,
                                 progress=progress, overwrite=overwrite)
