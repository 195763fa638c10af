"""Rigid transforms and quaternions (ROS order x, y, z, w unless a name says wxyz)."""

from __future__ import annotations

import numpy as np


def quat_to_matrix(q_xyzw: np.ndarray) -> np.ndarray:
    """3x3 rotation from a quaternion in ROS order (x, y, z, w); normalises it, rejects zero/NaN."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    n = np.linalg.norm(q)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError(f"invalid quaternion {q.tolist()}")
    x, y, z, w = q / n
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) with w >= 0 from a 3x3 rotation matrix."""
    R = np.asarray(R, dtype=np.float64)
    tr = np.trace(R)
    if tr > 0:
        s = 2.0 * np.sqrt(tr + 1.0)
        q = [(R[2, 1] - R[1, 2]) / s, (R[0, 2] - R[2, 0]) / s, (R[1, 0] - R[0, 1]) / s, 0.25 * s]
    else:
        i = int(np.argmax(np.diag(R)))
        j, k = (i + 1) % 3, (i + 2) % 3
        s = 2.0 * np.sqrt(1.0 + R[i, i] - R[j, j] - R[k, k])
        q = [0.0, 0.0, 0.0, (R[k, j] - R[j, k]) / s]
        q[i] = 0.25 * s
        q[j] = (R[j, i] + R[i, j]) / s
        q[k] = (R[k, i] + R[i, k]) / s
    q = np.array(q)
    return q if q[3] >= 0 else -q


def pose_matrix(t: np.ndarray, q_xyzw: np.ndarray) -> np.ndarray:
    """4x4 homogeneous transform from translation and quaternion (x, y, z, w)."""
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(q_xyzw)
    T[:3, 3] = np.asarray(t, dtype=np.float64)
    if not np.all(np.isfinite(T)):
        raise ValueError(f"invalid translation {np.asarray(t).tolist()}")
    return T


def matrix_to_pose(T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(translation, quaternion x, y, z, w) of a 4x4 transform."""
    T = np.asarray(T, dtype=np.float64)
    return T[:3, 3].copy(), matrix_to_quat(T[:3, :3])


def slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    """Spherical linear interpolation of unit quaternions (x, y, z, w), shortest arc."""
    q0 = np.asarray(q0, dtype=np.float64) / np.linalg.norm(q0)
    q1 = np.asarray(q1, dtype=np.float64) / np.linalg.norm(q1)
    d = float(np.dot(q0, q1))
    if d < 0:
        q1, d = -q1, -d
    if d > 0.9995:
        q = q0 + a * (q1 - q0)
        return q / np.linalg.norm(q)
    th = np.arccos(d)
    return (np.sin((1 - a) * th) * q0 + np.sin(a * th) * q1) / np.sin(th)


def backproject(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """HxWx3 camera-frame points (metres) of a depth image; NaN stays NaN.

    K follows the ROS/OpenCV convention (CameraInfo): pixel (0, 0) has its centre at (0, 0).
    Renderers that put pixel centres at +0.5 (gsplat) shift cx, cy by 0.5 themselves.
    """
    h, w = depth.shape
    u = np.arange(w, dtype=np.float64)
    v = np.arange(h, dtype=np.float64)
    uu, vv = np.meshgrid(u, v)
    x = (uu - K[0, 2]) / K[0, 0] * depth
    y = (vv - K[1, 2]) / K[1, 1] * depth
    return np.stack([x, y, depth], axis=-1)
