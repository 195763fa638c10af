"""Regions of interest marked by the operator, and which pixels of a training frame see them.

A region is a sphere in the world frame. A pixel is inside when the tissue point it sees (the measured depth,
else the model's own rendered depth) lies in a region's sphere. The trainer weighs those pixels `roi_weight`
times more in the colour loss: their Gaussians get larger screen-space gradients, so densification spends
more of the Gaussian budget there, and the Gaussians shared with the rest of the image follow the region
first. Each step also reports the PSNR inside the regions on the newest frame.
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
