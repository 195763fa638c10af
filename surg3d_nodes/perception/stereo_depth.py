"""Stereo depth from a rectified pair: OpenCV SGBM (default) or an ONNX stereo / monocular model.

Both backends return a `DepthResult`: depth float32 metres (NaN invalid, REP-117), confidence
uint8 (0 invalid ... 255) and, for stereo, the disparity in pixels of the full-resolution left image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.files import onnx_session
from surg3d_nodes.common.params import param


class DepthModelError(RuntimeError):
    """A learned depth model could not be loaded or run (missing file, unreadable ONNX, bad layout)."""


@dataclass
class DepthResult:
    """Output of a depth backend for one rectified left image."""

    depth: np.ndarray  # float32 HxW metres, NaN invalid
    confidence: np.ndarray  # uint8 HxW, 0 invalid
    disparity: np.ndarray | None = None  # float32 HxW pixels, NaN invalid


@dataclass
class SGBMParams:
    """SGBM settings. The disparity search range follows from the working distance and the rig.

    `min_depth_m`/`max_depth_m`: working distance of the endoscope (30-200 mm by default).
    `scale` < 1 matches at reduced resolution (faster; disparities are rescaled to full size).
    `lr_max_diff`: left-right consistency tolerance in pixels (<= 0 disables the check).
    `disparity_range`: explicit (min, max) disparity in full-resolution pixels overriding the depths
    (for data without a known baseline).
    """

    min_depth_m: float = param(0.03, "m, nearest working distance (sets the disparity range with fx and "
                                     "baseline)", low=1e-3, high=10.0)
    max_depth_m: float = param(0.20, "m, farthest working distance", low=1e-3, high=100.0)
    block_size: int = param(5, "SGBM block size (odd)", low=1, high=31)
    # Smoothness penalties x block_size^2 (2x / 3x the OpenCV sample values: smooth tissue).
    p1: int = param(16, "SGBM penalty of disparity changes by 1 (x block_size^2)", low=0, high=10_000)
    p2: int = param(96, "SGBM penalty of larger disparity changes (x block_size^2)", low=0, high=10_000)
    uniqueness_ratio: int = param(5, "SGBM uniqueness margin (%)", low=0, high=100)
    speckle_window: int = param(100, "largest speckle (px) removed; 0 disables", low=0, high=100_000)
    speckle_range: int = param(2, "disparity variation within a speckle", low=0, high=1000)
    pre_filter_cap: int = param(31, "SGBM pre-filter clip", low=1, high=63)
    lr_max_diff: float = param(1.0, "px, left-right consistency tolerance; 0 disables (2x faster, noisier)",
                               low=0.0, high=1000.0)
    median_ksize: int = param(3, "median filter of the disparity (0 or 1: off)", low=0, high=9)
    scale: float = param(1.0, "match at this resolution (0.5: ~3x faster, EPE +0.07 px on SCARED)", low=0.05,
                         high=1.0)
    max_num_disparities: int = param(256, "cap of the disparity search range", low=16, high=1024)
    disparity_range: tuple[float, float] | None = None


def disparity_search_range(fx: float, baseline_m: float, min_depth_m: float, max_depth_m: float,
                           max_num_disparities: int = 256) -> tuple[int, int]:
    """(minDisparity, numDisparities) covering depths [min_depth_m, max_depth_m]; num is a multiple of 16."""
    if baseline_m <= 0 or fx <= 0:
        raise ValueError(f"stereo needs a positive baseline and focal length, got baseline={baseline_m} m, "
                         f"fx={fx} px (is P[0, 3] of the right CameraInfo set?)")
    if not 0 < min_depth_m < max_depth_m:
        raise ValueError(f"need 0 < min_depth_m < max_depth_m, got {min_depth_m}, {max_depth_m}")
    d_min = math.floor(fx * baseline_m / max_depth_m)
    d_max = math.ceil(fx * baseline_m / min_depth_m)
    return _range_to_sgbm(d_min, d_max, max_num_disparities)


def _range_to_sgbm(d_min: float, d_max: float, max_num: int) -> tuple[int, int]:
    d_min = max(0, math.floor(d_min))
    num = math.ceil((d_max - d_min + 1) / 16.0) * 16
    return d_min, max(16, min(num, max_num))


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


def check_pair(left: np.ndarray, right: np.ndarray) -> None:
    """Raise ValueError when a stereo pair cannot be matched (shape/dtype mismatch)."""
    if left.shape != right.shape:
        raise ValueError(f"left image {left.shape} and right image {right.shape} differ in size")
    if left.dtype != np.uint8:
        raise ValueError(f"stereo images must be uint8, got {left.dtype}")
    if left.ndim not in (2, 3) or (left.ndim == 3 and left.shape[2] not in (1, 3)):
        raise ValueError(f"stereo images must be HxW or HxWx3, got shape {left.shape}")


class StereoDepth:
    """Depth from a rectified stereo pair with OpenCV StereoSGBM (MODE_SGBM_3WAY).

    Pipeline: grey images (optionally downscaled) -> SGBM left disparity (sub-pixel, 1/16 px) with
    speckle filtering -> right disparity on the mirrored pair -> left-right consistency check ->
    3x3 median -> depth = fx * B / (d - (cx_l - cx_r)). Confidence combines the LR residual with
    local texture (matching is unreliable on flat regions).
    """

    def __init__(self, cam_left: CameraModel, cam_right: CameraModel,
                 params: SGBMParams | None = None) -> None:
        self.params = params or SGBMParams()
        self.cam_left, self.cam_right = cam_left, cam_right
        self.fx = cam_left.fx
        self.baseline = cam_right.baseline
        if self.baseline <= 0:
            raise ValueError(f"right camera baseline must be > 0 (P[0, 3] = -fx * B), got {self.baseline} m")
        self.doffs = cam_left.cx - cam_right.cx
        p = self.params
        if p.disparity_range is not None:
            d0, d1 = p.disparity_range
            full = _range_to_sgbm(d0, d1, 10**6)
        else:
            full = disparity_search_range(self.fx, self.baseline, p.min_depth_m, p.max_depth_m, 10**6)
        self.full_range = (full[0], full[0] + full[1])
        self.min_disp, self.num_disp = _range_to_sgbm(full[0] * p.scale, (full[0] + full[1]) * p.scale,
                                                      p.max_num_disparities)
        self._left = self._matcher()
        self._right = self._matcher()

    def _matcher(self) -> cv2.StereoSGBM:
        p = self.params
        bs = p.block_size
        return cv2.StereoSGBM.create(
            minDisparity=self.min_disp, numDisparities=self.num_disp, blockSize=bs,
            P1=p.p1 * bs * bs, P2=p.p2 * bs * bs, disp12MaxDiff=-1, preFilterCap=p.pre_filter_cap,
            uniquenessRatio=p.uniqueness_ratio, speckleWindowSize=p.speckle_window,
            speckleRange=p.speckle_range, mode=cv2.StereoSGBM_MODE_SGBM_3WAY)

    def _match(self, matcher: cv2.StereoSGBM, ref: np.ndarray, other: np.ndarray) -> np.ndarray:
        """Raw SGBM disparity (1/16 px). Both images are padded on the left by the search range so that
        SGBM does not blank the first minDisparity + numDisparities columns of the reference view."""
        pad = self.min_disp + self.num_disp
        ref_p = cv2.copyMakeBorder(ref, 0, 0, pad, 0, cv2.BORDER_REPLICATE)
        other_p = cv2.copyMakeBorder(other, 0, 0, pad, 0, cv2.BORDER_REPLICATE)
        return matcher.compute(ref_p, other_p)[:, pad:]

    def disparity(self, left: np.ndarray, right: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(disparity px float32 NaN-invalid, LR residual px) at full resolution of a rectified pair."""
        check_pair(left, right)
        p = self.params
        h, w = left.shape[:2]
        gl, gr = _gray(left), _gray(right)
        if p.scale != 1.0:
            size = (max(16, round(w * p.scale)), max(16, round(h * p.scale)))
            gl = cv2.resize(gl, size, interpolation=cv2.INTER_AREA)
            gr = cv2.resize(gr, size, interpolation=cv2.INTER_AREA)
        raw = self._match(self._left, gl, gr)
        invalid_raw = (self.min_disp - 1) * 16
        disp = raw.astype(np.float32) / 16.0
        valid = raw > invalid_raw
        resid = np.zeros_like(disp)
        if p.lr_max_diff > 0:
            # Right-view disparity = SGBM on the mirrored pair (right becomes the reference view).
            raw_r = self._match(self._right, np.ascontiguousarray(gr[:, ::-1]),
                                np.ascontiguousarray(gl[:, ::-1]))
            disp_r = raw_r[:, ::-1].astype(np.float32) / 16.0
            valid_r = raw_r[:, ::-1] > invalid_raw
            hs, ws = disp.shape
            xs = np.arange(ws, dtype=np.float32)[None, :]
            xr = np.rint(xs - disp).astype(np.int32)
            inside = valid & (xr >= 0) & (xr < ws)
            xr = np.clip(xr, 0, ws - 1)
            rows = np.arange(hs)[:, None]
            dr = disp_r[rows, xr]
            resid = np.abs(disp - dr)
            valid &= inside & valid_r[rows, xr] & (resid <= p.lr_max_diff * max(p.scale, 0.5))
        disp[~valid] = np.nan
        if p.median_ksize > 1:
            disp = _nan_median(disp, p.median_ksize)
        if p.scale != 1.0:
            inv = 1.0 / p.scale
            disp = cv2.resize(disp, (w, h), interpolation=cv2.INTER_NEAREST) * inv
            resid = cv2.resize(resid, (w, h), interpolation=cv2.INTER_NEAREST) * inv
        return disp, resid

    def compute(self, left: np.ndarray, right: np.ndarray) -> DepthResult:
        """Depth (m), confidence and disparity of a rectified pair (uint8 RGB or grey)."""
        disp, resid = self.disparity(left, right)
        depth = disparity_to_depth(disp, self.fx, self.baseline, self.doffs)
        conf = self._confidence(_gray(left), depth, resid)
        return DepthResult(depth, conf, disp)

    def _confidence(self, gray: np.ndarray, depth: np.ndarray, resid: np.ndarray) -> np.ndarray:
        tol = max(self.params.lr_max_diff, 0.5)
        c_lr = np.clip(1.0 - resid / (2.0 * tol), 0.0, 1.0)
        gx = cv2.Sobel(gray, cv2.CV_32F, 1, 0, ksize=3)
        tex = cv2.boxFilter(np.abs(gx), -1, (7, 7))
        c_tex = np.clip(tex / 40.0, 0.2, 1.0)
        conf = np.clip(255.0 * c_lr * c_tex, 1, 255).astype(np.uint8)
        conf[~np.isfinite(depth)] = 0
        return conf


def disparity_to_depth(disp: np.ndarray, fx: float, baseline_m: float, doffs: float = 0.0) -> np.ndarray:
    """Depth in metres from disparity in pixels (NaN where the disparity is invalid or <= doffs)."""
    d = disp.astype(np.float32) - np.float32(doffs)
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = np.float32(fx * baseline_m) / d
    depth[~(d > 0)] = np.nan
    return depth.astype(np.float32)


def right_tissue_mask(depth: np.ndarray, mask: np.ndarray, fx: float, baseline_m: float) -> np.ndarray:
    """[H,W] bool: the pixels of a rectified pair's right image that show tissue, from the left image's depth
    (metres, NaN or 0 where none) and instrument mask (non-zero = instrument), by forward-warping the left mask.

    Instrument pixels often have no depth, so an instrument is warped with the depth of the tissue behind it
    (inpainted), which underestimates its disparity; the warped instrument is therefore also dilated
    horizontally by half the median disparity. The band along the right image's right edge shows what the left
    image does not (one disparity wide): an instrument that leaves the left image through its right border goes on
    there, so within the band's width of the rows it leaves by (a shaft at up to 45 degrees) the band counts as
    instrument. Without depth nothing is known to be tissue.
    """
    depth = np.nan_to_num(np.asarray(depth, np.float32), nan=0.0)
    h, w = depth.shape
    valid = depth > 0
    if not valid.any():
        return np.zeros((h, w), bool)
    filled = cv2.inpaint((depth * 1000).astype(np.float32), (~valid).astype(np.uint8), 5, cv2.INPAINT_TELEA)
    disp = fx * baseline_m / np.maximum(filled / 1000.0, 1e-4)
    ys, xs = np.nonzero(mask > 0)
    tool = np.zeros((h, w), np.uint8)
    xr = np.round(xs - disp[ys, xs]).astype(int)
    ok = (xr >= 0) & (xr < w)
    tool[ys[ok], xr[ok]] = 255
    tool |= (mask > 0).astype(np.uint8) * 255
    rows = np.flatnonzero(mask[:, -1] > 0)
    for run in np.split(rows, np.flatnonzero(np.diff(rows) > 1) + 1) if rows.size else []:
        band = min(w // 2, int(np.ceil(float(disp[run, -1].max()))))   # the instrument's disparity where it leaves
        tool[max(0, run[0] - band):run[-1] + band + 1, w - 1 - band:] = 255
    pad = max(3, round(0.5 * float(np.median(disp[valid]))))
    tool = cv2.dilate(tool, np.ones((3, 2 * pad + 1), np.uint8))
    return tool == 0


def _nan_median(disp: np.ndarray, k: int) -> np.ndarray:
    """k x k median over valid disparities that keeps invalid pixels invalid (no hole filling)."""
    valid = np.isfinite(disp)
    # medianBlur wants 8/16-bit or float for k<=5; encode disparity in uint16 (1/64 px) to keep precision.
    enc = np.zeros(disp.shape, np.uint16)
    enc[valid] = np.clip(np.rint(disp[valid] * 64.0), 1, 65535).astype(np.uint16)
    med = cv2.medianBlur(enc, k) if k <= 5 else enc
    out = med.astype(np.float32) / 64.0
    # Where the median is pulled to 0 by invalid neighbours, keep the pixel's own value.
    bad = valid & (med == 0)
    out[bad] = disp[bad]
    out[~valid] = np.nan
    return out


def _robust_affine(x: np.ndarray, y: np.ndarray, affine: bool, iters: int = 4) -> tuple[float, float]:
    """y ~ a * x + b (b = 0 unless affine) by trimmed least squares (residuals > 3 MAD dropped)."""
    keep = np.ones(x.shape, bool)
    a, b = 1.0, 0.0
    for _ in range(iters):
        xs, ys = x[keep], y[keep]
        if xs.size < 10:
            break
        if affine:
            A = np.stack([xs, np.ones_like(xs)], axis=1)
            a, b = np.linalg.lstsq(A, ys, rcond=None)[0]
        else:
            a = float(np.dot(xs, ys) / max(np.dot(xs, xs), 1e-12))
        r = np.abs(y - (a * x + b))
        mad = float(np.median(r[keep])) + 1e-12
        keep = r <= 3.0 * 1.4826 * mad
    return float(a), float(b)


_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


class OnnxDepth:
    """Depth from a user-supplied ONNX model, run with onnxruntime (CUDA when available, else CPU).

    A model with two image inputs is a stereo network (inputs left, right; output disparity in pixels of
    the model input width). A model with one input is monocular: its output (`mono_output` =
    "inverse_depth" for MiDaS / Depth-Anything style relative disparity, or "depth") is made metric by a
    robust fit against SGBM depth on SGBM-valid pixels (affine in inverse depth, or a scale for depth).
    Inputs are float32 NCHW RGB in [0, 1] (`normalize="imagenet"` applies ImageNet mean/std); fixed
    model input sizes are honoured by resizing, dynamic ones use the image size rounded to `size_multiple`.
    """

    def __init__(self, model_path: str | Path, cam_left: CameraModel, cam_right: CameraModel,
                 mono_output: str = "inverse_depth", normalize: str = "unit", size_multiple: int = 32,
                 sgbm: StereoDepth | None = None, providers: list[str] | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise DepthModelError(f"ONNX depth model not found: {path}")
        if mono_output not in ("inverse_depth", "depth"):
            raise ValueError(f"mono_output must be 'inverse_depth' or 'depth', got {mono_output!r}")
        if normalize not in ("unit", "imagenet"):
            raise ValueError(f"normalize must be 'unit' or 'imagenet', got {normalize!r}")
        self.session = onnx_session(path, providers, DepthModelError, "ONNX depth model")
        self.inputs = self.session.get_inputs()
        if len(self.inputs) not in (1, 2):
            raise DepthModelError(f"ONNX depth model {path} has {len(self.inputs)} inputs; expected 1 (mono) "
                                  "or 2 (stereo: left, right)")
        self.kind = "stereo" if len(self.inputs) == 2 else "mono"
        self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        self.path = path
        self.cam_left, self.cam_right = cam_left, cam_right
        self.mono_output = mono_output
        self.normalize = normalize
        self.size_multiple = max(1, int(size_multiple))
        self.sgbm = sgbm if sgbm is not None else (StereoDepth(cam_left, cam_right) if self.kind == "mono"
                                                   else None)

    def _input_size(self, h: int, w: int) -> tuple[int, int]:
        shape = self.inputs[0].shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            return shape[2], shape[3]
        m = self.size_multiple
        return max(m, round(h / m) * m), max(m, round(w / m) * m)

    def _prep(self, image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        img = image if image.ndim == 3 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
        if img.shape[:2] != size:
            img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_AREA)
        x = img.astype(np.float32) / 255.0
        if self.normalize == "imagenet":
            x = (x - _IMAGENET_MEAN) / _IMAGENET_STD
        return np.ascontiguousarray(x.transpose(2, 0, 1)[None])

    def _run(self, feeds: dict[str, np.ndarray], out_hw: tuple[int, int]) -> np.ndarray:
        try:
            out = self.session.run(None, feeds)[0]
        except Exception as exc:
            raise DepthModelError(f"ONNX depth model {self.path} failed to run: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        if out.ndim < 2 or out.size != out.shape[-1] * out.shape[-2]:
            raise DepthModelError(f"ONNX depth model {self.path} output shape {out.shape}; expected one "
                                  "HxW map ([1, 1, H, W], [1, H, W] or [H, W])")
        out = out.reshape(out.shape[-2:])
        if out.shape != out_hw:
            out = cv2.resize(out, (out_hw[1], out_hw[0]), interpolation=cv2.INTER_LINEAR)
        return out

    def compute(self, left: np.ndarray, right: np.ndarray) -> DepthResult:
        """Metric depth of the rectified left image (uses `right` for stereo models and the SGBM fit)."""
        check_pair(left, right)
        h, w = left.shape[:2]
        size = self._input_size(h, w)
        if self.kind == "stereo":
            feeds = {self.inputs[0].name: self._prep(left, size),
                     self.inputs[1].name: self._prep(right, size)}
            disp = self._run(feeds, (h, w)) * np.float32(w / size[1])
            depth = disparity_to_depth(disp, self.cam_left.fx, self.cam_right.baseline,
                                       self.cam_left.cx - self.cam_right.cx)
            disp = np.where(np.isfinite(depth), disp, np.nan).astype(np.float32)
            conf = np.where(np.isfinite(depth), 255, 0).astype(np.uint8)
            return DepthResult(depth, conf, disp)
        rel = self._run({self.inputs[0].name: self._prep(left, size)}, (h, w))
        ref = self.sgbm.compute(left, right)
        ok = np.isfinite(ref.depth) & np.isfinite(rel) & (ref.confidence > 64)
        if ok.sum() < 100:
            raise DepthModelError(f"too few valid SGBM pixels ({int(ok.sum())}) to scale the monocular depth "
                                  f"of {self.path} to metres")
        step = max(1, int(ok.sum() // 20000))
        x, z = rel[ok][::step], ref.depth[ok][::step]
        if self.mono_output == "inverse_depth":
            a, b = _robust_affine(x, 1.0 / z, affine=True)
            with np.errstate(divide="ignore", invalid="ignore"):
                depth = 1.0 / (a * rel + b)
        else:
            a, _ = _robust_affine(x, z, affine=False)
            depth = a * rel
        depth = depth.astype(np.float32)
        depth[~(np.isfinite(depth) & (depth > 0))] = np.nan
        # Confidence: agreement with SGBM where it has depth, mid confidence elsewhere.
        rel_err = np.abs(depth - ref.depth) / ref.depth
        conf = np.where(np.isfinite(rel_err), np.clip(255.0 * (1.0 - rel_err / 0.1), 1, 255), 128.0)
        conf = np.where(np.isfinite(depth), conf, 0).astype(np.uint8)
        return DepthResult(depth, conf, None)
