"""Renderer speed: forward + backward of one training render, torch reference vs gsplat (CUDA).

    python bench/recon_render_speed.py --gaussians 2000 20000 --size 160x128 [--device cuda] [--json OUT]
    python bench/recon_render_speed.py --device cuda --backends gsplat --gaussians 500000 --size 640x512

Gaussians are a random surface-like layer in front of the camera (about one Gaussian per pixel at 20k and
160x128, like the EndoNeRF CPU evaluation). Prints ms per forward and backward; on CUDA also gsplat.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch

from surg3d_nodes.recon.render import RenderCamera
from surg3d_nodes.recon.render import torch_backend as tb


def scene(n: int, w: int, h: int, f: float, device: str) -> list[torch.Tensor]:
    """Random Gaussians covering the image at depth 5-6 cm with ~pixel-sized scales."""
    g = torch.Generator().manual_seed(0)
    z = 0.05 + 0.01 * torch.rand(n, generator=g)
    u = torch.rand(n, generator=g) * w
    v = torch.rand(n, generator=g) * h
    means = torch.stack([(u - w / 2) / f * z, (v - h / 2) / f * z, z], -1)
    scales = torch.full((n, 3), 0.05 / f * math.sqrt(w * h / n))
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(n, 1)
    return [t.to(device).requires_grad_() for t in (means, quats, scales, torch.full((n,), 0.7),
                                                    torch.rand(n, 3, generator=g))]


def timeit(fn, reps: int, device: str) -> tuple[float, float]:
    """(forward ms, backward ms), median over reps after one warm-up."""
    fw, bw = [], []
    for i in range(reps + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        rgb, _, alpha, _ = fn()
        if device == "cuda":
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        (rgb.mean() + alpha.mean()).backward()
        if device == "cuda":
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        if i:
            fw.append((t1 - t0) * 1e3)
            bw.append((t2 - t1) * 1e3)
    return float(np.median(fw)), float(np.median(bw))


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, nargs="+", default=[2000, 20000])
    ap.add_argument("--size", default="160x128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--backends", nargs="+", choices=["torch", "gsplat"], default=None,
                    help="default: torch on CPU, torch and gsplat on CUDA (gsplat needs CUDA)")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    backends = a.backends or (["torch", "gsplat"] if a.device == "cuda" else ["torch"])
    if "gsplat" in backends and a.device != "cuda":
        ap.error("the gsplat backend needs --device cuda")
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    w, h = (int(x) for x in a.size.split("x"))
    f = 0.89 * w
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    cam = RenderCamera.from_ros(np.eye(4), K, w, h, device=a.device)
    rows = []
    for n in a.gaussians:
        p = scene(n, w, h, f, a.device)
        opac = p[3].detach()
        args = (p[0], p[1], p[2], opac, p[4])
        runs = [(f"torch tile {ts}", lambda ts=ts, args=args: tb.render(*args, cam, tile_size=ts))
                for ts in ([4, 8] if a.device == "cpu" else [16]) if "torch" in backends]
        if "gsplat" in backends:
            from surg3d_nodes.recon.render import gsplat_backend
            runs.append(("gsplat", lambda args=args: gsplat_backend.render(*args, cam)))
        for name, fn in runs:
            fw, bw = timeit(fn, a.reps, a.device)
            rows.append({"backend": name, "gaussians": n, "size": a.size, "fwd_ms": fw, "bwd_ms": bw})
            print(f"{name:14s} N={n:7d} {a.size}: forward {fw:8.1f} ms  backward {bw:8.1f} ms", flush=True)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"threads": a.threads, "device": a.device, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
