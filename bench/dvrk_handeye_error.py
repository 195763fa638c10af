"""How a hand-eye error propagates: camera poses, relative motion, reprojection and the instrument prior.

Emulates the dVRK streams of the synthetic scene (moving endoscope, two instruments), resolves camera poses
and instrument priors at every image stamp with the true hand-eye and with one perturbed by `--trans-mm`
(default 2 mm) and `--rot-deg` (1 degree) in `--trials` random directions, and reports
- absolute camera pose error (a constant rigid offset of the whole trajectory: harmless for reconstruction),
- relative pose error to the first frame (what a reconstruction actually sees),
- reprojection error (px) of each frame's true tissue points into the first frame with the relative poses,
- the kinematic instrument prior's IoU with the true masks,
and the relative pose error for a clinical-size ECM motion (a 20 degree pivot about the remote centre of
motion 10 cm behind the tip, plus 2 cm insertion). Writes a PNG of prior masks (true / prior / perturbed).

    python bench/dvrk_handeye_error.py [--width 320 --height 256 --frames 30] [--out /tmp/surg3d_dvrk]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.geometry import backproject
from surg3d_nodes.data.synthetic import SynthConfig, ecm_pivot
from surg3d_nodes.dvrk.emulator import (
    SYNTHETIC_INSTRUMENT,
    DvrkEmulation,
    EmulatorConfig,
    emulate,
)
from surg3d_nodes.dvrk.kinematics import KinematicCamera, pose_error
from surg3d_nodes.evaluation.dvrk import replay_streams
from surg3d_nodes.perception.instrument_prior import mask_iou, pixel_rays, project_instruments


def perturbation(rng: np.random.Generator, trans_m: float, rot_deg: float) -> np.ndarray:
    """A rigid transform with a random translation of length trans_m and a random-axis rotation of rot_deg."""
    d, a = rng.normal(size=3), rng.normal(size=3)
    T = np.eye(4)
    T[:3, :3] = cv2.Rodrigues((a / np.linalg.norm(a) * np.radians(rot_deg)).reshape(3, 1))[0]
    T[:3, 3] = d / np.linalg.norm(d) * trans_m
    return T


def resolve(em: DvrkEmulation, hand_eye: np.ndarray
            ) -> dict[int, tuple[np.ndarray, list[np.ndarray], list[np.ndarray | None]]]:
    """{frame: (T_cart_cam, [T_cam_tip], [wrist/jaw joints or None])} from the emulated streams with the given
    hand-eye, as the kinematics node resolves them."""
    out = {}
    for i, fk in replay_streams(em, KinematicCamera(hand_eye)).items():
        if fk.camera.ok:
            arms = [arm for arm, r in fk.tools.items() if r.ok]
            out[i] = (fk.camera.T, [fk.tools[arm].T for arm in arms],
                      [fk.joints[arm].values if arm in fk.joints else None for arm in arms])
    return out


def reprojection_px(em: DvrkEmulation, i: int, T_rel_est: np.ndarray, T_rel_true: np.ndarray) -> float:
    """Mean pixel distance between frame i's true tissue points projected into frame 0 with two poses."""
    f = em.scene.frames[i]
    K = em.scene.cam_left.intrinsics()
    pts = backproject(f.tissue_depth.astype(np.float64), K).reshape(-1, 3)
    pts = pts[np.isfinite(pts).all(axis=1)][::7]
    h = np.c_[pts, np.ones(len(pts))]

    def project(T: np.ndarray) -> np.ndarray:
        p = (h @ T.T)[:, :3]
        return (p[:, :2] / p[:, 2:3]) * [K[0, 0], K[1, 1]] + [K[0, 2], K[1, 2]]

    return float(np.mean(np.linalg.norm(project(T_rel_est) - project(T_rel_true), axis=1)))


def clinical_motion_error(dX: np.ndarray) -> tuple[float, float]:
    """Relative pose error (mm, deg) for a 20 degree ECM pivot about an RCM 10 cm behind the tip + 2 cm in."""
    M = ecm_pivot(1.0)                              # camera motion expressed in the first camera frame
    est = np.linalg.inv(dX) @ M @ dX
    dt, dr = pose_error(est, M)
    return dt * 1e3, dr


def main(argv: list[str] | None = None) -> int:
    """Run the study and print a table; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--frames", type=int, default=30)
    ap.add_argument("--trans-mm", type=float, default=2.0)
    ap.add_argument("--rot-deg", type=float, default=1.0)
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--out", default="/tmp/surg3d_dvrk")
    a = ap.parse_args(argv)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    synth = SynthConfig(width=a.width, height=a.height, frames=a.frames, camera_motion="moving",
                        instruments=2)
    em = emulate(EmulatorConfig(synth=synth),
                 lambda d, n: print(f"\rrendering {d}/{n}", end="", flush=True))
    print(f"\nemulated {a.frames} frames {a.width}x{a.height} in {time.time() - t0:.1f} s")
    cam = em.scene.cam_left
    rays = pixel_rays(cam)

    def study(hand_eye: np.ndarray) -> dict[str, float]:
        res = resolve(em, hand_eye)
        T0, T0_true = res[0][0], em.true_camera_pose(0)
        absr, rel_t, rel_r, rep, ious = [], [], [], [], []
        for i, (T, tools, joints) in sorted(res.items()):
            T_true = em.true_camera_pose(i)
            absr.append(pose_error(T, T_true))
            est, true = np.linalg.inv(T0) @ T, np.linalg.inv(T0_true) @ T_true
            dt, dr = pose_error(est, true)
            rel_t.append(dt)
            rel_r.append(dr)
            rep.append(reprojection_px(em, i, est, true))
            prior = project_instruments(cam, tools, SYNTHETIC_INSTRUMENT, rays=rays, joints=joints)
            ious.append(mask_iou(prior, em.scene.frames[i].mask))
        absr = np.array(absr)
        return {"frames": len(res), "abs_mm": 1e3 * absr[:, 0].mean(), "abs_deg": absr[:, 1].mean(),
                "rel_mm_max": 1e3 * max(rel_t), "rel_deg_max": max(rel_r),
                "reproj_px_mean": float(np.mean(rep)), "reproj_px_max": max(rep),
                "prior_iou_mean": float(np.mean(ious)), "prior_iou_min": min(ious)}

    exact = study(em.hand_eye)
    rng = np.random.default_rng(0)
    trials, clinical = [], []
    for _ in range(a.trials):
        dX = perturbation(rng, a.trans_mm / 1e3, a.rot_deg)
        trials.append(study(em.hand_eye @ dX))
        clinical.append(clinical_motion_error(dX))
    keys = list(exact)
    print(f"\n{'metric':<16}{'true hand-eye':>14}{'perturbed mean':>16}{'perturbed worst':>16}")
    for k in keys:
        vals = [t[k] for t in trials]
        worst = min(vals) if k.startswith("prior_iou") else max(vals)
        print(f"{k:<16}{exact[k]:>14.4g}{np.mean(vals):>16.4g}{worst:>16.4g}")
    c = np.array(clinical)
    print(f"clinical ECM motion (20 deg pivot + 2 cm insertion), relative pose error with the perturbation: "
          f"{c[:, 0].mean():.2f} mm (max {c[:, 0].max():.2f}), "
          f"{c[:, 1].mean():.3f} deg (max {c[:, 1].max():.3f})")
    res_true = resolve(em, em.hand_eye)
    res_bad = resolve(em, em.hand_eye @ perturbation(np.random.default_rng(0), a.trans_mm / 1e3, a.rot_deg))
    i = len(em.scene.frames) // 2
    tiles = [em.scene.frames[i].mask,
             project_instruments(cam, res_true[i][1], SYNTHETIC_INSTRUMENT, rays=rays),
             project_instruments(cam, res_bad[i][1], SYNTHETIC_INSTRUMENT, rays=rays)]
    png = out / "dvrk_prior_handeye.png"
    cv2.imwrite(str(png), np.hstack([cv2.cvtColor(em.scene.frames[i].left, cv2.COLOR_RGB2BGR)]
                                    + [cv2.cvtColor(t, cv2.COLOR_GRAY2BGR) for t in tiles]))
    print(f"wrote {png} (left image | true mask | kinematic prior | prior with the hand-eye error)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
