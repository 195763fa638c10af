"""Reconstruction from dVRK kinematic camera poses: ground truth vs kinematics vs a hand-eye error, and the
photometric pose refinement against the model (core.pose_refine) that corrects the error.

The emulated dVRK streams (two instruments, 100 Hz kinematics, 30 Hz video) are resolved into camera poses
exactly as the kinematics node does (core.kinematics), and the trainer (core.trainer) is run on the same
images, depth and instrument masks, differing only in poses: ground truth; kinematics with the true
hand-eye; kinematics with a hand-eye error of `--trans-mm` / `--rot-deg`; the same with pose refinement
(`hand_eye` mode: one constant correction; `frame` mode: a free correction per frame). Frames arrive one
by one with `--iterations-per-frame` training steps after each (as live, so every frame is refined against
a trained model), then `--iterations` offline steps.

A constant hand-eye error only shifts the whole trajectory rigidly unless the endoscope rotates, so the
default motion is `pivot`, the clinical ECM move (20 degree pivot about the remote centre of motion + 2 cm
insertion over the clip), and the error is placed where it matters for it: rotation about an axis
perpendicular to the pivot axis, translation along the optical axis (relative pose error at the end of the
move 0.71 mm / 0.35 deg; random directions give 0.79 mm / 0.27 deg on average).

Scores (masked PSNR, tissue pixels, against the instrument-free images): at the poses the trainer used
(refined where refined) and at the true poses in the model's gauge (the world of the first pose), which
also sees a model distorted by wrong poses; pose errors are in that gauge too. Writes JSON and a PNG.

    python bench/dvrk_recon_psnr.py [--width 160 --height 128 --frames 12 --iterations 100]
    python bench/dvrk_recon_psnr.py --width 640 --height 512 --image-scale 0.25   # full-size input, CPU
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from surg3d_nodes.data.synthetic import MOTIONS, SynthConfig
from surg3d_nodes.dvrk.emulator import EmulatorConfig, emulate
from surg3d_nodes.evaluation.dvrk import gauge_pose_errors, kinematic_poses, train_and_score


def hand_eye_error(trans_mm: float, rot_deg: float) -> np.ndarray:
    """The injected error E (hand-eye X becomes X·E): rotation about (-0.8, 0.6, 0), translation along z."""
    E = np.eye(4)
    E[:3, :3] = cv2.Rodrigues((np.array([-0.8, 0.6, 0.0]) * np.radians(rot_deg)).reshape(3, 1))[0]
    E[2, 3] = trans_mm / 1e3
    return E


def main(argv: list[str] | None = None) -> int:
    """Run the reconstructions, print a table, write JSON and PNG; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=160)
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--iterations", type=int, default=100, help="offline steps after the last frame")
    ap.add_argument("--iterations-per-frame", type=int, default=20)
    ap.add_argument("--refine-iterations", type=int, default=30)
    ap.add_argument("--motion", choices=MOTIONS, default="pivot")
    ap.add_argument("--breathing-mm", type=float, default=SynthConfig.breathing_amplitude * 1e3)
    ap.add_argument("--stride", type=int, default=1, help="pixel stride of Gaussian initialisation")
    ap.add_argument("--image-scale", type=float, default=1.0,
                    help="train on frames resized by this (scores stay at the full size): 0.25 as on CPU")
    ap.add_argument("--trans-mm", type=float, default=2.0)
    ap.add_argument("--rot-deg", type=float, default=1.0)
    ap.add_argument("--runs", type=int, default=7,
                    help="only the first N reconstructions of the table (2: ground truth and kinematics)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="/tmp/surg3d_dvrk")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    synth = SynthConfig(width=a.width, height=a.height, frames=a.frames, camera_motion=a.motion,
                        instruments=2, breathing_amplitude=a.breathing_mm / 1e3)
    em = emulate(EmulatorConfig(synth=synth), lambda d, n: print(f"\rrendering {d}/{n}", end="", flush=True))
    print()
    bad = kinematic_poses(em, em.hand_eye @ hand_eye_error(a.trans_mm, a.rot_deg))
    err = f"hand-eye off {a.trans_mm:g} mm / {a.rot_deg:g} deg"
    refine = {"refine_pose_iterations": a.refine_iterations}
    rigid = {"lr_pos_knots": 0.0, "flow_tracks": False}   # a model without deformation cannot absorb pose errors
    runs = [("ground truth", {i: em.true_camera_pose(i) for i in range(a.frames)}, {}),
            ("kinematics", kinematic_poses(em, em.hand_eye), {}),
            (err, bad, {}),
            (f"{err}, refined (hand_eye)", bad, {**refine, "refine_pose_mode": "hand_eye"}),
            (f"{err}, refined (frame)", bad, {**refine, "refine_pose_mode": "frame"}),
            (f"{err}, rigid model", bad, rigid),
            (f"{err}, rigid model, refined (hand_eye)", bad, {**refine, **rigid, "refine_pose_mode": "hand_eye"})]
    results, tiles = {}, [em.scene.frames[a.frames // 2].tissue_left]
    t0 = time.time()
    for label, poses, extra in runs[:a.runs]:
        r = train_and_score(em, poses, a.iterations, label, a.stride, a.threads,
                            iterations_per_frame=a.iterations_per_frame, image_scale=a.image_scale, **extra)
        before, after = gauge_pose_errors(em, poses), gauge_pose_errors(em, r.poses)
        st = r.stats
        results[label] = {
            "psnr_used_poses": r.psnr, "psnr_true_poses": r.psnr_true,
            "input_pose_error_mm_mean": 1e3 * before[:, 0].mean(), "input_pose_error_deg_mean": before[:, 1].mean(),
            "pose_error_mm_mean": 1e3 * after[:, 0].mean(), "pose_error_mm_max": 1e3 * after[:, 0].max(),
            "pose_error_deg_mean": after[:, 1].mean(), "pose_error_deg_max": after[:, 1].max(),
            "config": extra, "refined": st.pose_refined, "rejected": st.pose_refine_rejected,
            "correction_mm_mean": st.pose_correction_mm, "correction_deg_mean": st.pose_correction_deg}
        tiles.append(r.middle)
        print(f"  {label}: PSNR {r.psnr:.2f} dB (true poses {r.psnr_true:.2f} dB), pose error "
              f"{1e3 * after[:, 0].mean():.3f} mm / {after[:, 1].mean():.3f} deg, refined {st.pose_refined} "
              f"rejected {st.pose_refine_rejected}")
    base = results["ground truth"]
    print(f"\n{'poses':<60}{'PSNR dB':>9}{'at truth':>10}{'vs GT':>8}{'pose err mm':>13}{'deg':>8}")
    for label, v in results.items():
        print(f"{label:<60}{v['psnr_used_poses']:>9.2f}{v['psnr_true_poses']:>10.2f}"
              f"{v['psnr_true_poses'] - base['psnr_true_poses']:>+8.2f}"
              f"{v['pose_error_mm_mean']:>13.3f}{v['pose_error_deg_mean']:>8.3f}")
    meta = {"date": time.strftime("%Y-%m-%d", time.gmtime()), "args": vars(a),
            "device": "cuda" if torch.cuda.is_available() else f"cpu, {a.threads} threads",
            "seconds": round(time.time() - t0)}
    js = out / "dvrk_recon_psnr.json"
    js.write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    png = out / "dvrk_recon_psnr.png"
    cv2.imwrite(str(png), cv2.cvtColor(np.hstack(tiles), cv2.COLOR_RGB2BGR))
    print(f"wrote {js} and {png} (middle frame: tissue image | renders in the order of the table)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
