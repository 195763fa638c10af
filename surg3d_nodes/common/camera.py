"""Pinhole stereo camera model: the ROS-free twin of sensor_msgs/CameraInfo (REP-104)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class CameraModel:
    """One camera of a (possibly rectified) stereo pair, with CameraInfo semantics.

    K: 3x3 intrinsics of the raw image; D: plumb_bob / rational distortion; R: 3x3 rectification
    rotation; P: 3x4 projection of the rectified image. For the right camera of a rectified pair
    P[0, 3] = -fx * baseline (REP-104), so `baseline` is recovered from P alone. Pixel (0, 0) has
    its centre at image coordinate (0, 0) as in ROS/OpenCV; gsplat-style renderers add 0.5 to cx, cy.
    """

    width: int
    height: int
    K: np.ndarray
    D: np.ndarray = field(default_factory=lambda: np.zeros(5))
    R: np.ndarray = field(default_factory=lambda: np.eye(3))
    P: np.ndarray | None = None
    distortion_model: str = "plumb_bob"
    frame_id: str = "camera"

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.D = np.asarray(self.D, dtype=np.float64).ravel()
        self.R = np.asarray(self.R, dtype=np.float64).reshape(3, 3)
        if self.P is None:
            self.P = np.hstack([self.K, np.zeros((3, 1))])
        self.P = np.asarray(self.P, dtype=np.float64).reshape(3, 4)
        self.width, self.height = int(self.width), int(self.height)
        self.validate()

    @classmethod
    def pinhole(cls, width: int, height: int, fx: float, fy: float | None = None,
                cx: float | None = None, cy: float | None = None, baseline: float = 0.0,
                frame_id: str = "camera") -> CameraModel:
        """A rectified, distortion-free camera; `baseline` (metres) > 0 makes it the right camera.

        The principal point defaults to the image centre, (width - 1) / 2 in ROS convention.
        """
        fy = fx if fy is None else fy
        cx = (width - 1) / 2.0 if cx is None else cx
        cy = (height - 1) / 2.0 if cy is None else cy
        K = np.array([[fx, 0, cx], [0, fy, cy], [0, 0, 1]], dtype=np.float64)
        P = np.hstack([K, np.array([[-fx * baseline], [0.0], [0.0]])])
        return cls(width, height, K, np.zeros(5), np.eye(3), P, frame_id=frame_id)

    def validate(self) -> None:
        """Raise ValueError naming the problem when the calibration cannot be used."""
        for name in ("K", "D", "R", "P"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"camera calibration {name} has non-finite values")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"camera size must be positive, got {self.width}x{self.height}")
        if self.K[0, 0] <= 0 or self.K[1, 1] <= 0:
            raise ValueError(f"camera focal length must be positive, got K={self.K.tolist()}")
        if self.P[0, 0] <= 0 or self.P[1, 1] <= 0:
            raise ValueError(f"camera projection P has non-positive focal length: {self.P.tolist()}")

    @property
    def fx(self) -> float:
        return float(self.P[0, 0])

    @property
    def fy(self) -> float:
        return float(self.P[1, 1])

    @property
    def cx(self) -> float:
        return float(self.P[0, 2])

    @property
    def cy(self) -> float:
        return float(self.P[1, 2])

    @property
    def baseline(self) -> float:
        """Stereo baseline in metres from the right camera's P (0 for a left/mono camera)."""
        return float(-self.P[0, 3] / self.P[0, 0])

    @property
    def is_rectified(self) -> bool:
        """True when the raw image already is the rectified image (no distortion, R = I, K = P[:, :3])."""
        return bool(np.allclose(self.D, 0) and np.allclose(self.R, np.eye(3))
                    and np.allclose(self.K, self.P[:, :3]))

    def intrinsics(self) -> np.ndarray:
        """3x3 intrinsics of the rectified image (from P), the matrix the reconstruction uses."""
        return self.P[:, :3].copy()

    def scaled(self, s: float) -> CameraModel:
        """The same camera for an image resized by factor `s` (pixel centres at +0.5 kept aligned)."""
        return CameraModel(round(self.width * s), round(self.height * s), scale_intrinsics(self.K, s, s), self.D,
                           self.R, scale_intrinsics(self.P, s, s), self.distortion_model, self.frame_id)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> CameraModel:
        """The same camera for the image region [x0, x0 + width) x [y0, y0 + height) (principal point shifted)."""
        if x0 < 0 or y0 < 0 or x0 + width > self.width or y0 + height > self.height or width < 1 or height < 1:
            raise ValueError(f"crop {width}x{height}+{x0}+{y0} is outside the {self.width}x{self.height} image")
        return CameraModel(width, height, crop_intrinsics(self.K, x0, y0), self.D, self.R,
                           crop_intrinsics(self.P, x0, y0), self.distortion_model, self.frame_id)


def crop_intrinsics(K: np.ndarray, x0: float, y0: float) -> np.ndarray:
    """A copy of intrinsics K (3x3, or a 3x4 projection P) for the image cut from pixel (x0, y0) on."""
    K = np.array(K, dtype=np.float64)
    K[0, 2] -= x0
    K[1, 2] -= y0
    return K


def scale_intrinsics(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    """A copy of intrinsics K (3x3, or a 3x4 projection P) for an image resized by sx, sy, with pixel
    centres (at +0.5) kept aligned: the image's corners stay where they were."""
    K = np.array(K, dtype=np.float64)
    K[0, :] *= sx
    K[1, :] *= sy
    K[0, 2] += 0.5 * sx - 0.5
    K[1, 2] += 0.5 * sy - 0.5
    return K
