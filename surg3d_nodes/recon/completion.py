"""Completion of the tissue the instruments hide, inside the model, and always marked as inferred.

Geometry: under the instrument mask the tissue surface continues the measured depth around it as a membrane
(the harmonic / Laplace fill: the smoothest surface through the boundary, exact on planes), with the model's own
rendered depth as extra boundary where it already holds tissue seen earlier. Completed at every frame, it carries
the inferred Gaussians with it (`place_inferred`).

Appearance: the model's memory first: instrument pixels that existing Gaussians cover (rendered alpha above the
growth threshold) are left to them. Only pixels no camera has shown are completed, once, into Gaussians flagged
`inferred`: the harmonic fill (as the geometry) of the composite image (live tissue + the model's memory under the
instrument, in the colours it was seen with, wherever it covers at least `COLOUR_MEMORY_ALPHA`), so the hole to
guess is only the part never seen, not the whole instrument, and the guess is not repeated per output frame (it
moves with the tissue through the Gaussians' tracks). Texture never seen cannot be predicted from its border; the
smoothest continuation errs least on average, where Telea's inpainting carries the border's streaks in (synthetic
scene, 320x256 streamed, never-seen PSNR: 24.46 -> 24.86 dB, Telea's baseline 23.83; README, issue 16). A user's
learned inpainter may take the harmonic fill's place (recon.inpaint_model).

Replacement: an inferred Gaussian that projects onto a pixel that is tissue in a new frame (not under the mask,
with measured depth, the Gaussian not far behind that surface) is pruned before the frame grows the model, so
the frame's own observed Gaussians replace it at once (`grow_unexplained` then finds that pixel uncovered).
Pruning rather than flipping the flag: a flipped Gaussian would be called observed while it still carried the
guessed colour and depth until training corrected it. A guess also gives way to the memory: an inferred Gaussian
over instrument pixels the observed Gaussians cover is retired when the frame is completed (`remembered_inferred`),
so a guess never sits in front of tissue the camera has shown.
"""

from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np
import torch

from surg3d_nodes.recon.gaussians import SH_C0, GaussianModel
from surg3d_nodes.recon.keyframes import Keyframe

# An inferred Gaussian behind the observed surface by more than this (relative depth) is hidden by it, not
# replaced by it.
BEHIND_REL = 0.15
INPAINT_RADIUS_PX = 5
# `membrane_fill`'s tolerance for 8-bit colours: within half a grey level of the exact fill, 0.19 s for a tenth of
# a 640x512 image in three channels, 0.49 s for a fifth (Telea: 0.06 / 0.09 s; 1e-9, the geometry's, from Telea's
# start: 0.49 / 1.6 s). 1e-3 (0.13 / 0.23 s, within 0.8): never seen 0.05 dB lower on the synthetic clip, twice.
COLOUR_TOL = 1e-4
# `smooth_fill` solves on an image at most this wide.
SMOOTH_FILL_WIDTH = 320
# Holes larger than this (pixels) start `membrane_fill` from the fill at half the resolution (`_coarse_start`).
COARSE_FROM_PX = 4096
# Instrument pixels the model covers at least this much are its memory; the rest is completed. Near 1: a pixel
# covered by the fringe of observed Gaussians renders dark (composited over black) unless it is completed too.
MEMORY_ALPHA = 0.95
# The completed colours take the observed Gaussians' remembered colour (un-premultiplied) where they cover at least
# this much, and fill in from there. A fifth of the seen-before instrument pixels are covered 0.6-0.8 (synthetic
# clip, stream K = 10): with 0.8 the fill of the never-seen tissue gained 0.36 dB over 0.95 (the test frames' own
# fill, remembered colours), and the guesses over those pixels take the memory's colour (README, Occluded tissue).
COLOUR_MEMORY_ALPHA = 0.8
# Tissue a moving instrument has just uncovered gets observed Gaussians where the observed ones cover it less than
# `MEMORY_ALPHA` (`revealed_tissue`): it is often shown only beside the instrument's edge before it is hidden again, and
# the guesses seeded there while it was hidden (and kept within the margin) made the memory of it (synthetic seed 37:
# seen-before pixels covered below 0.6 by observed Gaussians scored 27-29 dB, README, Occluded tissue). Only where
# the measured depth agrees with the surface the model holds there, within this (relative): stereo depth beside an
# instrument is often wrong on real clips, and Gaussians placed by it cost the shared clip's training fit 1.4 dB.
REVEALED_DEPTH_REL = 0.05
# Weight that pulls pixels of a hole with no known neighbour at all towards the mean known depth (keeps the
# system regular; negligible wherever a boundary exists).
ANCHOR_WEIGHT = 1e-6
# Pixel stride of the inferred Gaussians seeded under the instruments (at least the trainer's `add_stride`):
# the guess is smooth (membrane fills), and one Gaussian per pixel of a large instrument doubled
# the model of the shared clip's offline eval at 1/4 scale (6.5k inferred Gaussians on the first frame alone
# against 15k observed ones), and every training step with it.
INFERRED_STRIDE = 2


def membrane_fill(depth: np.ndarray, known: np.ndarray, tol: float = 1e-9, max_iter: int = 2000) -> np.ndarray:
    """`depth` [H,W] with every pixel outside `known` replaced by the harmonic interpolation of the known
    pixels (discrete Laplace equation, 4-neighbours, Neumann at the image border): smooth, exact on planes.
    Solved by conjugate gradients on the grid stencil (the system is symmetric positive definite), started
    from Telea's fill, or for a hole of more than `COARSE_FROM_PX` pixels from the fill at half the resolution
    (`_coarse_start`); `tol` is relative to the known values' scale. The iterations work on the unknown pixels
    only, with their neighbours gathered by index (a hole is a few percent of the image)."""
    known = known & np.isfinite(depth)
    out = np.where(known, depth, 0.0).astype(np.float64)
    unknown = ~known
    if not unknown.any() or not known.any():
        return out.astype(np.float32)
    h, w = unknown.shape
    ys, xs = np.nonzero(unknown)
    m = ys.size
    # Index of every pixel in the unknown vector; known pixels and the outside point at a zero slot (m).
    slot = np.full((h + 2, w + 2), m, np.int64)
    slot[ys + 1, xs + 1] = np.arange(m)
    nb_idx = np.stack([slot[ys + 1 + dy, xs + 1 + dx] for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1))])
    n_in = ((ys > 0).astype(np.float64) + (ys < h - 1) + (xs > 0) + (xs < w - 1))
    diag = n_in + ANCHOR_WEIGHT
    # Known neighbours' depth: the right-hand side.
    pad = np.pad(out, 1)
    b = sum(pad[ys + 1 + dy, xs + 1 + dx] for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)))
    b = b + ANCHOR_WEIGHT * float(out[known].mean())
    buf = np.zeros(m + 1)

    def apply(x: np.ndarray) -> np.ndarray:         # A x on the unknown pixels
        buf[:m] = x
        g = buf[nb_idx]
        return diag * x - (g[0] + g[1] + g[2] + g[3])

    scale = float(np.abs(out[known]).max()) or 1.0
    x = _coarse_start(out, known, tol, max_iter)[ys, xs] if m > COARSE_FROM_PX else \
        cv2.inpaint((out / scale).astype(np.float32), unknown.astype(np.uint8), INPAINT_RADIUS_PX,
                    cv2.INPAINT_TELEA).astype(np.float64)[ys, xs] * scale
    r = b - apply(x)
    p = r.copy()
    rr = float(r @ r)
    for _ in range(max_iter):
        if rr <= (tol * scale) ** 2:
            break
        ap = apply(p)
        a = rr / float(p @ ap)
        x += a * p
        r -= a * ap
        rr_new = float(r @ r)
        p = r + (rr_new / rr) * p
        rr = rr_new
    out[ys, xs] = x
    return out.astype(np.float32)


def _coarse_start(values: np.ndarray, known: np.ndarray, tol: float, max_iter: int) -> np.ndarray:
    """A start for `membrane_fill`'s iterations: the fill of the image at half the resolution (each 2x2 block the
    mean of its known pixels), upsampled. Conjugate gradients are slowest on the smooth, wide modes of a large
    hole, and those are what the coarse fill gets right."""
    h, w = known.shape
    k = known.astype(np.float64)
    hh, ww = (h + 1) // 2, (w + 1) // 2
    pad = ((0, 2 * hh - h), (0, 2 * ww - w))
    ksum = np.pad(k, pad).reshape(hh, 2, ww, 2).sum((1, 3))
    vsum = np.pad(values * k, pad).reshape(hh, 2, ww, 2).sum((1, 3))
    coarse = membrane_fill(vsum / np.maximum(ksum, 1.0), ksum > 0, tol, max_iter)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def inpaint(rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """The `hole` pixels of a uint8 RGB image filled per channel with the harmonic interpolation of the pixels
    around them (`membrane_fill` to `COLOUR_TOL`)."""
    out = rgb.copy()
    if hole.any():
        for c in range(rgb.shape[2]):
            out[..., c] = np.clip(membrane_fill(rgb[..., c].astype(np.float32), ~hole, COLOUR_TOL) + 0.5, 0, 255)
    return out


def instrument_band(kf: Keyframe, margin_px: int) -> np.ndarray:
    """[H,W] bool: instrument pixels of the keyframe, dilated by `margin_px` (its edges' depth and colour are
    unreliable)."""
    tool = (kf.tissue < 0.5).cpu().numpy().astype(np.uint8)
    if margin_px > 0:
        tool = cv2.dilate(tool, np.ones((2 * margin_px + 1, 2 * margin_px + 1), np.uint8))
    return tool > 0


def revealed_tissue(prev: Keyframe | None, kf: Keyframe, margin_px: int) -> torch.Tensor | None:
    """[H,W] bool: tissue pixels of keyframe `kf` that the previous keyframe `prev` showed under its instruments
    (their band of `margin_px`): what a moving instrument has just uncovered. None without an earlier `prev` of
    the same size (the first frame, reordered input, a new training resolution)."""
    if prev is None or not prev.t < kf.t or prev.tissue.shape != kf.tissue.shape:
        return None
    return torch.as_tensor(instrument_band(prev, margin_px), device=kf.tissue.device) & (kf.tissue > 0.5)


@torch.no_grad()
def hidden_seeds(kf: Keyframe, observed: tuple[torch.Tensor, torch.Tensor, torch.Tensor], alpha_all: torch.Tensor,
                 margin_px: int, stride: int, fill: Callable[[np.ndarray, np.ndarray], np.ndarray] = inpaint
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Completion of the instrument pixels of `kf` from the observed Gaussians' render (`observed`: rgb in their
    remembered colours, depth, alpha at the keyframe) and the whole model's alpha `alpha_all`; `fill(rgb, hole)`
    guesses the colours of the tissue never seen (`inpaint`, the harmonic fill, or a user's learned inpainter,
    recon.inpaint_model).

    Returns camera-frame points [M,3] and colours [M,3] (the frame's: 0..1, above 1 where the fall-off is
    divided out) of new Gaussians for the pixels nothing covers yet; the completed colour image [H,W,3] with its
    hole [H,W] (the instrument pixels no observation covers), to recolour the inferred Gaussians already there
    (`recolour_inferred`); and the completed surface [H,W] (camera depth on the dilated instrument pixels, 0
    elsewhere), to put them back on it (`place_inferred`)."""
    rgb, depth, alpha = observed
    band = instrument_band(kf, margin_px)
    a = alpha.cpu().numpy()
    memory = band & (a >= MEMORY_ALPHA)
    remembered = band & (a >= COLOUR_MEMORY_ALPHA)
    # The frame's colours are divided by the camera's fall-off (perception.falloff), above 1 towards the corners,
    # and the fill works on 8-bit images: the composite is scaled by its peak (cast directly, 1.2 wrapped to 0.2).
    live = kf.rgb.cpu().numpy()
    peak = max(1.0, float(live.max()))
    mem = unpremultiply(rgb.cpu().numpy(), a, peak)
    composite = np.where(remembered[..., None], mem, live)
    # Colour comes from the live tissue right up to the instrument (the margin is for depth, unreliable there),
    # and from the model's memory of tissue seen earlier: the hole left to guess is only what was never seen.
    tool = (kf.tissue < 0.5).cpu().numpy()
    hole = ~memory & tool
    scaled = (np.clip(composite / peak, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    colours = fill(scaled, ~remembered & tool).astype(np.float32) * (peak / 255.0)
    new = band & (alpha_all.cpu().numpy() < MEMORY_ALPHA)
    measured = kf.depth.cpu().numpy()
    known = (measured > 0) & ~band
    geo = np.where(known, measured, 0.0)
    geo[memory] = depth.cpu().numpy()[memory]
    filled = membrane_fill(geo, known | memory)
    surface = np.where(band, filled, 0.0)
    if not new.any():
        return np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32), colours, hole, surface
    grid = np.zeros_like(new)
    s = max(stride, INFERRED_STRIDE)
    grid[::s, ::s] = True
    ys, xs = np.nonzero(new & grid & (filled > 0))
    z = filled[ys, xs]
    K = kf.K
    pts = np.stack([(xs - K[0, 2]) / K[0, 0] * z, (ys - K[1, 2]) / K[1, 1] * z, z], -1).astype(np.float32)
    return pts, colours[ys, xs], colours, hole, surface


@torch.no_grad()
def place_inferred(model: GaussianModel, kf: Keyframe, surface: np.ndarray, means: torch.Tensor) -> int:
    """Move the inferred Gaussians of keyframe `kf` along their rays onto the completed `surface` (camera depth
    [H,W], 0 where there is none), from the keyframe's time on (their position knot); returns how many. `means`:
    the model's centres at the keyframe's time.

    The membrane is the surface the guesses are seeded on; completed again at every frame from the tissue around
    the instruments, it moves as that tissue does, and so do the guesses on it. Nothing else holds them there:
    behind an instrument a training step gives them only the gradients of their fringe (`Reconstructor.step`)."""
    rows = torch.nonzero(model.inferred).squeeze(1)
    if rows.numel() == 0:
        return 0
    u, v, z, inside = _project(model, kf, rows, means)
    dev = model.device
    target = torch.as_tensor(surface, dtype=means.dtype, device=dev)[v, u]
    hit = inside & (target > 0)
    rows, z, target = rows[hit], z[hit], target[hit]
    c = torch.as_tensor(kf.pose[:3, 3], dtype=means.dtype, device=dev)
    placed = c + (means[rows] - c) * (target / z)[:, None]
    model.fit_track("pos_knots", kf.t, rows, placed - model.params["means"].detach()[rows])
    return int(rows.numel())


def _project(model: GaussianModel, kf: Keyframe, rows: torch.Tensor, means: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pixel (u, v), depth z and in-image flag of the Gaussians `rows` in keyframe `kf` at its time (`means`: the
    model's centres then, when the caller has evaluated them already)."""
    means = (model.evaluate(kf.t)["means"] if means is None else means)[rows]
    R = torch.as_tensor(kf.pose[:3, :3], dtype=means.dtype, device=means.device)
    t = torch.as_tensor(kf.pose[:3, 3], dtype=means.dtype, device=means.device)
    pc = (means - t) @ R                     # world -> camera (R^T (p - t))
    z = pc[:, 2]
    K = kf.K
    u = torch.round(pc[:, 0] / z.clamp(min=1e-9) * K[0, 0] + K[0, 2]).long()
    v = torch.round(pc[:, 1] / z.clamp(min=1e-9) * K[1, 1] + K[1, 2]).long()
    h, w = kf.depth.shape
    inside = (z > 0) & (u >= 0) & (u < w) & (v >= 0) & (v < h)
    return u.clamp(0, w - 1), v.clamp(0, h - 1), z, inside


@torch.no_grad()
def recolour_inferred(model: GaussianModel, kf: Keyframe, colours: np.ndarray, hole: np.ndarray) -> int:
    """Give the inferred Gaussians that project into `hole` of keyframe `kf` the completed colour there, from the
    keyframe's time on (their colour knot, `GaussianModel.fit_track`: the frames already fitted keep the colours
    they were fitted with); returns how many. The guess improves as the memory around it grows, without being
    recomputed per output frame."""
    rows = torch.nonzero(model.inferred).squeeze(1)
    if rows.numel() == 0:
        return 0
    u, v, _, inside = _project(model, kf, rows)
    dev = model.device
    hit = inside & torch.as_tensor(hole, device=dev)[v, u]
    rows, u, v = rows[hit], u[hit], v[hit]
    target = torch.as_tensor(colours, device=dev)[v, u]
    base = SH_C0 * model.params["sh_dc"].detach()[rows] + 0.5
    model.fit_track("col_knots", kf.t, rows, target - base)
    return int(rows.numel())


@torch.no_grad()
def _inferred_where(model: GaussianModel, kf: Keyframe,
                    test: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
                    means: torch.Tensor | None = None) -> torch.Tensor:
    """[N] bool: inferred Gaussians inside keyframe `kf` for which `test(u, v, z)` (their pixel and depth) holds."""
    out = torch.zeros_like(model.inferred)
    rows = torch.nonzero(model.inferred).squeeze(1)
    if rows.numel() == 0:
        return out
    u, v, z, inside = _project(model, kf, rows, means)
    out[rows[inside & test(u, v, z)]] = True
    return out


def seen_inferred(model: GaussianModel, kf: Keyframe, margin_px: int) -> torch.Tensor:
    """[N] bool: inferred Gaussians that keyframe `kf` shows as tissue (they project onto a tissue pixel outside
    the dilated instrument band, with measured depth, and are not more than BEHIND_REL behind it)."""
    tissue = torch.as_tensor(~instrument_band(kf, margin_px), device=model.device)
    d = kf.depth
    return _inferred_where(model, kf, lambda u, v, z: tissue[v, u] & (d[v, u] > 0) & (z < d[v, u] * (1 + BEHIND_REL)))


def remembered_inferred(model: GaussianModel, kf: Keyframe, observed_alpha: torch.Tensor,
                        means: torch.Tensor) -> torch.Tensor:
    """[N] bool: inferred Gaussians that project onto a pixel of `kf` the observed Gaussians cover (their alpha
    `observed_alpha` at least MEMORY_ALPHA): tissue seen there earlier, so the guess is redundant there. Left in, a
    guess seeded before the tissue showed (in a strip the instrument uncovered within the band, where
    `seen_inferred` does not look) sits in front of the memory once the instrument covers it again. `means`: the
    model's centres at the keyframe's time (the render's, not evaluated again)."""
    return _inferred_where(model, kf, lambda u, v, z: observed_alpha[v, u] >= MEMORY_ALPHA, means)


def smooth_fill(img: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """`inpaint` of a field that is smooth by nature (the light's difference between the live image and the
    model), solved at most `SMOOTH_FILL_WIDTH` pixels wide and upsampled into the hole: it runs on every published
    view at the camera's resolution (640x512 with a tenth under the instruments: 0.04 s, 0.19 s at full width)."""
    h, w = hole.shape
    f = -(-w // SMOOTH_FILL_WIDTH)
    if f <= 1 or not hole.any():
        return inpaint(img, hole)
    size = (-(-w // f), -(-h // f))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    small_hole = cv2.resize(hole.astype(np.uint8), size, interpolation=cv2.INTER_AREA) > 0  # any pixel of the hole
    filled = cv2.resize(inpaint(small, small_hole), (w, h), interpolation=cv2.INTER_LINEAR)
    return np.where(hole[..., None], filled, img)


def unpremultiply(rgb: np.ndarray, alpha: np.ndarray, top: float = 1.0) -> np.ndarray:
    """Rendered colour (float, composited over black) divided by its alpha, where alpha > 0, at most `top`: the
    tissue's own colour at pixels the Gaussians cover only partly."""
    return np.clip(rgb / np.maximum(alpha, 1e-3)[..., None], 0.0, top) * (alpha > 0)[..., None]


def deoccluded(live: np.ndarray, render: np.ndarray, alpha: np.ndarray, mask: np.ndarray, inferred: np.ndarray
               ) -> np.ndarray:
    """The de-occluded view (uint8 HxWx3): the `live` image with its instrument pixels (`mask` > 0) taken from the
    model's `render` (uint8, composited over black; `alpha`; the remembered view, `ModelView.render`: each observed
    Gaussian in the colour it showed when last seen as tissue), and where the render is memory of tissue seen before
    moved to the live frame's light: plus the difference of the live image and the render on the tissue the model
    covers, filled in from around the instruments (`smooth_fill`). The memory holds the tissue as earlier frames
    showed it, while the light moves with the camera and the tissue the instrument holds is pulled.

    `inferred` is the inferred Gaussians' share of each pixel (`ModelView.inferred_weight`, 0..alpha). The memory's
    part of the render is taken as rendered: the observed Gaussians' colours were fitted through the composite over
    black, at the cover they have (about 0.97 on the synthetic scene's tissue), so the render is what the model
    predicts, and dividing it by alpha made seen-before tissue 3 grey levels too bright (README, Occluded tissue).
    The inferred Gaussians' part is un-premultiplied: they are seeded with the fill's colour, one every
    `INFERRED_STRIDE` pixels, and their partial cover would darken it."""
    tool = mask > 0
    rgb = render.astype(np.float32) / 255.0
    share = np.clip(inferred / np.maximum(alpha, 1e-3), 0.0, 1.0)[..., None]
    own = ((1.0 - share) * rgb + share * unpremultiply(rgb, alpha)) * 255.0
    known = ~tool & (alpha > 0.5)
    if tool.any() and known.any():
        diff = np.round(np.clip(live.astype(np.float32) - own + 128.0, 0.0, 255.0)).astype(np.uint8)
        own = own + (1.0 - share) * (smooth_fill(diff, ~known).astype(np.float32) - 128.0)
    return np.where(tool[..., None], np.clip(own + 0.5, 0.0, 255.0), live).astype(np.uint8)


def tint_inferred(rgb: np.ndarray, weight: np.ndarray, color: tuple[int, int, int] = (255, 0, 255),
                  strength: float = 0.5) -> np.ndarray:
    """`rgb` (uint8 HxWx3) blended towards `color` by `strength` x `weight` (HxW 0..1: the inferred Gaussians'
    share of each pixel), so a guess never reads as an observation."""
    k = (strength * np.clip(weight, 0.0, 1.0))[..., None]
    out = rgb.astype(np.float32) * (1 - k) + np.asarray(color, np.float32) * k
    return (out + 0.5).astype(np.uint8)
