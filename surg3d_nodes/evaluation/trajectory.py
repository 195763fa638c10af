"""Trajectory errors of estimated camera poses against the truth: ATE and RPE (mm, degrees).

The estimate lives in its own world (the tracker's: its first frame's camera); it is put into the truth's world
by the one rigid transform that makes the first posed frame coincide with the truth (no fitting over the whole
trajectory, so drift is counted in full). Frames without an estimate (None: tracking lost) are left out of the
errors and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np

from surg3d_nodes.data.datasets.base import DatasetFrame
from surg3d_nodes.perception.stereo_depth import StereoDepth
from surg3d_nodes.perception.tracker import CameraTracker, TrackerParams, TrackResult


def _rot_deg(R: np.ndarray) -> float:
    return float(np.degrees(np.arccos(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))


def align_to_first(estimated: Sequence[np.ndarray | None], truth: Sequence[np.ndarray]) -> list[np.ndarray | None]:
    """The estimates (T_world_cam) moved into the truth's world so that the first posed frame is exact."""
    if len(estimated) != len(truth):
        raise ValueError(f"{len(estimated)} estimated poses for {len(truth)} true ones")
    first = next((i for i, T in enumerate(estimated) if T is not None), None)
    if first is None:
        return [None] * len(estimated)
    A = np.asarray(truth[first]) @ np.linalg.inv(estimated[first])
    return [None if T is None else A @ T for T in estimated]


def trajectory_errors(estimated: Sequence[np.ndarray | None], truth: Sequence[np.ndarray]) -> dict[str, float]:
    """ATE (translation RMSE / max, mm; rotation mean, deg) after `align_to_first`, and RPE between consecutive
    posed frames (translation and rotation of the relative motion's error: RMSE mm, mean deg); `posed` and
    `frames` count. NaN where there is nothing to measure."""
    est = align_to_first(estimated, truth)
    te, re, rpe_t, rpe_r = [], [], [], []
    prev = None
    for i, T in enumerate(est):
        if T is None:
            continue
        G = np.asarray(truth[i])
        te.append(float(np.linalg.norm(T[:3, 3] - G[:3, 3])) * 1000.0)
        re.append(_rot_deg(T[:3, :3].T @ G[:3, :3]))
        if prev is not None and prev == i - 1:
            d_est = np.linalg.inv(est[prev]) @ T
            d_true = np.linalg.inv(truth[prev]) @ G
            E = np.linalg.inv(d_true) @ d_est
            rpe_t.append(float(np.linalg.norm(E[:3, 3])) * 1000.0)
            rpe_r.append(_rot_deg(E[:3, :3]))
        prev = i

    def rmse(v: list[float]) -> float:
        return float(np.sqrt(np.mean(np.square(v)))) if v else float("nan")

    return {"ate_mm": rmse(te), "ate_max_mm": max(te) if te else float("nan"),
            "ate_deg": float(np.mean(re)) if re else float("nan"),
            "rpe_mm": rmse(rpe_t), "rpe_deg": float(np.mean(rpe_r)) if rpe_r else float("nan"),
            "posed": len(te), "frames": len(est)}


def track_clip(frames: Iterable[DatasetFrame], params: TrackerParams | None = None,
               progress: Callable[[str], None] | None = None) -> list[TrackResult]:
    """Track a clip's left camera as the tracker node would: depth from the stereo pair (StereoDepth, SGBM),
    or the dataset's depth for a clip without right images; the frame's instrument mask when it has one."""
    tracker: CameraTracker | None = None
    stereo: StereoDepth | None = None
    out: list[TrackResult] = []
    for fr in frames:
        if tracker is None:
            tracker = CameraTracker(fr.cam_left.intrinsics(), fr.cam_left.width, params)
            if fr.right is not None and fr.cam_right is not None:
                stereo = StereoDepth(fr.cam_left, fr.cam_right)
        if stereo is not None:
            depth = stereo.compute(fr.left, fr.right).depth
        elif fr.depth is not None:
            depth = fr.depth
        else:
            raise ValueError(f"frame {fr.index} has neither a right image nor a depth map to track with")
        out.append(tracker.track(fr.left, depth, fr.mask))
        if progress is not None and (len(out) % 20 == 0):
            progress(f"  tracked {len(out)} frames ({tracker.stats.posed} posed)")
    return out


def apply_tracked_poses(frames: Iterable[DatasetFrame], data: list[dict],
                        progress: Callable[[str], None] | None = None) -> tuple[dict, set[int]]:
    """Replace each prepared frame's "pose" in `data` (evaluation/endonerf.py) by the tracker's, put into the
    dataset's world (`align_to_first`); the dataset poses only score them. Returns the trajectory errors (with
    the tracker's counts) and the indices of the frames the tracker gave no pose (they keep the dataset pose
    and must not be trained)."""
    results = track_clip(frames, progress=progress)
    if len(results) != len(data):
        raise ValueError(f"tracked {len(results)} frames for {len(data)} prepared ones")
    truth = [d["pose"] for d in data]
    estimated = [r.pose for r in results]
    errors = trajectory_errors(estimated, truth)
    lost = set()
    for i, T in enumerate(align_to_first(estimated, truth)):
        if T is None:
            lost.add(i)
        else:
            data[i]["pose"] = T
    errors["lost_frames"] = sorted(lost)
    errors["track_ms_median"] = float(np.median([r.ms for r in results]))
    return errors, lost
