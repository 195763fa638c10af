"""Synthetic scene: exact depth, consistent masks and tissue view, EndoNeRF round trip, staged writing."""

from __future__ import annotations

import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from surg3d_nodes.common.geometry import backproject
from surg3d_nodes.data.datasets import open_dataset
from surg3d_nodes.data.datasets.base import DatasetFrame
from surg3d_nodes.data.datasets.endonerf import llff_to_pose, pose_to_llff, write_endonerf_layout
from surg3d_nodes.data.synthetic import SynthConfig, _Scene, generate, scene_frames, write_endonerf


@pytest.fixture(scope="module")
def moving() -> object:
    # no noise and no vignetting, so the same surface point has nearly the same colour in both views
    return generate(SynthConfig(frames=6, camera_motion="moving", instruments=2, noise_std=0.0, seed=3,
                                vignetting=0.0))


def test_generation_is_quick_and_shaped() -> None:
    calls = []
    t0 = time.perf_counter()
    scene = generate(SynthConfig(), progress=lambda i, n: calls.append((i, n)))
    dt = time.perf_counter() - t0
    assert dt < 20.0, f"160x128x30 took {dt:.1f} s"
    assert len(scene.frames) == 30 and calls[-1] == (30, 30)
    f = scene.frames[0]
    assert f.left.shape == (128, 160, 3) and f.left.dtype == np.uint8
    assert f.depth.dtype == np.float32 and f.mask.dtype == np.uint8
    assert set(np.unique(f.mask)) <= {0, 255}
    assert scene.cam_right.baseline == pytest.approx(0.0045)
    assert scene.cam_left.fx == pytest.approx(0.9 * 160)
    stamps = [fr.stamp_ns for fr in scene.frames]
    assert np.allclose(np.diff(stamps), 1e9 / 30, atol=1)
    d = f.depth[np.isfinite(f.depth)]
    assert 0.03 < d.min() and d.max() < 0.11


def test_depth_lies_on_the_rendered_surface(moving) -> None:
    """Back-projected tissue depth lands on the analytic heightfield at the frame's time (to < 1 um)."""
    scene = moving
    world = _Scene(scene.config)
    K = scene.cam_left.intrinsics()
    for i in (0, 5):
        f = scene.frames[i]
        pts = backproject(f.tissue_depth.astype(np.float64), K).reshape(-1, 3)
        pts_w = pts @ f.pose[:3, :3].T + f.pose[:3, 3]
        z = world.surface_z(pts_w[:, 0], pts_w[:, 1], i / scene.config.fps)
        err = np.abs(pts_w[:, 2] - z)
        # float32 depth storage limits the check to ~1e-8 m relative; the cast itself is exact
        assert np.nanmax(err) < 1e-6


def test_depth_reprojects_into_the_right_view(moving) -> None:
    """Left pixels moved by the disparity fx * b / depth find the same colour in the right image."""
    scene = moving
    fx, b = scene.cam_left.fx, scene.cam_right.baseline
    f = scene.frames[2]
    h, w = f.depth.shape
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float32)

    def colour_error(depth: np.ndarray) -> float:
        ur = uu - fx * b / depth
        warped = cv2.remap(f.right, ur, vv, cv2.INTER_LINEAR)
        ok = (f.mask == 0) & np.isfinite(depth) & (ur > 1) & (ur < w - 2)
        ok &= cv2.erode((f.mask == 0).astype(np.uint8), np.ones((9, 9), np.uint8)) > 0
        return float(np.median(np.abs(warped.astype(float) - f.left.astype(float)).sum(-1)[ok]))

    good = colour_error(f.depth)
    assert good <= 3.0
    assert colour_error(f.depth * 1.05) > good + 2   # the check tells a 5 % depth error apart


def test_mask_depth_and_tissue_view_agree(moving) -> None:
    for f in moving.frames:
        m = f.mask > 0
        assert m.any() and (~m).any()
        assert np.array_equal(f.tissue_left[~m], f.left[~m])
        assert np.abs(f.tissue_left[m].astype(int) - f.left[m].astype(int)).mean() > 5
        assert np.all(f.depth[m] < f.tissue_depth[m])
        assert np.array_equal(f.depth[~m], f.tissue_depth[~m])


def test_motion_deformation_and_seed() -> None:
    static = generate(SynthConfig(frames=8, instruments=1, seed=1))
    assert all(np.array_equal(f.pose, np.eye(4)) for f in static.frames)
    # static camera but deforming tissue: the tissue depth changes over time
    assert np.nanmax(np.abs(static.frames[7].tissue_depth - static.frames[0].tissue_depth)) > 5e-4
    again = generate(SynthConfig(frames=8, instruments=1, seed=1))
    assert np.array_equal(again.frames[3].left, static.frames[3].left)
    other = generate(SynthConfig(frames=2, instruments=1, seed=2))
    assert not np.array_equal(other.frames[0].left, static.frames[0].left)
    moving = generate(SynthConfig(frames=8, camera_motion="moving", instruments=0))
    assert not np.allclose(moving.frames[7].pose, moving.frames[0].pose)
    assert all(np.allclose(f.pose[:3, :3] @ f.pose[:3, :3].T, np.eye(3)) for f in moving.frames)
    assert not any(f.mask.any() for f in moving.frames)


@pytest.mark.parametrize("kwargs, word", [
    ({"instruments": 3}, "instruments"), ({"camera_motion": "shaky"}, "camera_motion"),
    ({"width": 8}, "image size"), ({"fps": 0}, "fps"), ({"tissue_distance": 1.0}, "tissue_distance"),
    ({"wrist_articulation_deg": 95.0}, "wrist_articulation_deg"), ({"jaw_opening_deg": -5.0}, "jaw_opening_deg"),
])
def test_bad_config(kwargs: dict, word: str) -> None:
    with pytest.raises(ValueError, match=word):
        generate(SynthConfig(**kwargs))


def test_llff_round_trip() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        T = np.eye(4)
        T[:3, :3] = cv2.Rodrigues(rng.normal(size=3))[0]
        T[:3, 3] = rng.normal(size=3) * 0.05
        m = pose_to_llff(T, 512, 640, 500.0)
        assert np.allclose(m[:, 4], [512, 640, 500])
        assert np.allclose(llff_to_pose(m), T, atol=1e-15)
    # LLFF axes: column 0 = down (our +y), column 1 = right (+x), column 2 = back (-z)
    assert np.allclose(pose_to_llff(np.eye(4), 1, 1, 1)[:, :3], [[0, 1, 0], [1, 0, 0], [0, 0, -1]])


def test_endonerf_round_trip(moving, tmp_path: Path) -> None:
    out = write_endonerf(moving, tmp_path / "clip")
    reader = open_dataset("synthetic", out)
    assert len(reader) == len(moving.frames)
    assert np.allclose(reader.cam_left.P, moving.cam_left.P)
    assert np.allclose(reader.cam_right.P, moving.cam_right.P)
    for rf, sf in zip(reader, moving.frames, strict=True):
        assert rf.stamp_ns == sf.stamp_ns
        assert np.array_equal(rf.left, sf.left) and np.array_equal(rf.right, sf.right)
        assert np.array_equal(rf.mask, sf.mask) and np.array_equal(rf.extras["tissue"], sf.tissue_left)
        assert np.allclose(rf.pose, sf.pose, atol=1e-12)
        assert np.array_equal(np.isnan(rf.depth), np.isnan(sf.depth))
        assert np.nanmax(np.abs(rf.depth - sf.depth)) <= 5.01e-6    # gt_depth/ is in 0.01 mm
    coarse = open_dataset("endonerf", out, exact_depth=False).frame(0)
    assert np.nanmax(np.abs(coarse.depth - moving.frames[0].depth)) <= 5.01e-4  # depth/ is uint8 mm


def test_writer_failure_leaves_nothing(moving, tmp_path: Path) -> None:
    frames = scene_frames(moving)[:3]
    broken = DatasetFrame(index=3, stamp_ns=0, left=frames[0].left, right=None, cam_left=frames[0].cam_left,
                          cam_right=None, pose=np.eye(4))
    with pytest.raises(ValueError, match="right image"):
        write_endonerf_layout(tmp_path / "out", [*frames, broken], 4, 30.0)
    assert list(tmp_path.iterdir()) == []
    write_endonerf(moving, tmp_path / "out")
    with pytest.raises(FileExistsError, match="already exists"):
        write_endonerf(moving, tmp_path / "out")


def test_analytic_slopes_match_finite_differences() -> None:
    scene = _Scene(SynthConfig(instruments=1, seed=4))
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-0.03, 0.03, 200), rng.uniform(-0.03, 0.03, 200)
    e = 5e-5     # the heightfield is evaluated in float32: central differences good to ~5e-4 here
    for t in (0.2, 0.5):
        _, zx, zy = scene.surface(x, y, t)
        fx = (scene.surface_z(x + e, y, t).astype(float) - scene.surface_z(x - e, y, t)) / (2 * e)
        fy = (scene.surface_z(x, y + e, t).astype(float) - scene.surface_z(x, y - e, t)) / (2 * e)
        assert np.abs(zx).max() > 0.05 and np.abs(zy).max() > 0.05
        assert np.allclose(zx, fx, atol=1e-3) and np.allclose(zy, fy, atol=1e-3)
