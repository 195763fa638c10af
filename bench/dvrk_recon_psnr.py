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
from pathlib import Path

import cv2
import numpy as np
import torch

from surg3d_nodes.core.dvrk_emulator import EmulatorConfig, emulate
from surg3d_nodes.core.dvrk_eval import kinematic_poses, train_and_score
from surg3d_nodes.core.kinematics import pose_error
from surg3d_nodes.core.synthetic import SynthConfig


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
