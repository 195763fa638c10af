"""The endoscope image's radial brightness fall-off, measured from the stereo pair.

An endoscope's images darken towards their corners: its lenses vignette and its light, which travels with the
camera, spreads over a cone. A model fitted to such images bakes each view's darkening into the tissue's colour,
so every other viewpoint (the right camera, the camera a moment later) shows it where it does not belong.

The stereo pair measures the fall-off at every frame. At one instant both lenses see the same tissue under the same
light, at two image positions: where the left camera sees a point at radius r_L and the right camera at r_R (the
disparity apart), the ratio of the two brightnesses is V(r_L) / V(r_R). With

    V(r) = exp(b1 r^2 + b2 r^4),    r = |pixel - principal point| / focal length,

log I_L - log I_R = b1 (r_L^2 - r_R^2) + b2 (r_L^4 - r_R^4) + c is linear in the coefficients (c: the two
sensors' gain difference); a trimmed least-squares fit over many tissue pixels and frames gives them, specular
highlights (which move between the lenses) falling out as outliers. r in units of the focal length (the tangent of
the ray's angle) keeps one V valid at every image scale and crop, and for both lenses of a stereo endoscope, whose
optics are alike.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import cv2
import numpy as np

# Samples per frame (a subsample of the tissue pixels: enough for two coefficients, cheap to keep).
SAMPLES_PER_FRAME = 4000
# Grey levels outside this range are clipped or lost in the sensor's noise: no ratio is taken there.
DARKEST, BRIGHTEST = 20.0, 235.0
# Fewer samples than this: no estimate (V stays 1).
MIN_SAMPLES = 2000
# The r^4 term is fitted only when the samples reach this far off the axis (r^2; 0.1: 18 degrees): over a narrow
# view (a native-resolution crop) r^2 and r^4 are nearly proportional and their split is noise (b2 -30 on a
# 160x128 crop of a 569 px focal length).
MIN_R2_FOR_B2 = 0.1
# A fall-off that changes no pixel of the image by more than this share is not worth applying: it is within the
# sensor's noise, and the division only moves the training's thresholds (a native 160x128 crop of the shared clip,
# V 1.004 at its corner: 0.3 dB lower with the frame detail, three runs each).
NEGLIGIBLE = 0.01


@dataclass(frozen=True)
class Falloff:
    """V(r) = exp(b1 r^2 + b2 r^4) (b1 = b2 = 0: none)."""

    b1: float = 0.0
    b2: float = 0.0

    def gain(self, K: np.ndarray, width: int, height: int) -> np.ndarray:
        """[H,W] float32, shared between calls (not to be modified): V at each pixel of an image with
        intrinsics K (ROS convention: pixel centres at integer coordinates). Made once per camera: every frame and
        every view needs it."""
        return _gain(self.b1, self.b2, float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), width,
                     height)

    def negligible(self, K: np.ndarray, width: int, height: int) -> bool:
        """Whether V stays within NEGLIGIBLE of 1 over the whole image."""
        return float(np.abs(self.gain(K, width, height) - 1.0).max()) <= NEGLIGIBLE

    @property
    def is_identity(self) -> bool:
        """Whether V is 1 everywhere."""
        return self.b1 == 0.0 and self.b2 == 0.0


NO_FALLOFF = Falloff()


@functools.lru_cache(maxsize=16)
def _gain(b1: float, b2: float, fx: float, fy: float, cx: float, cy: float, width: int, height: int) -> np.ndarray:
    x = (np.arange(width, dtype=np.float64) - cx) / fx
    y = (np.arange(height, dtype=np.float64) - cy) / fy
    r2 = y[:, None] ** 2 + x[None, :] ** 2
    return np.exp(b1 * r2 + b2 * r2 * r2).astype(np.float32)


@dataclass
class FalloffEstimator:
    """Collects left/right brightness ratios of tissue pixels over stereo frames; `estimate` fits V."""

    seed: int = 0
    _rows: list[np.ndarray] = field(default_factory=list, init=False)
    _max_r2: float = field(default=0.0, init=False)     # the farthest sample off the axis (left image, r^2)

    def add(self, left: np.ndarray, right: np.ndarray, depth: np.ndarray | None, mask: np.ndarray | None,
            K_left: np.ndarray, K_right: np.ndarray, baseline_m: float) -> int:
        """Add one rectified pair (RGB or grey uint8), the left image's depth (metres, NaN or 0: none) and
        instrument mask (non-zero: instrument); returns how many samples it gave."""
        if depth is None or left.shape != right.shape or not baseline_m > 0:
            return 0
        w = depth.shape[1]
        d = np.nan_to_num(np.asarray(depth, np.float64), nan=0.0)
        ok = d > 0
        if mask is not None:
            ok &= mask == 0
        ys, xs = np.nonzero(ok)
        if ys.size == 0:
            return 0
        if ys.size > SAMPLES_PER_FRAME:
            pick = np.random.default_rng(self.seed + len(self._rows)).choice(ys.size, SAMPLES_PER_FRAME,
                                                                              replace=False)
            ys, xs = ys[pick], xs[pick]
        fx, cxl, cxr = K_left[0, 0], K_left[0, 2], K_right[0, 2]
        # The same ray in the right image: (xl - cxl) / fx - b / z = (xr - cxr) / fx.
        xr = xs - cxl + cxr - fx * baseline_m / d[ys, xs]
        inside = (xr >= 1) & (xr <= w - 2)
        ys, xs, xr = ys[inside], xs[inside], xr[inside]
        # Slightly blurred grey levels: a sub-pixel error in the disparity does not read as a brightness ratio.
        gl, gr = (cv2.GaussianBlur(im, (5, 5), 1.0).astype(np.float64) for im in (left, right))
        if gl.ndim == 3:
            gl, gr = gl.mean(-1), gr.mean(-1)
        x0 = np.floor(xr).astype(int)
        a = xr - x0
        il, ir = gl[ys, xs], gr[ys, x0] * (1 - a) + gr[ys, x0 + 1] * a
        lit = (il > DARKEST) & (ir > DARKEST) & (il < BRIGHTEST) & (ir < BRIGHTEST)
        rl2 = ((xs - cxl) / fx) ** 2 + ((ys - K_left[1, 2]) / K_left[1, 1]) ** 2
        rr2 = ((xr - cxr) / K_right[0, 0]) ** 2 + ((ys - K_right[1, 2]) / K_right[1, 1]) ** 2
        rows = np.stack([rl2 - rr2, rl2 ** 2 - rr2 ** 2, np.log(il) - np.log(ir)], 1)[lit]
        self._rows.append(rows)
        if lit.any():
            self._max_r2 = max(self._max_r2, float(rl2[lit].max()))
        return len(rows)

    @property
    def samples(self) -> int:
        """Samples collected so far."""
        return sum(len(r) for r in self._rows)

    def estimate(self) -> Falloff | None:
        """The fitted V (least squares, samples beyond 3 robust standard deviations dropped, four rounds; b2 = 0
        unless the samples reach MIN_R2_FOR_B2); None with fewer than MIN_SAMPLES samples or a degenerate spread
        of radii."""
        if self.samples < MIN_SAMPLES:
            return None
        rows = np.concatenate(self._rows)
        wide = self._max_r2 >= MIN_R2_FOR_B2
        A = np.column_stack([rows[:, 0], *([rows[:, 1]] if wide else []), np.ones(len(rows))])
        y = rows[:, 2]
        keep = np.ones(len(y), bool)
        for _ in range(4):
            if np.linalg.matrix_rank(A[keep]) < A.shape[1]:
                return None
            coef, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
            res = y - A @ coef
            sigma = 1.4826 * float(np.median(np.abs(res[keep])))
            keep = np.abs(res) <= 3 * max(sigma, 1e-6)
        return Falloff(float(coef[0]), float(coef[1])) if wide else Falloff(float(coef[0]), 0.0)
