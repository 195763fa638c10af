"""Camera tracker benchmark: time per frame at 640x512 on one CPU core, and the trajectory against the truth.

Renders the synthetic moving-endoscope scene (two instruments, the first lifting the tissue; breathing as the
scene's default unless --breathing) at --width x --height, computes SGBM depth (not timed: the stereo_depth node's
job), then times CameraTracker.track per frame with OpenCV on one thread. Also tracks the shared EndoNeRF clip
(static camera, 640x512) when it is present. Writes results.json and trajectory.png (x, y, z of the tracked and
the true camera, mm) to --out. Example:
  .venv/bin/python bench/tracker_speed.py --out /tmp/surg3d_bench_tracker
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from benchlib import curve_plot

from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.evaluation.trajectory import align_to_first, trajectory_errors
from surg3d_nodes.perception.stereo_depth import StereoDepth
from surg3d_nodes.perception.tracker import CameraTracker

ROOT = Path(__file__).resolve().parents[1]


def _track_timed(K: np.ndarray, width: int, frames: list[tuple[np.ndarray, np.ndarray, np.ndarray | None]]):
    """Poses, per-frame milliseconds (process CPU time: fair on a shared machine) and the tracker."""
    tracker = CameraTracker(K, width)
    poses, ms = [], []
    for image, depth, mask in frames:
        t0 = time.process_time()
        poses.append(tracker.track(image, depth, mask).pose)
        ms.append((time.process_time() - t0) * 1000.0)
    return poses, ms, tracker


def _timing(ms: list[float]) -> dict[str, float]:
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90)), "max_ms": float(np.max(ms)),
            "mean_ms": float(np.mean(ms))}


def _trajectory_png(est: list[np.ndarray | None], truth: list[np.ndarray], path: Path, title: str) -> Path:
    """Three stacked panels (x, y, z in mm) with the true and the tracked camera position per frame."""
    aligned = align_to_first(est, truth)
    panels = []
    for axis, name in enumerate("xyz"):
        true_mm = [1000.0 * T[axis, 3] for T in truth]
        # a frame without a pose repeats the previous value in the plot (the curve must be continuous)
        tracked, last = [], true_mm[0]
        for T in aligned:
            last = last if T is None else 1000.0 * T[axis, 3]
            tracked.append(last)
        lo, hi = min(true_mm + tracked) - 0.5, max(true_mm + tracked) + 0.5
        tmp = path.with_name(f".{name}_{path.name}")
        curve_plot({f"{name} true (mm)": true_mm, f"{name} tracked (mm)": tracked}, tmp, f"{title}: {name} per frame",
                   lo=lo, hi=hi, ticks=tuple(np.linspace(lo, hi, 5)[1:-1].round(2)))
        panels.append(cv2.imread(str(tmp)))
        tmp.unlink()
    cv2.imwrite(str(path), cv2.vconcat(panels))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/surg3d_bench_tracker")
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--breathing", type=float, default=None, help="m, breathing amplitude (scene default 1.5 mm)")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--endonerf", default=str(ROOT.parent / "shared" / "data" / "endonerf" / "pulling_soft_tissues"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cv2.setNumThreads(1)   # one core, as the target says
    result: dict = {"date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}, OpenCV {cv2.__version__}",
                    "threads": 1}

    cfg = SynthConfig(width=args.width, height=args.height, frames=args.frames, camera_motion="moving", instruments=2,
                      seed=args.seed)
    if args.breathing is not None:
        cfg.breathing_amplitude = args.breathing
    print(f"rendering {args.frames} frames at {args.width}x{args.height} ...", flush=True)
    t0 = time.monotonic()
    scene = generate(cfg)
    stereo = StereoDepth(scene.cam_left, scene.cam_right)
    frames = [(f.left, stereo.compute(f.left, f.right).depth, f.mask) for f in scene.frames]
    print(f"  {time.monotonic() - t0:.0f} s; tracking ...", flush=True)
    truth = [f.pose for f in scene.frames]
    poses, ms, tracker = _track_timed(scene.cam_left.intrinsics(), args.width, frames)
    err = trajectory_errors(poses, truth)
    result["synthetic"] = {"size": [args.width, args.height], "frames": args.frames,
                           "breathing_m": cfg.breathing_amplitude, **_timing(ms), **err,
                           "keyframes": tracker.stats.keyframes, "revisits": tracker.stats.revisits}
    _trajectory_png(poses, truth, out / "trajectory.png", f"synthetic {args.width}x{args.height}")
    print(f"synthetic: {_timing(ms)['median_ms']:.1f} ms median ({_timing(ms)['p90_ms']:.1f} p90) per frame; "
          f"ATE {err['ate_mm']:.3f} mm (max {err['ate_max_mm']:.3f}), RPE {err['rpe_mm']:.3f} mm "
          f"{err['rpe_deg']:.3f} deg, posed {err['posed']}/{err['frames']}", flush=True)

    endo = Path(args.endonerf)
    if endo.is_dir():
        from surg3d_nodes.data.datasets.endonerf import EndoNeRFReader
        reader = EndoNeRFReader(endo)
        stereo = StereoDepth(reader.cam_left, reader.cam_right)
        data = [reader.frame(i) for i in range(len(reader))]
        frames = [(f.left, stereo.compute(f.left, f.right).depth, f.mask) for f in data]
        poses, ms, _ = _track_timed(reader.cam_left.intrinsics(), reader.cam_left.width, frames)
        err = trajectory_errors(poses, [f.pose for f in data])
        result["endonerf"] = {"clip": str(endo), **_timing(ms), **err}
        _trajectory_png(poses, [f.pose for f in data], out / "trajectory_endonerf.png", "EndoNeRF pulling (static)")
        print(f"EndoNeRF: {_timing(ms)['median_ms']:.1f} ms median per frame; drift (ATE) {err['ate_mm']:.3f} mm, "
              f"max {err['ate_max_mm']:.3f} mm", flush=True)
    (out / "results.json").write_text(json.dumps(result, indent=2))
    print(f"wrote {out}/results.json, trajectory.png", flush=True)


if __name__ == "__main__":
    main()
