"""Operator steering at equal budget: PSNR inside a marked region of interest with and without marking it.

A synthetic clip (moving endoscope, one instrument) is streamed in time order with exactly K training steps
after each frame (`train_stream`), once with no region and once with a region marked from the
first frame on (its pixels weighted `roi_weight`, and `roi_step_share` of the steps on each frame's box about it at
the camera's resolution instead of the whole frame); every 8th frame is held out. Both runs get the same frames,
steps and seed. Scored on the held-out frames at the training resolution, at the camera's, and with the camera's
view averaged over the training pixels (one render for both runs at the training size): PSNR* over the tissue
pixels inside the region (found from the exact tissue depth) and outside it; and "live": inside the region on each
newest frame right after its steps.

    python bench/recon_roi_psnr.py [--size 320x256] [--frames 40] [--k 10] [--radius 0.006] [--weight 4]

Prints both runs and the difference, and writes to --out (default /tmp/surg3d_roi_bench) the JSON, the per-frame
PSNR inside the region at the camera's resolution (`roi_psnr_per_frame.png`, seed 0) and a held-out frame's
region: the camera's image, unmarked, marked (`roi_region_strip.png`, 4x; the middle held-out frame).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import torch
from benchlib import curve_plot

from surg3d_nodes.common.metrics import psnr_star
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.regions import Region, region_box, region_pixels
from surg3d_nodes.recon.runner import Reconstructor, train_stream


def _scaled(f, cam, s: float):
    """Frame rgb, tissue mask and exact tissue depth at the training resolution (cam scaled by s)."""
    size = (round(cam.width * s), round(cam.height * s))
    rgb = cv2.resize(f.left, size, interpolation=cv2.INTER_AREA)
    tissue = cv2.resize((f.mask == 0).astype(np.float32), size, interpolation=cv2.INTER_AREA) > 0.99
    depth = cv2.resize(np.nan_to_num(f.tissue_depth, nan=0.0), size, interpolation=cv2.INTER_NEAREST)
    return rgb, tissue, depth


def held_out(n: int) -> list[int]:
    """The held-out frames of an n-frame clip: every 8th, from the second."""
    return [i for i in range(n) if (i - 1) % 8 == 0]


def region_cut(img: np.ndarray, scene, region: Region, i: int) -> np.ndarray:
    """An image of frame i at the camera's resolution cut to the box about the region (recon.regions.region_box)."""
    cam = scene.cam_left
    x0, y0, w, h = region_box((region,), scene.frames[i].pose, cam.intrinsics(), cam.width, cam.height)
    return img[y0:y0 + h, x0:x0 + w]


def region_view(recon: Reconstructor, scene, region: Region, i: int) -> np.ndarray:
    """Frame i's view at the camera's resolution, cut to the box about the region."""
    f, cam = scene.frames[i], scene.cam_left
    img, _, _ = recon.render_view(f.pose, recon.time_of(f.stamp_ns), cam.width, cam.height, K=cam.intrinsics())
    return region_cut(img, scene, region, i)


def run(scene, region: Region, mark: bool, cfg: TrainerConfig, k: int) -> tuple[dict, np.ndarray]:
    """Stream the training frames with K steps each (`mark`: the region marked before the first), score the
    held-out frames inside and outside the region; also the middle held-out frame's view of the region."""
    frames = scene.frames
    tests = held_out(len(frames))
    train = [i for i in range(len(frames)) if i not in tests]
    recon = Reconstructor(cfg)
    if mark:
        recon.set_regions((region,))
    live: list[tuple[float, ...]] = []   # inside the region: training size, camera's, camera's averaged

    def inside_psnr(i: int) -> tuple[float, ...]:
        """PSNR* inside and outside the region at the training resolution, at the camera's own, and of the
        camera's view averaged over the training pixels (the same render for both runs: the view at the training
        size samples the unmarked model at the pixels it was fitted at, the marked one's box is averaged)."""
        f = frames[i]
        out, views = [], []
        for s in (cfg.image_scale, 1.0):
            cam = scene.cam_left.scaled(s)
            rgb, tissue, depth = _scaled(f, scene.cam_left, s)
            img, _, _ = recon.render_view(f.pose, recon.time_of(f.stamp_ns), cam.width, cam.height,
                                          K=cam.intrinsics())
            roi = region_pixels((region,), torch.as_tensor(depth), cam.intrinsics(), f.pose).numpy() & tissue
            views.append((img, rgb, roi, tissue))
            out += [psnr_star(img, rgb, roi.astype(np.float32)),
                    psnr_star(img, rgb, (tissue & ~roi).astype(np.float32))]
        (small, rgb, roi, tissue), (camera_view, *_) = views
        area = cv2.resize(camera_view, small.shape[1::-1], interpolation=cv2.INTER_AREA)
        out += [psnr_star(area, rgb, roi.astype(np.float32)), psnr_star(area, rgb, (tissue & ~roi).astype(np.float32))]
        return tuple(out)

    t0 = time.monotonic()
    # live: the newest frame right after its K steps, what the operator's view shows
    train_stream(recon, [Frame(frames[i].stamp_ns, frames[i].left, frames[i].depth, frames[i].mask,
                               frames[i].pose, scene.cam_left) for i in train], k,
                 lambda j, _: live.append(inside_psnr(train[j])[::2]))
    seconds = time.monotonic() - t0
    inside, outside, inside_n, outside_n, inside_a, outside_a = zip(*(inside_psnr(i) for i in tests), strict=True)
    st = recon.get_stats()
    return {"psnr_inside": float(np.mean(inside)), "psnr_outside": float(np.mean(outside)),
            "live_inside": float(np.mean([x[0] for x in live])), "inside_per_frame": list(inside),
            "inside_native_per_frame": list(inside_n),
            "psnr_inside_native": float(np.mean(inside_n)), "psnr_outside_native": float(np.mean(outside_n)),
            "live_inside_native": float(np.mean([x[1] for x in live])),
            "psnr_inside_area": float(np.mean(inside_a)), "psnr_outside_area": float(np.mean(outside_a)),
            "live_inside_area": float(np.mean([x[2] for x in live])),
            "iterations": st.iterations, "region_steps": st.region_steps, "gaussians": st.num_gaussians,
            "psnr_regions_status": st.psnr_regions, "train_s": seconds}, region_view(recon, scene, region,
                                                                           tests[len(tests) // 2])


def main(argv: list[str] | None = None) -> int:
    """Run both trainings; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="320x256")
    ap.add_argument("--frames", type=int, default=40)
    ap.add_argument("--k", type=int, default=10, help="training steps after each frame")
    ap.add_argument("--scale", type=float, default=0.5, help="training image scale")
    ap.add_argument("--radius", type=float, default=0.006, help="region radius, m")
    ap.add_argument("--pixel", default="0.65,0.35", help="region centre: the tissue seen at this image fraction "
                                                           "on the first frame")
    ap.add_argument("--weight", type=float, default=TrainerConfig.roi_weight)
    ap.add_argument("--share", type=float, default=TrainerConfig.roi_step_share,
                    help="share of the steps on the region's box (roi_step_share)")
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs with trainer seeds 0..N-1 (the compiled "
                                                         "CPU renderer is not bit-deterministic: ~0.3 dB apart)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_roi_bench"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    scene = generate(SynthConfig(width=w, height=h, frames=args.frames, camera_motion="moving"))
    f0 = scene.frames[0]
    px, py = (float(v) for v in args.pixel.split(","))
    u, v = int(px * w), int(py * h)
    z = float(f0.tissue_depth[v, u])
    K = scene.cam_left.intrinsics()
    p_cam = np.array([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z, 1.0])
    center = tuple(float(c) for c in (f0.pose @ p_cam)[:3])
    region = Region(1, center, args.radius)
    results: dict[str, list[dict]] = {"unmarked": [], "marked": []}
    views: dict[str, np.ndarray] = {}          # the first seed's view of the region, as the camera would see it
    for seed in range(args.repeats):
        cfg = TrainerConfig(device="cpu", image_scale=args.scale, roi_weight=args.weight,
                            roi_step_share=args.share, seed=seed)
        for name, mark in (("unmarked", False), ("marked", True)):
            r, view = run(scene, region, mark, replace(cfg), args.k)
            results[name].append(r)
            views.setdefault(name, view)
            print(f"seed {seed} {name:9s}: inside {r['psnr_inside']:.2f} dB, outside {r['psnr_outside']:.2f} dB, "
                  f"live inside {r['live_inside']:.2f} dB; at {w}x{h}: inside {r['psnr_inside_native']:.2f}, "
                  f"outside {r['psnr_outside_native']:.2f}, live inside {r['live_inside_native']:.2f} dB; its view "
                  f"averaged: inside {r['psnr_inside_area']:.2f}, outside {r['psnr_outside_area']:.2f} dB; "
                  f"{r['iterations']} iterations ({r['region_steps']} on the region's box), {r['gaussians']}"
                  f" Gaussians, {r['train_s']:.0f} s", flush=True)

    def mean(name: str, key: str) -> float:
        return float(np.mean([r[key] for r in results[name]]))

    def gain(key: str) -> float:
        return mean("marked", key) - mean("unmarked", key)

    for res, sfx in ((f"training resolution ({args.scale:g})", ""), (f"the camera's {w}x{h}", "_native"),
                     (f"the training resolution, the camera's view averaged ({args.scale:g})", "_area")):
        print(f"marking the region (mean of {args.repeats}), scored at {res}: inside "
              f"{mean('unmarked', 'psnr_inside' + sfx):.2f} -> {mean('marked', 'psnr_inside' + sfx):.2f} dB "
              f"({gain('psnr_inside' + sfx):+.2f}), outside {gain('psnr_outside' + sfx):+.2f} dB; live view inside "
              f"{gain('live_inside' + sfx):+.2f} dB (roi_weight {args.weight:g}, roi_step_share {args.share:g})")
    args.out.mkdir(parents=True, exist_ok=True)
    curve_plot({f"{name}, seed 0": results[name][0]["inside_native_per_frame"] for name in results},
               args.out / "roi_psnr_per_frame.png",
               f"held-out frames: PSNR* inside the region at {w}x{h}, trained at {args.scale:g} (dB)", 20.0, 45.0,
               (25.0, 30.0, 35.0, 40.0))
    tests = held_out(args.frames)
    mid = tests[len(tests) // 2]
    strip = np.concatenate([region_cut(scene.frames[mid].left, scene, region, mid), views["unmarked"],
                            views["marked"]], 1)
    cv2.imwrite(str(args.out / "roi_region_strip.png"),
                cv2.resize(strip[..., ::-1], None, fx=4, fy=4, interpolation=cv2.INTER_NEAREST))
    (args.out / "roi_psnr.json").write_text(json.dumps({
        "size": [w, h], "frames": args.frames, "k": args.k, "scale": args.scale, "region": {
            "center": center, "radius": args.radius}, "roi_weight": args.weight, "roi_step_share": args.share,
        **{
            f"{k}{sfx}_db": gain(key + sfx) for sfx in ("", "_native", "_area") for k, key in (
                ("gain_inside", "psnr_inside"), ("gain_live_inside", "live_inside"),
                ("change_outside", "psnr_outside"))}, "runs": results,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
