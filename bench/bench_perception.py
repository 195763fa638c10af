"""Perception benchmark: stereo depth and instrument-mask accuracy on real data, and per-frame timings.

Measures
- SCARED (scared_sttr): end-point error and bad-3 of the SGBM disparity over valid, non-occluded pixels;
- EndoNeRF (pulling_soft_tissues): median |ours - dataset| / dataset depth over tissue pixels and the stereo
  baseline implied by the dataset depth (median ratio x our baseline);
- EndoNeRF masks: per-frame IoU / recall / precision of the cue segmenter (with our SGBM depth) vs gt_masks;
- synthetic 640x512 scene (core.synthetic): median relative depth error on tissue;
- per-frame time at 640x512 of depth (SGBM variants) and segmentation on CPU (and of ONNX models given with
  --depth-onnx / --yolo, on CUDA when onnxruntime has it).
Writes results.json and PNG figures to --out. Example:
  .venv/bin/python bench/bench_perception.py --out /tmp/surg3d_bench_perception
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
from benchlib import curve_plot

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.perception.segmentation import CueSegmenter, YoloSegmenter
from surg3d_nodes.perception.stereo_depth import OnnxDepth, SGBMParams, StereoDepth

ROOT = Path(__file__).resolve().parents[1]

ENDONERF_F = 569.46820041
ENDONERF_BASELINE = 0.0043  # metres, nominal (README: "about 4.3 mm"); the implied value is measured below


def _rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def _colour(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """BGR turbo colour map of a float image; NaN black."""
    v = np.clip((np.nan_to_num(values, nan=lo) - lo) / max(hi - lo, 1e-9), 0, 1)
    out = cv2.applyColorMap((v * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    out[~np.isfinite(values)] = 0
    return out


def _label(img: np.ndarray, text: str) -> np.ndarray:
    img = img.copy()
    cv2.putText(img, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2, cv2.LINE_AA)
    return img


def _overlay(rgb: np.ndarray, mask: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """BGR overlay: true positive green, false positive red, missed (false negative) blue."""
    out = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR).astype(np.float32)
    for sel, colour in ((mask & gt, (0, 200, 0)), (mask & ~gt, (0, 0, 255)), (~mask & gt, (255, 0, 0))):
        out[sel] = 0.5 * out[sel] + 0.5 * np.array(colour, np.float32)
    return out.astype(np.uint8)


def _timeit(fn, repeats: int) -> dict[str, float]:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1000.0)
    return {"median_ms": round(statistics.median(ts), 2), "min_ms": round(min(ts), 2)}


def bench_scared(data: Path, out: Path) -> dict:
    root = data / "scared_sttr"
    name = "dataset_1_keyframe_2_frame_data000000"
    left, right = _rgb(root / "left" / f"{name}.png"), _rgb(root / "right" / f"{name}.png")
    gt = cv2.imread(str(root / "disparity" / f"{name}.tiff"), cv2.IMREAD_UNCHANGED)
    occ = cv2.imread(str(root / "occlusion" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    h, w = gt.shape
    # No calibration ships with this sample: nominal rig, explicit disparity range (GT spans 16-86 px).
    cl, cr = CameraModel.pinhole(w, h, 1000.0), CameraModel.pinhole(w, h, 1000.0, baseline=0.004)
    res = {}
    for label, params in (("sgbm", SGBMParams(disparity_range=(8, 100))),
                          ("sgbm_half_res", SGBMParams(disparity_range=(8, 100), scale=0.5)),
                          ("sgbm_no_lr", SGBMParams(disparity_range=(8, 100), lr_max_diff=0))):
        disp, _ = StereoDepth(cl, cr, params).disparity(left, right)
        evaluable = (gt > 0) & (occ == 255)
        valid = evaluable & np.isfinite(disp)
        err = np.abs(disp[valid] - gt[valid])
        res[label] = {"epe_px": round(float(err.mean()), 4),
                      "bad3_percent": round(float((err > 3).mean() * 100), 3),
                      "bad1_percent": round(float((err > 1).mean() * 100), 3),
                      "density": round(float(valid.sum() / evaluable.sum()), 4)}
        if label == "sgbm":
            e = np.where(valid, np.abs(disp - gt), np.nan)
            fig = np.hstack([_label(cv2.cvtColor(left, cv2.COLOR_RGB2BGR), "left"),
                             _label(_colour(np.where(gt > 0, gt, np.nan), 10, 90), "GT disparity"),
                             _label(_colour(disp, 10, 90), "SGBM disparity"),
                             _label(_colour(e, 0, 3), "|error| 0-3 px")])
            cv2.imwrite(str(out / "scared_disparity.png"), fig)
        print(f"  SCARED {label}: {res[label]}", flush=True)
    return res


def bench_endonerf(data: Path, out: Path, frames: int) -> tuple[dict, dict]:
    root = data / "endonerf" / "pulling_soft_tissues"
    lefts = sorted((root / "images").glob("*.png"))[:frames]
    rights = sorted((root / "images_right").glob("*.png"))[:frames]
    cl = CameraModel.pinhole(640, 512, ENDONERF_F)
    cr = CameraModel.pinhole(640, 512, ENDONERF_F, baseline=ENDONERF_BASELINE)
    sd = StereoDepth(cl, cr)
    seg = CueSegmenter()
    rel, ratios, density, ious, recalls, precisions = [], [], [], [], [], []
    for i, (lp, rp) in enumerate(zip(lefts, rights, strict=True)):
        left, right = _rgb(lp), _rgb(rp)
        depth = sd.compute(left, right).depth
        ds = cv2.imread(str(root / "depth" / lp.name.replace("color", "depth")), cv2.IMREAD_UNCHANGED)
        ds = ds.astype(np.float32) / 1000.0  # uint8, about mm, 0 invalid
        tool = cv2.imread(str(root / "masks" / lp.name.replace("color", "mask")), cv2.IMREAD_GRAYSCALE) > 0
        tissue = ~tool & (ds > 0)
        valid = tissue & np.isfinite(depth)
        rel.append(float(np.median(np.abs(depth[valid] - ds[valid]) / ds[valid])))
        ratios.append(float(np.median(ds[valid] / depth[valid])))
        density.append(float(valid.sum() / tissue.sum()))
        gt = cv2.imread(str(root / "gt_masks" / lp.name.replace("color", "mask")), cv2.IMREAD_GRAYSCALE) > 0
        m = seg.segment(left, depth=depth) > 0
        ious.append(float((m & gt).sum() / max((m | gt).sum(), 1)))
        recalls.append(float((m & gt).sum() / max(gt.sum(), 1)))
        precisions.append(float((m & gt).sum() / max(m.sum(), 1)))
        if i in (0, 20, 40) or i == len(lefts) - 1:
            cv2.imwrite(str(out / f"endonerf_mask_{i:02d}.png"), _label(_overlay(left, m, gt),
                        f"frame {i}: IoU {ious[-1]:.2f} recall {recalls[-1]:.2f}"))
        if i == 0:
            fig = np.hstack([_label(cv2.cvtColor(left, cv2.COLOR_RGB2BGR), "left"),
                             _label(_colour(np.where(ds > 0, ds, np.nan), 0.03, 0.11), "dataset depth"),
                             _label(_colour(depth, 0.03, 0.11), "our SGBM depth 30-110 mm")])
            cv2.imwrite(str(out / "endonerf_depth.png"), fig)
        print(f"  EndoNeRF frame {i}: depth rel diff {rel[-1] * 100:.2f} %, mask IoU {ious[-1]:.3f} "
              f"recall {recalls[-1]:.3f}", flush=True)
    curve_plot({"IoU": ious, "recall": recalls, "precision": precisions}, out / "endonerf_mask_per_frame.png",
               "EndoNeRF cue segmenter vs gt_masks, per frame")
    depth_res = {"frames": len(lefts), "median_abs_rel_diff_percent": round(float(np.mean(rel)) * 100, 3),
                 "density_on_tissue": round(float(np.mean(density)), 4),
                 "assumed_baseline_mm": ENDONERF_BASELINE * 1000,
                 "implied_baseline_mm": round(ENDONERF_BASELINE * 1000 * float(np.median(ratios)), 4),
                 "per_frame_rel_diff_percent": [round(r * 100, 3) for r in rel]}
    mask_res = {"frames": len(lefts), "mean_iou": round(float(np.mean(ious)), 4),
                "min_iou": round(float(np.min(ious)), 4), "mean_recall": round(float(np.mean(recalls)), 4),
                "min_recall": round(float(np.min(recalls)), 4),
                "mean_precision": round(float(np.mean(precisions)), 4),
                "per_frame_iou": [round(v, 4) for v in ious],
                "per_frame_recall": [round(v, 4) for v in recalls]}
    return depth_res, mask_res


def bench_synthetic(out: Path, frames: int) -> dict:
    from surg3d_nodes.data.synthetic import SynthConfig, generate

    scene = generate(SynthConfig(width=640, height=512, frames=frames, instruments=2))
    sd = StereoDepth(scene.cam_left, scene.cam_right)
    rels, dens, recalls = [], [], []
    seg = CueSegmenter()
    for i, f in enumerate(scene.frames):
        res = sd.compute(f.left, f.right)
        tissue = (f.mask == 0) & np.isfinite(f.depth)
        valid = tissue & np.isfinite(res.depth)
        rels.append(float(np.median(np.abs(res.depth[valid] - f.depth[valid]) / f.depth[valid])))
        dens.append(float(valid.sum() / tissue.sum()))
        m, gt = seg.segment(f.left, depth=res.depth) > 0, f.mask > 0
        recalls.append(float((m & gt).sum() / max(gt.sum(), 1)))
        if i == 0:
            rel = np.where(valid, np.abs(res.depth - f.depth) / f.depth, np.nan)
            fig = np.hstack([_label(cv2.cvtColor(f.left, cv2.COLOR_RGB2BGR), "synthetic left"),
                             _label(_colour(f.depth, 0.06, 0.10), "GT depth"),
                             _label(_colour(res.depth, 0.06, 0.10), "SGBM depth"),
                             _label(_colour(rel, 0, 0.05), "rel. error 0-5 %")])
            cv2.imwrite(str(out / "synthetic_depth.png"), fig)
    r = {"frames": frames, "median_rel_error_percent": round(float(np.mean(rels)) * 100, 3),
         "density_on_tissue": round(float(np.mean(dens)), 4),
         "mask_recall": round(float(np.mean(recalls)), 4)}
    print(f"  synthetic: {r}", flush=True)
    return r


def bench_timing(data: Path, repeats: int, depth_onnx: str | None, yolo: str | None) -> dict:
    root = data / "endonerf" / "pulling_soft_tissues"
    lp, rp = sorted((root / "images").glob("*.png"))[0], sorted((root / "images_right").glob("*.png"))[0]
    left, right = _rgb(lp), _rgb(rp)
    cl = CameraModel.pinhole(640, 512, ENDONERF_F)
    cr = CameraModel.pinhole(640, 512, ENDONERF_F, baseline=ENDONERF_BASELINE)
    out: dict = {"cpu": {}}
    for label, params in (("depth_sgbm_lr", SGBMParams()), ("depth_sgbm_no_lr", SGBMParams(lr_max_diff=0)),
                          ("depth_sgbm_half_res", SGBMParams(scale=0.5))):
        sd = StereoDepth(cl, cr, params)
        out["cpu"][label] = _timeit(lambda sd=sd: sd.compute(left, right), repeats)
    depth = StereoDepth(cl, cr).compute(left, right).depth
    seg = CueSegmenter()
    out["cpu"]["seg_cue_with_depth"] = _timeit(lambda: seg.segment(left, depth=depth), repeats)
    seg_nd = CueSegmenter()
    out["cpu"]["seg_cue_no_depth"] = _timeit(lambda: seg_nd.segment(left), repeats)
    import onnxruntime as ort

    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    out["cuda_available"] = has_cuda
    for device in ["cpu"] + (["cuda"] if has_cuda else []):
        prov = ["CPUExecutionProvider"] if device == "cpu" else ["CUDAExecutionProvider",
                                                                 "CPUExecutionProvider"]
        if depth_onnx:
            m = OnnxDepth(depth_onnx, cl, cr, providers=prov)
            out.setdefault(device, {})[f"depth_onnx_{m.kind}"] = _timeit(lambda m=m: m.compute(left, right),
                                                                           repeats)
        if yolo:
            y = YoloSegmenter(yolo, providers=prov)
            out.setdefault(device, {})["seg_yolo"] = _timeit(lambda y=y: y.segment(left), repeats)
    for dev, vals in out.items():
        if isinstance(vals, dict):
            for k, v in vals.items():
                print(f"  time {dev} {k}: {v['median_ms']} ms", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="/tmp/surg3d_bench_perception", help="output folder (JSON + PNG)")
    ap.add_argument("--data", default=os.environ.get("SURG3D_DATA", str(ROOT.parent / "shared" / "data")),
                    help="shared data folder")
    ap.add_argument("--frames", type=int, default=63, help="EndoNeRF frames to evaluate (clip has 63)")
    ap.add_argument("--synthetic-frames", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10, help="timed runs per measurement")
    ap.add_argument("--threads", type=int, default=1, help="OpenCV threads (0 = OpenCV default)")
    ap.add_argument("--depth-onnx", default=None, help="optional ONNX depth model to time")
    ap.add_argument("--yolo", default=None, help="optional YOLO-seg .onnx to time")
    args = ap.parse_args(argv)
    data, out = Path(args.data), Path(args.out)
    if not (data / "endonerf").is_dir() or not (data / "scared_sttr").is_dir():
        raise SystemExit(f"shared data not found under {data} (expected endonerf/ and scared_sttr/)")
    out.mkdir(parents=True, exist_ok=True)
    if args.threads > 0:
        cv2.setNumThreads(args.threads)
    t0 = time.perf_counter()
    results: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                     "machine": f"{platform.machine()} {os.cpu_count()} CPUs", "opencv": cv2.__version__,
                     "opencv_threads": cv2.getNumThreads(),
                     "load_average_1min": round(os.getloadavg()[0], 2),
                     "command": " ".join(["bench/bench_perception.py", *(argv or sys.argv[1:])])}
    print("[1/4] SCARED disparity", flush=True)
    results["scared"] = bench_scared(data, out)
    print("[2/4] EndoNeRF depth + masks", flush=True)
    results["endonerf_depth"], results["endonerf_masks"] = bench_endonerf(data, out, args.frames)
    print("[3/4] synthetic 640x512", flush=True)
    results["synthetic"] = bench_synthetic(out, args.synthetic_frames)
    print("[4/4] timing 640x512", flush=True)
    results["timing"] = bench_timing(data, args.repeats, args.depth_onnx, args.yolo)
    results["wall_s"] = round(time.perf_counter() - t0, 1)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    s, d, m = results["scared"]["sgbm"], results["endonerf_depth"], results["endonerf_masks"]
    print(f"SCARED EPE {s['epe_px']} px, bad-3 {s['bad3_percent']} %, density {s['density']}; "
          f"EndoNeRF depth rel diff {d['median_abs_rel_diff_percent']} % (implied baseline "
          f"{d['implied_baseline_mm']} mm); masks IoU {m['mean_iou']} recall {m['mean_recall']}; "
          f"synthetic rel err {results['synthetic']['median_rel_error_percent']} %")
    print(f"results: {out / 'results.json'} (+ PNG figures), {results['wall_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
