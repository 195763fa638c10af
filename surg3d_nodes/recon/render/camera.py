"""Render camera: world-to-camera view matrix + gsplat-convention intrinsics (pixel centres at +0.5)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

EPS2D = 0.3   # px^2 added to every projected covariance by all backends (gsplat's eps2d: a pixel's low-pass)


@dataclass(frozen=True)
class RenderCamera:
    """A pinhole camera as the renderers consume it.

    viewmat: 4x4 world-to-camera (OpenCV optical frame: x right, y down, z forward).
    K: 3x3 intrinsics in gsplat convention (the centre of pixel (0, 0) at (0.5, 0.5)).
    eps2d: the screen-space low-pass (px^2); a view finer than the images the model was trained on takes that of
    the training pixel (EPS2D x the ratio squared), so the Gaussians keep the footprints they were fitted with.
    """

    viewmat: torch.Tensor
    K: torch.Tensor
    width: int
    height: int
    eps2d: float = EPS2D

    @classmethod
    def from_ros(cls, T_world_camera: np.ndarray, K_ros: np.ndarray, width: int, height: int,
                 device: str | torch.device = "cpu", eps2d: float = EPS2D) -> RenderCamera:
        """Build from a camera-to-world pose and ROS/OpenCV intrinsics (adds 0.5 to cx, cy)."""
        T = np.asarray(T_world_camera, dtype=np.float64)
        K = np.asarray(K_ros, dtype=np.float64).copy()
        if T.shape != (4, 4) or not np.all(np.isfinite(T)):
            raise ValueError(f"camera pose must be a finite 4x4 matrix, got shape {T.shape}")
        if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
            raise ValueError(f"intrinsics must be a finite 3x3 matrix with positive focal, got {K.tolist()}")
        K[0, 2] += 0.5
        K[1, 2] += 0.5
        view = np.linalg.inv(T)
        return cls(torch.as_tensor(view, dtype=torch.float32, device=device),
                   torch.as_tensor(K, dtype=torch.float32, device=device), int(width), int(height), float(eps2d))

    def to(self, device: str | torch.device) -> RenderCamera:
        """The same camera with its tensors on `device`."""
        return RenderCamera(self.viewmat.to(device), self.K.to(device), self.width, self.height, self.eps2d)

    def center(self) -> torch.Tensor:
        """Camera centre in world coordinates."""
        R = self.viewmat[:3, :3]
        return -R.T @ self.viewmat[:3, 3]

    def pixels(self, means: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The pixel (x, y) [N] (long, clamped into the image) each world point [N,3] projects onto, and [N] bool:
        whether it projects inside the image, in front of the camera."""
        pc = means @ self.viewmat[:3, :3].T + self.viewmat[:3, 3]
        z = pc[:, 2]
        zs = z.clamp(min=1e-9)
        u = self.K[0, 0] * pc[:, 0] / zs + self.K[0, 2]
        v = self.K[1, 1] * pc[:, 1] / zs + self.K[1, 2]
        inside = (z > 0) & (u >= 0) & (u < self.width) & (v >= 0) & (v < self.height)
        # K carries the +0.5 of pixel centres at half-integers: pixel (x, y) spans [x, x + 1).
        x = u.floor().long().clamp(0, self.width - 1)
        y = v.floor().long().clamp(0, self.height - 1)
        return x, y, inside

    def sees(self, means: torch.Tensor, where: torch.Tensor | None = None) -> torch.Tensor:
        """[N] bool: which world points [N,3] project inside the image, in front of the camera, and with `where`
        ([H,W] bool) onto a pixel where it holds."""
        x, y, inside = self.pixels(means)
        return inside if where is None else inside & where[y, x]
