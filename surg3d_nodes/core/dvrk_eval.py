"""Scoring reconstructions of the emulated dVRK scene: camera poses resolved from the kinematic streams as the
kinematics node does, and an offline reconstruction scored against the instrument-free tissue images."""

from __future__ import annotations

import time

import numpy as np

from surg3d_nodes.core.dvrk_emulator import ECM, VIDEO, DvrkEmulation
from surg3d_nodes.core.kinematics import FrameKinematics, FrameResolver, KinematicCamera
from surg3d_nodes.core.metrics import masked_psnr
from surg3d_nodes.core.trainer import Frame, OnlineTrainer, TrainerConfig


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
        else:
            camera.add_psm(m.kind, m.stamp_ns, m.T)
        for fk in resolver.poll(m.send_ns):
            out[frame_of[fk.stamp_ns]] = fk
    return out


def kinematic_poses(em: DvrkEmulation, hand_eye: np.ndarray) -> dict[int, np.ndarray]:
    """{frame: T_cart_cam} from the emulated streams (frames without a valid pose are absent)."""
    return {i: fk.camera.T for i, fk in replay_streams(em, KinematicCamera(hand_eye)).items() if fk.camera.ok}


def train_and_score(em: DvrkEmulation, poses: dict[int, np.ndarray], iterations: int, label: str,
                    stride: int = 1, num_threads: int = 2) -> tuple[float, list[float], np.ndarray]:
    """Train offline on the frames that have poses; (mean masked PSNR, per frame, middle render)."""
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, poses[i], em.scene.cam_left)
              for i, f in enumerate(em.scene.frames) if i in poses]
    trainer = OnlineTrainer(TrainerConfig(device="auto", seed=0, num_threads=num_threads, init_stride=stride,
                                          add_stride=stride))
    t0 = time.time()
    trainer.train_offline(frames, iterations,
                          lambda it, st: print(f"\r  {label}: iteration {it}/{iterations}, "
                                               f"{st.num_gaussians} Gaussians", end="", flush=True))
    print(f"  ({time.time() - t0:.0f} s)")
    scores, mid = [], None
    K = em.scene.cam_left.intrinsics()
    for i, f in enumerate(em.scene.frames):
        if i not in poses:
            continue
        rgb, _, _ = trainer.render_view(poses[i], trainer.time_of(f.stamp_ns), f.left.shape[1],
                                        f.left.shape[0], K)
        tissue = (f.mask == 0).astype(np.float32)
        ref = f.tissue_left.astype(np.float32) / 255
        scores.append(masked_psnr(rgb.astype(np.float32) / 255, ref, tissue))
        if i == len(em.scene.frames) // 2:
            mid = rgb
    return float(np.mean(scores)), scores, mid
