"""The operator's regions of interest in the training core: which pixels see a region, the weighted colour
loss and the region's PSNR figure, updates by id as the regions topic carries them, clearing."""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import torch

from surg3d_nodes.common.camera import crop_intrinsics, scale_intrinsics
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.regions import Region, region_box, region_pixels, update_regions
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


def test_region_box_holds_the_sphere_as_the_camera_sees_it() -> None:
    K = np.array([[100.0, 0, 20], [0, 100.0, 15], [0, 0, 1]])
    pose = np.eye(4)
    pose[:3, 3] = [1.0, 2.0, 3.0]
    # centre at camera (0.01, 0, 0.1): pixel (30, 15); 5 mm reach 5 px at 0.1 m, 5.3 px on the near side (0.095 m)
    box = region_box((Region(1, (1.01, 2.0, 3.1), 0.005),), pose, K, 40, 30)
    x0, y0, w, h = box
    assert x0 <= 25 and x0 + w - 1 >= 35 and y0 <= 10 and y0 + h - 1 >= 20
    assert x0 >= 23 and x0 + w - 1 <= 37 and y0 >= 8 and y0 + h - 1 <= 22
    # clipped at the image's edge; out of view; reaching behind the camera's plane: the whole image
    edge = region_box((Region(1, (1.019, 2.0, 3.1), 0.005),), pose, K, 40, 30)
    assert edge[0] + edge[2] == 40 and edge[2] < w
    assert region_box((Region(1, (1.2, 2.0, 3.1), 0.005),), pose, K, 40, 30) is None
    assert region_box((Region(1, (1.0, 2.0, 3.0), 0.005),), pose, K, 40, 30) == (0, 0, 40, 30)
    assert region_box((Region(1, (1.0, 2.0, 2.9), 0.005),), pose, K, 40, 30) is None


def _central_region(f, cam, radius: float) -> Region:
    """A region about the tissue that frame `f` shows at its image centre."""
    K = cam.intrinsics()
    v, u = cam.height // 2, cam.width // 2
    z = float(f.tissue_depth[v, u])
    p = f.pose @ np.array([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z, 1.0])
    return Region(1, tuple(float(c) for c in p[:3]), radius)


def test_a_marked_region_trains_on_its_box_at_the_cameras_resolution(tmp_path) -> None:
    scene = generate(SynthConfig(width=64, height=48, frames=3, seed=3))
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
    recon = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=0.5, roi_step_share=0.5, seed=0))
    assert recon.add_frame(frames[0])
    assert recon.store.recent[-1].region is None                  # no region, no box
    recon.set_regions((_central_region(scene.frames[0], scene.cam_left, 0.004),))
    assert recon.add_frame(frames[1])
    kf = recon.store.recent[-1]
    box = kf.region
    # the box about the region, in the camera's own pixels (it has fewer than a 32x24 training frame), with the
    # training pixel's low-pass (4x its area in the camera's pixels), at the frame's time and pose
    assert box is not None and box.camera.width * box.camera.height <= 32 * 24
    assert box.K[0, 0] == scene.cam_left.intrinsics()[0, 0] == 2 * kf.K[0, 0]
    assert box.camera.eps2d == 4 * kf.camera.eps2d and box.t == kf.t and np.array_equal(box.pose, kf.pose)
    x0, y0 = int(scene.cam_left.intrinsics()[0, 2] - box.K[0, 2]), int(scene.cam_left.intrinsics()[1, 2] - box.K[1, 2])
    assert np.allclose(box.rgb.numpy() * 255, frames[1].rgb[y0:y0 + box.camera.height, x0:x0 + box.camera.width],
                       atol=0.51)
    # a refined pose moves the box with its frame
    moved = kf.pose.copy()
    moved[0, 3] += 1e-3
    kf.set_pose(moved)
    assert np.array_equal(box.pose, moved) and box.camera.eps2d == 4 * kf.camera.eps2d
    # half of the steps on a frame with a box train on the box; the region's figure comes from it
    for _ in range(40):
        assert recon.step(StepSchedule())
    st = recon.get_stats()
    assert 0 < st.region_steps and st.psnr_regions > 10.0
    # a view at the training size renders the box about the region at the box's scale and averages it over its
    # pixels (no aliasing of the finer detail); elsewhere it is the plain render
    view = recon.view()
    assert view.region_focal == box.K[0, 0]
    w, h = kf.camera.width, kf.camera.height
    averaged = view.render(kf.pose, w, h, kf.K)[0].astype(float)
    plain = replace(view, regions=())
    x0, y0, bw, bh = region_box(recon.regions, kf.pose, kf.K, w, h)
    K2 = scale_intrinsics(crop_intrinsics(kf.K, x0, y0), 2, 2)
    fine = cv2.resize(plain.render(kf.pose, 2 * bw, 2 * bh, K2)[0], (bw, bh), interpolation=cv2.INTER_AREA)
    inside = np.zeros((h, w), bool)
    inside[y0:y0 + bh, x0:x0 + bw] = True
    assert np.array_equal(averaged[~inside], plain.render(kf.pose, w, h, kf.K)[0][~inside])
    assert np.abs(averaged[y0:y0 + bh, x0:x0 + bw] - fine).max() <= 1.0
    # a checkpoint keeps the box
    recon2 = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=0.5))
    recon2.load_state_dict(recon.state_dict())
    again = next(k for k in recon2.store.stored() if k.stamp_ns == kf.stamp_ns).region
    assert again is not None and again.camera.eps2d == box.camera.eps2d and torch.equal(again.tissue, box.tissue)
    # clearing drops the boxes and the steps go back to whole frames
    recon.set_regions(())
    assert all(k.region is None for k in recon.store.stored())
    for _ in range(4):
        recon.step(StepSchedule())
    assert recon.get_stats().region_steps == st.region_steps
