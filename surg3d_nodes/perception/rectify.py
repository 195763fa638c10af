"""Stereo rectification maps from CameraInfo-style calibration (K, D, R, P), cached per calibration."""

from __future__ import annotations

from collections import OrderedDict

import cv2
import numpy as np

from surg3d_nodes.common.camera import CameraModel


def rectified_camera(cam: CameraModel) -> CameraModel:
    """The CameraModel of the rectified image: K = P[:, :3], no distortion, R = I, same P."""
    return CameraModel(cam.width, cam.height, cam.P[:, :3].copy(), np.zeros(5), np.eye(3), cam.P.copy(),
                       "plumb_bob", cam.frame_id)


def _calibration_key(cam: CameraModel) -> tuple:
    return (cam.width, cam.height, cam.distortion_model, cam.K.tobytes(), cam.D.tobytes(),
            cam.R.tobytes(), cam.P.tobytes())


class Rectifier:
    """Undistort + rectify images of one or more cameras with cv2.remap.

    Maps are built once per distinct calibration (LRU of `cache_size` entries) since
    cv2.initUndistortRectifyMap costs ~10x a remap. Cameras whose raw image already is the
    rectified one (`cam.is_rectified`) are passed through unchanged.
    """

    def __init__(self, cache_size: int = 4, interpolation: int = cv2.INTER_LINEAR) -> None:
        self.cache_size = int(cache_size)
        self.interpolation = interpolation
        self._maps: OrderedDict[tuple, tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def maps(self, cam: CameraModel) -> tuple[np.ndarray, np.ndarray]:
        """(map1, map2) fixed-point remap tables taking the raw image to the rectified one."""
        key = _calibration_key(cam)
        hit = self._maps.get(key)
        if hit is not None:
            self._maps.move_to_end(key)
            return hit
        size = (cam.width, cam.height)
        new_k = cam.P[:, :3]
        if cam.distortion_model == "equidistant":
            m1, m2 = cv2.fisheye.initUndistortRectifyMap(cam.K, cam.D[:4], cam.R, new_k, size, cv2.CV_16SC2)
        elif cam.distortion_model in ("plumb_bob", "rational_polynomial", ""):
            m1, m2 = cv2.initUndistortRectifyMap(cam.K, cam.D, cam.R, new_k, size, cv2.CV_16SC2)
        else:
            raise ValueError(f"unsupported distortion model '{cam.distortion_model}' "
                             "(expected plumb_bob, rational_polynomial or equidistant)")
        self._maps[key] = (m1, m2)
        while len(self._maps) > self.cache_size:
            self._maps.popitem(last=False)
        return m1, m2

    def rectify(self, image: np.ndarray, cam: CameraModel) -> np.ndarray:
        """Rectified copy of raw `image` (cam.height x cam.width); `image` itself when already rectified."""
        if image.shape[0] != cam.height or image.shape[1] != cam.width:
            raise ValueError(f"image is {image.shape[1]}x{image.shape[0]} but its CameraInfo says "
                             f"{cam.width}x{cam.height}")
        if cam.is_rectified:
            return image
        m1, m2 = self.maps(cam)
        return cv2.remap(image, m1, m2, self.interpolation, borderMode=cv2.BORDER_CONSTANT)
