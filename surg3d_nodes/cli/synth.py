"""`surg3d synth OUT`: render a synthetic surgical stereo clip with exact ground truth.

Writes OUT/endonerf (EndoNeRF layout + exact gt_depth/, tissue/), OUT/bag (rosbag2 on the standard topics,
unless --no-bag) and OUT/contact_sheet.png (left, depth, mask, tissue-only view of a few frames).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.data.datasets.endonerf import write_endonerf_layout
from surg3d_nodes.data.synthetic import (
    MOTIONS,
    SynthConfig,
    SynthFrame,
    cameras,
    iter_frames,
    to_dataset_frame,
)


def sample_indices(n: int, rows: int = 4) -> list[int]:
    """Up to `rows` frame indices spread evenly over a clip of n frames."""
    return sorted({round(float(v)) for v in np.linspace(0, n - 1, min(rows, n))})


def contact_sheet(frames: list[tuple[int, SynthFrame]]) -> np.ndarray:
    """RGB image: one row per (index, frame) with left view, depth (turbo colours), mask and tissue view."""
    depths = np.concatenate([f.depth[np.isfinite(f.depth)] for _, f in frames])
    lo, hi = (float(np.percentile(depths, 1)), float(np.percentile(depths, 99))) if depths.size else (0, 1)
    out_rows = []
    for i, f in frames:
        d = np.clip((np.nan_to_num(f.depth, nan=hi) - lo) / max(hi - lo, 1e-9), 0, 1)
        depth_rgb = cv2.applyColorMap((255 * (1 - d)).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1]
        tiles = [f.left, depth_rgb, np.repeat(f.mask[..., None], 3, axis=2), f.tissue_left]
        row = np.concatenate([np.ascontiguousarray(t) for t in tiles], axis=1)
        scale = max(1, round(160 / f.left.shape[0])) if f.left.shape[0] < 160 else 1
        row = cv2.resize(row, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
        cv2.putText(row, f"#{i}", (4, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1, cv2.LINE_AA)
        out_rows.append(row)
    sheet = np.concatenate(out_rows, axis=0)
    header = np.zeros((18, sheet.shape[1], 3), np.uint8)
    w = sheet.shape[1] // 4
    labels = ("left", f"depth {lo * 1e3:.0f}-{hi * 1e3:.0f} mm", "tool mask", "tissue only")
    for k, label in enumerate(labels):
        cv2.putText(header, label, (k * w + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return np.concatenate([header, sheet], axis=0)


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `surg3d synth`."""
    d = SynthConfig()
    p = argparse.ArgumentParser(prog="surg3d synth", description=__doc__.split("\n")[0])
    p.add_argument("out", type=Path, help="output folder (created; must not hold a previous clip)")
    p.add_argument("--width", type=int, default=d.width)
    p.add_argument("--height", type=int, default=d.height)
    p.add_argument("--frames", type=int, default=d.frames)
    p.add_argument("--fps", type=float, default=d.fps)
    p.add_argument("--motion", choices=MOTIONS, default=d.camera_motion, help="camera motion")
    p.add_argument("--instruments", type=int, choices=(0, 1, 2), default=d.instruments)
    p.add_argument("--noise", type=float, default=d.noise_std, help="image noise std (grey levels)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--bag", action=argparse.BooleanOptionalAction, default=True, help="also write OUT/bag")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--overwrite", action="store_true", help="replace an existing clip in OUT")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `surg3d synth`."""
    args = build_parser().parse_args(argv)
    cfg = SynthConfig(width=args.width, height=args.height, frames=args.frames, fps=args.fps,
                      camera_motion=args.motion, instruments=args.instruments, noise_std=args.noise,
                      seed=args.seed)
    try:
        cfg.validate()
    except ValueError as e:
        print(f"surg3d synth: error: {e}", file=sys.stderr)
        return 2
    out: Path = args.out
    clip, bag, sheet = out / "endonerf", out / "bag", out / "contact_sheet.png"
    if not args.overwrite:
        existing = [p for p in (clip, *([bag] if args.bag else [])) if p.exists()]
        if existing:
            print(f"surg3d synth: error: {existing[0]} already exists (use --overwrite or a new OUT)",
                  file=sys.stderr)
            return 2
    from surg3d_nodes.cli.convert import convert_reader, print_progress
    from surg3d_nodes.data.datasets import open_dataset

    # Render and write frame by frame (constant memory); keep a few frames for the contact sheet.
    cam_l, cam_r = cameras(cfg)
    keep = set(sample_indices(cfg.frames))
    kept: list[tuple[int, SynthFrame]] = []
    stats = {"dmin": np.inf, "dmax": -np.inf, "tool": 0.0}

    def frames():
        for i, f in enumerate(iter_frames(cfg, progress=print_progress("rendered"))):
            if i in keep:
                kept.append((i, f))
            valid = f.depth[np.isfinite(f.depth)]
            if valid.size:
                stats["dmin"] = min(stats["dmin"], float(valid.min()))
                stats["dmax"] = max(stats["dmax"], float(valid.max()))
            stats["tool"] += float(np.mean(f.mask > 0)) / cfg.frames
            yield to_dataset_frame(i, f, cam_l, cam_r)

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    write_endonerf_layout(clip, frames(), cfg.frames, cfg.fps, overwrite=args.overwrite)
    t_render = time.perf_counter() - t0
    if args.bag:
        bag_stats = convert_reader(open_dataset("synthetic", clip), bag, storage=args.storage,
                                   overwrite=args.overwrite, progress=print_progress("bagged"))
    cv2.imwrite(str(sheet), cv2.cvtColor(contact_sheet(kept), cv2.COLOR_RGB2BGR))
    print(f"synthetic clip: {cfg.frames} frames {cfg.width}x{cfg.height} at {cfg.fps:g} Hz, camera "
          f"{cfg.camera_motion}, {cfg.instruments} instrument(s), seed {cfg.seed}; "
          f"rendered and written in {t_render:.2f} s")
    print(f"  fx {cam_l.fx:.1f} px, baseline {cfg.baseline * 1e3:.2f} mm, depth {stats['dmin'] * 1e3:.1f}-"
          f"{stats['dmax'] * 1e3:.1f} mm, instrument pixels {100 * stats['tool']:.1f} %")
    print(f"  {clip}  (EndoNeRF layout: images/, images_right/, depth/ uint8 mm, gt_depth/ uint16 0.01 mm, "
          "masks/, gt_masks/, tissue/, poses_bounds.npy)")
    if args.bag:
        print(f"  {bag}  ({args.storage}, {bag_stats.messages} messages, {bag_stats.bytes / 1e6:.1f} MB)")
    print(f"  {sheet}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
