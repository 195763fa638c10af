"""The operator's regions of interest in the training core: which pixels see a region, the weighted colour
loss and the region's PSNR figure, updates by id as the regions topic carries them, clearing."""

from __future__ import annotations

import numpy as np
import torch

from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.regions import Region, region_pixels, update_regions
from surg3d_nodes.recon.runner import Reconstructor, StepSchedule


def test_region_pixels_are_the_points_inside_the_sphere() -> None:
    K = np.array([[100.0, 0, 20], [0, 100.0, 15], [0, 0, 1]])
    depth = torch.full((30, 40), 0.1)
    depth[0, 0] = 0.0                                    # no depth: never inside
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    # the pixel (u=30, v=15) sees camera point (0.01, 0, 0.1) = world (1.01, 2, 3.1); 5.5 mm around it
    inside = region_pixels((Region(1, (1.01, 2.0, 3.1), 0.0055),), depth, K, pose)
    ys, xs = torch.nonzero(inside, as_tuple=True)
    assert inside[15, 30] and not inside[0, 0]
    assert int(xs.min()) == 25 and int(xs.max()) == 35 and int(ys.min()) == 10 and int(ys.max()) == 20


def test_updates_add_replace_delete_and_clear() -> None:
    a, b = Region(1, (0, 0, 0), 0.01), Region(2, (1, 0, 0), 0.02)
    regions = update_regions(update_regions({}, a), b)
    assert regions == {1: a, 2: b}
    assert update_regions(regions, Region(1, (0, 0, 0), 0.0)) == {2: b}
    assert update_regions(regions, Region(0, (0, 0, 0), 0.0)) == {}
    assert update_regions(regions, Region(2, (2, 0, 0), 0.03))[2].radius == 0.03


def test_marking_reweights_the_loss_and_reports_the_region_psnr() -> None:
    scene = generate(SynthConfig(width=64, height=48, frames=2, seed=3))
    f = scene.frames[0]
    recon = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, roi_weight=10.0, seed=0))
    assert recon.add_frame(Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left))
    kf = recon.store.recent[-1]
    # a region around the tissue seen at the image centre
    z = float(f.tissue_depth[24, 32])
    center = tuple(float(c) for c in (f.pose @ np.array([0.0, 0.0, z, 1.0]))[:3])
    plain, aux = recon.loss(kf)
    assert aux["mse_roi"] is None
    recon.set_regions((Region(1, center, 0.004),))
    marked, aux = recon.loss(kf)
    assert aux["mse_roi"] is not None and marked.item() != plain.item()
    assert recon.step(StepSchedule())
    assert recon.get_stats().psnr_regions > 10.0
    recon.set_regions(())                                # clearing restores the default loss
    _, aux = recon.loss(kf)
    assert aux["mse_roi"] is None and recon.get_stats().psnr_regions == 0.0
