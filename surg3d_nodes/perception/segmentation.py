"""Instrument segmentation: a weight-free cue-based segmenter (default), a YOLO-seg backend (user weights),
fusion with a kinematic prior mask, and dataset-mask pass-through. Masks are uint8, 255 = instrument.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.files import onnx_session
from surg3d_nodes.common.params import param


class SegmentationModelError(RuntimeError):
    """A learned segmentation model could not be loaded or run."""


@dataclass
class CueParams:
    """Parameters of `CueSegmenter` (defaults tuned on the EndoNeRF "pulling soft tissues" clip).

    Colour: tissue is red/pink/yellow, instruments grey, metallic or blue-grey. The cue is the negative
    projection of the Lab chroma (a*, b*) onto the tissue hue direction `tissue_hue_deg`, in robust SDs
    of the frame's own distribution (the tissue dominates a frame), so it adapts to lighting.
    Depth: SGBM finds no depth on the smooth, too-near instrument shafts (`invalid_depth_weight`); valid
    depth nearer than the fitted tissue surface by `depth_rel` is instrument-like (`depth_weight`).
    Residual: pixels the reconstruction cannot explain (residual > `residual_scale`) are instrument-like.
    The per-pixel evidence (a logit) plus the previous frame's mask (`temporal_weight`) seeds GrabCut:
    logit > `seed_fg` sure instrument, > `seed_probable` probable instrument, < -`seed_fg` sure tissue;
    GrabCut then learns this frame's instrument and tissue colour models and cuts along image edges.
    """

    work_scale: float = param(0.35, "cue segmenter resolution: cues, GrabCut and morphology run at this scale, the "
                              "mask is returned full size (GrabCut dominates; 0.5: +1.5x time, no gain)", low=0.05,
                              high=1.0)
    blur_px: int = 5
    tissue_hue_deg: float = 17.0
    specular_v: int = 220
    specular_s: int = 60
    dark_v: int = 20
    invalid_depth_weight: float = 1.0
    depth_weight: float = param(0.5, "weight of 'nearer than the tissue surface'", low=0.0, high=100.0)
    depth_rel: float = 0.10
    residual_weight: float = 1.0
    residual_scale: float = 0.15
    temporal_weight: float = param(1.0, "weight of the previous frame's mask as a prior", low=0.0, high=100.0)
    seed_fg: float = 3.0
    seed_probable: float = 1.5
    grabcut_iters: int = 2  # 0 = threshold the logit at seed_probable instead of GrabCut
    open_px: int = 10
    min_area_frac: float = 0.006
    border_margin_px: int = 8  # components must come this close to the image border (tools enter); <0 off
    fill_holes: bool = True
    margin_px: int = param(28, "safety dilation around instruments (full-resolution px)", low=0, high=500)


def _disk(r: int) -> np.ndarray:
    r = max(1, int(r))
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", None)
        raise ValueError(f"segmentation expects a uint8 HxWx3 RGB image, got shape {shape} dtype {dtype}")


def _fit_surface(d: np.ndarray, valid: np.ndarray, iters: int = 4) -> np.ndarray:
    """Quadratic z(u, v) fitted to valid depth, dropping points > 5 % in front of the fit each round."""
    h, w = d.shape
    vv, uu = np.nonzero(valid)
    step = max(1, uu.size // 4000)
    uu, vv = uu[::step], vv[::step]
    z = d[vv, uu].astype(np.float64)
    un, vn = uu / w - 0.5, vv / h - 0.5
    A = np.stack([np.ones_like(un), un, vn, un * un, vn * vn, un * vn], axis=1)
    keep = np.ones(z.size, bool)
    coef = np.zeros(6)
    for _ in range(iters):
        if keep.sum() < 12:
            break
        coef = np.linalg.lstsq(A[keep], z[keep], rcond=None)[0]
        fit = A @ coef
        keep = (fit - z) < 0.05 * fit
    gu, gv = np.meshgrid(np.arange(w) / w - 0.5, np.arange(h) / h - 0.5)
    surf = coef[0] + coef[1] * gu + coef[2] * gv + coef[3] * gu * gu + coef[4] * gv * gv + coef[5] * gu * gv
    return np.maximum(surf, 1e-3).astype(np.float32)


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill regions of 0 that do not touch the image border."""
    h, w = mask.shape
    flood = np.pad((mask == 0).astype(np.uint8), 1, constant_values=1)
    ff_mask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ff_mask, (0, 0), 2)
    holes = flood[1:-1, 1:-1] == 1
    out = mask.copy()
    out[holes] = 255
    return out


class CueSegmenter:
    """Weight-free instrument segmenter from colour, specularity, depth, residual and temporal cues.

    Call `segment(image, depth=None, residual=None)` once per frame in time order; `reset()` between clips.
    """

    def __init__(self, params: CueParams | None = None) -> None:
        self.params = params or CueParams()
        self._prev: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the temporal state (new clip or camera jump)."""
        self._prev = None

    def evidence(self, image: np.ndarray, depth: np.ndarray | None = None,
                 residual: np.ndarray | None = None) -> np.ndarray:
        """Per-pixel instrument logit (float32, work resolution) of one frame from its own cues."""
        p = self.params
        h, w = image.shape[:2]
        ws, hs = self._work_size(w, h)
        small = cv2.resize(image, (ws, hs), interpolation=cv2.INTER_AREA)
        if p.blur_px > 1:
            k = int(p.blur_px * p.work_scale) | 1
            small = cv2.GaussianBlur(small, (k, k), 0)
        lab = cv2.cvtColor(small, cv2.COLOR_RGB2Lab).astype(np.float32)
        hsv = cv2.cvtColor(small, cv2.COLOR_RGB2HSV)
        th = np.deg2rad(p.tissue_hue_deg)
        proj = -((lab[..., 1] - 128.0) * np.cos(th) + (lab[..., 2] - 128.0) * np.sin(th))
        specular = (hsv[..., 2] >= p.specular_v) & (hsv[..., 1] <= p.specular_s)
        dark = hsv[..., 2] <= p.dark_v
        usable = ~specular & ~dark
        ref = proj[usable] if usable.sum() > 100 else proj.ravel()
        med = float(np.median(ref))
        sd = 1.4826 * float(np.median(np.abs(ref - med))) + 1e-3
        logit = (proj - med) / sd
        # Specular highlights carry no colour: let their neighbourhood decide (inpaint the logit).
        if specular.any():
            logit = cv2.inpaint(np.clip(logit, -20, 20).astype(np.float32), specular.astype(np.uint8), 3,
                                cv2.INPAINT_TELEA)
        logit[dark] = -4.0  # black borders / overlay bars are not instruments
        if depth is not None:
            d = cv2.resize(depth.astype(np.float32), (ws, hs), interpolation=cv2.INTER_NEAREST)
            valid = np.isfinite(d) & (d > 0)
            if p.invalid_depth_weight:
                k = max(3, int(18 * p.work_scale) | 1)
                frac_invalid = cv2.blur((~valid).astype(np.float32), (k, k))
                logit += p.invalid_depth_weight * (frac_invalid - 0.5) * 2.0
            if p.depth_weight and valid.mean() > 0.05:
                surface = _fit_surface(d, valid)
                rel = (surface - d) / surface
                near = np.where(valid, (rel - p.depth_rel) / (0.5 * p.depth_rel), 0.0)
                logit += p.depth_weight * np.clip(near, 0.0, 4.0)
        if residual is not None and p.residual_weight:
            r = np.nan_to_num(residual.astype(np.float32))
            r = cv2.resize(r if r.ndim == 2 else r.mean(axis=2), (ws, hs), interpolation=cv2.INTER_AREA)
            logit += p.residual_weight * (r / max(p.residual_scale, 1e-6) - 1.0) * 2.0
        return logit.astype(np.float32)

    def _work_size(self, w: int, h: int) -> tuple[int, int]:
        s = self.params.work_scale
        return max(16, round(w * s)), max(16, round(h * s))

    def segment(self, image: np.ndarray, depth: np.ndarray | None = None,
                residual: np.ndarray | None = None) -> np.ndarray:
        """uint8 mask (255 = instrument) of one frame, with the safety margin applied.

        Frames must come in time order: the previous frame's mask is a prior for this one.
        """
        _check_image(image)
        h, w = image.shape[:2]
        if depth is not None and depth.shape[:2] != (h, w):
            raise ValueError(f"depth {depth.shape} does not match image {image.shape[:2]}")
        if residual is not None and residual.shape[:2] != (h, w):
            raise ValueError(f"residual {residual.shape} does not match image {image.shape[:2]}")
        p = self.params
        logit = self.evidence(image, depth, residual)
        if self._prev is not None and self._prev.shape == logit.shape:
            logit += p.temporal_weight * np.where(self._prev, 1.0, -1.0).astype(np.float32)
        mask = self._cut(image, logit)
        s = p.work_scale
        if p.open_px > 0:
            mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, _disk(p.open_px * s / 2))
        mask = self._filter_components(mask)
        if p.fill_holes:
            mask = _fill_holes(mask)
        self._prev = mask > 0
        if p.margin_px > 0:
            mask = cv2.dilate(mask, _disk(p.margin_px * s))
        return cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST)

    def _cut(self, image: np.ndarray, logit: np.ndarray) -> np.ndarray:
        """Binary mask (work resolution) from the evidence: GrabCut seeded by it, or a threshold."""
        p = self.params
        probable = logit > p.seed_probable
        if p.grabcut_iters <= 0 or not probable.any() or probable.all():
            return probable.astype(np.uint8) * 255
        small = cv2.resize(image, (logit.shape[1], logit.shape[0]), interpolation=cv2.INTER_AREA)
        gc = np.full(logit.shape, cv2.GC_PR_BGD, np.uint8)
        gc[probable] = cv2.GC_PR_FGD
        gc[logit > p.seed_fg] = cv2.GC_FGD
        gc[logit < -p.seed_fg] = cv2.GC_BGD
        bgd, fgd = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
        cv2.grabCut(small, gc, None, bgd, fgd, p.grabcut_iters, cv2.GC_INIT_WITH_MASK)
        return np.where((gc == cv2.GC_FGD) | (gc == cv2.GC_PR_FGD), 255, 0).astype(np.uint8)

    def _filter_components(self, mask: np.ndarray) -> np.ndarray:
        """Keep components large enough that reach the image border (instruments enter from outside)."""
        p = self.params
        n, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        hs, ws = mask.shape
        min_area = p.min_area_frac * hs * ws
        bm = int(p.border_margin_px * p.work_scale)
        keep = np.zeros(n, bool)
        for k in range(1, n):
            x, y, cw, ch, area = stats[k]
            touches = x <= bm or y <= bm or x + cw >= ws - bm or y + ch >= hs - bm
            keep[k] = area >= min_area and (touches or p.border_margin_px < 0)
        return np.where(keep[labels], 255, 0).astype(np.uint8)


def fuse_masks(image_mask: np.ndarray | None, prior_mask: np.ndarray | None, mode: str = "union",
               prior_margin_px: int = 0) -> np.ndarray:
    """Combine an image-based instrument mask with a kinematic prior mask (both uint8, 255 = instrument).

    mode "union" (default, safest for reconstruction: anything either source calls instrument is masked),
    "intersection" (both agree), or "prior_gated" (image mask restricted to the dilated prior, plus the prior
    where the image mask is empty nearby). `prior_margin_px` dilates the prior first (kinematic error).
    """
    if image_mask is None and prior_mask is None:
        raise ValueError("fuse_masks needs at least one mask")
    if prior_mask is None:
        return image_mask.copy()
    prior = (prior_mask > 127).astype(np.uint8) * 255
    if prior_margin_px > 0:
        prior = cv2.dilate(prior, _disk(prior_margin_px))
    if image_mask is None:
        return prior
    if image_mask.shape != prior.shape:
        raise ValueError(f"image mask {image_mask.shape} and prior mask {prior.shape} differ in size")
    img = (image_mask > 127).astype(np.uint8) * 255
    if mode == "union":
        return cv2.bitwise_or(img, prior)
    if mode == "intersection":
        return cv2.bitwise_and(img, prior)
    if mode == "prior_gated":
        return cv2.bitwise_and(img, prior) if img.any() else prior
    raise ValueError(f"unknown fuse mode {mode!r} (expected union, intersection or prior_gated)")


def dataset_mask(mask: np.ndarray, tool_value_is_255: bool = True) -> np.ndarray:
    """Normalise a dataset-provided tool mask (any non-zero or 0 = tool) to uint8 255 = instrument."""
    m = mask if mask.ndim == 2 else mask[..., 0]
    tool = m > 0 if tool_value_is_255 else m == 0
    return tool.astype(np.uint8) * 255


def _nms(boxes: np.ndarray, scores: np.ndarray, iou_thres: float) -> list[int]:
    """Greedy non-maximum suppression on xyxy boxes; indices kept, best first."""
    order = np.argsort(-scores)
    areas = np.maximum(boxes[:, 2] - boxes[:, 0], 0) * np.maximum(boxes[:, 3] - boxes[:, 1], 0)
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        xx1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        yy1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        xx2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        yy2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.maximum(xx2 - xx1, 0) * np.maximum(yy2 - yy1, 0)
        iou = inter / (areas[i] + areas[rest] - inter + 1e-9)
        order = rest[iou <= iou_thres]
    return keep


class YoloSegmenter:
    """Instrument masks from a user-supplied Ultralytics YOLO segmentation model.

    `.onnx` (exported with `yolo export format=onnx`) runs with onnxruntime (CUDA when available) and our
    own post-processing: outputs [1, 4 + nc + 32, N] (cx, cy, w, h in input pixels, class scores, mask
    coefficients) and prototypes [1, 32, H/4, W/4]; letterboxed input (pad 114). `.pt` runs through the
    `ultralytics` package when installed (it is optional). `classes` keeps only those class ids (None = all);
    all kept instances are merged into one mask, dilated by `margin_px`.
    """

    def __init__(self, model_path: str | Path, conf: float = 0.25, iou: float = 0.45,
                 classes: list[int] | None = None, imgsz: int = 640, mask_threshold: float = 0.5,
                 margin_px: int = 0, max_det: int = 100, providers: list[str] | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise SegmentationModelError(f"YOLO segmentation model not found: {path}")
        self.path = path
        self.conf, self.iou, self.imgsz = float(conf), float(iou), int(imgsz)
        self.classes = None if classes is None else {int(c) for c in classes}
        self.mask_threshold = float(mask_threshold)
        self.margin_px, self.max_det = int(margin_px), int(max_det)
        self._ultra = None
        self.session = None
        if path.suffix.lower() == ".onnx":
            self.session = onnx_session(path, providers, SegmentationModelError, "YOLO ONNX model")
            n_out = len(self.session.get_outputs())
            if n_out < 2:
                raise SegmentationModelError(
                    f"{path} has {n_out} output(s); a YOLO-seg model has 2 "
                    "(detections [1, 4+nc+32, N], prototypes [1, 32, h, w])")
            self.device = "cuda" if "CUDAExecutionProvider" in self.session.get_providers() else "cpu"
        elif path.suffix.lower() == ".pt":
            self._ultra = self._load_ultralytics(path)
            self.device = "torch"
        else:
            raise SegmentationModelError(f"unsupported YOLO model file {path} (expected .onnx or .pt)")

    @staticmethod
    def _load_ultralytics(path: Path):
        # Ultralytics must neither phone home nor write into $HOME on import.
        os.environ.setdefault("YOLO_OFFLINE", "1")
        os.environ.setdefault("YOLO_CONFIG_DIR", str(Path(tempfile.gettempdir()) / "surg3d_yolo_config"))
        Path(os.environ["YOLO_CONFIG_DIR"]).mkdir(parents=True, exist_ok=True)
        try:
            from ultralytics import YOLO
        except ImportError as exc:
            raise SegmentationModelError(
                f"{path} is a PyTorch YOLO model but the 'ultralytics' package is not installed; "
                "export it to ONNX (yolo export model=... format=onnx) or install ultralytics") from exc
        try:
            return YOLO(str(path))
        except Exception as exc:
            raise SegmentationModelError(f"cannot load YOLO model {path}: {exc}") from exc

    def _input_hw(self) -> tuple[int, int]:
        shape = self.session.get_inputs()[0].shape
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int):
            return shape[2], shape[3]
        s = max(32, self.imgsz // 32 * 32)
        return s, s

    def segment(self, image: np.ndarray) -> np.ndarray:
        """uint8 mask (255 = instrument) of an RGB uint8 image."""
        _check_image(image)
        if self._ultra is not None:
            mask = self._segment_ultralytics(image)
        else:
            mask = self._segment_onnx(image)
        if self.margin_px > 0 and mask.any():
            mask = cv2.dilate(mask, _disk(self.margin_px))
        return mask

    def _segment_ultralytics(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        classes = None if self.classes is None else sorted(self.classes)
        res = self._ultra.predict(image[..., ::-1], conf=self.conf, iou=self.iou, classes=classes,
                                  imgsz=self.imgsz, retina_masks=True, verbose=False)[0]
        mask = np.zeros((h, w), np.uint8)
        if res.masks is not None:
            data = res.masks.data.cpu().numpy() > self.mask_threshold
            if data.shape[1:] != (h, w):
                data = np.stack([cv2.resize(m.astype(np.uint8), (w, h)) > 0 for m in data])
            mask[data.any(axis=0)] = 255
        return mask

    def _segment_onnx(self, image: np.ndarray) -> np.ndarray:
        h, w = image.shape[:2]
        ih, iw = self._input_hw()
        r = min(ih / h, iw / w)
        nh, nw = round(h * r), round(w * r)
        top, left = (ih - nh) // 2, (iw - nw) // 2
        canvas = np.full((ih, iw, 3), 114, np.uint8)
        canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_LINEAR)
        x = np.ascontiguousarray(canvas.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
        try:
            out = self.session.run(None, {self.session.get_inputs()[0].name: x})
        except Exception as exc:
            raise SegmentationModelError(f"YOLO ONNX model {self.path} failed to run: {exc}") from exc
        det, protos = np.asarray(out[0])[0], np.asarray(out[1])[0]
        nm = protos.shape[0]
        if det.ndim != 2 or det.shape[0] < 4 + 1 + nm:
            raise SegmentationModelError(f"YOLO ONNX output shape {out[0].shape} does not fit prototypes "
                                         f"{out[1].shape}: expected [1, 4 + nc + {nm}, N]")
        det = det.T  # N x (4 + nc + nm)
        nc = det.shape[1] - 4 - nm
        scores_all = det[:, 4:4 + nc]
        cls = scores_all.argmax(axis=1)
        score = scores_all[np.arange(det.shape[0]), cls]
        sel = score > self.conf
        if self.classes is not None:
            sel &= np.isin(cls, list(self.classes))
        mask = np.zeros((h, w), np.uint8)
        if not sel.any():
            return mask
        det, cls, score = det[sel], cls[sel], score[sel]
        cxcywh = det[:, :4]
        boxes = np.stack([cxcywh[:, 0] - cxcywh[:, 2] / 2, cxcywh[:, 1] - cxcywh[:, 3] / 2,
                          cxcywh[:, 0] + cxcywh[:, 2] / 2, cxcywh[:, 1] + cxcywh[:, 3] / 2], axis=1)
        # Per-class NMS: offset boxes by class so different classes never suppress each other.
        keep = _nms(boxes + cls[:, None] * float(max(ih, iw) + 1), score, self.iou)[: self.max_det]
        coefs = det[keep, 4 + nc:]
        mh, mw = protos.shape[1:]
        inst = 1.0 / (1.0 + np.exp(-(coefs @ protos.reshape(nm, -1)))).reshape(-1, mh, mw)
        sx, sy = mw / iw, mh / ih
        union = np.zeros((mh, mw), bool)
        for k, b in enumerate(boxes[keep]):
            x0, y0 = max(0, int(np.floor(b[0] * sx))), max(0, int(np.floor(b[1] * sy)))
            x1, y1 = min(mw, int(np.ceil(b[2] * sx))), min(mh, int(np.ceil(b[3] * sy)))
            crop = np.zeros((mh, mw), bool)
            crop[y0:y1, x0:x1] = inst[k, y0:y1, x0:x1] > self.mask_threshold
            union |= crop
        full = cv2.resize(union.astype(np.uint8), (iw, ih), interpolation=cv2.INTER_LINEAR)
        full = full[top:top + nh, left:left + nw]
        full = cv2.resize(full, (w, h), interpolation=cv2.INTER_NEAREST)
        mask[full > 0] = 255
        return mask
