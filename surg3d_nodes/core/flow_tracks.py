"""Deformation tracks started from the images: scene flow between consecutive frames moves the Gaussians.

Gradient descent alone needs many iterations per frame to discover where the tissue moved, which a live
trainer does not have. When a new frame arrives, dense optical flow (OpenCV DIS) from the previous frame,
checked forward-backward, carries every Gaussian that was visible on the tissue surface of the previous
frame to its pixel in the new one; the new frame's depth there gives its 3D position, and the colour change
along the flow its appearance change. The tracks are then moved, with the smallest change of their knots,
to pass through these positions and colours at the new frame's time; training refines from there. Moving
cameras are handled by the poses (flow includes ego-motion; back-projection uses the new frame's pose).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch

from .gaussians import GaussianModel


@dataclass
class FlowTrackConfig:
    """Thresholds of the flow-based track update."""

    fb_max_px: float = 1.0         # forward-backward flow disagreement above this rejects a Gaussian
    depth_tol_rel: float = 0.03    # a Gaussian is on the visible surface when |z - depth| < this x depth
    max_motion_rel: float = 0.1    # a 3D step larger than this x scene depth between frames is rejected


class FlowView(Protocol):
    """What the update needs of one frame (the trainer's keyframes have it)."""

    rgb: torch.Tensor      # [H,W,3] 0..1
    depth: torch.Tensor    # [H,W] metres
    tissue: torch.Tensor   # [H,W] 1 = tissue
    pose: np.ndarray       # 4x4 camera-to-world
    K: np.ndarray          # ROS convention
    t: float


def _gray(rgb: torch.Tensor) -> np.ndarray:
    img = (rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).cpu().numpy()
    return cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)


def _sample(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of img (HxW or HxWxC) at float pixel coordinates (centres at integers)."""
    maps = (u.astype(np.float32).reshape(1, -1), v.astype(np.float32).reshape(1, -1))
    out = cv2.remap(img, maps[0], maps[1], cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(u.shape[0], *img.shape[2:])


@torch.no_grad()
def update_tracks(model: GaussianModel, prev: FlowView, cur: FlowView, scene_depth: float,
                  cfg: FlowTrackConfig | None = None) -> int:
    """Move the tracks of the Gaussians seen in `prev` to their flow-tracked positions and colours at
    `cur.t`; returns how many Gaussians were updated (0 when `cur` is not later than `prev`)."""
    cfg = cfg or FlowTrackConfig()
    if model.num_gaussians == 0 or cur.t <= prev.t:
        return 0
    h, w = prev.depth.shape
    g = model.evaluate(prev.t)
    means = g["means"].cpu().numpy().astype(np.float64)
    view = np.linalg.inv(prev.pose)
    pc = means @ view[:3, :3].T + view[:3, 3]
    z = pc[:, 2]
    ok = z > 1e-6
    zs = np.where(ok, z, 1.0)
    u = prev.K[0, 0] * pc[:, 0] / zs + prev.K[0, 2]
    v = prev.K[1, 1] * pc[:, 1] / zs + prev.K[1, 2]
    ok &= (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1)
    idx = np.flatnonzero(ok)
    if idx.size == 0:
        return 0
    u, v, z = u[idx], v[idx], z[idx]
    ui, vi = np.rint(u).astype(int), np.rint(v).astype(int)
    depth_p, tissue_p = prev.depth.cpu().numpy(), prev.tissue.cpu().numpy()
    dp = depth_p[vi, ui]
    surf = (dp > 0) & (tissue_p[vi, ui] > 0.5) & (np.abs(z - dp) < cfg.depth_tol_rel * np.maximum(dp, 1e-9))

    g_prev, g_cur = _gray(prev.rgb), _gray(cur.rgb)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fwd = dis.calc(g_prev, g_cur, None)
    bwd = dis.calc(g_cur, g_prev, None)
    f = _sample(fwd, u, v)
    uf, vf = u + f[:, 0], v + f[:, 1]
    inside = (uf >= 0) & (uf <= w - 1) & (vf >= 0) & (vf <= h - 1)
    b = _sample(bwd, np.clip(uf, 0, w - 1), np.clip(vf, 0, h - 1))
    fb = np.hypot(uf + b[:, 0] - u, vf + b[:, 1] - v)
    depth_c, tissue_c = cur.depth.cpu().numpy(), cur.tissue.cpu().numpy()
    uci, vci = np.clip(np.rint(uf), 0, w - 1).astype(int), np.clip(np.rint(vf), 0, h - 1).astype(int)
    dc = depth_c[vci, uci]
    good = surf & inside & (fb < cfg.fb_max_px) & (dc > 0) & (tissue_c[vci, uci] > 0.5)
    if not good.any():
        return 0
    sel = idx[good]
    uf, vf, dc = uf[good], vf[good], dc[good]
    xc = np.stack([(uf - cur.K[0, 2]) / cur.K[0, 0] * dc, (vf - cur.K[1, 2]) / cur.K[1, 1] * dc, dc], 1)
    xw = xc @ cur.pose[:3, :3].T + cur.pose[:3, 3]
    small = np.linalg.norm(xw - means[sel], axis=1) < cfg.max_motion_rel * scene_depth
    if not small.any():
        return 0
    sel, xw = sel[small], xw[small]
    uf, vf, u, v = uf[small], vf[small], u[good][small], v[good][small]
    dev = model.device
    rows = torch.as_tensor(sel, device=dev)
    p = model.params
    model.fit_track("pos_knots", cur.t, rows, torch.as_tensor(xw, dtype=torch.float32, device=dev)
                    - p["means"].detach()[rows])
    # Appearance: the colour change along the flow is added to the track's colour offset at prev.t.
    dcol = (_sample(cur.rgb.cpu().numpy(), uf, vf) - _sample(prev.rgb.cpu().numpy(), u, v)).astype(np.float32)
    col_prev = model.track_at(prev.t, "col_knots")[rows]
    model.fit_track("col_knots", cur.t, rows, col_prev + torch.as_tensor(dcol, device=dev))
    return int(sel.size)
