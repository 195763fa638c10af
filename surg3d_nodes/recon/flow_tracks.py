"""Deformation tracks started from the images: scene flow between consecutive frames moves the Gaussians.

Gradient descent alone needs many iterations per frame to discover where the tissue moved, which a live
trainer does not have. When a new frame arrives, dense optical flow (OpenCV DIS) from the previous frame,
checked forward-backward, carries every Gaussian that was visible on the tissue surface of the previous
frame to its pixel in the new one; the smoothed change of the measured depth along it moves it along the
optical axis, and the colour change along the flow gives its appearance change; Gaussians hidden behind an
instrument move with the flow and depth change continued under it (a membrane from the tissue around it), and
others the flow cannot follow move with their nearest followed neighbour. The tracks are then moved, with
the smallest change of their knots, to pass through these positions and colours at the new frame's time;
training refines from there. Moving cameras are handled by the poses (flow includes ego-motion;
back-projection uses the new frame's pose). The flow is taken with the instruments blurred over (DIS smooths
across their edges), and the flow from an anchor frame a few frames back corrects what the frame-to-frame flows
have added up since it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np
import torch
from pykdtree.kdtree import KDTree

from surg3d_nodes.common.camera import scale_intrinsics
from surg3d_nodes.recon.completion import membrane_fill
from surg3d_nodes.recon.gaussians import GaussianModel

# `membrane_fill`'s tolerance for the continued fields (relative to their largest value: a hundredth of a pixel of
# flow where the flow reaches a pixel, well inside the flow's own accuracy).
FIELD_TOL = 1e-2
# The continued fields are solved at most this wide (they are smooth: the flow is blurred over ~1.5 % of the width;
# at 160 px the instrument margin, 3 %, still spans 5 cells): 0.01 s more for a 320x256 frame's flow update (0.06 s
# without), 0.04 s more for the shared EndoNeRF clip's large instruments at 1/4 scale (2-core CPU; README, issue 16).
FIELD_WIDTH = 160
# The chain's drift since the anchor is measured over at least this many Gaussians both flows follow.
MIN_DRIFT_SUPPORT = 50


@dataclass
class FlowTrackConfig:
    """Thresholds of the flow-based track update."""

    fb_max_px: float = 1.0         # forward-backward flow disagreement above this rejects a Gaussian
    depth_tol_rel: float = 0.03    # a Gaussian is on the visible surface when |z - depth| < this x depth
    max_motion_rel: float = 0.1    # a 3D step larger than this x scene depth between frames is rejected
    neighbour_reach_rel: float = 0.05  # unfollowed Gaussians within this x scene depth move with a neighbour
    smooth_sigma_rel: float = 0.015  # scene-flow smoothing (Gaussian sigma) as a fraction of the image width
    min_support: float = 0.3         # a Gaussian needs this much valid flow around its pixel
    tool_margin_rel: float = 0.03    # flow this close to an instrument (fraction of the width) is ignored
    fill_sigma_rel: float = 0.03     # instruments are blurred over from the tissue around before the flow
    min_width: int = 96              # narrower images are not tracked: DIS patches (8 px) span too much of them
    depth_motion: bool = True        # also move along the optical axis by the smoothed measured depth change
    hidden_motion: bool = True       # Gaussians hidden behind an instrument move with the flow continued under it
    max_flow_width: int = 320        # wider images get their flow at this width (DIS at 640x512: ~40 ms a
                                     # direction, a live budget killer; the flow is smoothed at ~5 px anyway)


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


def _tissue_only(gray: np.ndarray, tissue: torch.Tensor, sigma_rel: float) -> np.ndarray:
    """`gray` with the instrument pixels replaced by the tissue around them, blurred (a normalised Gaussian blur
    of sigma `sigma_rel` x width; the tissue's mean where none is that near).

    DIS smooths its flow across image edges: beside a still instrument the tissue's flow was held back (tissue
    sliding 0.7 px a frame past a still bar moved 10-17 % short in the last 10 px before it, 12 % short under it
    by the flow continued there; 3-4 % with this; `tests/test_recon_flow_tracks.py`). Without the instrument's
    edges the tissue's own texture sets the flow up to the instrument."""
    t = (tissue.cpu().numpy() > 0.5).astype(np.float32)
    if t.all() or not t.any():
        return gray
    sigma = sigma_rel * gray.shape[1]
    den = cv2.GaussianBlur(t, (0, 0), sigma)
    num = cv2.GaussianBlur(gray.astype(np.float32) * t, (0, 0), sigma)
    fill = np.where(den > 1e-3, num / np.maximum(den, 1e-3), float(gray[t > 0].mean()))
    return np.where(t > 0, gray, np.clip(fill + 0.5, 0, 255)).astype(np.uint8)


def _sample(img: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear samples of img (HxW or HxWxC) at float pixel coordinates (centres at integers)."""
    # cv2.remap takes maps of fewer than 32767 columns: lay the points out in rows of at most 8192.
    n = u.shape[0]
    if n == 0:
        return np.zeros((0, *img.shape[2:]), img.dtype)
    cols = min(n, 8192)
    pad = -n % cols

    def grid(x: np.ndarray) -> np.ndarray:
        return np.concatenate([x.astype(np.float32), np.zeros(pad, np.float32)]).reshape(-1, cols)

    out = cv2.remap(img, grid(u), grid(v), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(-1, *img.shape[2:])[:n]


def image_flow(prev: FlowView, cur: FlowView, cfg: FlowTrackConfig
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """On the pixel grid of `prev`, smoothed: optical flow [H,W,2], colour change along it [H,W,3] and
    their support [H,W] (0..1); tissue motion along `cur`'s optical axis [H,W] (measured depth at the
    flowed pixel minus the depth the prev surface point would have in `cur`'s camera if it had not moved,
    so camera motion is not counted twice) and its support [H,W].

    Only tissue pixels whose flow is forward-backward consistent and lands on tissue count (for the depth
    motion, also with a valid depth in both frames); a normalised Gaussian blur averages over them only, so
    instruments, holes and single noisy depths do not bleed in.
    """
    g_prev, g_cur = (_tissue_only(_gray(v.rgb), v.tissue, cfg.fill_sigma_rel) for v in (prev, cur))
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    fwd = dis.calc(g_prev, g_cur, None)
    bwd = dis.calc(g_cur, g_prev, None)
    h, w = g_prev.shape
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float32)
    uf, vf = uu + fwd[..., 0], vv + fwd[..., 1]
    back = cv2.remap(bwd, uf, vf, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    fb = np.hypot(uf + back[..., 0] - uu, vf + back[..., 1] - vv)
    # Flow next to an instrument carries the instrument's motion (DIS smooths across edges): only tissue
    # a margin away from instruments in both frames counts.
    r = max(1, round(cfg.tool_margin_rel * w))
    kernel = np.ones((2 * r + 1, 2 * r + 1), np.uint8)
    tissue_p = cv2.erode((prev.tissue.cpu().numpy() > 0.5).astype(np.uint8), kernel)
    tissue_c = cv2.erode((cur.tissue.cpu().numpy() > 0.5).astype(np.uint8), kernel).astype(np.float32)
    tc = cv2.remap(tissue_c, uf, vf, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    valid = ((tissue_p > 0) & (tc > 0.5) & (fb < cfg.fb_max_px)
             & (uf >= 0) & (uf <= w - 1) & (vf >= 0) & (vf <= h - 1)).astype(np.float32)
    rgb_c = cv2.remap(cur.rgb.cpu().numpy(), uf, vf, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    sigma = cfg.smooth_sigma_rel * w

    def blur(x: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        den = np.maximum(cv2.GaussianBlur(weight, (0, 0), sigma), 1e-6)
        w_ = weight if x.ndim == 2 else weight[..., None]
        num = cv2.GaussianBlur((x * w_).astype(np.float32), (0, 0), sigma)
        return num / (den if x.ndim == 2 else den[..., None]), den

    flow, support = blur(fwd, valid)
    dcol, _ = blur(rgb_c - prev.rgb.cpu().numpy(), valid)
    # Depth motion: prev pixels back-projected with their depth, seen from cur's camera, against cur's depth.
    d_prev = prev.depth.cpu().numpy().astype(np.float64)
    d_cur = cv2.remap(cur.depth.cpu().numpy(), uf, vf, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT)
    pts = np.stack([(uu - prev.K[0, 2]) / prev.K[0, 0] * d_prev, (vv - prev.K[1, 2]) / prev.K[1, 1] * d_prev,
                    d_prev], -1)
    rel = np.linalg.inv(cur.pose) @ prev.pose
    z_pred = pts @ rel[2, :3] + rel[2, 3]
    valid_d = valid * ((d_prev > 0) & (d_cur > 0)).astype(np.float32)
    dz, support_d = blur((d_cur - z_pred).astype(np.float32), valid_d)
    return flow, dcol, support, dz, support_d


def _continued(field: np.ndarray, known: np.ndarray) -> np.ndarray:
    """`field` [H,W] or [H,W,C] with the pixels outside `known` replaced by the membrane through the known ones,
    solved at most `FIELD_WIDTH` wide (each cell the mean of its known pixels, known where most of it is) and
    upsampled; known pixels keep their values."""
    h, w = known.shape
    size = (min(w, FIELD_WIDTH), max(1, round(h * min(w, FIELD_WIDTH) / w)))
    k = known.astype(np.float32)
    share = cv2.resize(k, size, interpolation=cv2.INTER_AREA)
    fields = field[..., None] if field.ndim == 2 else field
    out = []
    for c in range(fields.shape[-1]):
        mean = cv2.resize(fields[..., c] * k, size, interpolation=cv2.INTER_AREA) / np.maximum(share, 1e-6)
        solved = membrane_fill(mean, share > 0.5, FIELD_TOL)
        out.append(np.where(known, fields[..., c], cv2.resize(solved, (w, h), interpolation=cv2.INTER_LINEAR)))
    return np.stack(out, -1) if field.ndim == 3 else out[0]


@dataclass
class _Resized:
    """A FlowView resized for the flow computation (CPU tensors)."""

    rgb: torch.Tensor
    depth: torch.Tensor
    tissue: torch.Tensor
    pose: np.ndarray
    K: np.ndarray
    t: float


def _resized(view: FlowView, size: tuple[int, int]) -> FlowView:
    """`view` at `size` (width, height): area-averaged colour, nearest depth and tissue, intrinsics to match."""
    h, w = view.depth.shape

    def rs(x: torch.Tensor, interp: int) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(cv2.resize(x.cpu().numpy(), size, interpolation=interp)))

    return _Resized(rs(view.rgb, cv2.INTER_AREA), rs(view.depth, cv2.INTER_NEAREST),
                    rs(view.tissue, cv2.INTER_NEAREST), view.pose,
                    scale_intrinsics(view.K, size[0] / w, size[1] / h), view.t)


def _project(means: np.ndarray, view: FlowView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    T = np.linalg.inv(view.pose)
    pc = means @ T[:3, :3].T + T[:3, 3]
    z = pc[:, 2]
    zs = np.where(z > 1e-6, z, 1.0)
    return view.K[0, 0] * pc[:, 0] / zs + view.K[0, 2], view.K[1, 1] * pc[:, 1] / zs + view.K[1, 2], z


@dataclass
class _Targets:
    """Where one flow update puts the tracks at the new frame's time (track values, not yet written)."""

    rows: np.ndarray      # [n] Gaussian indices
    pos: np.ndarray       # [n,3] position track values
    col: np.ndarray       # [n,3] colour track values
    seen: np.ndarray      # [n] bool: followed by the flow of the tissue they show (not hidden, not a neighbour's)
    hidden: np.ndarray    # [n] bool: moved by the flow continued under an instrument


@torch.no_grad()
def update_tracks(model: GaussianModel, prev: FlowView, cur: FlowView, scene_depth: float,
                  cfg: FlowTrackConfig | None = None, anchor: FlowView | None = None) -> int:
    """Move the tracks of the Gaussians seen in `prev` with the image motion to `cur` (positions and
    colours at `cur.t`); returns how many Gaussians were updated (0 when `cur` is not later than `prev` or
    the image is narrower than `min_width`).

    A followed Gaussian goes to its flow-displaced pixel in `cur`, at its own depth in `cur`'s camera moved
    by the smoothed depth change there (`depth_motion`; off: depth is left to the depth loss): the motion is
    what gradient descent finds slowly. With `hidden_motion`, one behind an instrument of `prev` moves the same
    way with the flow and depth change continued under the instrument, and keeps its colour.

    With an `anchor` older than `prev`, the flow from the anchor to `cur` corrects what the chain of flows since
    the anchor has added up (`_correct_drift`).
    """
    cfg = cfg or FlowTrackConfig()
    chain = _targets(model, prev, cur, scene_depth, cfg)
    if chain is None:
        return 0
    if anchor is not None and anchor.t < prev.t:
        direct = _targets(model, anchor, cur, scene_depth, cfg, neighbours=False)
        if direct is not None:
            chain = _correct_drift(chain, direct)
    rows = torch.as_tensor(chain.rows, device=model.device)
    for name, value in (("pos_knots", chain.pos), ("col_knots", chain.col)):
        model.fit_track(name, cur.t, rows, torch.as_tensor(value, dtype=torch.float32, device=model.device))
    return int(chain.rows.size)


def _correct_drift(chain: _Targets, direct: _Targets) -> _Targets:
    """The chain's targets (flows frame to frame since the anchor) corrected by the direct flow from the anchor.

    DIS overestimates sub-pixel motion by 5-11 % (a texture shifted exactly; within 1 % from a pixel on), and at
    30 Hz most motion is sub-pixel at the training scale (median 0.19 px a frame on the shared EndoNeRF clip at
    1/4, 0.5 px on the synthetic one), so chained frame to frame the model slid along the tissue (0.2 mm in 2 s
    on the synthetic clip), hidden while the tissue shows by the colour knots refitted at each frame, and seen
    as misplaced tissue wherever an instrument had hidden it (README, issue 16). The chain still starts each
    frame from where the training steps left the last one, which on real tissue is worth keeping (the direct
    flow alone: -0.5 dB, shared EndoNeRF clip); so
    (a) the median difference between the two over the Gaussians both follow on the tissue is the chain's
    drift, taken off every Gaussian the chain moves, and (b) tissue an instrument hides since the anchor, which
    no training step corrects, takes the direct flow continued under the instrument."""
    seen_rows = chain.rows[chain.seen]
    _, i_chain, i_direct = np.intersect1d(seen_rows, direct.rows[direct.seen], return_indices=True)
    pos = chain.pos.copy()
    if i_chain.size >= MIN_DRIFT_SUPPORT:
        pos += np.median(direct.pos[direct.seen][i_direct] - chain.pos[chain.seen][i_chain], axis=0)
    under = np.flatnonzero(direct.hidden & ~np.isin(direct.rows, seen_rows))
    where = np.full(int(max(chain.rows.max(), direct.rows.max())) + 1, -1)
    where[chain.rows] = np.arange(chain.rows.size)
    at = where[direct.rows[under]]
    pos[at[at >= 0]] = direct.pos[under[at >= 0]]
    new = under[at < 0]                          # hidden since the anchor and beyond the chain's reach
    return _Targets(np.concatenate([chain.rows, direct.rows[new]]), np.concatenate([pos, direct.pos[new]]),
                    np.concatenate([chain.col, direct.col[new]]), np.concatenate([chain.seen, direct.seen[new]]),
                    np.concatenate([chain.hidden, direct.hidden[new]]))


def _targets(model: GaussianModel, prev: FlowView, cur: FlowView, scene_depth: float,
             cfg: FlowTrackConfig, neighbours: bool = True) -> _Targets | None:
    """The flow update from `prev` to `cur` (`update_tracks`), not yet written; None when there is none. Without
    `neighbours`, only the Gaussians the flow itself moves (seen or hidden)."""
    h, w = prev.depth.shape
    if model.num_gaussians == 0 or cur.t <= prev.t or w < cfg.min_width:
        return None
    means = model.evaluate(prev.t)["means"].cpu().numpy().astype(np.float64)
    u, v, z = _project(means, prev)
    idx = np.flatnonzero((z > 1e-6) & (u >= 0) & (u <= w - 1) & (v >= 0) & (v <= h - 1))
    if idx.size == 0:
        return None
    u, v, z = u[idx], v[idx], z[idx]
    dp = prev.depth.cpu().numpy()[np.rint(v).astype(int), np.rint(u).astype(int)]
    surface = (dp > 0) & (np.abs(z - dp) < cfg.depth_tol_rel * np.maximum(dp, 1e-9))
    if w > cfg.max_flow_width:
        size = (cfg.max_flow_width, max(1, round(h * cfg.max_flow_width / w)))
        flow, dcol_img, support, dz_img, support_d = image_flow(_resized(prev, size), _resized(cur, size), cfg)
    else:
        size = (w, h)
        flow, dcol_img, support, dz_img, support_d = image_flow(prev, cur, cfg)
    sx, sy = size[0] / w, size[1] / h
    us, vs = (u + 0.5) * sx - 0.5, (v + 0.5) * sy - 0.5          # the same points on the flow's grid
    good = surface & (_sample(support, us, vs) > cfg.min_support)
    # Tissue an instrument hides in `prev` (the Gaussian behind the instrument's measured surface) has no flow of
    # its own. It moves with the tissue around the instrument: the smoothed flow and depth change continued under it
    # as a membrane (the smoothest field through what is measured around it; a grasped fold moves with its
    # surroundings), instead of staying where it was last seen while the tissue deforms. Its colour stays as it was
    # seen (the de-occluded view moves it to the live light, `completion.deoccluded`). The membrane starts one more
    # instrument margin out than the flow that is followed: it carries its boundary to every hidden point, and
    # nearer the instrument the flow still carries some of the instrument's own motion (README, issue 16).
    hidden = np.zeros_like(good)
    if cfg.hidden_motion:
        tool = prev.tissue.cpu().numpy()[np.rint(v).astype(int), np.rint(u).astype(int)] < 0.5
        hidden = ~good & tool & ((dp <= 0) | (z > dp * (1 + cfg.depth_tol_rel)))
    if hidden.any():
        r = max(1, round(cfg.tool_margin_rel * size[0]))
        known, known_d = (cv2.erode((x > cfg.min_support).astype(np.uint8), np.ones((2 * r + 1,) * 2, np.uint8)) > 0
                          for x in (support, support_d))
        hidden &= known.any()           # nothing measured around the instruments: nothing to continue
    if hidden.any():
        under = (_continued(flow, known), _continued(dz_img, known_d) if known_d.any() else np.zeros_like(dz_img))
        good = good | hidden
    if not good.any():
        return None
    sel, us, vs, hid = idx[good], us[good], vs[good], hidden[good]

    def hidden_from_under(i: int, x: np.ndarray) -> np.ndarray:   # hidden points: flow (0) or depth change (1)
        if hid.any():
            x[hid] = _sample(under[i], us[hid], vs[hid])
        return x

    f = hidden_from_under(0, _sample(flow, us, vs)) / (sx, sy)
    _, _, zc = _project(means[sel], cur)
    if cfg.depth_motion:
        zc = zc + hidden_from_under(1, np.where(_sample(support_d, us, vs) > cfg.min_support,
                                                _sample(dz_img, us, vs), 0.0))
    uf, vf = u[good] + f[:, 0], v[good] + f[:, 1]
    xc = np.stack([(uf - cur.K[0, 2]) / cur.K[0, 0] * zc, (vf - cur.K[1, 2]) / cur.K[1, 1] * zc, zc], -1)
    dpos = xc @ cur.pose[:3, :3].T + cur.pose[:3, 3] - means[sel]
    dcol = _sample(dcol_img, us, vs)
    dcol[hid] = 0.0                                                # hidden: the colour it was seen with
    small = np.linalg.norm(dpos, axis=1) < cfg.max_motion_rel * scene_depth
    sel, dpos, dcol, hid = sel[small], dpos[small], dcol[small], hid[small]
    if sel.size == 0:
        return None
    seen = ~hid
    # Gaussians the flow does not reach (hidden, behind the surface, in unsupported areas) move with their
    # nearest followed neighbour within reach, so the model deforms as a whole instead of tearing.
    followed = np.zeros(model.num_gaussians, bool)
    followed[sel] = True
    rest = np.flatnonzero(~followed)
    if rest.size and neighbours:
        dist, nn = KDTree(means[sel].astype(np.float32)).query(means[rest].astype(np.float32), k=1)
        near = np.asarray(dist).reshape(-1) < cfg.neighbour_reach_rel * scene_depth
        nn = np.asarray(nn, dtype=np.int64).reshape(-1)[near]
        sel = np.concatenate([sel, rest[near]])
        dpos = np.concatenate([dpos, dpos[nn]])
        dcol = np.concatenate([dcol, dcol[nn]])
        seen = np.concatenate([seen, np.zeros(int(near.sum()), bool)])
        hid = np.concatenate([hid, np.zeros(int(near.sum()), bool)])
    rows = torch.as_tensor(sel, device=model.device)
    pos, col = (model.track_at(prev.t, name)[rows].cpu().numpy().astype(np.float64) + delta
                for name, delta in (("pos_knots", dpos), ("col_knots", dcol)))
    return _Targets(sel, pos, col, seen, hid)
