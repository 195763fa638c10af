"""Photometric + depth refinement of a new frame's camera pose against the current Gaussian model.

Kinematic camera poses (dVRK: ECM forward kinematics x hand-eye) carry errors that the reconstruction
cannot absorb: a hand-eye error X·E makes the pose of frame i relative to the first frame off by
inv(E) M_i E - M_i (M_i the true camera motion), which grows with the ECM's rotation. Before a frame is
stored and used for growth, `refine_pose` estimates a small right-multiplied se(3) correction C (pose
T·C, in the camera frame) that minimises the masked L1 colour + relative depth error between the model's
rendering and the frame, at tissue pixels the model already covers.

Two models of the error (`PoseRefineConfig.mode`):
- "frame": a free 6-DoF correction per frame, warm-started from the previous one. Frame-to-model
  alignment drifts like visual odometry and absorbs tissue motion (breathing) as camera motion.
- "hand_eye": the error is a constant hand-eye error E (input pose = ECM pose · X · E). With A the input
  pose relative to the first (anchor) pose, A = inv(E) M E for the true motion M, so the pose in the
  model's gauge is anchor · M = anchor · E A inv(E): C = inv(A) E A inv(E). E is one estimate refined frame
  after frame; it is unobservable (C = identity) until the endoscope rotates, which is exactly when a
  hand-eye error starts to matter. The trainer re-poses every stored frame with each new estimate
  (`PoseRefiner.correction_of`), so early frames, refined while E was barely observable, move on with it.

Gauge: the model is expressed in the frame of the first pose; corrections are estimated against the model,
so refined poses are consistent with the model (not with the robot's world frame). A correction is only
accepted when it lowers the loss measured at the uncorrected pose on the same pixels, stays within a
translation / rotation bound, and everything is finite; otherwise the frame keeps its input pose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from surg3d_nodes.dvrk.kinematics import pose_error
from surg3d_nodes.recon.render import RenderCamera, render_evaluated

# The only outcome that changes the pose (others: anchor, no_overlap, not_better, too_large, non_finite).
ACCEPTED = "accepted"
MODES = ("frame", "hand_eye")


@dataclass
class PoseRefineConfig:
    """Knobs of one refinement (the trainer maps its `refine_pose_*` fields onto these)."""

    mode: str = "frame"              # frame | hand_eye (see the module docstring)
    iterations: int = 30
    lr: float = 1e-3                 # Adam step on the rotation (rad) and translation (x scene depth)
    depth_weight: float = 5.0        # weight of the depth L1 relative to the scene depth
    min_alpha: float = 0.5           # pixels the model covers less than this do not count (new tissue)
    min_overlap: float = 0.2         # fraction of the frame's tissue pixels the model must cover
    max_trans_m: float = 0.005       # corrections larger than this are rejected
    max_rot_deg: float = 3.0
    min_improvement: float = 1e-3    # relative loss decrease a correction must bring
    exposure: bool = True            # compensate a per-channel gain/offset between render and frame


@dataclass
class PoseRefineResult:
    """Outcome of one refinement; `correction` is identity unless `status` is "accepted"."""

    status: str
    correction: np.ndarray           # 4x4, refined pose = input pose @ correction
    loss_before: float               # at the input pose
    loss_after: float                # at the returned pose
    trans_m: float                   # size of the correction that was found (also when rejected)
    rot_deg: float
    iterations: int
    xi: np.ndarray | None = None     # accepted twist [rho (m), phi (rad)] of C (frame) or of E (hand_eye)

    @property
    def accepted(self) -> bool:
        return self.status == ACCEPTED


def se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """4x4 rigid transform exp([rho, phi]^) of a twist (translation rho, rotation phi), differentiable."""
    rho, phi = xi[:3], xi[3:]
    zero = xi.new_zeros(())
    hat = torch.stack([
        torch.stack([zero, -phi[2], phi[1], rho[0]]),
        torch.stack([phi[2], zero, -phi[0], rho[1]]),
        torch.stack([-phi[1], phi[0], zero, rho[2]]),
        torch.stack([zero, zero, zero, zero]),
    ])
    return torch.linalg.matrix_exp(hat)


def _se3_inv(T: torch.Tensor) -> torch.Tensor:
    R, t = T[:3, :3], T[:3, 3:]
    top = torch.cat([R.T, -R.T @ t], 1)
    return torch.cat([top, T[3:]], 0)


def hand_eye_correction(relative: torch.Tensor, E: torch.Tensor) -> torch.Tensor:
    """Correction C = inv(A) E A inv(E) of a pose whose motion A relative to the anchor pose carries the
    hand-eye error E (input poses = ECM pose · X · E): input pose · C = anchor · (true motion)."""
    return _se3_inv(relative) @ E @ relative @ _se3_inv(E)


def refine_pose(gaussians: dict[str, torch.Tensor], camera: RenderCamera, rgb: torch.Tensor,
                depth: torch.Tensor, tissue: torch.Tensor, scene_depth: float, cfg: PoseRefineConfig,
                backend: str = "torch", init_xi: np.ndarray | None = None,
                relative: np.ndarray | None = None) -> PoseRefineResult:
    """Refine `camera`'s pose against evaluated Gaussians (detached) with Adam on an se(3) twist xi.

    rgb [H,W,3] 0..1, depth [H,W] metres (0 = invalid), tissue [H,W] 1 = tissue, all on the Gaussians'
    device. Without `relative` the correction is C = exp(xi); with `relative` = A (the input pose relative
    to the anchor pose) it is the hand-eye form C = inv(A) exp(xi) A exp(-xi). `init_xi` (e.g. the previous
    estimate) is where the search starts; the loss to beat is always the one at the uncorrected pose. The
    camera's viewmat carries the correction, so any backend that differentiates through it works.
    """
    eye = np.eye(4)
    g = {k: v.detach() for k, v in gaussians.items()}
    if g["means"].shape[0] == 0:
        return PoseRefineResult("no_overlap", eye, math.nan, math.nan, 0.0, 0.0, 0)
    with torch.no_grad():
        _, _, alpha0, info = render_evaluated(g, camera, backend)
        # Only Gaussians visible from the input pose can matter for a small correction: render those.
        visible = (info["radii"] > 0).all(-1)
        g = {k: v[visible] for k, v in g.items()}
        px = (tissue > 0.5) & (alpha0 > cfg.min_alpha)
        has_d = px & (depth > 0)
        overlap = float(px.sum()) / max(1.0, float((tissue > 0.5).sum()))
    if overlap < cfg.min_overlap or not bool(px.any()):
        return PoseRefineResult("no_overlap", eye, math.nan, math.nan, 0.0, 0.0, 0)
    dev = rgb.device
    # Optimise in units where one step moves rotation (rad) and translation (x scene depth) alike.
    scale = torch.tensor([scene_depth] * 3 + [1.0] * 3, dtype=torch.float64, device=dev)
    A = None if relative is None else torch.as_tensor(relative, dtype=torch.float64, device=dev)

    def correction(xi: torch.Tensor) -> torch.Tensor:
        E = se3_exp(xi.double() * scale)
        return E if A is None else hand_eye_correction(A, E)

    def loss_at(xi: torch.Tensor) -> torch.Tensor:
        # Pose T·C has view matrix inv(C)·inv(T).
        view = (_se3_inv(correction(xi)) @ camera.viewmat.double()).float()
        out, d, _, _ = render_evaluated(g, RenderCamera(view, camera.K, camera.width, camera.height, camera.eps2d),
                                        backend)
        r, t = out[px], rgb[px]
        if cfg.exposure:
            # The endoscope's light moves with it: brightness changes with distance, so compare after the
            # per-channel gain and offset that best map the render onto the frame (least squares).
            rc, tc = r - r.mean(0), t - t.mean(0)
            gain = (rc * tc).sum(0) / (rc * rc).sum(0).clamp(min=1e-8)
            r = rc * gain + t.mean(0)
        loss = (r - t).abs().mean()
        if cfg.depth_weight > 0 and bool(has_d.any()):
            loss = loss + cfg.depth_weight * ((d[has_d] - depth[has_d]).abs() / scene_depth).mean()
        return loss

    with torch.no_grad():
        loss0 = float(loss_at(torch.zeros(6, device=dev)))
    if not math.isfinite(loss0):
        return PoseRefineResult("non_finite", eye, loss0, loss0, 0.0, 0.0, 0)
    start = np.zeros(6) if init_xi is None else np.asarray(init_xi, dtype=np.float64) / scale.cpu().numpy()
    xi = torch.tensor(start, dtype=torch.float32, device=dev, requires_grad=True)
    # Adam with one second moment for the whole twist: the step follows the gradient's direction, so a
    # direction the images barely constrain (e.g. hand-eye translation before the endoscope rotates much)
    # barely moves, where per-coordinate Adam would walk it at full speed on noise.
    m, v = torch.zeros(6, device=dev), torch.zeros((), device=dev)
    b1, b2 = 0.9, 0.999
    best, best_xi, done = math.inf, None, 0
    for done in range(1, cfg.iterations + 2):
        last = done == cfg.iterations + 1            # one more evaluation of the final step, no update
        with torch.set_grad_enabled(not last):
            loss = loss_at(xi)
        value = float(loss.detach())
        if not math.isfinite(value) or not bool(torch.isfinite(xi).all()):
            break
        if value < best:
            best, best_xi = value, xi.detach().clone()
        if last or not loss.requires_grad:        # nothing visible any more: the loss ignores the pose
            break
        (grad,) = torch.autograd.grad(loss, xi)
        with torch.no_grad():
            m = b1 * m + (1 - b1) * grad
            v = b2 * v + (1 - b2) * grad.pow(2).mean()
            xi -= cfg.lr * (m / (1 - b1 ** done)) / ((v / (1 - b2 ** done)).sqrt() + 1e-12)
    iters = done - 1
    if best_xi is None:
        return PoseRefineResult("non_finite", eye, loss0, loss0, 0.0, 0.0, iters)
    with torch.no_grad():
        C = correction(best_xi).cpu().numpy()
        E = se3_exp(best_xi.double() * scale).cpu().numpy()
    (tm, rd), (te, re) = pose_error(C, np.eye(4)), pose_error(E, np.eye(4))
    if max(tm, te) > cfg.max_trans_m or max(rd, re) > cfg.max_rot_deg:
        status = "too_large"
    elif best >= loss0 * (1.0 - cfg.min_improvement):
        status = "not_better"
    else:
        return PoseRefineResult(ACCEPTED, C, loss0, best, tm, rd, iters, (best_xi.double() * scale).cpu().numpy())
    return PoseRefineResult(status, eye, loss0, loss0, tm, rd, iters)


class PoseRefiner:
    """Refines successive frames: keeps the anchor (first pose, the model's gauge) and the warm start."""

    def __init__(self, cfg: PoseRefineConfig) -> None:
        if cfg.mode not in MODES:
            raise ValueError(f"pose refinement mode must be one of {MODES}, got {cfg.mode!r}")
        self.cfg = cfg
        self.anchor: np.ndarray | None = None
        self.xi: np.ndarray | None = None

    def refine(self, gaussians: dict[str, torch.Tensor], camera: RenderCamera, pose: np.ndarray,
               rgb: torch.Tensor, depth: torch.Tensor, tissue: torch.Tensor, scene_depth: float,
               backend: str = "torch") -> PoseRefineResult:
        """Refine one frame (`camera` at `pose`) against the model; the first call only sets the anchor."""
        if self.anchor is None:
            self.anchor = np.asarray(pose, dtype=np.float64).copy()
            return PoseRefineResult("anchor", np.eye(4), math.nan, math.nan, 0.0, 0.0, 0)
        rel = np.linalg.inv(self.anchor) @ pose if self.cfg.mode == "hand_eye" else None
        res = refine_pose(gaussians, camera, rgb, depth, tissue, scene_depth, self.cfg, backend,
                          init_xi=self.xi, relative=rel)
        if res.accepted:
            self.xi = res.xi
        return res

    def state_dict(self) -> dict:
        """The anchor pose and the current estimate (a checkpoint continues refining from them)."""
        return {"anchor": self.anchor, "xi": self.xi}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` output; NaN or misshapen values are refused with a message naming them."""
        anchor, xi = state.get("anchor"), state.get("xi")
        if anchor is not None:
            anchor = np.asarray(anchor, dtype=np.float64)
            if anchor.shape != (4, 4) or not np.all(np.isfinite(anchor)):
                raise ValueError(f"pose refiner anchor must be a finite 4x4 pose, got {anchor.tolist()}")
        if xi is not None:
            xi = np.asarray(xi, dtype=np.float64)
            if xi.shape != (6,) or not np.all(np.isfinite(xi)) or anchor is None:
                raise ValueError(f"pose refiner estimate must be 6 finite values after an anchor, got {xi.tolist()}")
        self.anchor, self.xi = anchor, xi

    def correction_of(self, pose: np.ndarray) -> np.ndarray:
        """hand_eye mode: the correction the current estimate gives an input pose (identity before one)."""
        if self.anchor is None or self.xi is None:
            return np.eye(4)
        A = torch.as_tensor(np.linalg.inv(self.anchor) @ pose, dtype=torch.float64)
        return hand_eye_correction(A, se3_exp(torch.as_tensor(self.xi, dtype=torch.float64))).numpy()
