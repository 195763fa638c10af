"""Frame detail: the texture the Gaussians have not fitted yet, taken from the frames received nearest in time
to a view and carried into it through the model's geometry.

A render at a few frames' worth of live steps misses fine texture the images show (the model fits its own
frames at about 44 dB on the shared EndoNeRF clip, and sensor noise is not in it). A view at time t takes the
nearest stored frames before and after t (within a window, weighted by inverse time distance), each re-projected
into the view with the view's rendered depth and checked against the frame's rendered depth (a point the frame
did not see gets nothing from it). Each frame predicts the view as its image plus the model's change from the
frame to the view: its residual (image minus the model's render of it) plus the difference of the view's render
and its own re-projected, the latter only as far as the images confirm the model's changes between the frames
(`confirmed_share`: a change fitted into each frame's own state but absent from the images is not carried over;
light moving with the camera is). The mean of the predictions minus the view's render is the detail; for the
measured depth, whose stereo noise is large against the relief the frames share, it is scaled by the share of it
the frames have in common (`shared_share`: noise is not shared). It is measured texture, never a guess: under an
instrument of the frame it is nothing (the band a generous mask adds around one counts as tissue where the image
shows the model's tissue colour, `shown_tissue`), so inferred tissue keeps the model's colour alone.

The re-projection follows the model's own motion of the surface between the frame's time and the view's (the
Gaussians' displacements, rendered); the window bounds how long that motion has to be right for.

What no frame has shown is a guess and is marked so: a view from a new viewpoint sees past the edges of what the
frames saw (behind a fold's occluding edge, beyond the image border), where the model has no Gaussians or only
the thinned edges of the ones in front. Those pixels, where no frame re-projects either, are inpainted from the
others around them up to a reach (`to_fill`, `fill_uncovered`) and count as inferred (`ModelView.inferred_weight`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

# A re-projected point counts as seen by the frame when the frame's rendered depth there agrees to this share.
DEPTH_AGREEMENT = 0.03
# A pixel under a frame's instrument mask whose image is within this of the model's tissue colour there (mean of
# the channels' absolute differences, colours 0..1) is tissue the mask took in (`shown_tissue`). Same trained model
# scored both ways (2026-12-07, stream K = 10, the frame detail): the shared EndoNeRF clip at 1/4 scale, whose masks
# reach 10-20 px beyond the instruments at full size, +0.24 dB at 0.08 (+0.39 with every masked pixel, instrument
# too); its first 32 / last 31 frames +0.36 / +0.10; a synthetic scene with exact masks 0.00 at 0.05 and 0.08,
# -0.02 at 0.12 and -5.3 dB with every masked pixel (the instruments' own colours carried into the tissue).
MASKED_TISSUE_TOLERANCE = 0.08
# Side (px) of the windows the noise gain (`shared_share`, the depth's since 2026-12-07) and `confirmed_share` are
# estimated over. With the gain on the colours, stream K = 10 on the shared clip at 1/4 scale: 5, 9 and 17 px gave
# 41.74 / 41.73 / 41.71 dB, the whole view 41.61 (one run each, 2026-12-05).
GAIN_WINDOW_PX = 9
# Frames taken on each side of a view's time. Stream K = 10, 1/4 scale: 1 -> 2 gives live 41.38 -> 41.69 dB (a
# live view has two frames before it and one after), final 41.71 / 41.66, offline 42.23 / 42.20 (one run each).
FRAMES_PER_SIDE = 2
# A frame's prediction of a view is the mean of two: its image carried along the model's change to the view (as far
# as the images confirm it, `confirmed_share`) and its image alone. The confirmation is measured between frames the
# model was fitted to, where its changes follow the images by construction, so it over-trusts the change at a time
# between them; the two predictions err apart. Same trained models scored both ways (2026-12-07, stream K = 10, final
# / live view with the detail): the shared EndoNeRF clip at 1/4 +0.25 / +0.27 dB, its first 32 frames +0.36 / +0.26,
# synthetic scenes (issue 14's clip, seed 37) +0.27 / +0.13 and +0.24 / +0.12; offline 600 +0.19 / +0.45 (shared,
# first 32). Weight 0.3: within 0.05 dB of 0.5; 0 (the images alone): -0.02 to +0.32.
MODEL_CHANGE_WEIGHT = 0.5
# A pixel the model covers less than this is filled in. The right view of the shared clip (stream K = 10, 1/4 scale,
# with the frame detail, one run, 2026-12-05): unfilled 32.01 dB; filled below 0.7 / 0.8 / 0.9: 33.20 / 33.41 /
# 33.15; the fill taken from the far side of a depth edge only (the surface a fold hides): 33.08. Filling pixels a
# frame saw too cost the left view 0.2 dB.
COVERED = 0.8
FILL_UNIT = 16383.0   # the fill's 16-bit quantum: colours 0..4 (a fall-off corner can take the tissue above 1)
# How far from a covered pixel a view fills, as a share of its width: the band beyond a stereo image's border is one
# disparity wide (about 9 % of the width for a 5 mm baseline at 50 mm with a 90 degree lens).
FILL_REACH = 0.1


class Timed(Protocol):
    """A stored frame with a model time (recon.keyframes.Keyframe)."""

    t: float


def nearest_in_time(frames: Iterable[Timed], t: float, window_s: float, per_side: int = 1
                    ) -> list[tuple[Timed, float]]:
    """Up to `per_side` nearest frames at or before `t` and as many at or after it, within `window_s`, weighted
    by inverse time distance (for one on each side: linear interpolation); a frame at `t` itself alone, weight 1."""
    near = [f for f in frames if abs(f.t - t) <= window_s]
    own = [f for f in near if f.t == t]
    if own:
        return [(own[-1], 1.0)]
    before = sorted((f for f in near if f.t < t), key=lambda f: t - f.t)[:per_side]
    after = sorted((f for f in near if f.t > t), key=lambda f: f.t - t)[:per_side]
    chosen = before + after
    inv = [1.0 / abs(f.t - t) for f in chosen]
    return [(f, w / sum(inv)) for f, w in zip(chosen, inv, strict=True)]


def shown_tissue(image: np.ndarray, render: np.ndarray, alpha: np.ndarray, tissue: np.ndarray) -> np.ndarray:
    """[H,W] bool: the pixels of a frame (`image`, its model `render` [H,W,3] 0..1 and `alpha`) that show tissue
    the model covers: its `tissue` mask, and the masked pixels whose colour agrees with the model's tissue to
    `MASKED_TISSUE_TOLERANCE`: instrument masks are drawn generously (a dilated segmentation, a dataset's own),
    and the band they add is tissue the frame measured."""
    covered = alpha > 0.5
    agrees = np.abs(image - render).mean(-1) < MASKED_TISSUE_TOLERANCE
    return covered & (tissue | agrees)


@dataclass(frozen=True)
class Projection:
    """Where each pixel of a view lands in a frame (`u`, `v` [H,W] float32, far outside where it lands nowhere) and
    whether the frame saw that point (`seen` [H,W] bool): the geometry shared by every value sampled (`sample`)."""

    u: np.ndarray
    v: np.ndarray
    seen: np.ndarray

    def sample(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The frame's per-pixel `values` [h,w,C] (NaN where it has none) at the view's pixels: [H,W,C] (0 where
        they do not count) and where they count [H,W] bool (the frame saw the point and every value around it is
        known)."""
        known = np.isfinite(values).all(-1)
        # Where every value around a point is known (bilinear weight of the known pixels ~1), its value is sampled
        # bicubically: bilinear sampling at fractional shifts blurs the texture carried into the view. Offline on
        # the shared clip (600 iterations, 1/4 scale, the same model scored both ways): +0.21 dB with the detail;
        # the stream rows, the crop and three synthetic seeds -0.05..+0.06 (README, Frame detail).
        cover = cv2.remap(known.astype(np.float32), self.u, self.v, cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        sampled = _remap_cubic(_extend(np.where(known[..., None], values, 0.0).astype(np.float32), known),
                               self.u, self.v)
        ok = self.seen & (cover > 0.999)
        return np.where(ok[..., None], sampled, 0.0).astype(np.float32), ok


def projection(pose_k: np.ndarray, K_k: np.ndarray, depth_k: np.ndarray, pose_v: np.ndarray, K_v: np.ndarray,
               depth_v: np.ndarray, motion: np.ndarray | None = None) -> Projection:
    """The view (camera-to-world `pose_v`, intrinsics `K_v`, depth `depth_v` [H,W] m, NaN where empty)
    back-projected, moved by `motion` [H,W,3] (world, m: where each point is at the frame's time; default still)
    and projected into the frame (`pose_k`, `K_k`); a point is seen where the frame's `depth_k` agrees with it
    (DEPTH_AGREEMENT)."""
    H, W = depth_v.shape
    v, u = np.mgrid[0:H, 0:W].astype(np.float64)
    z = depth_v.astype(np.float64)
    pc = np.stack([(u - K_v[0, 2]) / K_v[0, 0] * z, (v - K_v[1, 2]) / K_v[1, 1] * z, z], -1)
    pw = pc @ pose_v[:3, :3].T + pose_v[:3, 3]
    if motion is not None:
        pw = pw + motion
    q = (pw - pose_k[:3, 3]) @ pose_k[:3, :3]
    with np.errstate(divide="ignore", invalid="ignore"):
        uk = np.nan_to_num((q[..., 0] / q[..., 2] * K_k[0, 0] + K_k[0, 2]).astype(np.float32), nan=-1e6)
        vk = np.nan_to_num((q[..., 1] / q[..., 2] * K_k[1, 1] + K_k[1, 2]).astype(np.float32), nan=-1e6)
    dk = cv2.remap(np.nan_to_num(depth_k, nan=0.0).astype(np.float32), uk, vk, cv2.INTER_NEAREST,
                   borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    with np.errstate(invalid="ignore"):
        seen = np.isfinite(z) & (q[..., 2] > 0) & (np.abs(dk - q[..., 2]) < DEPTH_AGREEMENT * q[..., 2])
    return Projection(uk, vk, seen)


def reproject(values: np.ndarray, pose_k: np.ndarray, K_k: np.ndarray, depth_k: np.ndarray,
              pose_v: np.ndarray, K_v: np.ndarray, depth_v: np.ndarray, motion: np.ndarray | None = None
              ) -> tuple[np.ndarray, np.ndarray]:
    """Sample a frame's per-pixel `values` [h,w,C] (NaN where it has none) at the points a view sees
    (`projection`, then `Projection.sample`): the values [H,W,C] (0 elsewhere) and where they count [H,W] bool."""
    return projection(pose_k, K_k, depth_k, pose_v, K_v, depth_v, motion).sample(values)


def _extend(values: np.ndarray, known: np.ndarray, px: int = 2) -> np.ndarray:
    """[H,W,C] `values` with the unknown pixels within `px` of the `known` ones set to the mean of their known
    neighbours (grown one pixel at a time): a bicubic kernel reads two pixels beyond a bilinear one, and zeros
    there would ring into the values sampled beside a hole."""
    vals, kn = values.copy(), known.astype(np.float32)
    for _ in range(px):
        num = cv2.boxFilter(vals * kn[..., None], -1, (3, 3), normalize=False).reshape(vals.shape)
        den = cv2.boxFilter(kn, -1, (3, 3), normalize=False)
        grow = (kn < 0.5) & (den > 0)
        vals = np.where(grow[..., None], num / np.maximum(den, 1e-6)[..., None], vals)
        kn = np.where(grow, 1.0, kn).astype(np.float32)
    return vals


def _remap_cubic(values: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """[H,W,C] `values` sampled bicubically at (u, v) (OpenCV's cubic remap takes at most four channels)."""
    parts = [cv2.remap(np.ascontiguousarray(values[..., c:c + 4]), u, v, cv2.INTER_CUBIC,
                       borderMode=cv2.BORDER_REPLICATE) for c in range(0, values.shape[-1], 4)]
    return np.concatenate([p.reshape(*u.shape, -1) for p in parts], -1)


def blend(parts: list[tuple[np.ndarray, np.ndarray, float]]) -> np.ndarray:
    """Weighted mean of re-projected residuals (values, where they count, weight); where only some frames count
    their weights are renormalised, where none does the detail is 0."""
    acc = np.zeros_like(parts[0][0])
    wsum = np.zeros(parts[0][1].shape, np.float32)
    for values, ok, w in parts:
        acc += values * (w * ok)[..., None]
        wsum += w * ok
    return np.where(wsum[..., None] > 0, acc / np.maximum(wsum, 1e-9)[..., None], 0.0).astype(np.float32)


def shared_share(parts: list[tuple[np.ndarray, np.ndarray, float]], size: int = 0) -> np.ndarray:
    """How much of the weighted mean of frames' residuals (values, where they count, weight) is texture they
    share, not noise of one: the weighted mean of the products of pairs of them over the power of their mean,
    clipped to [0, 1], over the pixels where a pair counts (size 0) or in a size x size window around each pixel
    (for two frames: cov(a, b) / E[((a + b) / 2)^2]). Sensor noise is independent between frames and texture
    the model missed is not, so this is the share of the mean residual worth adding (a Wiener gain): 0 where
    the residuals are noise."""
    shape = parts[0][1].shape
    cross, pairs = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for i, (a, ok_a, w_a) in enumerate(parts):
        for b, ok_b, w_b in parts[i + 1:]:
            wij = (w_a * w_b) * (ok_a & ok_b)
            cross += wij * (a * b).sum(-1)
            pairs += wij
    power = (blend(parts) ** 2).sum(-1) * pairs
    if size <= 0:
        return np.full(shape, np.clip(cross.sum() / max(power.sum(), 1e-12), 0.0, 1.0), np.float32)
    cross, power = (cv2.boxFilter(x, -1, (size, size), normalize=False) for x in (cross, power))
    return np.clip(cross / np.maximum(power, 1e-12), 0.0, 1.0).astype(np.float32)


def frame_detail(parts: list[tuple[np.ndarray, np.ndarray, float]], shape: tuple[int, int], at_own_time: bool,
                 channels: int = 3, noisy: bool = False) -> np.ndarray:
    """[H,W,channels] detail of a view from its frames' predictions minus its render (values, where they count,
    weight): several frames blended, and for `noisy` values (measured stereo depth) scaled by the share they have
    in common (`shared_share`); one frame in full when the view is at that frame's own moment (`at_own_time`: the
    truth then is that image), else none (its noise cannot be told from texture); no frame, none.

    Colours are not scaled: the same trained model scored both ways (2026-12-07, one run per clip), the share cost
    the views 0.15-0.34 dB (stream and offline on the shared clip, the native crop, four synthetic scenes), the
    right views 0.03-0.12, and gave the live views at most 0.07 and the remembered view at most 0.05 (both where a
    view has a single frame on one side, on the synthetic scenes, whose images carry independent noise). The
    measured depth keeps it: without it the shared clip's depth error grew by 0.03-0.05 mm."""
    if len(parts) >= 2:
        mean = blend(parts)
        return mean * shared_share(parts, GAIN_WINDOW_PX)[..., None] if noisy else mean
    if len(parts) == 1 and at_own_time:
        return blend(parts)
    return np.zeros((*shape, channels), np.float32)


def confirmed_share(images: list[np.ndarray], renders: list[np.ndarray], oks: list[np.ndarray], weights: list[float],
                    size: int) -> np.ndarray:
    """[H,W] 0..1: how much of the model's change between frames their images confirm, per size x size window:
    over pairs of frames (re-projected into the view), the regression of the image difference on the render
    difference, clipped to [0, 1]. A real change (light moving with the camera, tissue blanching) shows in
    both; a change only in the model (each frame's state fitted on its own) does not."""
    shape = oks[0].shape
    cross, power = np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for i in range(len(images)):
        for j in range(i + 1, len(images)):
            wij = (weights[i] * weights[j]) * (oks[i] & oks[j])
            d_ren = renders[i] - renders[j]
            cross += wij * ((images[i] - images[j]) * d_ren).sum(-1)
            power += wij * (d_ren ** 2).sum(-1)
    cross, power = (cv2.boxFilter(x, -1, (size, size), normalize=False) for x in (cross, power))
    return np.where(power > 1e-12, np.clip(cross / np.maximum(power, 1e-12), 0.0, 1.0), 1.0).astype(np.float32)


def to_fill(alpha: np.ndarray, measured: np.ndarray | None = None) -> np.ndarray:
    """HxW bool: the pixels a view fills in: covered less than `COVERED` by the model, seen by no frame (`measured`,
    the frame detail's), and within `FILL_REACH` of the view's width of a covered pixel: the bands a new viewpoint
    exposes beside what the frames saw. Further out nothing is known, and the view stays empty there."""
    hole = _unknown(alpha, measured)
    if hole.all():
        return np.zeros_like(hole)          # nothing to fill from
    if not hole.any():
        return hole
    reach = cv2.distanceTransform(hole.astype(np.uint8), cv2.DIST_L2, 3)
    return hole & (reach <= FILL_REACH * alpha.shape[1])


def _unknown(alpha: np.ndarray, measured: np.ndarray | None) -> np.ndarray:
    """HxW bool: covered less than `COVERED` and not `measured` (beyond the fill's reach too)."""
    return alpha < COVERED if measured is None else (alpha < COVERED) & ~measured


def fill_uncovered(rgb: np.ndarray, alpha: np.ndarray, measured: np.ndarray | None = None) -> np.ndarray:
    """The view `rgb` [H,W,3] float (0..4) with its pixels `to_fill` inpainted from the covered ones around them
    (OpenCV's Telea, 3 px, per channel in 16 bits: its float path returns values outside the known ones' range for
    values below 1)."""
    fill = to_fill(alpha, measured)
    if not fill.any():
        return rgb
    q = np.round(np.clip(rgb, 0.0, 4.0) * FILL_UNIT).astype(np.uint16)
    h8 = _unknown(alpha, measured).astype(np.uint8)   # no source beyond the reach either: black would bleed in
    filled = np.stack([cv2.inpaint(np.ascontiguousarray(q[..., c]), h8, 3, cv2.INPAINT_TELEA)
                       for c in range(rgb.shape[-1])], -1)
    return np.where(fill[..., None], filled.astype(np.float32) / FILL_UNIT, rgb)
