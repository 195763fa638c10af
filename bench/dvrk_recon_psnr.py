"""Reconstruction from dVRK kinematic camera poses vs ground-truth poses on the emulated synthetic scene.

The emulated dVRK streams (moving endoscope, two instruments, 100 Hz kinematics, 30 Hz video) are resolved
into camera poses exactly as the kinematics node does (core.kinematics), and the offline trainer
(core.trainer) is run three times on the same images, depth and instrument masks, differing only in poses:
ground truth, kinematics with the true hand-eye, kinematics with a hand-eye error of `--trans-mm` /
`--rot-deg`. Each model is scored by masked PSNR (tissue pixels, EndoNeRF protocol) of its renders at its
own poses against the instrument-free tissue images. Kinematic poses stay in the dVRK cart frame (what the
node publishes): the trainer must not care about the world frame. Writes a PNG of the renders.

    python bench/dvrk_recon_psnr.py [--width 160 --height 128 --frames 16 --iterations 400]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from surg3d_nodes.core.dvrk_emulator import ECM, VIDEO, DvrkEmulation, EmulatorConfig, emulate
from surg3d_nodes.core.kinematics import FrameResolver, KinematicCamera, pose_error
from surg3d_nodes.core.metrics import masked_psnr
from surg3d_nodes.core.synthetic import SynthConfig
from surg3d_nodes.core.trainer import Frame, OnlineTrainer, TrainerConfig


def kinematic_poses(em: DvrkEmulation, hand_eye: np.ndarray) -> dict[int, np.ndarray]:
    """{frame: T_cart_cam} from the emulated streams (frames without a valid pose are absent)."""
    cam = KinematicCamera(hand_eye)
    res = FrameResolver(cam)
    frame_of = {em.image_stamp(i): i for i in range(len(em.scene.frames))}
    out = {}
    for m in em.messages:
        if m.kind == ECM:
            cam.add_ecm(m.stamp_ns, m.T)
        elif m.kind == VIDEO:
            res.add_image(m.stamp_ns, m.send_ns)
        for fk in res.poll(m.send_ns):
            if fk.camera.ok:
                out[frame_of[fk.stamp_ns]] = fk.camera.T
    return out


def train_and_score(em: DvrkEmulation, poses: dict[int, np.ndarray], iterations: int, label: str,
                    stride: int = 1) -> tuple[float, list[float], np.ndarray]:
    """Train offline on the frames that have poses; (mean masked PSNR, per frame, middle render)."""
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, poses[i], em.scene.cam_left)
              for i, f in enumerate(em.scene.frames) if i in poses]
    trainer = OnlineTrainer(TrainerConfig(device="auto", seed=0, num_threads=2, init_stride=stride,
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


def main(argv: list[str] | None = None) -> int:
    """Run the three reconstructions and print their PSNR; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--frames", type=int, default=16)
    ap.add_argument("--iterations", type=int, default=400)
    ap.add_argument("--stride", type=int, default=1, help="pixel stride of Gaussian initialisation")
    ap.add_argument("--trans-mm", type=float, default=2.0)
    ap.add_argument("--rot-deg", type=float, default=1.0)
    ap.add_argument("--out", default="/tmp/surg3d_dvrk")
    a = ap.parse_args(argv)
    torch.set_num_threads(2)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    synth = SynthConfig(width=a.width, height=a.height, frames=a.frames, camera_motion="moving",
                        instruments=2)
    em = emulate(EmulatorConfig(synth=synth), lambda d, n: print(f"\rrendering {d}/{n}", end="", flush=True))
    print()
    dX = np.eye(4)
    axis = np.array([0.3, 1.0, -0.5])
    dX[:3, :3] = cv2.Rodrigues((axis / np.linalg.norm(axis) * np.radians(a.rot_deg)).reshape(3, 1))[0]
    dX[:3, 3] = np.array([1.0, -1.0, 0.5]) / np.linalg.norm([1.0, -1.0, 0.5]) * a.trans_mm / 1e3
    runs = {"ground truth": {i: em.true_camera_pose(i) for i in range(a.frames)},
            "kinematics": kinematic_poses(em, em.hand_eye),
            f"kinematics, hand-eye off {a.trans_mm:g} mm / {a.rot_deg:g} deg":
                kinematic_poses(em, em.hand_eye @ dX)}
    results = {}
    for label, poses in runs.items():
        errs = np.array([pose_error(T, em.true_camera_pose(i)) for i, T in poses.items()])
        print(f"{label}: {len(poses)} poses, mean error {1e3 * errs[:, 0].mean():.3f} mm "
              f"{errs[:, 1].mean():.3f} deg")
        results[label] = train_and_score(em, poses, a.iterations, label, a.stride)
    base = results["ground truth"][0]
    print(f"\n{'poses':<44}{'masked PSNR dB':>16}{'vs ground truth':>18}")
    for label, (psnr, _, _) in results.items():
        print(f"{label:<44}{psnr:>16.2f}{psnr - base:>+18.2f}")
    tiles = [em.scene.frames[a.frames // 2].tissue_left] + [r[2] for r in results.values()]
    png = out / "dvrk_recon_psnr.png"
    cv2.imwrite(str(png), cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR))
    print(f"wrote {png} (tissue image | ground-truth poses | kinematic poses | with hand-eye error)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
