"""Regions of interest marked by the operator, and which pixels of a training frame see them.

A region is a sphere in the world frame. A pixel is inside when the tissue point it sees (the measured depth,
else the model's own rendered depth) lies in a region's sphere. The trainer weighs those pixels `roi_weight`
times more in the colour loss: their Gaussians get larger screen-space gradients, so densification spends
more of the Gaussian budget there, and the Gaussians shared with the rest of the image follow the region
first. Each frame also keeps the image box about the regions (`region_box`) at a finer scale than the
training's, the camera's own where that box has no more pixels than a training frame, and a share of the steps
(`roi_step_share`) trains on it instead of the whole frame: the region gets the camera's detail at the same
budget, where the weight alone did little (Adam's steps are normalised per parameter). The steps report the PSNR
inside the regions on the newest frame, in its box where it has one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # Region travels through ros/convert.py, which every node imports: no torch at import time
    import torch


@dataclass(frozen=True)
class Region:
    """One region of interest: a sphere in the world (reconstruction) frame, metres."""

    id: int
    center: tuple[float, float, float]
    radius: float


def update_regions(regions: dict[int, Region], region: Region) -> dict[int, Region]:
    """`regions` after one update as the regions topic carries it: a positive radius adds or replaces region
    `id`; a radius <= 0 deletes it, and with id 0 deletes every region (the viewer's clear)."""
    out = dict(regions)
    if region.radius > 0:
        out[region.id] = region
    elif region.id == 0:
        out.clear()
    else:
        out.pop(region.id, None)
    return out


def region_pixels(regions: tuple[Region, ...], depth: torch.Tensor, K: np.ndarray,
                  pose: np.ndarray) -> torch.Tensor:
    """[H,W] bool: pixels whose depth (metres, 0 = none) puts their point inside any region. K follows the
    ROS convention; `pose` is camera-to-world."""
    import torch

    h, w = depth.shape
    dev = depth.device
    v, u = torch.meshgrid(torch.arange(h, device=dev, dtype=depth.dtype),
                          torch.arange(w, device=dev, dtype=depth.dtype), indexing="ij")
    cam = torch.stack([(u - float(K[0, 2])) / float(K[0, 0]) * depth,
                       (v - float(K[1, 2])) / float(K[1, 1]) * depth, depth], -1)
    R = torch.as_tensor(pose[:3, :3], dtype=depth.dtype, device=dev)
    t = torch.as_tensor(pose[:3, 3], dtype=depth.dtype, device=dev)
    world = cam @ R.T + t
    inside = torch.zeros((h, w), dtype=torch.bool, device=dev)
    for r in regions:
        c = torch.as_tensor(r.center, dtype=depth.dtype, device=dev)
        inside |= (world - c).pow(2).sum(-1) <= r.radius ** 2
    return inside & (depth > 0)


def region_box(regions: tuple[Region, ...], pose: np.ndarray, K: np.ndarray, width: int,
               height: int) -> tuple[int, int, int, int] | None:
    """(x0, y0, width, height): the pixel box of a `width` x `height` image (intrinsics K, ROS convention;
    `pose` camera-to-world) that holds every region's sphere as the camera sees it, clipped to the image; the whole
    image where a sphere reaches behind the camera's plane; None where no region is in view."""
    R, t = np.asarray(pose[:3, :3], np.float64), np.asarray(pose[:3, 3], np.float64)
    lo, hi = np.array([np.inf, np.inf]), np.array([-np.inf, -np.inf])
    corners = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64)
    for r in regions:
        c = R.T @ (np.asarray(r.center, np.float64) - t)
        pts = c + r.radius * corners             # the sphere's bounding cube: its projection holds the sphere's
        if (pts[:, 2] <= 1e-6).any():
            return (0, 0, width, height) if c[2] + r.radius > 0 else None
        uv = pts[:, :2] / pts[:, 2:] * np.array([K[0, 0], K[1, 1]]) + np.array([K[0, 2], K[1, 2]])
        lo, hi = np.minimum(lo, uv.min(0)), np.maximum(hi, uv.max(0))
    if not np.isfinite(lo).all():
        return None
    x0, y0 = max(0, int(np.floor(lo[0] + 0.5))), max(0, int(np.floor(lo[1] + 0.5)))
    x1, y1 = min(width, int(np.ceil(hi[0] + 0.5))), min(height, int(np.ceil(hi[1] + 0.5)))
    if x1 <= x0 or y1 <= y0:
        return None
    return x0, y0, x1 - x0, y1 - y0
