"""2D Gaussian surfels (`primitive: 2dgs`) against 3D Gaussians (issue 13): depth RMSE and right-view PSNR* at
the same budget.

Cases (each `surg3d eval endonerf` in this process, fixed steps, CPU, one thread, `backend: auto`: the compiled
`cpu` renderer for 3dgs, `torch2d` for 2dgs):
- shared_offline:    the shared EndoNeRF pulling clip at 1/4 scale (160x128), offline, 600 iterations; depth truth
                     is the dataset's stereo depth (uint8 mm)
- shared_stream:     the same clip and scale, stream mode, 10 live steps after each training frame (550 steps)
- synthetic_offline: the project's synthetic scene (recon_quality.py's 320x256 moving endoscope, two
                     instruments) at 1/2 scale (160x128), offline, 600 iterations; its depth is exact and its
                     right view never trained

Each case runs once per primitive and writes OUT/<case>_<primitive>.json, the eval's result (the same file as
`surg3d eval endonerf CLIP ... --set primitive=P --json FILE`). The table and the plot (per test frame: right
PSNR* and depth RMSE of each primitive) are made from every such file in OUT, so a case run on its own, or by the
CLI, joins them. Usage: .venv/bin/python bench/recon_surfels.py [--cases a,b] [--primitives 3dgs,2dgs] [--out DIR]
[--plot docs/bench/surfels.png] [--table-only]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np
from benchlib import curve_plot
from recon_quality import CLIP, ROOT, synthetic_clip

from surg3d_nodes.evaluation.endonerf import EvalOptions, evaluate_endonerf
from surg3d_nodes.recon.config import TrainerConfig

CASES = ("shared_offline", "shared_stream", "synthetic_offline")
PRIMITIVES = ("3dgs", "2dgs")


def case_options(case: str, out: Path, primitive: str) -> tuple[Path, EvalOptions]:
    """The clip and options of one case (the same for both primitives but the output folder)."""
    common = {"device": "cpu", "backend": "auto", "out_dir": str(out / f"{case}_{primitive}"), "images": 3}
    if case == "shared_offline":
        return CLIP, EvalOptions(mode="offline", scale=0.25, iterations=600, **common)
    if case == "shared_stream":
        return CLIP, EvalOptions(mode="stream", scale=0.25, iterations_per_frame=10, **common)
    if case == "synthetic_offline":
        return synthetic_clip(out), EvalOptions(mode="offline", scale=0.5, iterations=600, **common)
    raise ValueError(f"unknown case {case!r} (cases: {', '.join(CASES)})")


def load_results(out: Path) -> dict[tuple[str, str], dict]:
    """Every (case, primitive) result in OUT."""
    found = {}
    for case in CASES:
        for prim in PRIMITIVES:
            f = out / f"{case}_{prim}.json"
            if f.is_file():
                found[case, prim] = json.loads(f.read_text())
    return found


def _axis(series: dict[str, list[float]]) -> tuple[float, float, tuple[float, ...]]:
    """Plot range [lo, hi] with five grid lines covering every value of the series."""
    vals = [v for s in series.values() for v in s if np.isfinite(v)]
    lo, hi = min(vals), max(vals)
    pad = 0.05 * max(hi - lo, 1e-3)
    lo, hi = lo - pad, hi + pad
    return lo, hi, tuple(float(f"{t:.3g}") for t in np.linspace(lo, hi, 5))


def draw(results: dict[tuple[str, str], dict], path: Path) -> Path | None:
    """Per-test-frame right PSNR* and depth RMSE of both primitives, one panel per case and metric, stacked;
    None (nothing drawn) while no case has results for both."""
    panels = []
    for case in CASES:
        if not all((case, p) in results for p in PRIMITIVES):
            continue
        for key, title in (("right_psnr_star", "right-view PSNR* (dB)"), ("depth_rmse_mm", "depth RMSE (mm)")):
            series = {p: [f.get(key, float("nan")) for f in results[case, p]["per_frame"]] for p in PRIMITIVES}
            lo, hi, ticks = _axis(series)
            panel = path.with_name(f"{path.stem}_{case}_{key}.png")
            curve_plot(series, panel, f"{case}: {title} per test frame", lo=lo, hi=hi, ticks=ticks)
            panels.append(cv2.imread(str(panel)))
            panel.unlink()
    if not panels:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.vstack(panels))
    return path


def table(results: dict[tuple[str, str], dict]) -> str:
    """The comparison as text, one line per case and primitive."""
    lines = [f"{'case':18s} {'prim':5s} {'backend':8s} {'iters':>5s} {'gauss':>6s} {'PSNR':>6s} {'PSNR*':>6s} "
             f"{'right*':>6s} {'warp*':>6s} {'depth':>7s} {'fit':>6s} {'train':>7s}"]
    for (case, prim), r in results.items():
        lines.append(f"{case:18s} {prim:5s} {r['backend']:8s} {r['iterations']:5d} {r['num_gaussians']:6d} "
                     f"{r['psnr']:6.2f} {r['psnr_star']:6.2f} {r['right_psnr_star']:6.2f} "
                     f"{r['baseline_right_warp_psnr_star']:6.2f} {r['depth_rmse_mm']:5.2f}mm "
                     f"{r['train_fit_psnr']:6.2f} {r['train_time_s']:6.0f}s")
    return "\n".join(lines)


def main() -> int:
    """Run the cases, then print the table and draw the plot from every result in OUT."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--primitives", default=",".join(PRIMITIVES), help="comma-separated subset of 3dgs, 2dgs")
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "bench_surfels")
    ap.add_argument("--plot", type=Path, default=ROOT / "docs" / "bench" / "surfels.png")
    ap.add_argument("--table-only", action="store_true", help="run nothing: table and plot of the results in OUT")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for case in args.cases.split(","):
            for prim in args.primitives.split(","):
                clip, opts = case_options(case, args.out, prim)
                r = evaluate_endonerf(clip, opts, TrainerConfig.from_dict({"primitive": prim}),
                                      progress=lambda s, tag=f"{case} {prim}": print(f"[{tag}] {s}", flush=True))
                (args.out / f"{case}_{prim}.json").write_text(json.dumps(r, indent=2))
    results = load_results(args.out)
    print(table(results))
    plot = draw(results, args.plot)
    print(f"wrote {plot}" if plot else "no plot: no case has results for both primitives yet")
    return 0


if __name__ == "__main__":
    sys.exit(main())
