"""Scoring reconstructions of the emulated dVRK scene: camera poses resolved from the kinematic streams as the
kinematics node does, and an offline reconstruction scored against the instrument-free tissue images."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from surg3d_nodes.common.metrics import masked_psnr
from surg3d_nodes.dvrk.emulator import ECM, VIDEO, DvrkEmulation
from surg3d_nodes.dvrk.kinematics import (
    MEASURED_CP,
    STREAM_JOINT_NAMES,
    FrameKinematics,
    FrameResolver,
    KinematicCamera,
    pose_error,
    psm_joint_values,
)
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.runner import Reconstructor, TrainerStats, train_offline, train_stream


def replay_streams(em: DvrkEmulation, camera: KinematicCamera,
                   resolver: FrameResolver | None = None) -> dict[int, FrameKinematics]:
    """Feed the emulated streams to `camera` and `resolver` in delivery order, as the kinematics node does;
    {frame index: FrameKinematics} of every frame the resolver finalised (valid or not)."""
    resolver = resolver or FrameResolver(camera)
    frame_of = {em.image_stamp(i): i for i in range(len(em.scene.frames))}
    out = {}
    for m in em.messages:
        if m.kind == ECM:
            camera.add_ecm(m.stamp_ns, m.T)
        elif m.kind == VIDEO:
            resolver.add_image(m.stamp_ns, m.send_ns)
        elif m.what == MEASURED_CP:
            camera.add_psm(m.kind, m.stamp_ns, m.T)
        else:
            camera.add_psm_joints(m.kind, m.what, m.stamp_ns,
                                  psm_joint_values(m.what, STREAM_JOINT_NAMES[m.what], m.joints))
        for fk in resolver.poll(m.send_ns):
            out[frame_of[fk.stamp_ns]] = fk
    return out


def kinematic_poses(em: DvrkEmulation, hand_eye: np.ndarray) -> dict[int, np.ndarray]:
    """{frame: T_cart_cam} from the emulated streams (frames without a valid pose are absent)."""
    return {i: fk.camera.T for i, fk in replay_streams(em, KinematicCamera(hand_eye)).items() if fk.camera.ok}


def in_first_gauge(em: DvrkEmulation, poses: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
    """True camera poses mapped into the gauge of `poses`: the world a reconstruction defines with its
    first pose, T_first inv(T_true_first) T_true(i); a constant (hand-eye) offset cancels out of it."""
    first = min(poses)
    G = poses[first] @ np.linalg.inv(em.true_camera_pose(first))
    return {i: G @ em.true_camera_pose(i) for i in poses}


def gauge_pose_errors(em: DvrkEmulation, poses: dict[int, np.ndarray]) -> np.ndarray:
    """[n, 2] (metres, degrees) error of each pose from the truth in the poses' own gauge (in_first_gauge)."""
    truth = in_first_gauge(em, poses)
    return np.array([pose_error(poses[i], truth[i]) for i in sorted(poses)])


@dataclass
class ReconScore:
    """A reconstruction of the emulated scene, scored by masked PSNR against the instrument-free images."""

    psnr: float                      # mean over frames, rendered at the poses the trainer used
    psnr_true: float                 # ... rendered at the true poses in the model's gauge
    per_frame: list[float]           # at the poses the trainer used
    middle: np.ndarray               # render of the middle frame at its used pose
    poses: dict[int, np.ndarray]     # poses the trainer used (refined ones where a refinement was accepted)
    stats: TrainerStats


def train_and_score(em: DvrkEmulation, poses: dict[int, np.ndarray], iterations: int, label: str,
                    stride: int = 1, num_threads: int = 2, iterations_per_frame: int = 0,
                    **config) -> ReconScore:
    """Train on the frames that have poses, then `iterations` offline steps, and score the model.

    iterations_per_frame = 0: all frames are ingested before training (growth from the untrained model);
    > 0: frames arrive one by one with that many (online) training steps after each, as live. `config`
    sets further TrainerConfig fields (e.g. refine_pose_iterations).
    """
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, poses[i], em.scene.cam_left)
              for i, f in enumerate(em.scene.frames) if i in poses]
    # The emulator's frames are at the resolution to train at (no auto downscale on CPU) unless config says.
    config = {"image_scale": 1.0, **config}
    trainer = Reconstructor(TrainerConfig(device="auto", seed=0, num_threads=num_threads, init_stride=stride,
                                          add_stride=stride, iterations_per_frame=iterations_per_frame,
                                          **config))
    t0 = time.time()
    if iterations_per_frame > 0:
        train_stream(trainer, frames, iterations_per_frame,
                     lambda i, _: print(f"\r  {label}: frame {i + 1}/{len(frames)}", end="", flush=True))
    train_offline(trainer, [] if iterations_per_frame > 0 else frames, iterations,
                  lambda it, st: print(f"\r  {label}: iteration {it}/{iterations}, "
                                       f"{st.num_gaussians} Gaussians", end="", flush=True))
    print(f"  ({time.time() - t0:.0f} s)")
    used = {i: kf.pose for i, kf in zip(sorted(poses), sorted(trainer.store.keyframes, key=lambda k: k.stamp_ns),
                                        strict=True)}
    truth = in_first_gauge(em, used)
    K = em.scene.cam_left.intrinsics()
    scores, scores_true, mid = [], [], None
    for i, T in used.items():
        f = em.scene.frames[i]
        tissue = (f.mask == 0).astype(np.float32)
        ref = f.tissue_left.astype(np.float32) / 255
        t = trainer.time_of(f.stamp_ns)
        for pose, out in ((T, scores), (truth[i], scores_true)):
            rgb, _, _ = trainer.render_view(pose, t, f.left.shape[1], f.left.shape[0], K)
            out.append(masked_psnr(rgb.astype(np.float32) / 255, ref, tissue))
            if i == len(em.scene.frames) // 2 and pose is T:
                mid = rgb
    return ReconScore(float(np.mean(scores)), float(np.mean(scores_true)), scores, mid, used,
                      trainer.get_stats())
