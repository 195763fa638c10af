"""Camera tracking without kinematics: the left camera's pose from the rectified stereo stream (ROS-free).

Per frame the tracker gets the rectified left image, its stereo depth (metres, NaN invalid) and the instrument
mask (255 = instrument) and returns T_world_cam of the left optical frame, or no pose when it cannot vouch for
one. The world is the first tracked frame's camera (or `initial_pose`).

Method (sparse visual odometry anchored on keyframes):
- a keyframe holds corners (GFTT) detected on tissue pixels only (instrument mask dilated, valid depth) and
  their 3D points in the world from its depth and pose;
- the keyframe's corners are tracked frame to frame with pyramidal Lucas-Kanade (forward-backward checked), so
  each track links a 2D observation in the current frame to (a) the keyframe's 3D point and (b) the 3D point
  back-projected from the previous frame's depth;
- PnP with RANSAC against the previous frame's points gives the motion prior (recent points: little tissue
  deformation in between); PnP with RANSAC against the keyframe's points, started from that prior, gives the
  pose (anchored: no drift while the keyframe stays in view). RANSAC outliers (instrument pixels the mask
  missed, tissue that the instruments pull) are dropped from the tracks;
- when too few tracks survive, the stored keyframe closest in pose is tried first (its points projected with
  the current pose seed the flow), so a camera that comes back re-anchors where it was (drift stays bounded);
  only if none fits is a new keyframe made from the current frame;
- a frame whose best PnP has too few inliers, too low an inlier ratio, too large a reprojection error or a
  jump beyond `max_jump_mm` / `max_jump_deg` per frame from the last good pose gets NO pose and changes no
  state. The next frames are tracked from the last good frame; after `relocalise_after` failures the tracker
  relocalises against its keyframes (nearest first).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from surg3d_nodes.common.geometry import pose_matrix
from surg3d_nodes.common.params import param


@dataclass
class TrackerParams:
    """Settings of the camera tracker (the `tracker` node's parameters besides its own options)."""

    max_features: int = param(300, "corners per keyframe (GFTT on tissue pixels)", low=8, high=10_000)
    min_distance_px: float = param(8.0, "px at 640 px image width (scaled with the width), corner spacing",
                                   low=1.0, high=200.0)
    quality_level: float = param(0.003, "GFTT quality relative to the strongest corner", low=1e-5, high=1.0)
    mask_margin_px: int = param(6, "px at 640 px width, instrument mask dilation (edges, shadows)", low=0,
                                high=200)
    lk_window_px: int = param(21, "Lucas-Kanade window (odd)", low=5, high=101)
    lk_levels: int = param(3, "Lucas-Kanade pyramid levels above the image", low=0, high=8)
    fb_max_px: float = param(0.5, "px, forward-backward flow disagreement beyond which a track is dropped",
                             low=0.01, high=20.0)
    ransac_px: float = param(1.5, "px at 640 px width, PnP RANSAC inlier threshold", low=0.1, high=50.0)
    min_inliers: int = param(30, "fewer PnP inliers: no pose for the frame", low=6, high=10_000)
    min_inlier_ratio: float = param(0.5, "lower inlier share of the tracked points: no pose", low=0.0, high=1.0)
    max_reproj_px: float = param(1.0, "px at 640 px width, larger inlier RMS reprojection error: no pose",
                                 low=0.01, high=50.0)
    max_jump_mm: float = param(8.0, "mm per frame since the last good pose; a larger move is a failure",
                               low=0.01, high=1000.0)
    max_jump_deg: float = param(5.0, "deg per frame since the last good pose; a larger turn is a failure",
                                low=0.01, high=180.0)
    keyframe_tracks: float = param(0.5, "a new keyframe when fewer than this share of its corners remain",
                                   low=0.05, high=1.0)
    max_keyframes: int = param(50, "keyframes kept for re-anchoring and relocalisation (oldest dropped, the "
                                   "first kept)", low=1, high=10_000)
    revisit_mm: float = param(5.0, "mm, stored keyframes this close (and revisit_deg) are tried before a new "
                                   "one", low=0.0, high=1000.0)
    revisit_deg: float = param(5.0, "deg, see revisit_mm", low=0.0, high=180.0)
    relocalise_after: int = param(1, "failed frames after which the next frame relocalises on keyframes",
                                  low=1, high=10_000)
    min_depth_m: float = param(0.005, "m, nearer depth is not used", low=0.0, high=10.0)
    max_depth_m: float = param(0.5, "m, farther depth is not used", low=0.001, high=100.0)
    initial_pose: tuple[float, ...] = param((0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0), "T_world_cam of the first "
                                            "tracked frame [x, y, z, qx, qy, qz, qw], m")


@dataclass
class TrackResult:
    """One frame's outcome: `pose` (T_world_cam) or None, with the figures that judged it."""

    pose: np.ndarray | None
    status: str                   # "init", "tracked", "keyframe", "revisit", "relocalised", "lost: <why>"
    inliers: int = 0
    inlier_ratio: float = 0.0
    reproj_px: float = float("nan")   # RMS reprojection error of the inliers (at this image's scale)
    tracks: int = 0
    keyframe: int = -1            # index of the keyframe the pose is anchored to
    ms: float = 0.0


@dataclass
class _Keyframe:
    index: int
    gray: np.ndarray
    pts: np.ndarray               # (N, 2) float32 corners
    X: np.ndarray                 # (N, 3) float64 world points
    pose: np.ndarray              # T_world_cam


@dataclass
class _Pnp:
    pose: np.ndarray              # T_world_cam
    inliers: np.ndarray           # bool (N,)
    reproj_px: float


@dataclass
class TrackerStats:
    """Counts over the tracker's life (shown in the node's heartbeat)."""

    frames: int = 0
    posed: int = 0
    lost: int = 0
    keyframes: int = 0
    revisits: int = 0
    relocalised: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


def _rot_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def pose_from_params(values: tuple[float, ...]) -> np.ndarray:
    """4x4 T from [x, y, z, qx, qy, qz, qw] (ValueError when not 7 finite numbers or a zero quaternion)."""
    if len(values) != 7:
        raise ValueError(f"a pose needs 7 numbers [x, y, z, qx, qy, qz, qw], got {len(values)}")
    return pose_matrix(np.asarray(values[:3]), np.asarray(values[3:]))


class CameraTracker:
    """Stereo visual odometry with keyframe anchoring (see the module docstring). Not thread-safe: one caller.

    `track(image, depth, mask)` per frame, in time order; `reset()` forgets everything (a new clip).
    """

    def __init__(self, K: np.ndarray, width: int, params: TrackerParams | None = None) -> None:
        self.p = params or TrackerParams()
        self.K = np.asarray(K, dtype=np.float64).reshape(3, 3)
        self.width = int(width)
        # Pixel-sized settings are given at 640 px width: the same settings work at any image size.
        s = width / 640.0
        self._min_dist = max(2.0, self.p.min_distance_px * s)
        self._margin = round(self.p.mask_margin_px * s)
        self._ransac = max(0.5, self.p.ransac_px * s)
        self._max_reproj = max(0.35, self.p.max_reproj_px * s)
        win = max(5, round(self.p.lk_window_px * max(s, 0.5)) | 1)
        self._lk = dict(winSize=(win, win), maxLevel=self.p.lk_levels,
                        criteria=(cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 30, 0.01))
        self.stats = TrackerStats()
        self.reset()

    def reset(self) -> None:
        """Forget the trajectory and keyframes; the next frame starts a new world."""
        self.keyframes: list[_Keyframe] = []
        self._kf: _Keyframe | None = None
        self._prev_gray: np.ndarray | None = None
        self._prev_pose: np.ndarray | None = None
        self._tracks: np.ndarray = np.zeros((0, 2), np.float32)    # current 2D positions of the kf corners
        self._track_ids: np.ndarray = np.zeros(0, np.int64)        # their index in the keyframe
        self._prev_X: np.ndarray = np.zeros((0, 3))                # their world points from the previous depth
        self._frames_since_good = 0
        self._next_kf = 0

    @property
    def initialised(self) -> bool:
        """True once a first frame gave the world and a keyframe."""
        return self._kf is not None

    # ------------------------------------------------------------------ per frame
    def track(self, image: np.ndarray, depth: np.ndarray, mask: np.ndarray | None = None) -> TrackResult:
        """The pose of this frame (T_world_cam) or None with the reason; see the module docstring."""
        t0 = time.perf_counter()
        gray = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        usable = self._usable(depth, mask)
        if self._kf is None:
            res = self._initialise(gray, depth, usable)
        else:
            res = self._track(gray, depth, usable)
        res.ms = (time.perf_counter() - t0) * 1000.0
        self.stats.frames += 1
        if res.pose is None:
            self.stats.lost += 1
            key = res.status.removeprefix("lost: ").split(" (")[0].replace(" ", "_")
            self.stats.reasons[key] = self.stats.reasons.get(key, 0) + 1
        else:
            self.stats.posed += 1
        return res

    def _usable(self, depth: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
        """uint8 mask (255) of pixels whose depth may be used: tissue (margin around instruments), valid depth."""
        with np.errstate(invalid="ignore"):
            ok = np.isfinite(depth) & (depth > self.p.min_depth_m) & (depth < self.p.max_depth_m)
        if mask is not None:
            tool = (mask > 127).astype(np.uint8)
            if self._margin > 0:
                k = 2 * self._margin + 1
                tool = cv2.dilate(tool, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
            ok &= tool == 0
        return ok.astype(np.uint8) * 255

    def _initialise(self, gray: np.ndarray, depth: np.ndarray, usable: np.ndarray) -> TrackResult:
        pose = pose_from_params(self.p.initial_pose)
        kf = self._make_keyframe(gray, depth, usable, pose)
        if kf is None:
            return TrackResult(None, "lost: too few tissue corners to start")
        self._adopt_keyframe(kf, kf.pts.copy(), np.arange(len(kf.pts)), gray, depth, pose)
        return TrackResult(pose.copy(), "init", len(kf.pts), 1.0, 0.0, len(kf.pts), kf.index)

    def _track(self, gray: np.ndarray, depth: np.ndarray, usable: np.ndarray) -> TrackResult:
        p = self.p
        if self._frames_since_good >= p.relocalise_after:
            res = self._relocalise(gray, depth, usable)
            if res.pose is not None:
                return res
        pts, ok = self._flow(self._prev_gray, gray, self._tracks)
        ok &= self._inside(pts, usable)
        n = int(ok.sum())
        if n < p.min_inliers:
            return self._fail(f"too few tracked tissue corners ({n})", n)
        pts, ids, prev_X = pts[ok], self._track_ids[ok], self._prev_X[ok]
        guess = self._prev_pose
        f2f = self._pnp(prev_X, pts, guess)
        if f2f is not None and self._good(f2f, n):
            guess = f2f.pose
        kf = self._pnp(self._kf.X[ids], pts, guess)
        best = kf if kf is not None and self._good(kf, n) else (
            f2f if f2f is not None and self._good(f2f, n) else None)
        if best is None:
            cand = kf or f2f
            return self._judge_fail(cand, n)
        if (why := self._jump(best.pose)) is not None:
            return self._fail(why, n)
        keep = best.inliers
        pts, ids = pts[keep], ids[keep]
        status = "tracked"
        if len(ids) < p.keyframe_tracks * len(self._kf.pts):
            status = self._switch_keyframe(gray, depth, usable, best.pose)
            if status is None:
                return self._fail("no new keyframe (too few tissue corners)", n)
        else:
            self._set_tracks(pts, ids, gray, depth, best.pose)
        return TrackResult(best.pose.copy(), status, int(keep.sum()), float(keep.sum()) / n, best.reproj_px,
                           len(self._track_ids), self._kf.index)

    # ------------------------------------------------------------------ decisions
    def _good(self, r: _Pnp, n: int) -> bool:
        k = int(r.inliers.sum())
        return k >= self.p.min_inliers and k >= self.p.min_inlier_ratio * n and r.reproj_px <= self._max_reproj

    def _judge_fail(self, r: _Pnp | None, n: int) -> TrackResult:
        if r is None:
            return self._fail("PnP failed", n)
        k = int(r.inliers.sum())
        if k < self.p.min_inliers:
            return self._fail(f"too few inliers ({k} of {n})", n, r)
        if k < self.p.min_inlier_ratio * n:
            return self._fail(f"low inlier ratio ({k} of {n})", n, r)
        return self._fail(f"reprojection error ({r.reproj_px:.2f} px)", n, r)

    def _jump(self, pose: np.ndarray) -> str | None:
        """Why `pose` is implausibly far from the last good pose, or None."""
        steps = self._frames_since_good + 1
        d = np.linalg.inv(self._prev_pose) @ pose
        mm, deg = float(np.linalg.norm(d[:3, 3])) * 1000.0, _rot_deg(d[:3, :3])
        if mm > self.p.max_jump_mm * steps or deg > self.p.max_jump_deg * steps:
            return f"jump ({mm:.1f} mm, {deg:.1f} deg in {steps} frame(s))"
        return None

    def _fail(self, why: str, n: int, r: _Pnp | None = None) -> TrackResult:
        """No pose; the state stays at the last good frame."""
        self._frames_since_good += 1
        if r is None:
            return TrackResult(None, f"lost: {why}", tracks=n)
        k = int(r.inliers.sum())
        return TrackResult(None, f"lost: {why}", k, k / max(n, 1), r.reproj_px, n)

    # ------------------------------------------------------------------ keyframes
    def _make_keyframe(self, gray: np.ndarray, depth: np.ndarray, usable: np.ndarray,
                       pose: np.ndarray) -> _Keyframe | None:
        corners = cv2.goodFeaturesToTrack(gray, self.p.max_features, self.p.quality_level, self._min_dist,
                                          mask=usable, blockSize=5)
        if corners is None or len(corners) < self.p.min_inliers:
            return None
        pts = corners.reshape(-1, 2).astype(np.float32)
        X = self._world_points(pts, depth, pose)
        ok = np.isfinite(X).all(axis=1)
        if ok.sum() < self.p.min_inliers:
            return None
        kf = _Keyframe(self._next_kf, gray.copy(), pts[ok], X[ok], pose.copy())
        self._next_kf += 1
        return kf

    def _adopt_keyframe(self, kf: _Keyframe, pts: np.ndarray, ids: np.ndarray, gray: np.ndarray,
                        depth: np.ndarray, pose: np.ndarray) -> None:
        if all(k is not kf for k in self.keyframes):
            self.keyframes.append(kf)
            self.stats.keyframes += 1
            if len(self.keyframes) > self.p.max_keyframes:
                del self.keyframes[1]     # the first one anchors the world: keep it
        self._kf = kf
        self._set_tracks(pts, ids, gray, depth, pose)

    def _set_tracks(self, pts: np.ndarray, ids: np.ndarray, gray: np.ndarray, depth: np.ndarray,
                    pose: np.ndarray) -> None:
        """This frame becomes the previous frame: its tracks, their points from its depth, its pose."""
        X = self._world_points(pts, depth, pose)
        ok = np.isfinite(X).all(axis=1)
        self._tracks, self._track_ids, self._prev_X = pts[ok], ids[ok], X[ok]
        self._prev_gray, self._prev_pose = gray, pose.copy()
        self._frames_since_good = 0

    def _switch_keyframe(self, gray: np.ndarray, depth: np.ndarray, usable: np.ndarray,
                         pose: np.ndarray) -> str | None:
        """Re-anchor on a stored keyframe near `pose` if one fits, else make one here; the status or None."""
        near = [k for k in self._by_distance(pose) if k is not self._kf and self._near(k.pose, pose)]
        for kf in near[:3]:
            fit = self._fit_keyframe(kf, gray, usable, pose)
            if fit is not None and self._jump_ok(fit[0].pose, pose):
                _, pts, ids = fit
                self._adopt_keyframe(kf, pts, ids, gray, depth, pose)
                self.stats.revisits += 1
                return "revisit"
        kf = self._make_keyframe(gray, depth, usable, pose)
        if kf is None:
            return None
        self._adopt_keyframe(kf, kf.pts.copy(), np.arange(len(kf.pts)), gray, depth, pose)
        return "keyframe"

    def _jump_ok(self, a: np.ndarray, b: np.ndarray) -> bool:
        d = np.linalg.inv(a) @ b
        return (np.linalg.norm(d[:3, 3]) * 1000.0 <= self.p.max_jump_mm
                and _rot_deg(d[:3, :3]) <= self.p.max_jump_deg)

    def _near(self, a: np.ndarray, b: np.ndarray) -> bool:
        d = np.linalg.inv(a) @ b
        return (np.linalg.norm(d[:3, 3]) * 1000.0 <= self.p.revisit_mm
                and _rot_deg(d[:3, :3]) <= self.p.revisit_deg)

    def _by_distance(self, pose: np.ndarray) -> list[_Keyframe]:
        return sorted(self.keyframes, key=lambda k: float(np.linalg.norm(k.pose[:3, 3] - pose[:3, 3]))
                      + 0.001 * _rot_deg(k.pose[:3, :3].T @ pose[:3, :3]))

    def _fit_keyframe(self, kf: _Keyframe, gray: np.ndarray, usable: np.ndarray,
                      guess: np.ndarray) -> tuple[_Pnp, np.ndarray, np.ndarray] | None:
        """PnP of this frame against keyframe `kf`, its corners' flow seeded by projecting them at `guess`."""
        pred = self._project(kf.X, guess)
        pts, ok = self._flow(kf.gray, gray, kf.pts, pred)
        ok &= self._inside(pts, usable)
        n = int(ok.sum())
        if n < self.p.min_inliers:
            return None
        ids = np.flatnonzero(ok)
        r = self._pnp(kf.X[ids], pts[ids], guess)
        if r is None or not self._good(r, n):
            return None
        return r, pts[ids][r.inliers], ids[r.inliers]

    def _relocalise(self, gray: np.ndarray, depth: np.ndarray, usable: np.ndarray) -> TrackResult:
        """Try the keyframes nearest the last good pose; on success they anchor the tracking again."""
        guess = self._prev_pose
        for kf in ([self._kf] + [k for k in self._by_distance(guess) if k is not self._kf])[:4]:
            fit = self._fit_keyframe(kf, gray, usable, guess)
            if fit is None:
                continue
            r, pts, ids = fit
            if self._jump(r.pose) is not None:
                continue
            self._adopt_keyframe(kf, pts, ids, gray, depth, r.pose)
            self.stats.relocalised += 1
            k = int(r.inliers.sum())
            return TrackResult(r.pose.copy(), "relocalised", k, k / len(r.inliers), r.reproj_px,
                               len(self._track_ids), kf.index)
        return TrackResult(None, "lost: relocalisation failed")

    # ------------------------------------------------------------------ geometry
    def _world_points(self, pts: np.ndarray, depth: np.ndarray, pose: np.ndarray) -> np.ndarray:
        """World points of pixels `pts` from `depth` (nearest pixel; NaN where the depth is unusable)."""
        h, w = depth.shape
        u = np.clip(np.rint(pts[:, 0]).astype(int), 0, w - 1)
        v = np.clip(np.rint(pts[:, 1]).astype(int), 0, h - 1)
        z = depth[v, u].astype(np.float64)
        with np.errstate(invalid="ignore"):
            z[~((z > self.p.min_depth_m) & (z < self.p.max_depth_m))] = np.nan
        K = self.K
        Xc = np.stack([(pts[:, 0] - K[0, 2]) / K[0, 0] * z, (pts[:, 1] - K[1, 2]) / K[1, 1] * z, z], axis=1)
        return Xc @ pose[:3, :3].T + pose[:3, 3]

    def _project(self, X: np.ndarray, pose: np.ndarray) -> np.ndarray:
        Xc = (X - pose[:3, 3]) @ pose[:3, :3]
        z = np.maximum(Xc[:, 2], 1e-6)
        K = self.K
        return np.stack([K[0, 0] * Xc[:, 0] / z + K[0, 2], K[1, 1] * Xc[:, 1] / z + K[1, 2]],
                        axis=1).astype(np.float32)

    def _flow(self, g0: np.ndarray, g1: np.ndarray, pts: np.ndarray,
              init: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """LK flow of `pts` from g0 to g1 (optionally seeded), forward-backward checked: (positions, ok)."""
        if len(pts) == 0:
            return pts, np.zeros(0, bool)
        p0 = pts.reshape(-1, 1, 2)
        if init is None:
            p1, st, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p0, None, **self._lk)
        else:
            p1, st, _ = cv2.calcOpticalFlowPyrLK(g0, g1, p0, init.reshape(-1, 1, 2).copy(),
                                                 flags=cv2.OPTFLOW_USE_INITIAL_FLOW, **self._lk)
        back, st2, _ = cv2.calcOpticalFlowPyrLK(g1, g0, p1, p0.copy(), flags=cv2.OPTFLOW_USE_INITIAL_FLOW,
                                                **self._lk)
        fb = np.linalg.norm((back - p0).reshape(-1, 2), axis=1)
        ok = (st.ravel() == 1) & (st2.ravel() == 1) & (fb < self.p.fb_max_px)
        return p1.reshape(-1, 2), ok

    @staticmethod
    def _inside(pts: np.ndarray, usable: np.ndarray) -> np.ndarray:
        """Points that landed on usable pixels (not on an instrument, inside the image, valid depth)."""
        h, w = usable.shape
        u, v = np.rint(pts[:, 0]).astype(int), np.rint(pts[:, 1]).astype(int)
        inside = (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ok = np.zeros(len(pts), bool)
        ok[inside] = usable[v[inside], u[inside]] > 0
        return ok

    def _pnp(self, X: np.ndarray, pts: np.ndarray, guess: np.ndarray) -> _Pnp | None:
        """RANSAC PnP (seeded by `guess`, T_world_cam), refined on the inliers with Levenberg-Marquardt."""
        if len(X) < 6:
            return None
        T_cw = np.linalg.inv(guess)
        rvec = cv2.Rodrigues(T_cw[:3, :3])[0]
        tvec = T_cw[:3, 3].reshape(3, 1).copy()
        X32 = np.ascontiguousarray(X, np.float64)
        pts64 = np.ascontiguousarray(pts, np.float64)
        ok, rvec, tvec, inl = cv2.solvePnPRansac(X32, pts64, self.K, None, rvec, tvec, useExtrinsicGuess=True,
                                                 iterationsCount=100, reprojectionError=self._ransac,
                                                 confidence=0.999, flags=cv2.SOLVEPNP_ITERATIVE)
        if not ok or inl is None or len(inl) < 6:
            return None
        inliers = np.zeros(len(X), bool)
        inliers[inl.ravel()] = True
        rvec, tvec = cv2.solvePnPRefineLM(X32[inliers], pts64[inliers], self.K, None, rvec, tvec)
        # The refined pose decides the inliers again (RANSAC's set came from a minimal-sample model).
        proj = cv2.projectPoints(X32, rvec, tvec, self.K, None)[0].reshape(-1, 2)
        err = np.linalg.norm(proj - pts64, axis=1)
        inliers = err < self._ransac
        if inliers.sum() < 6:
            return None
        T = np.eye(4)
        T[:3, :3] = cv2.Rodrigues(rvec)[0]
        T[:3, 3] = tvec.ravel()
        return _Pnp(np.linalg.inv(T), inliers, float(np.sqrt(np.mean(err[inliers] ** 2))))
