"""Views finer than the training images: the trained model rendered at the camera's own size three ways.

A synthetic clip (moving endoscope) is streamed with K steps after each frame at a reduced training scale; the
newest frame is then rendered at the camera's size with (a) that size's own pixel low-pass, (b) at the training
size and upsampled (the trainer's way until 2026-12-06), (c) with the training pixel's low-pass (`render_view`
now), and scored against the camera's image over tissue pixels (PSNR*: the squared error over them only).

    python bench/recon_finer_views.py [--size 320x256] [--frames 12] [--k 10] [--scales 0.5 0.25]

Writes JSON and an image strip per scale (a | b | c | the camera's image) to --out.
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

from surg3d_nodes.common.metrics import psnr_star
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.render import RenderCamera, render_evaluated
from surg3d_nodes.recon.render.camera import EPS2D
from surg3d_nodes.recon.runner import Reconstructor, train_stream


def main(argv: list[str] | None = None) -> int:
    """Train once per scale and compare the three renderings; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="320x256")
    ap.add_argument("--frames", type=int, default=12)
    ap.add_argument("--k", type=int, default=10, help="training steps after each frame")
    ap.add_argument("--scales", type=float, nargs="+", default=[0.5, 0.25], help="training image scales")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_finer_views"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    w, h = (int(v) for v in args.size.split("x"))
    scene = generate(SynthConfig(width=w, height=h, frames=args.frames, camera_motion="moving"))
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
    last = scene.frames[-1]
    args.out.mkdir(parents=True, exist_ok=True)
    rows = []
    for s in args.scales:
        recon = Reconstructor(TrainerConfig(device="cpu", image_scale=s, seed=0))
        train_stream(recon, frames, args.k)
        view = recon.view(recon.time_of(last.stamp_ns))
        t = view.time_s
        # (c) as render_view does it, then (a) with the view's own low-pass and (b) upsampled, from the same Gaussians
        fine, _, alpha = recon.render_view(last.pose, t, w, h, scene.cam_left.intrinsics())
        cam = RenderCamera.from_ros(last.pose, scene.cam_left.intrinsics(), w, h)
        small = scene.cam_left.scaled(s)
        coarse, _, _ = recon.render_view(last.pose, t, small.width, small.height, small.intrinsics())
        with torch.no_grad():
            g = recon.model.evaluate(t, cam.center())
            alive = recon.model.alive(t)
            if alive is not None:
                g = {k: v[alive] for k, v in g.items()}
            own = render_evaluated(g, replace(cam, eps2d=EPS2D), recon.backend)[0]
        gain = recon.falloff().gain(scene.cam_left.intrinsics(), w, h)[..., None]
        own = np.clip(own.numpy() * gain * 255 + 0.5, 0, 255).astype(np.uint8)
        up = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR)
        tissue = ((last.mask == 0) & (alpha > 0.5)).astype(np.float32)
        row = {"scale": s, "training_size": [small.width, small.height], "gaussians": recon.model.num_gaussians,
               **{name: psnr_star(img, last.left, tissue) for name, img in
                  (("own_low_pass_db", own), ("upsampled_db", up), ("training_low_pass_db", fine))}}
        rows.append(row)
        print(f"trained at {small.width}x{small.height}, viewed at {w}x{h}: own low-pass {row['own_low_pass_db']:.2f}"
              f" dB, upsampled {row['upsampled_db']:.2f} dB, training pixel's low-pass "
              f"{row['training_low_pass_db']:.2f} dB", flush=True)
        strip = np.concatenate([own, up, fine, last.left], axis=1)
        cv2.imwrite(str(args.out / f"finer_views_{small.width}x{small.height}.png"),
                    cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))
    (args.out / "finer_views.json").write_text(json.dumps({
        "size": [w, h], "frames": args.frames, "k": args.k, "rows": rows,
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
