"""Reconstruction quality against the frame-interpolation baselines (issue 14's table), hardware-independent.

Rows (each `surg3d eval endonerf` in this process, fixed steps, no wall clock):
- stream_k10_quarter:  shared EndoNeRF pulling clip, 1/4 scale, stream mode, K live steps per frame
- offline_600_quarter: the same clip and scale, offline, 600 iterations
- stream_k10_crop:     the same clip, a native-resolution 160x128 centre crop, stream mode
- synthetic_moving:    the project's synthetic scene (320x256, moving endoscope, two instruments), stream mode;
                       its right view is a viewpoint the model never trained on
Each row scores the model alone and the view the product shows, the model plus the frame detail (recon.detail).

Writes OUT/quality.json (every row's summary, the median of each figure over `--repeats` runs, each run's
summary, and the per-test-frame scores of the median run), OUT/<row>_per_frame.png (model, copy-previous and
neighbour-mean PSNR per test frame) and OUT/<row>_strip.png (truth, render, error of the first test frames).
Usage: .venv/bin/python bench/recon_quality.py [--rows a,b] [--out DIR] [--k 10] [--repeats N]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from benchlib import curve_plot

from surg3d_nodes.evaluation.endonerf import EvalOptions, evaluate_endonerf
from surg3d_nodes.recon.config import TrainerConfig

ROOT = Path(__file__).resolve().parents[1]
CLIP = ROOT.parent / "shared" / "data" / "endonerf" / "pulling_soft_tissues"
ROWS = ("stream_k10_quarter", "offline_600_quarter", "stream_k10_crop", "synthetic_moving")


def synthetic_clip(out: Path) -> Path:
    """The synthetic moving-camera scene in EndoNeRF layout (made once under OUT)."""
    clip = out / "synthetic_moving"
    if not (clip / "endonerf").is_dir():
        subprocess.run([sys.executable, "-m", "surg3d_nodes.cli", "synth", str(clip), "--width", "320", "--height",
                        "256", "--frames", "64", "--motion", "moving", "--instruments", "2", "--no-bag"],
                       check=True, timeout=1800)
    return clip / "endonerf"


def row_options(row: str, k: int, out: Path, falloff: str = "stereo") -> tuple[Path, EvalOptions]:
    """The clip and options of one row."""
    common = {"device": "cpu", "backend": "auto", "out_dir": str(out / row), "images": 3, "falloff": falloff}
    if row == "stream_k10_quarter":
        return CLIP, EvalOptions(mode="stream", scale=0.25, iterations_per_frame=k, **common)
    if row == "offline_600_quarter":
        return CLIP, EvalOptions(mode="offline", scale=0.25, iterations=600, **common)
    if row == "stream_k10_crop":
        return CLIP, EvalOptions(mode="stream", crop=(160, 128), iterations_per_frame=k, **common)
    if row == "synthetic_moving":
        return synthetic_clip(out), EvalOptions(mode="stream", scale=1.0, iterations_per_frame=k, **common)
    raise ValueError(f"unknown row {row!r} (rows: {', '.join(ROWS)})")


def summary(r: dict) -> dict:
    """The figures of the README table."""
    keys = ("psnr", "live_psnr", "detail_psnr", "detail_live_psnr", "detail_psnr_star", "detail_right_psnr_star",
            "train_fit_psnr", "train_fit_min_psnr", "psnr_star", "right_psnr_star",
            "baseline_right_warp_psnr_star", "depth_rmse_mm", "detail_depth_rmse_mm", "baseline_copy_prev_psnr",
            "baseline_neighbour_mean_psnr", "baseline_copy_prev_depth_rmse_mm",
            "baseline_neighbour_mean_depth_rmse_mm", "num_gaussians", "iterations", "train_time_s")
    return {k: (round(r[k], 3) if isinstance(r[k], float) else r[k]) for k in keys}


def median_summary(sums: list[dict]) -> dict:
    """Each figure's median over the runs of a row (each figure on its own; counts from the first run)."""
    return {k: (round(float(np.median([s[k] for s in sums])), 3) if isinstance(v, float) else v)
            for k, v in sums[0].items()}


def draw(row: str, r: dict, out: Path, images: Path) -> None:
    """Per-test-frame curves and the comparison strip (from the run's images in `images`) of one row."""
    per = r["per_frame"]
    series = {"model": [p["psnr"] for p in per], "model + frame detail": [p["detail_psnr"] for p in per],
              "copy previous": [p["baseline_copy_prev_psnr"] for p in per],
              "neighbour mean": [p["baseline_neighbour_mean_psnr"] for p in per]}
    lo = 5 * np.floor(min(min(v) for v in series.values()) / 5)
    hi = 5 * np.ceil(max(max(v) for v in series.values()) / 5)
    curve_plot(series, out / f"{row}_per_frame.png", f"{row}: masked PSNR (dB) per test frame",
               lo=float(lo), hi=float(hi), ticks=tuple(float(x) for x in np.arange(lo, hi + 1, 5)))
    tiles = sorted(images.glob("test_*_gt_render_error.png"))
    if tiles:
        cv2.imwrite(str(out / f"{row}_strip.png"), np.vstack([cv2.imread(str(t)) for t in tiles]))


def main() -> int:
    """Run the rows, write the JSON and images, print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default=",".join(ROWS), help="comma-separated subset of " + ", ".join(ROWS))
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_quality")
    ap.add_argument("--k", type=int, default=10, help="live steps per frame in stream rows")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="TrainerConfig override for every row (value parsed as JSON)")
    ap.add_argument("--falloff", choices=["stereo", "config"], default="stereo",
                    help="the endoscope's fall-off: measured on each clip's first stereo pair, or the config's")
    ap.add_argument("--repeats", type=int, default=1,
                    help="runs per row: the compiled renderer's threaded sums do not repeat to the bit, and a row can "
                         "have more than one outcome; the table shows the median and the range of the finals")
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error(f"--repeats must be at least 1, got {args.repeats}")
    args.out.mkdir(parents=True, exist_ok=True)
    overrides = {k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}
    results = {"date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": platform.platform(),
               "command": " ".join([Path(sys.executable).name, *sys.argv]), "rows": {}}
    for row in args.rows.split(","):
        clip, opts = row_options(row, args.k, args.out, args.falloff)
        runs, dirs = [], []
        for i in range(args.repeats):
            tag = row if args.repeats == 1 else f"{row} {i + 1}/{args.repeats}"
            dirs.append(args.out / row if args.repeats == 1 else args.out / row / f"run{i + 1}")
            opts.out_dir = str(dirs[-1])
            runs.append(evaluate_endonerf(clip, opts, TrainerConfig(**overrides),
                                          progress=lambda s, tag=tag: print(f"[{tag}] {s}")))
        sums = [summary(r) for r in runs]
        # The run whose final is the median's (the lower middle one for an even count) is drawn and kept whole.
        mid = sorted(range(len(runs)), key=lambda i: sums[i]["detail_psnr"])[(len(runs) - 1) // 2]
        results["rows"][row] = {"summary": median_summary(sums), "runs": sums,
                                "per_frame": runs[mid]["per_frame"],
                                "train_fit_per_frame": runs[mid]["train_fit_per_frame"]}
        draw(row, runs[mid], args.out, dirs[mid])
        (args.out / "quality.json").write_text(json.dumps(results, indent=2))
    print("\nmodel alone | with the frame detail (d-): final, live, right view PSNR*, depth RMSE (mm) | the depth "
          "baselines: copy-previous, neighbour mean")
    print(f"{'row':22s} {'final':>7s} {'live':>7s} {'fit':>7s} {'copy':>7s} {'mean':>7s} {'right*':>7s} "
          f"{'warp*':>7s} {'left*':>7s} {'depth':>6s} {'d-final':>7s} {'d-live':>7s} {'d-right*':>8s} "
          f"{'d-depth':>7s} {'copy-d':>6s} {'mean-d':>6s}")
    for row, v in results["rows"].items():
        s = v["summary"]
        print(f"{row:22s} {s['psnr']:7.2f} {s['live_psnr']:7.2f} {s['train_fit_psnr']:7.2f} "
              f"{s['baseline_copy_prev_psnr']:7.2f} {s['baseline_neighbour_mean_psnr']:7.2f} "
              f"{s['right_psnr_star']:7.2f} {s['baseline_right_warp_psnr_star']:7.2f} {s['psnr_star']:7.2f} "
              f"{s['depth_rmse_mm']:6.2f} {s['detail_psnr']:7.2f} {s['detail_live_psnr']:7.2f} "
              f"{s['detail_right_psnr_star']:8.2f} {s['detail_depth_rmse_mm']:7.2f} "
              f"{s['baseline_copy_prev_depth_rmse_mm']:6.2f} {s['baseline_neighbour_mean_depth_rmse_mm']:6.2f}")
        if len(v["runs"]) > 1:
            span = {k: (min(r[k] for r in v["runs"]), max(r[k] for r in v["runs"])) for k in ("psnr", "detail_psnr")}
            print(f"{'':22s} {len(v['runs'])} runs: final {span['psnr'][0]:.2f}-{span['psnr'][1]:.2f}, "
                  f"with the frame detail {span['detail_psnr'][0]:.2f}-{span['detail_psnr'][1]:.2f}")
    print(f"wrote {args.out / 'quality.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
