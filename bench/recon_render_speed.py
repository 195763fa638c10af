"""Renderer speed, backends side by side in one process: render only, and a training step (forward + loss +
backward + Adam), with the ratios to the first backend.

    python bench/recon_render_speed.py                         # the targets of issue 13 (cpu vs torch, 1 thread)
    python bench/recon_render_speed.py --gaussians 2000 20000 --size 160x128 --backends torch cpu
    python bench/recon_render_speed.py --device cuda --backends gsplat --gaussians 500000 --size 640x512

Without --gaussians it runs the target cases: a training step at 160x128 with 30k Gaussians and at 640x512 with
200k, and rendering 640x512 with 100k. Gaussians are a random surface-like layer in front of the camera (about
one Gaussian per pixel at 20k and 160x128, like the EndoNeRF CPU evaluation). The backends take turns within
every repetition, so a change in the machine's load hits them alike; on CPU the times are CPU time of this
process (what a busy shared machine distorts least), medians over the repetitions.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import cv2
import numpy as np
import torch

from surg3d_nodes.recon.render import RenderCamera, render_evaluated

TARGET_CASES = [("step", 160, 128, 30000), ("step", 640, 512, 200000), ("render", 640, 512, 100000)]


def scene(n: int, w: int, h: int, f: float, device: str) -> list[torch.Tensor]:
    """Random Gaussians covering the image at depth 5-6 cm with ~pixel-sized scales (leaf tensors)."""
    g = torch.Generator().manual_seed(0)
    z = 0.05 + 0.01 * torch.rand(n, generator=g)
    u = torch.rand(n, generator=g) * w
    v = torch.rand(n, generator=g) * h
    means = torch.stack([(u - w / 2) / f * z, (v - h / 2) / f * z, z], -1)
    scales = torch.full((n, 3), 0.05 / f * math.sqrt(w * h / n))
    quats = torch.tensor([1.0, 0, 0, 0]).repeat(n, 1)
    return [t.to(device).requires_grad_() for t in (means, quats, scales, torch.full((n,), 0.7),
                                                    torch.rand(n, 3, generator=g))]


class Runner:
    """One backend on one scene: render only, or a training step with its own Adam state."""

    def __init__(self, backend: str, n: int, w: int, h: int, device: str):
        f = 0.89 * w
        K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
        self.cam = RenderCamera.from_ros(np.eye(4), K, w, h, device=device)
        self.backend, self.device = backend, device
        self.params = scene(n, w, h, f, device)
        self.target = torch.rand(h, w, 3, generator=torch.Generator().manual_seed(1)).to(device)
        self.opt = torch.optim.Adam(self.params, lr=1e-4)

    def _gaussians(self) -> dict[str, torch.Tensor]:
        means, quats, scales, opac, cols = self.params
        return {"means": means, "quats": quats, "scales": scales, "opacities": opac.clamp(0.01, 0.99),
                "colors": cols}

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def render(self) -> dict[str, float]:
        self._sync()
        t0 = time.process_time(), time.perf_counter()
        with torch.no_grad():
            render_evaluated(self._gaussians(), self.cam, self.backend)
        self._sync()
        return {"render": _elapsed(t0)}

    def step(self) -> dict[str, float]:
        self._sync()
        t0 = time.process_time(), time.perf_counter()
        rgb, depth, alpha, _ = render_evaluated(self._gaussians(), self.cam, self.backend)
        loss = (rgb - self.target).abs().mean() + 0.1 * (depth * alpha).mean()
        self._sync()
        t1 = time.process_time(), time.perf_counter()
        loss.backward()
        self._sync()
        t2 = time.process_time(), time.perf_counter()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self._sync()
        return {"forward": _elapsed(t0, t1), "backward": _elapsed(t1, t2), "step": _elapsed(t0)}


def _elapsed(t0: tuple[float, float], t1: tuple[float, float] | None = None) -> tuple[float, float]:
    """(CPU ms, wall ms) between two (process_time, perf_counter) stamps (t1 = now)."""
    t1 = t1 or (time.process_time(), time.perf_counter())
    return (t1[0] - t0[0]) * 1e3, (t1[1] - t0[1]) * 1e3


def run_case(kind: str, w: int, h: int, n: int, backends: list[str], device: str, reps: int) -> list[dict]:
    """Median times of every backend on one case, the backends alternating within each repetition."""
    runners = [Runner(b, n, w, h, device) for b in backends]
    samples: list[list[dict]] = [[] for _ in backends]
    for i in range(reps + 1):                      # repetition 0 warms up (library load, allocator)
        for r, s in zip(runners, samples, strict=True):
            out = r.render() if kind == "render" else r.step()
            if i:
                s.append(out)
    rows = []
    for b, s in zip(backends, samples, strict=True):
        row = {"backend": b, "case": kind, "size": f"{w}x{h}", "gaussians": n}
        for key in s[0]:
            cpu = float(np.median([x[key][0] for x in s]))
            wall = float(np.median([x[key][1] for x in s]))
            row[f"{key}_ms"] = cpu if device == "cpu" else wall
            row[f"{key}_wall_ms"] = wall
        rows.append(row)
    main_key = "render_ms" if kind == "render" else "step_ms"
    for row in rows:
        row["ratio_to_first"] = rows[0][main_key] / row[main_key]
    return rows


def plot(rows: list[dict], path: Path, title: str) -> None:
    """Horizontal bars (log scale) of the render / step time per case and backend, with the ratios."""
    cases = list(dict.fromkeys((r["case"], r["size"], r["gaussians"]) for r in rows))
    backends = list(dict.fromkeys(r["backend"] for r in rows))
    colours = [(60, 60, 200), (40, 160, 40), (200, 120, 0), (120, 0, 160)]
    bar_h, gap, left, width = 26, 22, 330, 1000
    height = 70 + len(cases) * (len(backends) * bar_h + gap) + 40
    img = np.full((height, width, 3), 255, np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    cv2.putText(img, title, (10, 30), font, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    key = {"render": "render_ms", "step": "step_ms"}
    vals = [r[key[r["case"]]] for r in rows]
    lo, hi = math.log10(min(vals) / 2), math.log10(max(vals) * 2)
    x_of = lambda v: int(left + (math.log10(v) - lo) / (hi - lo) * (width - left - 140))  # noqa: E731
    y = 60
    for case in cases:
        label = f"{'training step' if case[0] == 'step' else 'render only'} {case[1]} {case[2] // 1000}k"
        cv2.putText(img, label, (10, y + bar_h), font, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
        for j, b in enumerate(backends):
            row = next((r for r in rows if (r["case"], r["size"], r["gaussians"]) == case and r["backend"] == b), None)
            if row is None:
                continue
            v = row[key[case[0]]]
            cv2.rectangle(img, (left, y), (x_of(v), y + bar_h - 4), colours[j % len(colours)], -1)
            text = f"{b}: {v:.0f} ms" + (f"  (x{row['ratio_to_first']:.1f})" if j else "")
            cv2.putText(img, text, (x_of(v) + 6, y + bar_h - 9), font, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
            y += bar_h
        y += gap
    cv2.putText(img, "log scale; CPU time per call, median", (10, height - 15), font, 0.45, (90, 90, 90), 1,
                cv2.LINE_AA)
    cv2.imwrite(str(path), img)


def main() -> None:
    """Run the benchmark."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gaussians", type=int, nargs="+", default=None,
                    help="Gaussian counts at --size (render and training step each); default: the target cases")
    ap.add_argument("--size", default="160x128")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--backends", nargs="+", choices=["torch", "cpu", "gsplat"], default=None,
                    help="default: torch and cpu on CPU, torch and gsplat on CUDA (the first is the reference)")
    ap.add_argument("--json", default=None)
    ap.add_argument("--plot", default=None, help="write a PNG bar chart here")
    a = ap.parse_args()
    backends = a.backends or (["torch", "gsplat"] if a.device == "cuda" else ["torch", "cpu"])
    if "gsplat" in backends and a.device != "cuda":
        ap.error("the gsplat backend needs --device cuda")
    if "cpu" in backends and a.device != "cpu":
        ap.error("the cpu backend needs --device cpu")
    torch.set_num_threads(a.threads)
    torch.set_flush_denormal(True)
    if a.gaussians:
        w, h = (int(x) for x in a.size.split("x"))
        cases = [(kind, w, h, n) for n in a.gaussians for kind in ("render", "step")]
    else:
        cases = TARGET_CASES
    load = os.getloadavg()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {a.threads} thread(s), "
          f"load {load[0]:.1f}", flush=True)
    rows = []
    for kind, w, h, n in cases:
        case_rows = run_case(kind, w, h, n, backends, a.device, a.reps)
        rows += case_rows
        for r in case_rows:
            detail = (f"render {r['render_ms']:8.1f} ms" if kind == "render" else
                      f"step {r['step_ms']:8.1f} ms (forward {r['forward_ms']:7.1f}, backward {r['backward_ms']:7.1f})")
            print(f"{kind:6s} {w}x{h} N={n:7d} {r['backend']:6s}: {detail}  x{r['ratio_to_first']:.1f} vs "
                  f"{backends[0]}", flush=True)
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "threads": a.threads,
            "device": a.device, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "loadavg_start": load[0], "loadavg_end": os.getloadavg()[0], "timer": "process CPU time" if
            a.device == "cpu" else "wall clock", "rows": rows}
    if a.json:
        Path(a.json).write_text(json.dumps(meta, indent=2))
    if a.plot:
        plot(rows, Path(a.plot), f"{meta['date'][:10]}, {meta['machine']}, {a.threads} thread(s), load "
                                 f"{load[0]:.1f}-{meta['loadavg_end']:.1f}")


if __name__ == "__main__":
    main()
