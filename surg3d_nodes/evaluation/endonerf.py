"""EndoNeRF evaluation of the reconstruction, with baselines and a right-view score.

Protocol (Deform3DGS / EndoGaussian): test frames are the 0-based indices i with (i - 1) % 8 == 0, all
others train; renderings and ground truth are multiplied by the tissue mask (1 - tool mask); PSNR over the
whole image, PSNR* over tissue pixels only, SSIM 11x11 Gaussian. Depth RMSE (mm) is against the dataset's
own depth (EndoNeRF: stereo-estimated, uint8 mm) on tissue pixels where both are valid.

Modes: `offline` (all training frames known, a fixed iteration budget), `stream` (frames in time order, exactly
K live steps after each: deterministic and machine-independent; also scores `live`, each test frame rendered
right after the next frame and its steps, what the live view shows one frame late) and `online` (the threaded
trainer fed at a wall-clock rate: measures the machine). Baselines on the same pixels: the previous frame, the
mean of the two neighbours, and for the right view the left image warped with the project's own stereo
disparity.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from surg3d_nodes.common.metrics import depth_rmse_mm, masked_psnr, psnr_star, ssim, ssim_map
from surg3d_nodes.data.datasets.base import DatasetFrame
from surg3d_nodes.data.datasets.endonerf import EndoNeRFReader
from surg3d_nodes.perception.falloff import NEGLIGIBLE, FalloffEstimator
from surg3d_nodes.perception.stereo_depth import StereoDepth, right_tissue_mask
from surg3d_nodes.recon.completion import deoccluded, tint_inferred
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.online import OnlineTrainer
from surg3d_nodes.recon.runner import Reconstructor, train_offline, train_stream


@dataclass
class EvalOptions:
    """What and how to evaluate."""

    mode: str = "offline"            # offline | stream | online
    scale: float = 0.25
    crop: tuple[int, int] | None = None   # native-resolution centre crop (w, h) instead of scaling
    iterations_per_frame: int = 10   # stream: live steps after each training frame
    device: str = "cpu"
    iterations: int = 1500           # offline budget
    rate_hz: float = 30.0            # online feeding rate (wall clock)
    settle_s: float = 2.0            # online: scoring starts this long after the last frame
    images: int = 3                  # test frames written as PNG comparisons
    out_dir: str | None = None
    backend: str = "auto"
    threads: int = 1                 # CPU threads; 1 is fastest on a shared machine (no OpenMP stalls)
    poses: str = "dataset"           # dataset | tracked (the tracker's poses train; the dataset's score them)
    falloff: str = "stereo"          # stereo: measured on the first training frame's stereo pair | config


# De-occlusion scores (clips with tissue/ and tissue_depth/, e.g. the synthetic generator's), averaged.
DEOCC_KEYS = (*(f"{k}_{n}_{m}" for k in ("deocc", "baseline_telea") for n in ("seen", "unseen")
                 for m in ("psnr", "ssim")), "deocc_depth_rmse_mm", "deocc_coverage", "deocc_seen_fraction")


def test_indices(n: int) -> list[int]:
    """0-based test frame indices of the EndoNeRF protocol."""
    return [i for i in range(n) if (i - 1) % 8 == 0]


def _prepared(fr: DatasetFrame, s: float, crop: tuple[int, int] | None) -> dict:
    """Frame images and cameras resized by s (area for colour, nearest for depth, any-tool for masks), or
    cropped to the centred `crop` (w, h) at the native resolution (intrinsics shifted)."""
    mask = fr.mask if fr.mask is not None else np.zeros(fr.left.shape[:2], np.uint8)
    if crop is not None:
        w, h = crop
        x0, y0 = (fr.cam_left.width - w) // 2, (fr.cam_left.height - h) // 2

        def cut(img):
            return None if img is None else np.ascontiguousarray(img[y0:y0 + h, x0:x0 + w])

        cam_r = None if fr.cam_right is None else fr.cam_right.cropped(x0, y0, w, h)
        return {"stamp_ns": fr.stamp_ns, "rgb": cut(fr.left), "right": cut(fr.right), "depth": cut(fr.depth),
                "mask": (cut(mask) > 0).astype(np.uint8) * 255, "pose": fr.pose,
                "cam": fr.cam_left.cropped(x0, y0, w, h), "cam_right": cam_r,
                "tissue_rgb": cut(fr.extras.get("tissue")), "tissue_depth": cut(fr.extras.get("tissue_depth"))}
    cam = fr.cam_left.scaled(s) if s != 1.0 else fr.cam_left
    size = (cam.width, cam.height)

    def rs(img, interp):
        return img if s == 1.0 or img is None else cv2.resize(img, size, interpolation=interp)

    mask = (rs(mask, cv2.INTER_AREA) > 0).astype(np.uint8) * 255
    cam_r = fr.cam_right.scaled(s) if (fr.cam_right is not None and s != 1.0) else fr.cam_right
    return {"stamp_ns": fr.stamp_ns, "rgb": rs(fr.left, cv2.INTER_AREA),
            "right": rs(fr.right, cv2.INTER_AREA), "depth": rs(fr.depth, cv2.INTER_NEAREST), "mask": mask,
            "pose": fr.pose, "cam": cam,
            "cam_right": cam_r, "tissue_rgb": rs(fr.extras.get("tissue"), cv2.INTER_AREA),
            "tissue_depth": rs(fr.extras.get("tissue_depth"), cv2.INTER_NEAREST)}


def warp_left_to_right(d: dict) -> np.ndarray:
    """The right-view baseline: the left image warped into the right view with the project's own stereo
    disparity (SGBM of the mirrored pair gives the right view's disparity; holes take the nearest valid
    disparity by inpainting)."""
    sd = StereoDepth(d["cam"], d["cam_right"])
    left, right = d["rgb"], d["right"]
    disp_r, _ = sd.disparity(np.ascontiguousarray(right[:, ::-1]), np.ascontiguousarray(left[:, ::-1]))
    disp_r = disp_r[:, ::-1]
    valid = np.isfinite(disp_r)
    if not valid.any():
        return np.zeros_like(right)
    fill = cv2.inpaint(np.where(valid, disp_r, 0).astype(np.float32), (~valid).astype(np.uint8), 5,
                       cv2.INPAINT_TELEA)
    h, w = fill.shape
    xs, ys = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    return cv2.remap(left, xs + fill, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def _right_tissue_mask(d: dict) -> np.ndarray:
    """Tissue pixels of the right view of dataset frame `d` (`right_tissue_mask`)."""
    return right_tissue_mask(d["depth"], d["mask"], d["cam"].fx, d["cam_right"].baseline)


def seen_before(d: dict, others: list[dict]) -> np.ndarray:
    """[H,W] bool: instrument pixels of frame `d` whose tissue (truth: its tissue-only depth) some frame of
    `others` showed: it projects inside that frame, not under its instrument mask, and that frame's own tissue
    depth there agrees (2 %: not hidden behind other tissue)."""
    tool = d["mask"] > 0
    K = d["cam"].intrinsics()
    ys, xs = np.nonzero(tool & np.isfinite(d["tissue_depth"]))
    z = d["tissue_depth"][ys, xs].astype(np.float64)
    pc = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], -1)
    pw = pc @ d["pose"][:3, :3].T + d["pose"][:3, 3]
    seen = np.zeros(ys.size, bool)
    for o in others:
        R, t = o["pose"][:3, :3], o["pose"][:3, 3]
        q = (pw - t) @ R
        ko = o["cam"].intrinsics()
        h, w = o["mask"].shape
        with np.errstate(divide="ignore", invalid="ignore"):
            u = np.round(q[:, 0] / q[:, 2] * ko[0, 0] + ko[0, 2])
            v = np.round(q[:, 1] / q[:, 2] * ko[1, 1] + ko[1, 2])
        ok = (q[:, 2] > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
        ui, vi = u[ok].astype(int), v[ok].astype(int)
        zo = o["tissue_depth"][vi, ui]
        vis = (o["mask"][vi, ui] == 0) & (np.abs(zo - q[ok, 2]) < 0.02 * q[ok, 2])
        seen[np.nonzero(ok)[0][vis]] = True
    out = np.zeros(tool.shape, bool)
    out[ys[seen], xs[seen]] = True
    return out


def deocclusion_scores(rgb: np.ndarray, depth: np.ndarray, alpha: np.ndarray, inferred: np.ndarray, d: dict,
                       seen: np.ndarray) -> dict[str, float]:
    """De-occlusion scores of a rendering of frame `d` (with its `inferred` weight) against its tissue-only truth
    on the instrument pixels,
    split into tissue seen before (`seen`) and never seen: PSNR, SSIM (the per-pixel SSIM of the de-occluded
    image averaged over those pixels), the same for the baseline (Telea inpainting of the input frame over its
    mask), and the depth RMSE (mm) and coverage under the instruments."""
    tool = d["mask"] > 0
    truth = d["tissue_rgb"]
    out: dict[str, float] = {"deocc_seen_fraction": float(seen[tool].mean()) if tool.any() else float("nan")}
    images = {"deocc": deoccluded(d["rgb"], rgb, alpha, d["mask"], inferred),
              "baseline_telea": cv2.inpaint(d["rgb"], tool.astype(np.uint8), 5, cv2.INPAINT_TELEA)}
    for key, img in images.items():
        smap = ssim_map(torch.from_numpy(img).float() / 255.0, torch.from_numpy(truth).float() / 255.0).numpy()
        for name, px in (("seen", tool & seen), ("unseen", tool & ~seen)):
            if px.sum() >= 10:
                out[f"{key}_{name}_psnr"] = psnr_star(img, truth, px.astype(np.float32))
                out[f"{key}_{name}_ssim"] = float(smap[px].mean())
    if tool.any():
        out["deocc_depth_rmse_mm"] = depth_rmse_mm(depth, np.nan_to_num(d["tissue_depth"], nan=0.0),
                                                   tool.astype(np.float32))
        out["deocc_coverage"] = float(np.isfinite(depth)[tool].mean())
    return out


def _colorize_depth(depth: np.ndarray, lo: float, hi: float) -> np.ndarray:
    d = np.nan_to_num((depth - lo) / max(hi - lo, 1e-9), nan=0.0)
    img = cv2.applyColorMap((np.clip(d, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_TURBO)
    img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    img[~np.isfinite(depth)] = 0
    return img


def _save_png(path: Path, rgb: np.ndarray) -> None:
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _mean_depth(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per pixel the mean of two depth maps (0 = invalid) where both are valid, else the valid one."""
    both = (a > 0) & (b > 0)
    return np.where(both, (a + b) / 2.0, np.maximum(a, b)).astype(np.float32)


def _frame(d: dict) -> Frame:
    return Frame(d["stamp_ns"], d["rgb"], d["depth"], d["mask"], d["pose"], d["cam"])


def _tissue(d: dict) -> np.ndarray:
    return (d["mask"] == 0).astype(np.float32)


def _render(trainer: Reconstructor | OnlineTrainer, d: dict, right: bool = False, detail: bool = False,
            remembered: bool = False):
    """The model's view of dataset frame `d` (left, or right through the stereo baseline) at its time; with
    `detail`, the tissue-only view the product shows (recon.detail: the frame detail, and what no frame saw filled
    in and marked); with `remembered`, the view the de-occlusion takes the hidden tissue from (`ModelView.render`;
    with `detail`, not filled: under an instrument the completion's guesses are the fill)."""
    pose, cam = d["pose"], d["cam"]
    if right:
        T_lr = np.eye(4)
        T_lr[0, 3] = d["cam_right"].baseline
        pose, cam = pose @ T_lr, d["cam_right"]
    return trainer.render_view(pose, trainer.time_of(d["stamp_ns"]), cam.width, cam.height, K=cam.intrinsics(),
                               detail=detail, fill=detail and not remembered, remembered=remembered)


def _train_offline(trainer: Reconstructor, frames: list[Frame], opts: EvalOptions, progress, t0: float) -> None:
    def cb(it: int, st) -> None:
        if it < 0:
            progress(f"  ingested {-it} frames: {st.num_gaussians} Gaussians  {time.monotonic() - t0:.0f} s")
        elif it % 100 == 0 or it == opts.iterations:
            progress(f"  iter {it}/{opts.iterations}  loss {st.loss:.4f}  gaussians {st.num_gaussians}  "
                     f"{time.monotonic() - t0:.0f} s")
    train_offline(trainer, frames, opts.iterations, progress=cb)


def _train_stream(trainer: Reconstructor, data: list[dict], train: list[int], tests: list[int],
                  opts: EvalOptions, progress, t0: float) -> dict[int, dict[str, float]]:
    """Stream the training frames with K steps each; returns the live PSNR of each test frame (rendered right
    after the following training frame and its steps), of the model and with the frame detail."""
    live: dict[int, dict[str, float]] = {}
    test_set = set(tests)

    def after(k: int, recon: Reconstructor) -> None:
        i = train[k]
        if i - 1 in test_set:
            d = data[i - 1]
            live[i - 1] = {key: masked_psnr(_render(recon, d, detail=detail)[0], d["rgb"], _tissue(d))
                           for key, detail in (("live_psnr", False), ("detail_live_psnr", True))}
        if (k + 1) % 10 == 0 or k + 1 == len(train):
            st = recon.get_stats()
            progress(f"  streamed {k + 1}/{len(train)} frames: {st.iterations} iterations, "
                     f"{st.num_gaussians} Gaussians  {time.monotonic() - t0:.0f} s")
    train_stream(trainer, [_frame(data[i]) for i in train], opts.iterations_per_frame, after)
    return live


def _train_online(trainer: OnlineTrainer, data: list[dict], train: list[int], tests: list[int],
                  opts: EvalOptions, progress) -> None:
    trainer.start()
    period = 1.0 / opts.rate_hz
    t_next = time.monotonic()
    for i in train:
        trainer.ingest(_frame(data[i]))
        t_next += period * (1 if i + 1 not in tests else 2)   # test frames keep their time slot
        time.sleep(max(0.0, t_next - time.monotonic()))
    progress(f"  fed {len(train)} frames at {opts.rate_hz} Hz; settling {opts.settle_s} s")
    time.sleep(opts.settle_s)
    trainer.pause()
    trainer.stop()


def _stereo_falloff(d: dict, progress: Callable[[str], None]) -> tuple[float, float]:
    """The camera's fall-off coefficients measured on dataset frame `d`'s stereo pair (perception.falloff): what
    the live system knows once its first frame has arrived. None measured (no right image or depth, too few
    tissue pixels): no fall-off."""
    est = FalloffEstimator()
    if d["right"] is not None and d["cam_right"] is not None:
        est.add(d["rgb"], d["right"], d["depth"], d["mask"], d["cam"].intrinsics(), d["cam_right"].intrinsics(),
                d["cam_right"].baseline)
    v = est.estimate()
    if v is None:
        progress(f"fall-off: not measured ({est.samples} stereo samples on the first frame): none applied")
        return 0.0, 0.0
    if v.negligible(d["cam"].intrinsics(), d["cam"].width, d["cam"].height):
        progress(f"fall-off measured on the first frame's stereo pair: b1 {v.b1:.3f}, b2 {v.b2:.3f}, within "
                 f"{NEGLIGIBLE:.0%} of none over the image: none applied")
        return 0.0, 0.0
    progress(f"fall-off measured on the first frame's stereo pair ({est.samples} samples): b1 {v.b1:.3f}, "
             f"b2 {v.b2:.3f} (V {np.exp(v.b1 + v.b2):.3f} at a ray 45 degrees off the axis)")
    return v.b1, v.b2


def evaluate_endonerf(root: str | Path, opts: EvalOptions, cfg: TrainerConfig | None = None,
                      progress: Callable[[str], None] = print) -> dict:
    """Train on the clip's training frames, score the test frames; returns the result dict."""
    if opts.mode not in ("offline", "stream", "online"):
        raise ValueError(f"mode must be 'offline', 'stream' or 'online', got {opts.mode!r}")
    if opts.mode == "stream" and opts.iterations_per_frame < 0:
        raise ValueError(f"iterations per frame must be >= 0, got {opts.iterations_per_frame}")
    torch.set_num_threads(max(1, opts.threads))
    reader = EndoNeRFReader(root)
    n = len(reader)
    if opts.crop is not None:
        w, h = opts.crop
        cam0 = reader.frame(0).cam_left
        if not (0 < w <= cam0.width and 0 < h <= cam0.height):
            raise ValueError(f"crop {w}x{h} does not fit the {cam0.width}x{cam0.height} images")
    how = f"centre crop {opts.crop[0]}x{opts.crop[1]}" if opts.crop else f"scale {opts.scale}"
    progress(f"reading {n} frames of {root} at {how}")
    data = [_prepared(reader.frame(i), opts.scale, opts.crop) for i in range(n)]
    tracking, lost = None, set()
    if opts.poses == "tracked":
        from surg3d_nodes.evaluation.trajectory import apply_tracked_poses
        tracking, lost = apply_tracked_poses(reader, data, progress)
        progress(f"tracked poses: ATE {tracking['ate_mm']:.3f} mm, RPE {tracking['rpe_mm']:.3f} mm "
                 f"{tracking['rpe_deg']:.3f} deg, {len(lost)} frames without a pose")
    tests = test_indices(n)
    train = [i for i in range(n) if i not in set(tests) and i not in lost]
    cfg = cfg or TrainerConfig()
    cfg.device, cfg.backend = opts.device, opts.backend
    if opts.falloff == "stereo":
        cfg.falloff = _stereo_falloff(data[train[0]], progress)
    if cfg.image_scale <= 0:   # the frames are already at opts.scale: auto would shrink them again on CPU
        cfg.image_scale = 1.0
    trainer: Reconstructor | OnlineTrainer = OnlineTrainer(cfg) if opts.mode == "online" else Reconstructor(cfg)
    t0 = time.monotonic()
    live: dict[int, dict[str, float]] = {}
    if opts.mode == "offline":
        _train_offline(trainer, [_frame(data[i]) for i in train], opts, progress, t0)
    elif opts.mode == "stream":
        live = _train_stream(trainer, data, train, tests, opts, progress, t0)
    else:
        _train_online(trainer, data, train, tests, opts, progress)
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
        tissue = _tissue(d)
        t1 = time.monotonic()
        rgb, depth, alpha = _render(trainer, d)
        render_times.append(time.monotonic() - t1)
        gt = d["rgb"]
        true_depth = np.nan_to_num(d["depth"], nan=0.0)
        m3 = tissue[..., None]
        r = {"index": i, "psnr": masked_psnr(rgb, gt, tissue), "psnr_star": psnr_star(rgb, gt, tissue),
             "ssim": ssim(rgb, gt, tissue), "depth_rmse_mm": depth_rmse_mm(depth, true_depth, tissue),
             "coverage": float((alpha > 0.5)[tissue > 0].mean())}
        r.update(live.get(i, {}))
        drgb, ddepth, _ = _render(trainer, d, detail=True)
        r.update({"detail_psnr": masked_psnr(drgb, gt, tissue), "detail_psnr_star": psnr_star(drgb, gt, tissue),
                  "detail_ssim": ssim(drgb, gt, tissue), "detail_depth_rmse_mm": depth_rmse_mm(ddepth, true_depth,
                                                                                               tissue)})
        # The baselines: the previous frame, and the mean of it and the next (the previous again at the clip's end).
        before, after = data[i - 1], data[i + 1] if i + 1 < n else data[i - 1]
        mean = ((before["rgb"].astype(np.float32) + after["rgb"].astype(np.float32)) / 2.0 + 0.5).astype(np.uint8)
        r["baseline_copy_prev_psnr"] = masked_psnr(before["rgb"], gt, tissue)
        r["baseline_neighbour_mean_psnr"] = masked_psnr(mean, gt, tissue)
        depths = [np.nan_to_num(f["depth"], nan=0.0) for f in (before, after)]
        r["baseline_copy_prev_depth_rmse_mm"] = depth_rmse_mm(depths[0], true_depth, tissue)
        r["baseline_neighbour_mean_depth_rmse_mm"] = depth_rmse_mm(_mean_depth(*depths), true_depth, tissue)
        if d["right"] is not None and d["cam_right"] is not None:
            rr, _, ra = _render(trainer, d, right=True)
            rmask = (_right_tissue_mask(d) & (ra > 0.5)).astype(np.float32)
            r["right_psnr_star"] = psnr_star(rr, d["right"], rmask)
            r["detail_right_psnr_star"] = psnr_star(_render(trainer, d, right=True, detail=True)[0], d["right"],
                                                    rmask)
            r["baseline_right_warp_psnr_star"] = psnr_star(warp_left_to_right(d), d["right"], rmask)
            r["right_pixels"] = float(rmask.mean())
        deocc = d["tissue_rgb"] is not None and d["tissue_depth"] is not None and bool((d["mask"] > 0).any())
        if deocc:
            seen = seen_before(d, [data[j] for j in train if opts.mode == "offline" or j < i])
            cam = d["cam"]
            w_inf = trainer.view(trainer.time_of(d["stamp_ns"])).inferred_weight(d["pose"], cam.width, cam.height,
                                                                                cam.intrinsics())
            mem, _, mem_alpha = _render(trainer, d, detail=True, remembered=True)
            r.update(deocclusion_scores(mem, depth, mem_alpha, w_inf, d, seen))
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
            if deocc:
                tinted = tint_inferred(deoccluded(d["rgb"], mem, mem_alpha, d["mask"], w_inf),
                                       w_inf * (d["mask"] > 0))
                _save_png(out / f"test_{i:03d}_live_deoccluded_truth.png", np.hstack([d["rgb"], tinted,
                                                                                      d["tissue_rgb"]]))
            _save_png(out / f"test_{i:03d}_depth_gt_render.png",
                      np.hstack([_colorize_depth(d["depth"], lo, hi), _colorize_depth(depth, lo, hi)]))
    # The fit of the frames the model trained on: underfitting shows here before interpolation does.
    fit = [masked_psnr(_render(trainer, data[i])[0], data[i]["rgb"], _tissue(data[i])) for i in train]

    def avg(key: str) -> float:
        vals = [p[key] for p in per if key in p and np.isfinite(p[key])]
        return float(np.mean(vals)) if vals else float("nan")

    fps = len(render_times) / max(1e-9, sum(render_times))
    result = {
        "dataset": str(root), "mode": opts.mode, "scale": opts.scale, "crop": opts.crop,
        "device": str(trainer.device), "backend": trainer.backend,
        "resolution": [data[0]["cam"].width, data[0]["cam"].height],
        "train_frames": len(train), "test_frames": tests,
        "iterations": stats.iterations, "colour_fit_steps": stats.colour_fit_steps,
        "num_gaussians": stats.num_gaussians,
        "train_time_s": train_s, "render_fps": fps,
        "psnr": avg("psnr"), "psnr_star": avg("psnr_star"), "ssim": avg("ssim"),
        "depth_rmse_mm": avg("depth_rmse_mm"), "coverage": avg("coverage"),
        "live_psnr": avg("live_psnr"),
        # The views the product shows: the model plus the frame detail of the frames nearest in time.
        "detail_psnr": avg("detail_psnr"), "detail_psnr_star": avg("detail_psnr_star"),
        "detail_ssim": avg("detail_ssim"), "detail_depth_rmse_mm": avg("detail_depth_rmse_mm"),
        "detail_live_psnr": avg("detail_live_psnr"),
        "detail_right_psnr_star": avg("detail_right_psnr_star"),
        "train_fit_psnr": float(np.mean(fit)), "train_fit_min_psnr": float(np.min(fit)),
        "baseline_copy_prev_psnr": avg("baseline_copy_prev_psnr"),
        "baseline_neighbour_mean_psnr": avg("baseline_neighbour_mean_psnr"),
        "baseline_copy_prev_depth_rmse_mm": avg("baseline_copy_prev_depth_rmse_mm"),
        "baseline_neighbour_mean_depth_rmse_mm": avg("baseline_neighbour_mean_depth_rmse_mm"),
        "right_psnr_star": avg("right_psnr_star"),
        "baseline_right_warp_psnr_star": avg("baseline_right_warp_psnr_star"),
        **{k: avg(k) for k in DEOCC_KEYS if any(k in p for p in per)},
        "inferred_share": stats.inferred_share,
        "frames_skipped": stats.frames_skipped, "skip_reasons": stats.skip_reasons,
        "poses": opts.poses, "tracking": tracking,
        "per_frame": per, "train_fit_per_frame": [{"index": i, "psnr": p} for i, p in zip(train, fit, strict=True)],
        "options": asdict(opts), "trainer_config": asdict(cfg),
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    live_txt = f"  live {result['live_psnr']:.2f}" if live else ""
    progress(f"with frame detail: PSNR {result['detail_psnr']:.2f} dB  live {result['detail_live_psnr']:.2f}  "
             f"right PSNR* {result['detail_right_psnr_star']:.2f} dB  "
             f"depth RMSE {result['detail_depth_rmse_mm']:.2f} mm")
    progress(f"model: PSNR {result['psnr']:.2f} dB{live_txt}  PSNR* {result['psnr_star']:.2f} dB  "
             f"SSIM {result['ssim']:.4f}  "
             f"depth RMSE {result['depth_rmse_mm']:.2f} mm  train fit {result['train_fit_psnr']:.2f} dB  "
             f"right PSNR* {result['right_psnr_star']:.2f} dB (warp {result['baseline_right_warp_psnr_star']:.2f})"
             f"  | baselines: copy-prev {result['baseline_copy_prev_psnr']:.2f}, neighbour-mean "
             f"{result['baseline_neighbour_mean_psnr']:.2f} dB, depth {result['baseline_copy_prev_depth_rmse_mm']:.2f}"
             f" / {result['baseline_neighbour_mean_depth_rmse_mm']:.2f} mm  | train {train_s:.1f} s, "
             f"render {fps:.1f} FPS")
    if "deocc_depth_rmse_mm" in result:
        progress(f"de-occlusion: seen-before PSNR {result.get('deocc_seen_psnr', float('nan')):.2f} dB SSIM "
                 f"{result.get('deocc_seen_ssim', float('nan')):.4f} (Telea "
                 f"{result.get('baseline_telea_seen_psnr', float('nan')):.2f}), never-seen PSNR "
                 f"{result.get('deocc_unseen_psnr', float('nan')):.2f} dB SSIM "
                 f"{result.get('deocc_unseen_ssim', float('nan')):.4f} (Telea "
                 f"{result.get('baseline_telea_unseen_psnr', float('nan')):.2f} dB "
                 f"{result.get('baseline_telea_unseen_ssim', float('nan')):.4f}), seen share "
                 f"{result['deocc_seen_fraction']:.2f}, depth RMSE under the instruments "
                 f"{result['deocc_depth_rmse_mm']:.2f} mm, covered {100 * result['deocc_coverage']:.1f} %, "
                 f"inferred Gaussians {100 * stats.inferred_share:.1f} %")
    if out is not None:
        (out / "result.json").write_text(json.dumps(result, indent=2))
    return result
