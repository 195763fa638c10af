"""Camera tracking without kinematics (perception/tracker.py) on the synthetic scene and the shared EndoNeRF clip."""

from __future__ import annotations

import time

import cv2
import numpy as np
import pytest

from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.evaluation.trajectory import trajectory_errors
from surg3d_nodes.perception.stereo_depth import StereoDepth
from surg3d_nodes.perception.tracker import CameraTracker

SIZE = (320, 256)


def _depths(scene) -> list[np.ndarray]:
    sd = StereoDepth(scene.cam_left, scene.cam_right)
    return [sd.compute(f.left, f.right).depth for f in scene.frames]


@pytest.fixture(scope="module")
def moving_scene():
    """64 frames of the moving endoscope, two instruments, the first grasping and lifting the tissue by 4 mm.

    Breathing is off: it lifts the whole visible tissue nearly rigidly (1.5 mm at the centre, 1.2 mm at the
    image edges), which images alone cannot tell from a camera move (README, camera tracking: limits)."""
    cfg = SynthConfig(width=SIZE[0], height=SIZE[1], frames=64, camera_motion="moving", instruments=2,
                      breathing_amplitude=0.0, seed=3)
    scene = generate(cfg)
    return scene, _depths(scene)


def test_tracker_moving_endoscope_with_injected_failures(moving_scene):
    """ATE <= 0.5 mm over the clip with SGBM depth and the instrument masks; a frame of a different scene and a
    fully occluded frame, injected into the stream, get no pose and do not disturb the frames after them."""
    scene, depths = moving_scene
    other = generate(SynthConfig(width=SIZE[0], height=SIZE[1], frames=1, camera_motion="moving", instruments=1,
                                 seed=11))
    other_depth = _depths(other)[0]
    tracker = CameraTracker(scene.cam_left.intrinsics(), SIZE[0])
    poses, injected, times = [], [], []
    for i, (f, depth) in enumerate(zip(scene.frames, depths, strict=True)):
        if i == 20:    # a frame of another scene (another patient, a camera swap)
            r = tracker.track(other.frames[0].left, other_depth, other.frames[0].mask)
            injected.append(r)
        if i == 40:    # an instrument (or smoke) fills the whole view
            r = tracker.track(cv2.GaussianBlur(f.left, (0, 0), 8), depth, np.full_like(f.mask, 255))
            injected.append(r)
        t0 = time.perf_counter()
        r = tracker.track(f.left, depth, f.mask)
        times.append(time.perf_counter() - t0)
        poses.append(r.pose)
    err = trajectory_errors(poses, [f.pose for f in scene.frames])
    print(f"\nATE {err['ate_mm']:.3f} mm (max {err['ate_max_mm']:.3f}), {err['ate_deg']:.3f} deg; RPE "
          f"{err['rpe_mm']:.3f} mm {err['rpe_deg']:.3f} deg; posed {err['posed']}/{err['frames']}; injected: "
          f"{[r.status for r in injected]}; {1000 * np.median(times):.1f} ms/frame; {tracker.stats}")
    assert [r.pose for r in injected] == [None, None]
    assert err["posed"] == len(scene.frames)
    assert err["ate_mm"] <= 0.5
    assert err["rpe_mm"] <= 0.2


@pytest.mark.xfail(strict=True, reason="target missed: drift 7-13 mm (2026-12-03). Every tracked tissue corner "
                   "of this clip moves (>= 7 px from frame 0 to 20, median 42 px from 30 to 45): no rigid part "
                   "is in view, so images alone see the camera move against the tissue; a fixed endoscope "
                   "over such tissue needs pose_source:=static")
def test_tracker_static_endonerf_drift(shared_data):
    """The shared EndoNeRF clip (static camera, tissue pulled by an instrument): drift <= 0.5 mm (the target)."""
    from surg3d_nodes.data.datasets.endonerf import EndoNeRFReader
    from surg3d_nodes.evaluation.trajectory import track_clip

    reader = EndoNeRFReader(shared_data / "endonerf" / "pulling_soft_tissues")
    results = track_clip(reader)
    err = trajectory_errors([r.pose for r in results], [reader.frame(i).pose for i in range(len(reader))])
    print(f"\nEndoNeRF pulling: drift (ATE) {err['ate_mm']:.3f} mm, max {err['ate_max_mm']:.3f} mm, "
          f"{err['ate_deg']:.3f} deg; posed {err['posed']}/{err['frames']}")
    assert err["ate_max_mm"] <= 0.5


def test_trajectory_errors_known_offsets():
    """ATE aligns on the first posed frame and counts drift in full; RPE sees each step's error; lost frames
    are left out."""
    truth = []
    for i in range(5):
        T = np.eye(4)
        T[:3, 3] = [0.001 * i, 0.0, 0.0]
        truth.append(T)
    shift = np.eye(4)
    shift[:3, 3] = [0.01, 0.02, 0.0]                    # another world: removed by the alignment
    est = [shift @ T for T in truth]
    est[3] = None
    est[4] = est[4].copy()
    est[4][2, 3] += 0.0002                              # 0.2 mm off at the last frame
    e = trajectory_errors(est, truth)
    assert e["posed"] == 4 and e["frames"] == 5
    assert e["ate_max_mm"] == pytest.approx(0.2)
    assert e["ate_mm"] == pytest.approx(np.sqrt(0.04 / 4))
    assert e["rpe_mm"] == pytest.approx(0.0, abs=1e-9)  # frame 4 has no posed predecessor


def test_eval_with_tracked_poses_scores_the_trajectory(synth_bag, tmp_path):
    """`surg3d eval endonerf DIR --poses tracked`: ATE and RPE of the tracked poses in the JSON beside the
    reconstruction scores; frames without a tracked pose are not trained."""
    import json

    from surg3d_nodes.cli.eval import main

    clip = synth_bag.parent / "endonerf"
    out = tmp_path / "tracked.json"
    assert main(["endonerf", str(clip), "--poses", "tracked", "--mode", "stream", "--iterations-per-frame", "2",
                 "--crop", "96x80", "--device", "cpu", "--backend", "torch", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    t = r["tracking"]
    assert r["poses"] == "tracked" and t["frames"] == 24
    assert r["train_frames"] == 24 - len(r["test_frames"]) - len([i for i in t["lost_frames"]
                                                                    if i not in r["test_frames"]])
    # The clip's camera is fixed and its tissue breathes by 1.5 mm: the tracker follows the tissue (README limits).
    assert t["posed"] >= 22 and t["ate_max_mm"] < 2.0 and t["rpe_mm"] < 0.5
    assert np.isfinite(r["psnr"])
