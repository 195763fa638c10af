"""CameraInfo-style camera pair of a raw (unrectified) stereo rig from its OpenCV calibration."""

from __future__ import annotations

import cv2
import numpy as np

from surg3d_nodes.common.camera import CameraModel


def _distortion_model(D: np.ndarray) -> str:
    if D.size <= 5:
        return "plumb_bob"
    if D.size == 8:
        return "rational_polynomial"
    raise ValueError(f"unsupported distortion vector of {D.size} coefficients (expected 4, 5 or 8)")


def raw_stereo_cameras(K1: np.ndarray, D1: np.ndarray, K2: np.ndarray, D2: np.ndarray, R: np.ndarray,
                       T_m: np.ndarray, size: tuple[int, int], alpha: float = 0.0,
                       frame_ids: tuple[str, str] = ("stereo_left_optical", "stereo_right_optical"),
                       ) -> tuple[CameraModel, CameraModel]:
    """Left and right CameraModels (K, D of the raw images; R, P from cv2.stereoRectify) of a rig.

    R, T_m (metres) map left-camera points into the right camera (X_r = R X_l + T), as cv2.stereoCalibrate
    returns them. Rectifying each raw image with its K, D, R, P (cv2.initUndistortRectifyMap) puts the
    projections of any 3D point on the same row; the right P carries -fx * baseline in metres (REP-104).
    alpha = 0 keeps only valid pixels (zooms in), 1 keeps all source pixels.
    """
    D1 = np.asarray(D1, np.float64).ravel()
    D2 = np.asarray(D2, np.float64).ravel()
    if D1.size == 4:
        D1 = np.append(D1, 0.0)
    if D2.size == 4:
        D2 = np.append(D2, 0.0)
    R1, R2, P1, P2, *_ = cv2.stereoRectify(
        np.asarray(K1, np.float64), D1, np.asarray(K2, np.float64), D2, tuple(int(s) for s in size),
        np.asarray(R, np.float64), np.asarray(T_m, np.float64).reshape(3, 1),
        flags=cv2.CALIB_ZERO_DISPARITY, alpha=alpha)
    w, h = size
    left = CameraModel(w, h, K1, D1, R1, P1, _distortion_model(D1), frame_ids[0])
    right = CameraModel(w, h, K2, D2, R2, P2, _distortion_model(D2), frame_ids[1])
    if right.P[0, 3] >= 0:
        raise ValueError("calibration puts the right camera left of the left one (T[0] should be negative): "
                         f"T = {np.asarray(T_m).ravel().tolist()} m; are left and right swapped?")
    return left, right


def rectify_maps(cam: CameraModel) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps that turn a raw image of `cam` into its rectified image (size unchanged)."""
    return cv2.initUndistortRectifyMap(cam.K, cam.D, cam.R, cam.P, (cam.width, cam.height), cv2.CV_32FC1)
