"""EndoNeRF evaluation of the reconstruction (offline or online), with baselines and a right-view score.

Protocol (Deform3DGS / EndoGaussian): test frames are the 0-based indices i with (i - 1) % 8 == 0, all
others train; renderings and ground truth are multiplied by the tissue mask (1 - tool mask); PSNR over the
whole image, PSNR* over tissue pixels only, SSIM 11x11 Gaussian. Depth RMSE (mm) is against the dataset's
own depth (EndoNeRF: stereo-estimated, uint8 mm) on tissue pixels where both are valid.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.metrics import depth_rmse_mm, masked_psnr, psnr_star, ssim
from surg3d_nodes.data.datasets.base import DatasetFrame
from surg3d_nodes.data.datasets.endonerf import EndoNeRFReader
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.online import OnlineTrainer
from surg3d_nodes.recon.runner import Reconstructor, train_offline


@dataclass
class EvalOptions:
    """What and how to evaluate."""

    mode: str = "offline"            # offline | online
    scale: float = 0.25
    device: str = "cpu"
    iterations: int = 1500           # offline budget
    rate_hz: float = 30.0            # online feeding rate (wall clock)
    settle_s: float = 2.0            # online: scoring starts this long after the last frame
    images: int = 3                  # test frames written as PNG comparisons
    out_dir: str | None = None
    backend: str = "auto"
    threads: int = 1                 # CPU threads; 1 is fastest on a shared machine (no OpenMP stalls)


def test_indices(n: int) -> list[int]:
    """0-based test frame indices of the EndoNeRF protocol."""
    return [i for i in range(n) if (i - 1) % 8 == 0]


def _scaled(fr: DatasetFrame, s: float) -> dict:
    """Frame images and cameras resized by s (area for colour, nearest for depth, any-tool for masks)."""
    cam = fr.cam_left.scaled(s) if s != 1.0 else fr.cam_left
    size = (cam.width, cam.height)

    def rs(img, interp):
        return img if s == 1.0 or img is None else cv2.resize(img, size, interpolation=interp)

    mask = fr.mask if fr.mask is not None else np.zeros(fr.left.shape[:2], np.uint8)
    mask = (rs(mask, cv2.INTER_AREA) > 0).astype(np.uint8) * 255
    cam_r = fr.cam_right.scaled(s) if (fr.cam_right is not None and s != 1.0) else fr.cam_right
    return {"stamp_ns": fr.stamp_ns, "rgb": rs(fr.left, cv2.INTER_AREA),
            "right": rs(fr.right, cv2.INTER_AREA), "depth": rs(fr.depth, cv2.INTER_NEAREST), "mask": mask,
            "pose": fr.pose, "cam": cam,
            "cam_right": cam_r}


def _right_tissue_mask(d: dict) -> np.ndarray:
    """Tissue pixels of the right view: the left tissue mask forward-warped with left depth.

    Tool pixels have no depth, so the tool is warped with the depth of the tissue behind it (inpainted),
    which underestimates its disparity; the warped tool is therefore also dilated horizontally.
    """
    depth = np.nan_to_num(d["depth"], nan=0.0)
    h, w = depth.shape
    f, b = d["cam"].fx, d["cam_right"].baseline
    valid = depth > 0
    if not valid.any():
        return np.zeros((h, w), bool)
    filled = cv2.inpaint((depth * 1000).astype(np.float32), (~valid).astype(np.uint8), 5, cv2.INPAINT_TELEA)
    disp = f * b / np.maximum(filled / 1000.0, 1e-4)
    ys, xs = np.nonzero(d["mask"] > 0)
    tool = np.zeros((h, w), np.uint8)
    xr = np.round(xs - disp[ys, xs]).astype(int)
    ok = (xr >= 0) & (xr < w)
    tool[ys[ok], xr[ok]] = 255
    tool |= d["mask"]
    pad = max(3, round(0.5 * float(np.median(disp[valid]))))
    tool = cv2.dilate(tool, np.ones((3, 2 * pad + 1), np.uint8))
    return tool == 0


def _colorize_depth(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    d = np.nan_to_num((depth - lo) / max(hi - lo, 1e-9), nan=0.0)
    img = cv2.applyColorMap((np.clip(d, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img[~np.isfinite(depth)] = 0
    return img


def _save_png(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def evaluate_endonerf(root: str | Path, opts: EvalOptions, cfg: TrainerConfig | None = None,
                      progress: Callable[[str], None] = print) -> dict:
    """Train on the clip's training frames, score the test frames; returns the result dict."""
    import torch

    if opts.mode not in ("offline", "online"):
        raise ValueError(f"mode must be 'offline' or 'online', got {opts.mode!r}")
    torch.set_num_threads(max(1, opts.threads))
    reader = EndoNeRFReader(root)
    n = len(reader)
    progress(f"reading {n} frames of {root} at scale {opts.scale}")
    data = [_scaled(reader.frame(i), opts.scale) for i in range(n)]
    tests = test_indices(n)
    train = [i for i in range(n) if i not in set(tests)]
    cfg = cfg or TrainerConfig()
    cfg.device, cfg.backend = opts.device, opts.backend
    if cfg.image_scale <= 0:   # the frames are already at opts.scale: auto would shrink them again on CPU
        cfg.image_scale = 1.0
    trainer: Reconstructor | OnlineTrainer = Reconstructor(cfg) if opts.mode == "offline" else OnlineTrainer(cfg)

    def frame_of(d: dict) -> Frame:
        return Frame(d["stamp_ns"], d["rgb"], d["depth"], d["mask"], d["pose"], d["cam"])

    t0 = time.monotonic()
    if opts.mode == "offline":
        def cb(it: int, st) -> None:
            if it < 0:
                progress(f"  ingested {-it} frames: {st.num_gaussians} Gaussians  "
                         f"{time.monotonic() - t0:.0f} s")
            elif it % 100 == 0 or it == opts.iterations:
                progress(f"  iter {it}/{opts.iterations}  loss {st.loss:.4f}  gaussians {st.num_gaussians}  "
                         f"{time.monotonic() - t0:.0f} s")
        train_offline(trainer, [frame_of(data[i]) for i in train], opts.iterations, progress=cb)
    else:
        trainer.start()
        period = 1.0 / opts.rate_hz

        def feed() -> None:
            t_next = time.monotonic()
            for i in train:
                trainer.ingest(frame_of(data[i]))
                t_next += period * (1 if i + 1 not in tests else 2)   # test frames keep their time slot
                time.sleep(max(0.0, t_next - time.monotonic()))
        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        feeder.join()
        progress(f"  fed {len(train)} frames at {opts.rate_hz} Hz; settling {opts.settle_s} s")
        time.sleep(opts.settle_s)
        trainer.pause()
        trainer.stop()
    train_s = time.monotonic() - t0
    stats = trainer.get_stats()
    progress(f"trained in {train_s:.1f} s: {stats.iterations} iterations, {stats.num_gaussians} Gaussians")

    out = Path(opts.out_dir) if opts.out_dir else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    per = []
    render_times = []
    for k, i in enumerate(tests):
        d = data[i]
        tissue = (d["mask"] == 0).astype(np.float32)
        t = trainer.time_of(d["stamp_ns"])
        t1 = time.monotonic()
        rgb, depth, alpha = trainer.render_view(d["pose"], t, d["cam"].width, d["cam"].height,
                                                K=d["cam"].intrinsics())
        render_times.append(time.monotonic() - t1)
        gt = d["rgb"]
        m3 = tissue[..., None]
        r = {"index": i, "psnr": masked_psnr(rgb, gt, tissue), "psnr_star": psnr_star(rgb, gt, tissue),
             "ssim": ssim(rgb, gt, tissue),
             "depth_rmse_mm": depth_rmse_mm(depth, np.nan_to_num(d["depth"], nan=0.0), tissue),
             "coverage": float((alpha > 0.5)[tissue > 0].mean())}
        prev = data[i - 1]["rgb"]
        nxt = data[i + 1]["rgb"] if i + 1 < n else prev
        mean = ((prev.astype(np.float32) + nxt.astype(np.float32)) / 2.0 + 0.5).astype(np.uint8)
        r["baseline_copy_prev_psnr"] = masked_psnr(prev, gt, tissue)
        r["baseline_neighbour_mean_psnr"] = masked_psnr(mean, gt, tissue)
        if d["right"] is not None and d["cam_right"] is not None:
            T_lr = np.eye(4)
            T_lr[0, 3] = d["cam_right"].baseline
            rr, _, ra = trainer.render_view(d["pose"] @ T_lr, t, d["cam"].width, d["cam"].height,
                                            K=d["cam_right"].intrinsics())
            rmask = (_right_tissue_mask(d) & (ra > 0.5)).astype(np.float32)
            r["right_psnr_star"] = psnr_star(rr, d["right"], rmask)
            r["right_pixels"] = float(rmask.mean())
        per.append(r)
        progress(f"  test frame {i:3d}: PSNR {r['psnr']:.2f} dB  PSNR* {r['psnr_star']:.2f}  "
                 f"SSIM {r['ssim']:.4f}  depth RMSE {r['depth_rmse_mm']:.2f} mm")
        if out is not None and k < opts.images:
            err = np.abs(rgb.astype(np.float32) - gt.astype(np.float32)).mean(-1) * tissue
            err_img = cv2.cvtColor(cv2.applyColorMap(np.clip(err * 4, 0, 255).astype(np.uint8),
                                                     cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB)
            _save_png(out / f"test_{i:03d}_gt_render_error.png",
                      np.hstack([(gt * m3).astype(np.uint8), (rgb * m3).astype(np.uint8), err_img]))
            valid = np.isfinite(d["depth"])
            lo, hi = (float(np.nanmin(d["depth"])), float(np.nanmax(d["depth"]))) if valid.any() else (0, 1)
            _save_png(out / f"test_{i:03d}_depth_gt_render.png",
                      np.hstack([_colorize_depth(d["depth"], lo, hi), _colorize_depth(depth, lo, hi)]))

    def avg(key: str) -> float:
        vals = [p[key] for p in per if key in p and np.isfinite(p[key])]
        return float(np.mean(vals)) if vals else float("nan")

    fps = len(render_times) / max(1e-9, sum(render_times))
    result = {
        "dataset": str(root), "mode": opts.mode, "scale": opts.scale, "device": str(trainer.device),
        "backend": trainer.backend, "resolution": [data[0]["cam"].width, data[0]["cam"].height],
        "train_frames": len(train), "test_frames": tests,
        "iterations": stats.iterations, "num_gaussians": stats.num_gaussians,
        "train_time_s": train_s, "render_fps": fps,
        "psnr": avg("psnr"), "psnr_star": avg("psnr_star"), "ssim": avg("ssim"),
        "depth_rmse_mm": avg("depth_rmse_mm"), "coverage": avg("coverage"),
        "baseline_copy_prev_psnr": avg("baseline_copy_prev_psnr"),
        "baseline_neighbour_mean_psnr": avg("baseline_neighbour_mean_psnr"),
        "right_psnr_star": avg("right_psnr_star"),
        "frames_skipped": stats.frames_skipped, "skip_reasons": stats.skip_reasons,
        "per_frame": per, "options": asdict(opts), "trainer_config": asdict(cfg),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    progress(f"PSNR {result['psnr']:.2f} dB  PSNR* {result['psnr_star']:.2f} dB  SSIM {result['ssim']:.4f}  "
             f"depth RMSE {result['depth_rmse_mm']:.2f} mm  right PSNR* {result['right_psnr_star']:.2f} dB  "
             f"| baselines: copy-prev {result['baseline_copy_prev_psnr']:.2f}, neighbour-mean "
             f"{result['baseline_neighbour_mean_psnr']:.2f}  | train {train_s:.1f} s, render {fps:.1f} FPS")
    if out is not None:
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
