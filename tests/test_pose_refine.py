"""Photometric pose refinement against the model (core.pose_refine) and its use by the trainer."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from surg3d_nodes.common.geometry import backproject
from surg3d_nodes.common.metrics import psnr
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.dvrk.emulator import EmulatorConfig, emulate
from surg3d_nodes.dvrk.kinematics import pose_error
from surg3d_nodes.evaluation.dvrk import in_first_gauge, kinematic_poses
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.io.checkpoint import load_reconstructor, save_checkpoint
from surg3d_nodes.recon.keyframes import to_keyframe
from surg3d_nodes.recon.pose_refine import PoseRefineConfig, PoseRefiner, hand_eye_correction, refine_pose
from surg3d_nodes.recon.runner import Reconstructor, train_offline

torch.set_num_threads(1)

# Rigid tissue (no breathing, no instrument pulling it): image evidence is about the camera alone.
RIGID = dict(width=80, height=64, frames=8, camera_motion="pivot", instruments=0, breathing_amplitude=0.0)


def _rigid(trans_m: float, rot_deg: float, axis=(0.6, -0.8, 0.0), direction=(0.0, 0.6, 0.8)) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues((np.array(axis) * np.radians(rot_deg)).reshape(3, 1))[0]
    T[:3, 3] = np.array(direction) * trans_m
    return T


@pytest.fixture(scope="module")
def scene():
    return generate(SynthConfig(**RIGID))


def _frame(scene, i: int, pose: np.ndarray) -> Frame:
    f = scene.frames[i]
    return Frame(f.stamp_ns, f.left, f.depth, f.mask, pose, scene.cam_left)


def _trained(scene, **cfg) -> Reconstructor:
    tr = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, num_threads=1, seed=0,
                                     **cfg))
    train_offline(tr, [_frame(scene, 0, scene.frames[0].pose)], 80)
    return tr


def _reprojection_px(scene, k: int, pose: np.ndarray) -> float:
    """Mean pixel offset of frame k's true tissue points seen from `pose` instead of the true pose."""
    K = scene.cam_left.intrinsics()
    truth = scene.frames[k].pose
    pts = backproject(scene.frames[k].tissue_depth.astype(np.float64), K).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)] @ truth[:3, :3].T + truth[:3, 3]

    def project(T: np.ndarray) -> np.ndarray:
        inv = np.linalg.inv(T)
        q = pts @ inv[:3, :3].T + inv[:3, 3]
        return q[:, :2] / q[:, 2:3] * [K[0, 0], K[1, 1]]

    return float(np.linalg.norm(project(pose) - project(truth), axis=1).mean())


def test_trainer_refines_a_perturbed_pose_towards_the_truth(scene) -> None:
    tr = _trained(scene, refine_pose_iterations=40, refine_pose_mode="frame")
    k = 2
    truth = scene.frames[k].pose               # the first pose is the truth, so the model's gauge is the world
    bad = truth @ _rigid(0.0008, 0.5, axis=(0.0, 1.0, 0.0), direction=(0.94, 0.0, 0.35))
    train_offline(tr, [_frame(scene, k, bad)], 0)   # ingest only: the frame is refined against the model
    st = tr.get_stats()
    assert st.pose_refined == 1 and st.pose_refine_rejected == 0 and st.pose_refine_last == "accepted"
    refined = tr.store.keyframes[-1].pose
    (t0, r0), (t1, r1) = pose_error(bad, truth), pose_error(refined, truth)
    px0, px1 = _reprojection_px(scene, k, bad), _reprojection_px(scene, k, refined)
    assert px0 > 1.0, "the perturbation must be visible"
    assert px1 < 0.35 * px0, f"reprojection {px0:.2f} px -> {px1:.2f} px"
    assert t1 < 0.5 * t0 and r1 < 0.5 * r0, f"{t0 * 1e3:.3f} mm {r0:.3f} deg -> {t1 * 1e3:.3f} mm {r1:.3f} deg"
    assert st.pose_correction_mm > 0.3 and st.pose_correction_deg > 0.2
    f = scene.frames[k]
    K = scene.cam_left.intrinsics()

    def score(pose: np.ndarray) -> float:
        rgb, _, _ = tr.render_view(pose, tr.time_of(f.stamp_ns), f.left.shape[1], f.left.shape[0], K)
        return psnr(rgb[4:-4, 4:-4], f.left[4:-4, 4:-4])  # the model covers the border only from frame 0

    assert score(refined) > score(bad) + 1.0


def test_hand_eye_correction_maps_kinematic_poses_into_the_models_gauge() -> None:
    em = emulate(EmulatorConfig(synth=SynthConfig(width=32, height=24, frames=8, camera_motion="pivot",
                                                  instruments=2)))
    E = _rigid(0.002, 1.0)
    bad = kinematic_poses(em, em.hand_eye @ E)
    last = max(bad)
    assert pose_error(bad[last], in_first_gauge(em, bad)[last])[0] > 3e-4, "the error must show in relative poses"
    # Reference: the kinematic poses with the true hand-eye (free of interpolation error) in the gauge of `bad`.
    good = kinematic_poses(em, em.hand_eye)
    truth = {i: bad[0] @ np.linalg.inv(good[0]) @ T for i, T in good.items()}
    Et = torch.as_tensor(E)
    for i, T in bad.items():
        A = torch.as_tensor(np.linalg.inv(bad[0]) @ T)
        C = hand_eye_correction(A, Et).numpy()
        dt, dr = pose_error(T @ C, truth[i])
        assert dt < 1e-7 and dr < 1e-5, f"frame {i}: {dt * 1e3:.4f} mm {dr:.4f} deg"
    # No motion: no information about E, and no correction.
    assert np.allclose(hand_eye_correction(torch.eye(4, dtype=torch.float64), Et).numpy(), np.eye(4))


def _keyframe(tr: Reconstructor, f: Frame):
    return to_keyframe(f, tr.cfg.image_scale, tr.time_of(f.stamp_ns), tr.device)


def _inputs(tr: Reconstructor, scene, k: int, pose: np.ndarray):
    f = scene.frames[k]
    kf = _keyframe(tr, _frame(scene, k, pose))
    with torch.no_grad():
        g = tr.model.evaluate(tr.time_of(f.stamp_ns))
    return g, kf


def test_a_refinement_never_accepts_a_worse_loss(scene) -> None:
    tr = _trained(scene)
    truth = scene.frames[2].pose
    for lr, pose in ((0.5, truth), (2e-3, truth @ _rigid(0.0005, 0.3))):
        g, kf = _inputs(tr, scene, 2, pose)
        res = refine_pose(g, kf.camera, kf.rgb, kf.depth, kf.tissue, tr.scene_depth,
                          PoseRefineConfig(iterations=15, lr=lr, max_trans_m=1.0, max_rot_deg=90.0))
        assert res.loss_after <= res.loss_before
        if res.accepted:
            assert res.loss_after < res.loss_before
        else:
            assert np.array_equal(res.correction, np.eye(4)) and res.loss_after == res.loss_before
    # Huge steps from the true pose only make things worse: nothing is accepted.
    g, kf = _inputs(tr, scene, 2, truth)
    res = refine_pose(g, kf.camera, kf.rgb, kf.depth, kf.tissue, tr.scene_depth,
                      PoseRefineConfig(iterations=10, lr=0.5, max_trans_m=1.0, max_rot_deg=90.0))
    assert res.status == "not_better"
    # A correction beyond the bound is rejected even when it lowers the loss.
    g, kf = _inputs(tr, scene, 2, truth @ _rigid(0.0008, 0.5))
    res = refine_pose(g, kf.camera, kf.rgb, kf.depth, kf.tissue, tr.scene_depth,
                      PoseRefineConfig(iterations=30, max_trans_m=1e-5, max_rot_deg=0.01))
    assert res.status == "too_large" and np.array_equal(res.correction, np.eye(4))


def test_degenerate_inputs_keep_the_input_pose(scene) -> None:
    tr = _trained(scene)
    g, kf = _inputs(tr, scene, 1, scene.frames[1].pose)
    cfg = PoseRefineConfig(iterations=5)
    nan = dict(g, colors=torch.full_like(g["colors"], float("nan")))
    res = refine_pose(nan, kf.camera, kf.rgb, kf.depth, kf.tissue, tr.scene_depth, cfg)
    assert res.status == "non_finite" and np.array_equal(res.correction, np.eye(4))
    empty = {k: v[:0] for k, v in g.items()}
    assert refine_pose(empty, kf.camera, kf.rgb, kf.depth, kf.tissue, tr.scene_depth, cfg).status == "no_overlap"
    away = _keyframe(tr, _frame(scene, 1, scene.frames[1].pose @ _rigid(0.0, 180.0)))
    res = refine_pose(g, away.camera, away.rgb, away.depth, away.tissue, tr.scene_depth, cfg)
    assert res.status == "no_overlap"
    with pytest.raises(ValueError, match="mode"):
        PoseRefiner(PoseRefineConfig(mode="bundle"))
    # In the trainer: a frame without tissue pixels (all instrument) is used with its own pose and counted.
    tr2 = _trained(scene, refine_pose_iterations=5)
    f = scene.frames[1]
    pose = f.pose @ _rigid(0.0005, 0.3)
    train_offline(tr2, [Frame(f.stamp_ns, f.left, f.depth, np.full_like(f.mask, 255), pose, scene.cam_left)], 0)
    st = tr2.get_stats()
    assert st.frames_used == 2 and st.pose_refine_rejected == 1 and st.pose_refine_last == "no_overlap"
    assert np.array_equal(tr2.store.keyframes[-1].pose, pose)


def test_hand_eye_mode_keeps_every_stored_frame_on_the_newest_estimate(scene) -> None:
    tr = _trained(scene, refine_pose_iterations=10, refine_pose_mode="hand_eye")
    E = _rigid(0.002, 1.0)
    train_offline(tr, [_frame(scene, i, scene.frames[i].pose @ E) for i in range(1, 6)], 0)
    st = tr.get_stats()
    assert st.pose_refined >= 2, "several accepted refinements, so earlier ones must have moved on"
    refiner = tr.pose_refiner
    assert refiner.xi is not None and np.array_equal(refiner.anchor, scene.frames[0].pose)
    moved = [kf for kf in tr.store.keyframes if kf.raw_pose is not None]
    assert moved, "refined frames keep their input pose"
    for kf in moved:
        # One estimate for all: a frame refined early has moved on with the newest estimate.
        assert np.allclose(kf.pose, kf.raw_pose @ refiner.correction_of(kf.raw_pose), atol=1e-9)
        assert np.allclose(kf.camera.viewmat.numpy(), np.linalg.inv(kf.pose), atol=1e-5)


def test_a_checkpoint_keeps_the_refiner_and_the_input_poses(scene, tmp_path) -> None:
    tr = _trained(scene, refine_pose_iterations=10, refine_pose_mode="hand_eye")
    E = _rigid(0.002, 1.0)
    train_offline(tr, [_frame(scene, i, scene.frames[i].pose @ E) for i in range(1, 5)], 0)
    assert tr.pose_refiner.xi is not None, "an estimate to keep"
    path = save_checkpoint(tr, tmp_path / "refined.pt")
    loaded = load_reconstructor(path)
    assert np.array_equal(loaded.pose_refiner.anchor, tr.pose_refiner.anchor)
    assert np.array_equal(loaded.pose_refiner.xi, tr.pose_refiner.xi)
    for a, b in zip(tr.store.keyframes, loaded.store.keyframes, strict=True):
        assert (a.raw_pose is None) == (b.raw_pose is None)
        if a.raw_pose is not None:
            assert np.array_equal(a.raw_pose, b.raw_pose) and np.array_equal(a.pose, b.pose)
    st, st2 = tr.get_stats(), loaded.get_stats()
    assert (st2.pose_refined, st2.pose_refine_rejected) == (st.pose_refined, st.pose_refine_rejected)
    assert st2.pose_correction_mm == st.pose_correction_mm
    # The next frame is refined the same way by the original and the reloaded trainer.
    nxt = _frame(scene, 5, scene.frames[5].pose @ E)
    train_offline(tr, [nxt], 0)
    train_offline(loaded, [nxt], 0)
    np.testing.assert_allclose(loaded.store.keyframes[-1].pose, tr.store.keyframes[-1].pose, atol=1e-9)
    np.testing.assert_allclose(loaded.pose_refiner.xi, tr.pose_refiner.xi, atol=1e-9)
    # A checkpoint of an older format (pickled numpy arrays) is refused with its version named.
    state = torch.load(path, weights_only=True)
    state["version"] = 3
    torch.save(state, tmp_path / "v3.pt")
    with pytest.raises(ValueError, match=r"v3\.pt has format version 3"):
        load_reconstructor(tmp_path / "v3.pt")
    # A corrupt estimate is refused with a message that names it.
    state = torch.load(path, weights_only=True)
    state["pose_refiner"]["xi"] = {"__ndarray__": torch.full((6,), float("nan"), dtype=torch.float64)}
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(ValueError, match=r"nan\.pt: pose refiner estimate"):
        load_reconstructor(tmp_path / "nan.pt")
