"""The reconstruction, single-threaded: an explicit loop of frames in and training steps, as gsplat's
simple_trainer.

`Reconstructor.add_frame` validates a frame (out of order, missing pose/depth, NaN depth, pose jumps are
counted and skipped or handled), optionally refines its pose against the model, starts its deformation from
optical flow, grows the model where tissue is new and stores it. `Reconstructor.step(schedule)` runs one
training iteration on a frame sampled from the store; the `StepSchedule` says how (share of the newest
frames, learning-rate factor, densification, re-checks for new tissue). The live product wraps this in a
thread (`recon.online.OnlineTrainer`); `train_offline` and `train_stream` are the deterministic loops of
evaluation. Instrument pixels never enter a loss.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np
import torch

from surg3d_nodes.common.camera import crop_intrinsics, scale_intrinsics
from surg3d_nodes.common.geometry import backproject
from surg3d_nodes.perception.falloff import NO_FALLOFF, Falloff
from surg3d_nodes.recon.capacity import compact
from surg3d_nodes.recon.colour_fit import fit_colours
from surg3d_nodes.recon.completion import (
    MEMORY_ALPHA,
    REVEALED_DEPTH_REL,
    hidden_seeds,
    inpaint,
    place_inferred,
    recolour_inferred,
    remembered_inferred,
    revealed_tissue,
    seen_inferred,
)
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.detail import (
    FRAMES_PER_SIDE,
    GAIN_WINDOW_PX,
    MODEL_CHANGE_WEIGHT,
    confirmed_share,
    fill_uncovered,
    frame_detail,
    nearest_in_time,
    projection,
    shown_tissue,
    to_fill,
)
from surg3d_nodes.recon.flow_tracks import FlowTrackConfig, update_tracks
from surg3d_nodes.recon.gaussians import GaussianConfig, GaussianModel
from surg3d_nodes.recon.inpaint_model import OnnxInpainter
from surg3d_nodes.recon.keyframes import Keyframe, KeyframeStore, to_keyframe
from surg3d_nodes.recon.losses import (
    cover_loss,
    depth_loss,
    distortion_loss,
    normal_consistency_loss,
    photometric_loss,
    track_smoothness,
)
from surg3d_nodes.recon.model_clock import ModelClock
from surg3d_nodes.recon.pose_refine import PoseRefineConfig, PoseRefiner
from surg3d_nodes.recon.regions import Region, region_box, region_pixels
from surg3d_nodes.recon.render import RenderCamera, render_evaluated, resolve_backend
from surg3d_nodes.recon.render.camera import EPS2D
from surg3d_nodes.recon.sparse_adam import DictAdam
from surg3d_nodes.recon.strategy import DefaultStrategy, Strategy

# Frame detail: Gaussian displacements are rendered as colours 0.5 + d / MOTION_SPAN_M, within 0..1 up to 5 cm.
MOTION_SPAN_M = 0.1
# A view renders the box about the operator's regions finer and averages it (`ModelView._regions_averaged`) where the
# regions are trained at least this many times finer than its pixels; at most this many render pixels a view pixel.
SUPERSAMPLE_FROM = 1.5
MAX_SUPERSAMPLE = 4


@dataclass
class Snapshot:
    """A consistent copy of the model for publishing (world frame, at model time `time_s`)."""

    points: np.ndarray         # [N,3] float32
    colors: np.ndarray         # [N,3] float32 0..1
    opacities: np.ndarray      # [N] float32
    scales: np.ndarray         # [N] float32 largest axis, metres
    inferred: np.ndarray       # [N] bool: completes tissue no camera has seen (recon.completion)
    time_s: float
    stamp_ns: int
    iteration: int


@dataclass
class TrainerStats:
    """Counters and recent values for the status topic."""

    state: str = "idle"
    frames_received: int = 0
    frames_used: int = 0
    frames_skipped: int = 0
    skip_reasons: dict = field(default_factory=dict)
    keyframes: int = 0
    num_gaussians: int = 0
    iterations: int = 0                  # Adam steps
    colour_fit_steps: int = 0            # what the colour fits cost, in training steps (recon.colour_fit)
    iterations_per_second: float = 0.0
    loss: float = 0.0
    loss_color: float = 0.0
    loss_depth: float = 0.0
    psnr_recent: float = 0.0
    inferred_share: float = 0.0          # fraction of the Gaussians that complete unseen tissue (recon.completion)
    psnr_regions: float = 0.0            # masked PSNR inside the operator's regions on the newest frame (0: none)
    region_steps: int = 0                # steps on a frame's box about the regions, finer (Reconstructor.step)
    latency_ms: float = 0.0
    last_frame_stamp: int = 0
    flow_tracked: int = 0                # Gaussians moved by scene flow at the newest frame
    flow_frames: int = 0                 # frames whose deformation started from the flow
    frames_past: int = 0                 # used frames older than the newest (reordered, a looping replay)
    time_gaps_shortened: int = 0         # pauses longer than max_time_gap_s
    pose_refined: int = 0                # frames whose pose a refinement corrected
    pose_refine_rejected: int = 0        # refinements rejected (no overlap, not better, too large, NaN)
    pose_refine_last: str = ""           # outcome of the newest refinement
    pose_correction_mm: float = 0.0      # mean size of the accepted corrections
    pose_correction_deg: float = 0.0
    errors: int = 0                      # unexpected failures of the training thread (it goes on after each)
    last_error: str = ""                 # the newest one, with its location
    backend: str = ""
    device: str = ""


@dataclass(frozen=True)
class StepSchedule:
    """How one training step runs (the live loop and the offline loop differ only in this)."""

    recent_fraction: float = 0.0   # probability of training on one of the newest frames (else any keyframe)
    lr_scale: float = 1.0          # factor on the position learning rates (offline: exponential decay)
    densify: bool = True           # let the densification strategy refine when due
    grow_every: int = 0            # every this many steps, grow where the newest frame is unexplained (0: never)
    keep_past: bool = False        # refinements change the model from the newest frame on only (strategy)

    @classmethod
    def live(cls, cfg: TrainerConfig) -> StepSchedule:
        """The live schedule: newest frames favoured, constant rates, densification and growth throughout; the
        frames already fitted keep the Gaussians they were fitted with."""
        return cls(cfg.recent_fraction, 1.0, True, cfg.add_check_every, True)

    @classmethod
    def offline(cls, cfg: TrainerConfig, i: int, iterations: int) -> StepSchedule:
        """Step `i` of a fixed budget over a fixed set of frames: uniform sampling, position rates decaying
        to `lr_final_factor`, densification until `refine_stop_fraction` of the budget."""
        return cls(0.0, cfg.lr_final_factor ** (i / max(1, iterations - 1)), i < cfg.refine_stop_fraction * iterations)


def pick_device(device: str) -> torch.device:
    """`auto` -> cuda when available else cpu; `cuda` without CUDA raises a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch has no CUDA device (use 'cpu' or 'auto')")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return torch.device(device)


def configure_torch_threads(cfg: TrainerConfig) -> None:
    """Per-process torch settings for training on this thread."""
    # Tiny transmittances/alphas would otherwise hit denormal floats, which are ~10x slower on CPU.
    torch.set_flush_denormal(True)
    if cfg.num_threads > 0:
        torch.set_num_threads(cfg.num_threads)


@dataclass
class ModelView:
    """A frozen copy of the model's parameters at one model time, renderable without the trainer's lock."""

    model: GaussianModel
    params: dict[str, torch.Tensor]
    time_s: float
    stamp_ns: int
    iteration: int
    reference: Keyframe | None        # the newest frame: default intrinsics and the training resolution
    backend: str
    frames: tuple[Keyframe, ...] = ()  # the stored frames, for the frame detail of views (recon.detail)
    detail_window_s: float = 0.0
    falloff: Falloff = NO_FALLOFF      # the camera's brightness fall-off, applied to its views
    regions: tuple[Region, ...] = ()   # the operator's regions of interest
    region_focal: float = 0.0          # px: the focal length of the finest box the regions are trained in

    def _alive(self) -> dict[str, torch.Tensor]:
        """The Gaussians alive at the view's time, evaluated then (plus their `inferred` flags)."""
        with torch.no_grad():
            g = self.model.evaluate(self.time_s, None, params=self.params)
        g["inferred"] = self.params["inferred"]
        alive = self.model.alive(self.time_s, self.params)
        return g if alive is None else {k: v[alive] for k, v in g.items()}

    def snapshot(self) -> Snapshot:
        """Points, colours, opacities and largest scales of the Gaussians alive at the view's time."""
        g = self._alive()
        return Snapshot(g["means"].cpu().numpy().astype(np.float32),
                        g["colors"].clamp(0, 1).cpu().numpy().astype(np.float32),
                        g["opacities"].cpu().numpy().astype(np.float32),
                        g["scales"].max(-1).values.cpu().numpy().astype(np.float32),
                        g["inferred"].cpu().numpy(), self.time_s, self.stamp_ns, self.iteration)

    def gaussians(self, for_display: bool = False) -> dict[str, np.ndarray]:
        """Every Gaussian alive at the view's time (float32, world frame): means [N,3], quats [N,4] (w x y z, as
        trained, not normalised), scales [N,3] (m; surfels get a zero third axis), colors [N,3] 0..1 (view-
        independent part), opacities [N].

        `for_display`: the scales take in the training pixels' low-pass, so that a viewer rendering at any
        resolution shows what the trainer renders. Every backend adds EPS2D px^2 to each projected covariance
        at the training resolution, and the Gaussians are fitted through it (many are far smaller than a
        training pixel); a viewer with a finer image would show them as separate specks. The same low-pass as
        a 3D isotropic variance, EPS2D * (z / f)^2 at the Gaussian's depth z in the newest frame's camera
        (focal f px at the training resolution), adds to every axis: the covariance R S^2 R^T + s^2 I has the
        same rotation and scales sqrt(S^2 + s^2)."""
        g = self._alive()
        out = {k: g[k].cpu().numpy().astype(np.float32) for k in ("means", "quats", "scales", "colors", "opacities")}
        if out["scales"].shape[1] == 2:
            out["scales"] = np.pad(out["scales"], ((0, 0), (0, 1)))
        out["colors"] = out["colors"].clip(0, 1)
        ref = self.reference
        if for_display and ref is not None:
            R, t = ref.pose[:3, :3], ref.pose[:3, 3]
            z = np.abs((out["means"] - t) @ R[:, 2])
            var = EPS2D * (z / float(ref.K[0, 0])) ** 2
            out["scales"] = np.sqrt(out["scales"] ** 2 + var[:, None]).astype(np.float32)
        return out

    def render(self, pose: np.ndarray, width: int | None = None, height: int | None = None,
               K: np.ndarray | None = None, detail: bool = False, fill: bool = False, remembered: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render (rgb uint8 HxWx3, depth float32 m with NaN where empty, alpha float32) at `pose`.

        K (ROS convention) defaults to the newest frame's intrinsics scaled to width x height. A view finer
        than the training images is rendered with the training pixel's low-pass (`RenderCamera.eps2d`): the
        Gaussians were fitted through it, and many are far smaller than a training pixel, so with the view's own
        pixel low-pass they showed as separate specks with gaps between them (a 320x256 view of a model trained
        at 80x64: 26.6 dB; rendered at 80x64 and upsampled, as before: 29.2 dB; README, Steering).

        `detail`: add the frame detail of the stored frames within `detail_window_s` of the view's time
        (recon.detail): measured texture the Gaussians have not fitted yet. `fill`: the tissue-only view completed:
        the pixels beside the model's cover that no frame saw filled in from those around them (recon.detail,
        `to_fill`), a guess that `inferred_weight` marks.

        `remembered`: each observed Gaussian in the colour it had when a frame last showed its centre as tissue
        (`GaussianModel.remembered_at` the view's time), the inferred ones as they are: the tissue an instrument
        hides as it was seen, for the de-occluded view (recon.completion.deoccluded); with `detail`, from the
        frames around the view's time but not at it (a frame at the view's time shows the instrument there).

        The model holds the tissue's own colour; the view is as the endoscope sees it, darkening towards its
        corners by the configured fall-off (perception.falloff).
        """
        width, height, K = self._intrinsics(width, height, K)
        paint = None
        if remembered:
            flags, seen = self.params["inferred"][:, None], self.model.remembered_at(self.time_s, self.params)
            paint = lambda g: torch.where(flags, g["colors"], seen)  # noqa: E731
        rgb, d, a = self._render(pose, width, height, K, paint=paint)
        rgb = self._regions_averaged(pose, width, height, K, rgb, paint)
        d[a < 0.5] = np.nan
        measured = None
        if detail and self.detail_window_s > 0:
            add, add_depth, measured = self._detail(pose, K, d, rgb, own_time=not remembered)
            rgb, d = rgb + add, d + add_depth
        if fill:
            rgb = fill_uncovered(rgb, a, measured)
        if not self.falloff.is_identity:
            rgb = rgb * self.falloff.gain(K, width, height)[..., None]
        return (np.clip(rgb, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8), d, a

    def _regions_averaged(self, pose: np.ndarray, width: int, height: int, K: np.ndarray, rgb: np.ndarray,
                          paint: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None) -> np.ndarray:
        """`rgb` with the box about the operator's regions rendered at the finer scale the regions are trained at
        and averaged over each of the view's pixels, where the view is coarser than that: there the Gaussians hold
        detail finer than the view's pixels, which a render at the view's size samples at their centres (aliasing;
        the steering bench, half scale, three seeds: inside the region at the training size 38.51 -> 40.11 dB,
        README)."""
        if not self.regions or self.region_focal < SUPERSAMPLE_FROM * float(K[0, 0]):
            return rgb
        box = region_box(self.regions, pose, K, width, height)
        if box is None:
            return rgb
        x0, y0, w, h = box
        f = min(MAX_SUPERSAMPLE, round(self.region_focal / float(K[0, 0])))
        fine, _, _ = self._render(pose, w * f, h * f, scale_intrinsics(crop_intrinsics(K, x0, y0), f, f), paint=paint)
        out = rgb.copy()
        out[y0:y0 + h, x0:x0 + w] = cv2.resize(fine, (w, h), interpolation=cv2.INTER_AREA)
        return out

    def _detail(self, pose: np.ndarray, K: np.ndarray, depth: np.ndarray, view_rgb: np.ndarray,
                own_time: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """[H,W,3] float: what the frames nearest the view's time, re-projected into it along the model's motion,
        add to its render `view_rgb` (recon.detail); [H,W] float (m): what their measured depth adds to its
        rendered `depth` (each frame's depth residual, measured minus rendered, taken along the view's rays: the
        frames are near the view); and [H,W] bool: the pixels some frame saw. Without `own_time`, a frame at the
        view's time is passed over for those around it: the remembered view is for what that frame's instruments
        hide, which it does not show."""
        frames = self.frames if own_time else [f for f in self.frames if f.t != self.time_s]
        near = nearest_in_time(frames, self.time_s, self.detail_window_s, FRAMES_PER_SIDE)
        h, w = depth.shape
        images, renders, oks, weights, depth_parts = [], [], [], [], []
        for kf, weight in near:
            rgb_k, d_k, a_k = self._render(kf.pose, kf.camera.width, kf.camera.height, kf.K, time_s=kf.t)
            image_k = kf.rgb.cpu().numpy()
            seen = shown_tissue(image_k, rgb_k, a_k, kf.tissue.cpu().numpy() > 0.5)
            both = np.where(seen[..., None], np.concatenate([image_k, rgb_k], -1), np.nan)
            motion = self._motion(pose, w, h, K, kf.t)
            proj = projection(kf.pose, kf.K, np.where(a_k > 0.5, d_k, np.nan), pose, K, depth, motion)
            values, ok = proj.sample(both)
            images.append(values[..., :3])
            renders.append(values[..., 3:])
            oks.append(ok)
            weights.append(weight)
            if kf.has_depth:
                measured_k = kf.depth.cpu().numpy()
                residual = np.where(seen & (measured_k > 0), measured_k - d_k, np.nan)[..., None]
                depth_parts.append((*proj.sample(residual), weight))
        # A frame predicts the view as its image plus the model's change from it to the view, as far as the
        # images confirm that change, averaged with its image alone (recon.detail.MODEL_CHANGE_WEIGHT; one frame
        # alone: in full).
        trust = (MODEL_CHANGE_WEIGHT * confirmed_share(images, renders, oks, weights, GAIN_WINDOW_PX)[..., None]
                 if len(near) >= 2 else np.ones((h, w, 1), np.float32))
        parts = [(np.where(ok[..., None], (im - re) + (1.0 - trust) * (re - view_rgb), 0.0).astype(np.float32), ok,
                  wt) for im, re, ok, wt in zip(images, renders, oks, weights, strict=True)]
        own = len(near) == 1 and near[0][0].t == self.time_s
        add_depth = (frame_detail(depth_parts, depth.shape, own, channels=1, noisy=True)[..., 0] if depth_parts
                     else np.zeros(depth.shape, np.float32))
        return (frame_detail(parts, depth.shape, own), add_depth,
                np.any(oks, axis=0) if oks else np.zeros(depth.shape, bool))

    def inferred_weight(self, pose: np.ndarray, width: int | None = None, height: int | None = None,
                        K: np.ndarray | None = None, fill: bool = False) -> np.ndarray:
        """float32 HxW 0..1: how much of each pixel of `render` the inferred Gaussians make (recon.completion),
        and with `fill` 1 where the view fills in what the model does not cover (recon.detail.to_fill, counting the
        pixels a frame saw too), so a view can mark the guessed tissue."""
        flags = self.params["inferred"]
        weight, _, alpha = self._render(pose, *self._intrinsics(width, height, K),
                                        paint=lambda g: flags.to(g["colors"])[:, None].expand(-1, 3))
        return np.where(fill & to_fill(alpha), 1.0, weight[..., 0]).astype(np.float32)

    def _motion(self, pose: np.ndarray, width: int, height: int, K: np.ndarray, time_s: float) -> np.ndarray:
        """[H,W,3] m: how far the model's surface each pixel of the view sees (at the view's time) is displaced
        at `time_s` (world frame): the Gaussians' displacements rendered as colours (offset and scaled into the
        renderers' 0..1, then un-premultiplied)."""
        later = self.model.evaluate(time_s, None, params=self.params)["means"]
        rgb, _, a = self._render(pose, width, height, K,
                                 paint=lambda g: 0.5 + (later - g["means"]) / MOTION_SPAN_M)
        return ((rgb - 0.5 * a[..., None]) / np.maximum(a, 1e-6)[..., None] * MOTION_SPAN_M).astype(np.float32)

    def _intrinsics(self, width: int | None, height: int | None, K: np.ndarray | None
                    ) -> tuple[int, int, np.ndarray]:
        """The view's size and K: K defaults to the newest frame's, scaled to the size (default: its own)."""
        ref = self.reference
        if ref is None and K is None:
            raise RuntimeError("render_view: no frame received yet, so no intrinsics (pass K)")
        if K is None:
            width = width or ref.camera.width
            height = height or ref.camera.height
            K = scale_intrinsics(ref.K, width / ref.camera.width, height / ref.camera.height)
        if width is None or height is None:
            raise ValueError("render_view: width and height are required with an explicit K")
        return width, height, K

    def _render(self, pose: np.ndarray, width: int, height: int, K: np.ndarray, time_s: float | None = None,
                paint: Callable[[dict[str, torch.Tensor]], torch.Tensor] | None = None
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Colour (float, at least 0: the tissue's own colour, which the fall-off may take above 1; with `paint`,
        the per-Gaussian values it makes of the evaluated Gaussians instead, 0..1), depth and alpha (float32,
        depth not yet masked) at `pose`, at model time `time_s` (default: the view's; see `render`)."""
        t = self.time_s if time_s is None else time_s
        ref = self.reference
        finer = 1.0 if ref is None else float(K[0, 0]) / float(ref.K[0, 0])
        device = next(iter(self.params.values())).device
        cam = RenderCamera.from_ros(pose, K, width, height, device=device, eps2d=EPS2D * max(1.0, finer) ** 2)
        with torch.no_grad():
            g = self.model.evaluate(t, cam.center(), params=self.params)
            if paint is not None:
                g["colors"] = paint(g)
            # Only the Gaussians alive then: the retired and the unborn are invisible, and rendering them cost
            # time and could change a pixel's summation order.
            alive = self.model.alive(t, self.params)
            if alive is not None:
                g = {k: v[alive] for k, v in g.items()}
            if g["means"].shape[0] == 0:
                z = np.zeros((height, width), np.float32)
                return np.zeros((height, width, 3), np.float32), z.copy(), z
            rgb, depth, alpha, _ = render_evaluated(g, cam, self.backend)
        rgb = rgb.clamp(0, None if paint is None else 1).cpu().numpy()
        return rgb, depth.cpu().numpy().astype(np.float32), alpha.cpu().numpy().astype(np.float32)

    def export_ply(self, path):
        """Write a 3DGS PLY of the model at the view's time; returns the path."""
        from surg3d_nodes.recon.io.ply import save_ply

        return save_ply(path, self.model, self.time_s, self.params)


class Reconstructor:
    """The deformable Gaussian reconstruction, driven by one thread (see the module docstring)."""

    def __init__(self, cfg: TrainerConfig | None = None, strategy: Strategy | None = None):
        cfg = TrainerConfig() if cfg is None else TrainerConfig(**asdict(cfg))
        self.device = pick_device(cfg.device)
        if cfg.image_scale <= 0:
            cfg.image_scale = 1.0 if self.device.type == "cuda" else 0.25
        self.cfg = cfg
        self.backend = resolve_backend(cfg.backend, self.device, cfg.primitive)
        self.strategy: Strategy = strategy if strategy is not None else DefaultStrategy.from_config(cfg)
        self.rng = np.random.default_rng(cfg.seed)
        c = cfg
        self.model = GaussianModel(GaussianConfig(
            sh_degree=c.sh_degree, knot_spacing=c.knot_spacing_s, knots_at_frames=c.knots_at_frames,
            max_knots=c.max_knots,
            deform_scale=c.deform_scale, init_opacity=c.init_opacity, init_scale=c.init_scale,
            primitive=c.primitive), self.device)
        self.store = KeyframeStore(c.recent_window, c.keyframe_every, c.max_keyframes, self.rng)
        self.stats = TrainerStats(backend=self.backend, device=str(self.device))
        self.skips: Counter[str] = Counter()
        self.clock = ModelClock(c.max_time_gap_s)
        self.live_stamp_ns: int | None = None       # the newest frame by arrival (a loop restarts it)
        self.live_pose: np.ndarray | None = None    # pose of that frame
        self.track_ref: Keyframe | None = None     # the newest frame the flow tracks were updated at
        self.track_anchor: Keyframe | None = None  # the frame whose direct flow corrects the chain's drift
        self.pose_refiner = PoseRefiner(PoseRefineConfig(
            mode=c.refine_pose_mode, iterations=c.refine_pose_iterations, lr=c.refine_pose_lr,
            depth_weight=c.refine_pose_depth_weight, max_trans_m=c.refine_pose_max_trans_m,
            max_rot_deg=c.refine_pose_max_rot_deg))
        self._jumps = 0
        self.scene_depth = 0.0
        self.optimizer: DictAdam | None = None
        self.strategy.reset(0, self.device)
        self._iter_times: deque[float] = deque(maxlen=50)
        self._since_check = 0
        self._region_turn = 0.0
        self.on_frame: Callable[[], None] | None = None   # called after a frame is in the model
        self.regions: tuple[Region, ...] = ()        # the operator's regions of interest (replaced whole)
        self.falloff()                                # a malformed setting fails here, not at the first frame
        # The colours of the tissue never seen: a user's learned inpainter (InpaintModelError here, named), else the
        # harmonic fill.
        self.fill_unseen: Callable[[np.ndarray, np.ndarray], np.ndarray] = (
            OnnxInpainter(c.inpaint_model, c.inpaint_model_output) if c.inpaint_model else inpaint)

    # ------------------------------------------------------------------ reading
    def falloff(self) -> Falloff:
        """The camera's brightness fall-off (`falloff`): frames are divided by it, the camera's views show it.
        ValueError unless the setting is two finite numbers."""
        b = tuple(float(v) for v in self.cfg.falloff)
        if len(b) != 2 or not all(math.isfinite(v) for v in b):
            raise ValueError(f"falloff must be two finite numbers [b1, b2], got {list(self.cfg.falloff)}")
        return Falloff(*b)

    def time_of(self, stamp_ns: int) -> float:
        """Model time (seconds since the first used frame, long pauses shortened) of a stamp."""
        return self.clock.time_of(stamp_ns)

    def latest_time(self) -> float:
        """Model time of the newest frame by arrival (0 before any)."""
        return self.time_of(self.live_stamp_ns) if self.live_stamp_ns is not None else 0.0

    def view(self, time_s: float | None = None) -> ModelView:
        """A frozen copy of the model at model time `time_s` (default: the newest frame)."""
        t = self.latest_time() if time_s is None else float(time_s)
        frames = tuple(self.store.stored())
        focal = max((float(k.region.K[0, 0]) for k in frames if k.region is not None), default=0.0)
        return ModelView(self.model, self.model.detached_copy(), t, self.live_stamp_ns or 0, self.stats.iterations,
                         self.store.newest(), self.backend, frames, self.cfg.detail_window_s, self.falloff(),
                         self.regions, focal)

    def render_view(self, pose: np.ndarray, time_s: float | None = None, width: int | None = None,
                    height: int | None = None, K: np.ndarray | None = None, detail: bool = False,
                    fill: bool = False, remembered: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """`ModelView.render` of the model at `time_s`."""
        return self.view(time_s).render(pose, width, height, K, detail, fill, remembered)

    def set_regions(self, regions: tuple[Region, ...]) -> None:
        """The operator's regions of interest, weighted in the colour loss from the next step on and trained finer
        from the next frame on (`_region_frame`); an empty tuple restores the default training. The stored frames'
        boxes about the regions before are dropped: they frame what the operator no longer asks for."""
        self.regions = tuple(regions)
        for kf in self.store.stored():
            kf.region = None
        if not self.regions:
            self.stats.psnr_regions = 0.0

    def steps_spent(self) -> int:
        """The training work done so far, in steps: Adam steps plus what the colour fits cost."""
        return self.stats.iterations + self.stats.colour_fit_steps

    def get_stats(self) -> TrainerStats:
        """A copy of the statistics."""
        s = TrainerStats(**{k: getattr(self.stats, k) for k in TrainerStats.__dataclass_fields__})
        s.skip_reasons = dict(self.skips)
        s.num_gaussians = self.model.num_gaussians
        s.keyframes = len(self.store)
        return s

    # ------------------------------------------------------------------ frames
    def count_skip(self, reason: str) -> None:
        """Count a frame that was not used, by reason."""
        self.skips[reason] += 1
        self.stats.frames_skipped += 1

    def add_frame(self, f: Frame, t_in: float | None = None, track: bool = True, steps: int | None = None) -> bool:
        """Validate, convert and store one frame; grow the model where its tissue is unexplained; with
        `track`, start its deformation from the flow since the last frame that was tracked; fit its colours
        (`colour_fit_iterations`, within half of the `steps` the frame gets, None: no limit). `t_in` is when it
        arrived (monotonic s; latency). Returns whether the frame was used (else it is counted as skipped)."""
        t_in = time.monotonic() if t_in is None else t_in
        reason = self._validate(f)
        if reason is not None:
            self.count_skip(reason)
            return False
        kf = to_keyframe(f, self.cfg.image_scale, self.time_of(f.stamp_ns), self.device, self.falloff())
        if f.depth is not None and not kf.has_depth:
            self.skips["depth_all_invalid"] += 1
        if self.model.num_gaussians == 0 and not kf.has_depth:
            self.count_skip("no_depth_for_init")
            return False
        if self.optimizer is None:
            valid = kf.depth[kf.depth > 0]
            self.scene_depth = float(valid.median()) if valid.numel() else 0.05
            self._make_optimizer()
        stamp = int(f.stamp_ns)
        if self.clock.newest_ns is None or stamp > self.clock.newest_ns:
            self.stats.time_gaps_shortened += int(self.clock.advance(stamp))
        else:
            self.stats.frames_past += 1
        kf.t = self.time_of(stamp)
        if self.cfg.refine_pose_iterations > 0:
            kf = self._refine_pose(kf)
        kf.region = self._region_frame(f, kf)
        self.live_stamp_ns = stamp
        self.live_pose = kf.pose
        if self.model.ensure_time(kf.t):
            self.optimizer.grow_knots(self.model.num_knots)
            for j in self.model.simplify_knots(self.cfg.recent_knots, {"pos_knots": self.scene_depth}):
                self.optimizer.drop_knot(j)
        ref = self.track_ref or (self.store.recent[-1] if self.store.recent else None)
        if self.cfg.flow_tracks and track and kf.has_depth and ref is not None and ref.has_depth:
            self.stats.flow_tracked = update_tracks(self.model, ref, kf, self.scene_depth,
                                                    FlowTrackConfig(depth_motion=self.cfg.flow_depth_motion,
                                                                    hidden_motion=self.cfg.flow_hidden_motion),
                                                    anchor=self.track_anchor)
            self.stats.flow_frames += int(self.stats.flow_tracked > 0)
        if track and kf.has_depth and (ref is None or kf.t > ref.t):
            self.track_ref = kf        # the tracks pass through the model's positions at this frame
            anchor = self.track_anchor     # kept until a frame comes flow_anchor_s after it (or before it: a loop)
            if anchor is None or not anchor.t < kf.t < anchor.t + self.cfg.flow_anchor_s:
                self.track_anchor = kf
        if kf.has_depth:
            self.retire_inferred(kf)
            prev = self.store.recent[-1] if self.store.recent and self.cfg.complete_hidden else None
            self.grow_unexplained(kf, use_error=False,
                                  revealed=revealed_tissue(prev, kf, self.cfg.complete_margin_px))
            if self.cfg.complete_hidden:
                self.complete_hidden(kf)
        self.fit_colours(kf, self.cfg.colour_fit_iterations if steps is None else steps // 2 - 1)
        self.remember_shown(kf)
        self.stats.inferred_share = self.model.inferred_share()
        self.stats.frames_used += 1
        self.stats.last_frame_stamp = stamp
        self.stats.latency_ms = (time.monotonic() - t_in) * 1000.0
        self.store.add(kf, self.stats.frames_used - 1)
        if self.on_frame is not None:   # the frame is wholly in: a view taken now renders with it
            self.on_frame()
        return True

    def _region_frame(self, f: Frame, kf: Keyframe) -> Keyframe | None:
        """The box of `f` about the operator's regions as a frame of its own, at the finest scale (at most the
        camera's own) that keeps it within the training frame's pixel count, at `kf`'s time and pose; None without
        regions in view or where that scale is no finer than the training's."""
        if not self.regions:
            return None
        cam = f.camera
        box = region_box(self.regions, kf.pose, cam.intrinsics(), cam.width, cam.height)
        if box is None:
            return None
        scale = min(1.0, math.sqrt(kf.camera.width * kf.camera.height / (box[2] * box[3])))
        if scale <= self.cfg.image_scale * 1.05:
            return None
        # With the training pixel's low-pass, as the views finer than the training images render (ModelView._render):
        # with its own, finer one the box taught the Gaussians footprints that every view blurred (the steering
        # bench, one run: the region's PSNR at the camera's resolution -6.35 dB, against +0.93 with this one).
        region = to_keyframe(f, scale, kf.t, self.device, self.falloff(), box,
                             EPS2D * (scale / self.cfg.image_scale) ** 2)
        region.set_pose(kf.pose)
        return region if region.has_depth else None

    def _validate(self, f: Frame) -> str | None:
        if f.rgb is None or f.rgb.ndim != 3 or f.rgb.shape[2] != 3:
            return "bad_image"
        h, w = f.rgb.shape[:2]
        if f.camera is None or (f.camera.width, f.camera.height) != (w, h):
            return "bad_camera"
        stamp = int(f.stamp_ns)
        stored = self.store.stored()
        if self.clock.first_ns is not None and stamp <= self.clock.newest_ns:
            # Older than the newest (reordered input, a looping replay): the deformable model covers that
            # time, so the frame trains at its own time unless it precedes the model or repeats a frame.
            if stamp < self.clock.first_ns:
                return "out_of_order"
            if any(k.stamp_ns == stamp for k in stored):
                return "duplicate_stamp"
        if f.pose is None or np.asarray(f.pose).shape != (4, 4) or not np.all(np.isfinite(f.pose)):
            return "no_pose"
        if f.depth is not None and f.depth.shape != (h, w):
            return "bad_depth_shape"
        if f.mask is not None and f.mask.shape != (h, w):
            return "bad_mask_shape"
        ref = min(stored, key=lambda k: abs(k.stamp_ns - stamp), default=None)
        if ref is not None:
            # Compared with the frame nearest in time: after a loop that is the frame of the same moment.
            d = np.linalg.inv(ref.pose) @ np.asarray(f.pose, dtype=np.float64)
            ang = math.degrees(math.acos(float(np.clip((np.trace(d[:3, :3]) - 1) / 2, -1, 1))))
            if np.linalg.norm(d[:3, 3]) > self.cfg.pose_jump_m or ang > self.cfg.pose_jump_deg:
                self._jumps += 1
                if self._jumps < self.cfg.pose_jump_accept_after:
                    return "pose_jump"
                self.skips["pose_jump_accepted"] += 1
        self._jumps = 0
        return None

    def _refine_pose(self, kf: Keyframe) -> Keyframe:
        """The keyframe with its pose corrected against the model (unchanged when the refinement is
        rejected; hand_eye mode also re-poses the stored frames); the first frame is never refined: its pose
        is the model's gauge."""
        st = self.stats
        with torch.no_grad():
            g = self.model.evaluate(kf.t, kf.camera.center())
        res = self.pose_refiner.refine(g, kf.camera, kf.pose, kf.rgb, kf.depth, kf.tissue, self.scene_depth,
                                       self.backend)
        if res.status == "anchor":
            return kf
        st.pose_refine_last = res.status
        if not res.accepted:
            st.pose_refine_rejected += 1
            return kf
        st.pose_refined += 1
        st.pose_correction_mm += (res.trans_m * 1e3 - st.pose_correction_mm) / st.pose_refined
        st.pose_correction_deg += (res.rot_deg - st.pose_correction_deg) / st.pose_refined
        kf.raw_pose = kf.pose
        kf.set_pose(kf.raw_pose @ res.correction)
        if self.cfg.refine_pose_mode == "hand_eye":
            # One correction model for all frames: every refined stored frame moves on to the newest estimate.
            for k in self.store.stored():
                if k.raw_pose is not None:
                    k.set_pose(k.raw_pose @ self.pose_refiner.correction_of(k.raw_pose))
        return kf

    # ------------------------------------------------------------------ model growth
    @torch.no_grad()
    def room(self, wanted: int) -> int:
        """Room for `wanted` new Gaussians within `max_gaussians`. Retired Gaussians, kept only for the frames
        already fitted, are dropped to make it (the longest retired first): the past loses detail before the
        present goes short of Gaussians."""
        m = self.model
        drop = m.oldest_retired(m.num_gaussians + wanted - self.cfg.max_gaussians)
        if drop.numel():
            keep = torch.ones(m.num_gaussians, dtype=torch.bool, device=m.device)
            keep[drop] = False
            m.select(keep)
            self.optimizer.select(keep)
            self.strategy.reset(m.num_gaussians, self.device)
        return self.cfg.max_gaussians - m.num_gaussians

    @torch.no_grad()
    def grow_unexplained(self, kf: Keyframe, use_error: bool, revealed: torch.Tensor | None = None) -> int:
        """Back-project tissue pixels the model does not explain into new Gaussians; returns how many. Pixels of
        `revealed` (tissue an instrument has just uncovered, `recon.completion.revealed_tissue`) count as unexplained
        where the observed Gaussians cover them less than `MEMORY_ALPHA` and the measured depth agrees with the
        model's (`REVEALED_DEPTH_REL`): the guesses there give way to what the frame shows."""
        if self.model.num_gaussians - int(self.model.retired().sum()) >= self.cfg.max_gaussians:
            return 0                      # full of Gaussians alive now: nothing to make room with
        valid = (kf.depth > 0) & (kf.tissue > 0.5)
        if self.model.num_gaussians == 0:
            want = valid
            stride = self.cfg.init_stride
        else:
            g = self.model.evaluate(kf.t, kf.camera.center())
            rgb, depth, alpha, _ = render_evaluated(g, kf.camera, self.backend)
            bad = alpha < self.cfg.add_alpha_threshold
            if revealed is not None and bool(revealed.any()):
                observed = dict(g, opacities=g["opacities"] * (~self.model.inferred).to(g["opacities"]))
                _, _, observed_alpha, _ = render_evaluated(observed, kf.camera, self.backend)
                bad |= (revealed & (observed_alpha < MEMORY_ALPHA)
                        & ((depth - kf.depth).abs() < REVEALED_DEPTH_REL * kf.depth))
            if use_error:
                cerr = (rgb - kf.rgb).abs().mean(-1)
                derr = (depth - kf.depth).abs() / kf.depth.clamp(min=1e-6)
                bad |= (cerr > self.cfg.add_color_error) & (derr > self.cfg.add_depth_error_rel)
            want = valid & bad
            stride = self.cfg.add_stride
        if stride > 1:
            grid = torch.zeros_like(want)
            grid[::stride, ::stride] = True
            want &= grid
        ys, xs = torch.nonzero(want, as_tuple=True)
        if ys.numel() == 0:
            return 0
        room = self.room(int(ys.numel()))
        if room <= 0:
            return 0
        if ys.numel() > room:
            pick = torch.as_tensor(self.rng.choice(ys.numel(), room, replace=False), device=ys.device)
            ys, xs = ys[pick], xs[pick]
        pts_c = backproject(kf.depth.cpu().numpy(), kf.K)[ys.cpu().numpy(), xs.cpu().numpy()]
        pts_w = pts_c @ kf.pose[:3, :3].T + kf.pose[:3, 3]
        cols = kf.rgb[ys, xs].cpu().numpy()
        rows = self.model.new_gaussians(pts_w, cols, kf.t, camera_rotation=kf.pose[:3, :3])
        self.model.append(rows, life=(self.model.birth_time(kf.t), float("inf")))
        self.optimizer.append(int(ys.numel()))
        self.strategy.grow(int(ys.numel()))
        return int(ys.numel())

    @torch.no_grad()
    def retire_inferred(self, kf: Keyframe) -> int:
        """Retire the inferred Gaussians that `kf` shows as tissue at its time, so the frame's observed Gaussians
        replace them from then on (recon.completion) while the earlier frames, fitted with them, keep them;
        returns how many."""
        return self._retire(seen_inferred(self.model, kf, self.cfg.complete_margin_px), kf.t)

    def _retire(self, which: torch.Tensor, t: float) -> int:
        """End the lives of the Gaussians `which` that are alive at model time t, from t on; returns how many."""
        which = which & self.model.alive(t)
        self.model.life[which, 1] = self.model.birth_time(t)
        return int(which.sum())

    @torch.no_grad()
    def complete_hidden(self, kf: Keyframe) -> int:
        """Complete the instrument pixels of `kf` (recon.completion): put the inferred Gaussians there back on the
        completed surface and recolour them from the current memory, seed new inferred Gaussians where nothing
        covers; returns how many were seeded."""
        if self.model.num_gaussians == 0 or bool((kf.tissue > 0.5).all()):
            return 0
        g = self.model.evaluate(kf.t, kf.camera.center())
        opacities = g["opacities"]
        g["opacities"] = opacities * (~self.model.inferred).to(opacities)
        g["colors"] = self.model.remembered_at(kf.t)          # the memory as it was seen, as the view shows it
        rgb, depth, alpha, _ = render_evaluated(g, kf.camera, self.backend)
        # Guesses over the memory give way to it (recon.completion); what they leave uncovered is seeded again.
        remembered = remembered_inferred(self.model, kf, alpha, g["means"])
        self._retire(remembered, kf.t)
        g["opacities"] = opacities * (~remembered).to(opacities)
        _, _, alpha_all, _ = render_evaluated(g, kf.camera, self.backend)
        pts_c, cols, image, hole, surface = hidden_seeds(kf, (rgb, depth, alpha), alpha_all,
                                                         self.cfg.complete_margin_px, self.cfg.add_stride,
                                                         self.fill_unseen)
        place_inferred(self.model, kf, surface, g["means"])
        recolour_inferred(self.model, kf, image, hole)
        room = self.room(len(pts_c))
        if len(pts_c) > max(0, room):
            pick = self.rng.choice(len(pts_c), max(0, room), replace=False)
            pts_c, cols = pts_c[pick], cols[pick]
        if len(pts_c) == 0:
            return 0
        pts_w = pts_c @ kf.pose[:3, :3].T + kf.pose[:3, 3]
        self.model.append(self.model.new_gaussians(pts_w, cols, kf.t, camera_rotation=kf.pose[:3, :3]),
                          inferred=True, life=(self.model.birth_time(kf.t), float("inf")))
        self.optimizer.append(len(pts_c))
        self.strategy.grow(len(pts_c))
        return len(pts_c)

    @torch.no_grad()
    def remember_shown(self, kf: Keyframe) -> int:
        """Keep the colour, fitted to `kf`, of each observed Gaussian whose centre the frame shows as tissue
        (`GaussianModel.remember`); returns how many. Behind an instrument a Gaussian's colour is fitted to its fringe
        over the tissue around (the colour fit and the steps): right for those pixels, not for what the instrument
        hides, where the de-occluded view shows the colour the tissue had when last seen (`ModelView.render`)."""
        g = self.model.evaluate(kf.t, kf.camera.center())
        alive = self.model.alive(kf.t)
        rows = kf.camera.sees(g["means"], kf.tissue > 0.5) & ~self.model.inferred
        if alive is not None:
            rows &= alive
        self.model.remember(kf.t, rows, g["colors"][rows].clamp(0.0, 1.0))
        return int(rows.sum())

    def fit_colours(self, kf: Keyframe, at_most: int | None = None) -> None:
        """Fit the colours at `kf`'s time to it (recon.colour_fit, `colour_fit_iterations`, at most `at_most`),
        counting the cost."""
        its = self.cfg.colour_fit_iterations if at_most is None else min(at_most, self.cfg.colour_fit_iterations)
        self.stats.colour_fit_steps += fit_colours(self.model, kf, self.backend, its)

    def _make_optimizer(self) -> None:
        c, s = self.cfg, self.scene_depth
        self.optimizer = DictAdam({
            "means": c.lr_means * s, "pos_knots": c.lr_pos_knots * s, "log_scales": c.lr_log_scales,
            "quats": c.lr_quats, "opacity_logits": c.lr_opacity, "sh_dc": c.lr_sh_dc, "sh_rest": c.lr_sh_rest,
            "col_knots": c.lr_col_knots, "scale_knots": c.lr_scale_knots}, knot_keys=GaussianModel.KNOT_KEYS)

    # ------------------------------------------------------------------ training
    def _knot_window(self, t: float, keep_past: bool) -> tuple[int, int]:
        """The knots a step on a frame at time t trains. With `keep_past` (live), only those the frame is rendered
        with (one when t is on a knot, else the two around it): a wider window let a step move knots it does not
        render (by the smoothness term, and by Adam's momentum with zero gradients), and a frame already fitted
        lost 9 dB within two frames (stream, K = 10, pulling 1/4; README, issue 14). Offline every frame comes
        back in turn, and letting a step carry its neighbours along fits better (600 iterations: 1 dB)."""
        i0, i1, w = self.model.knot_index(t)
        if keep_past:
            return i0, (i1 if w > 0 else i0) + 1
        return max(0, i0 - 2), min(self.model.num_knots, i0 + 4)

    def loss(self, kf: Keyframe, keep_past: bool = True) -> tuple[torch.Tensor, dict]:
        """The training loss on one frame (photometric + relative depth + track smoothness) and its parts, over the
        knots `_knot_window` trains."""
        c = self.cfg
        lo, hi = self._knot_window(kf.t, keep_past)
        params = self.model.knot_window(lo, hi)
        g = self.model.evaluate(kf.t, kf.camera.center(), params)
        rgb, depth, alpha, info = render_evaluated(g, kf.camera, self.backend)
        regions, weight, mse_roi = self.regions, None, None
        if regions:
            # Where stereo gave no depth the model's own surface says what the pixel sees.
            seen = torch.where(kf.depth > 0, kf.depth, depth.detach() * (alpha.detach() > 0.5))
            inside = (region_pixels(regions, seen, kf.K, kf.pose) & (kf.tissue > 0.5)).float()
            weight = 1.0 + (c.roi_weight - 1.0) * inside
            if bool(inside.any()):
                mse_roi = float(((rgb.detach() - kf.rgb) ** 2 * inside[..., None]).sum() / (3 * inside.sum()))
        loss_c, mse = photometric_loss(rgb, kf.rgb, kf.tissue, c.ssim_lambda, weight)
        loss_d = depth_loss(depth, kf.depth, kf.tissue, alpha, self.scene_depth, weight) \
            if kf.has_depth and c.depth_weight > 0 else rgb.new_zeros(())
        smooth = track_smoothness(self.model.knot_context(params, lo, hi, 2), self.scene_depth) \
            if c.smooth_weight > 0 else rgb.new_zeros(())
        loss = loss_c + c.depth_weight * loss_d + c.smooth_weight * smooth
        if c.cover_weight > 0:
            loss = loss + c.cover_weight * cover_loss(alpha, kf.tissue)
        if "distortion" in info:          # surfels: 2DGS's geometry regularisers
            if c.dist_weight > 0:
                loss = loss + c.dist_weight * distortion_loss(info["distortion"], kf.tissue, self.scene_depth)
            if c.normal_weight > 0:
                loss = loss + c.normal_weight * normal_consistency_loss(info["normals"], info["surf_normals"],
                                                                        kf.tissue)
        x, y, seen = kf.camera.pixels(g["means"].detach())     # projected once for both masks
        return loss, {"info": info, "loss_c": float(loss_c.detach()), "loss_d": float(loss_d.detach()),
                      "mse": float(mse), "mse_roi": mse_roi, "window": (lo, hi), "params": params,
                      "seen": seen, "shown": seen & (kf.tissue > 0.5)[y, x]}

    def step(self, schedule: StepSchedule) -> bool:
        """One training iteration; False when there is no frame to train on yet."""
        if not len(self.store):
            return False
        t_start = time.monotonic()
        kf = self.store.sample(schedule.recent_fraction)
        if kf.region is not None:
            # A share roi_step_share of these steps trains on the box about the regions instead, finer (equal
            # budget: a step all the same, on no more pixels).
            self._region_turn += self.cfg.roi_step_share
            if self._region_turn >= 1.0:
                self._region_turn -= 1.0
                kf = kf.region
                self.stats.region_steps += 1
        loss, aux = self.loss(kf, schedule.keep_past)
        loss.backward()
        grads = {k: v.grad for k, v in aux["params"].items() if k in self.model.params and v.grad is not None}
        pos = ("means", "pos_knots")
        params = self.model.params
        # Only the Gaussians whose centres the frame sees: one that only reaches in from outside the image was
        # pushed by Adam's normalised steps as far as a fully seen one, to fit its sliver of pixels, and showed
        # what that made of it wherever else it appears (the next view, the right camera).
        seen = aux["seen"]
        # A guess behind an instrument keeps its place (on the completed surface, `place_inferred`): its only
        # gradients there are its fringe over the tissue around, and Adam's normalised steps took them at the full
        # rate, 1.1-1.3 mm towards the camera (README, Occluded tissue). Its colour still trains from the fringe.
        moves = seen & (aux["shown"] | ~self.model.inferred)
        self.optimizer.step(params, {k: g for k, g in grads.items() if k in pos}, aux["window"],
                            scale=schedule.lr_scale, rows=moves)
        self.optimizer.step(params, {k: g for k, g in grads.items() if k not in pos}, aux["window"], rows=seen)
        st = self.stats
        st.iterations += 1
        # The strategy reads the step's screen-space gradients before they are cleared.
        since = self.model.birth_time(self.model.knot_times[-1]) if schedule.keep_past else float("-inf")
        self.strategy.step_post_backward(self.model, self.optimizer, aux["info"], kf.camera, st.iterations,
                                         schedule.densify, self.scene_depth, since)
        for v in self.model.params.values():
            v.grad = None
        st.loss, st.loss_color, st.loss_depth = float(loss.detach()), aux["loss_c"], aux["loss_d"]
        newest = self.store.recent[-1] if self.store.recent else None
        if newest is not None and kf is newest:
            st.psnr_recent = -10 * math.log10(max(aux["mse"], 1e-12))
        # The regions' figure at the finest scale they train at: the box's, where the newest frame has one.
        if newest is not None and aux["mse_roi"] is not None and kf is (newest.region or newest):
            st.psnr_regions = -10 * math.log10(max(aux["mse_roi"], 1e-12))
        self._since_check += 1
        if schedule.grow_every > 0 and self._since_check >= schedule.grow_every and self.store.recent:
            self._since_check = 0
            self.grow_unexplained(self.store.recent[-1], use_error=True)
        # Kept in the statistics as the model changes, so that reading them needs no tensor work (and no lock).
        st.inferred_share = self.model.inferred_share()
        self._iter_times.append(time.monotonic() - t_start)
        st.iterations_per_second = len(self._iter_times) / max(1e-9, sum(self._iter_times))
        return True

    # ------------------------------------------------------------------ state
    def state_dict(self, keyframes: bool = True) -> dict:
        """Everything a trainer needs to continue: tensors, arrays and plain containers only."""
        m = self.model
        return {"config": asdict(self.cfg), "params": {k: compact(v.detach().cpu()) for k, v in m.params.items()},
                "inferred": m.inferred.cpu(), "life": m.life.cpu(), "remembered": m.remembered.cpu(),
                "knot_times": list(m.knot_times),
                "optimizer": self.optimizer.state_dict() if self.optimizer else None,
                "clock": self.clock.state_dict(), "live_stamp_ns": self.live_stamp_ns,
                "last_pose": self.live_pose, "scene_depth": self.scene_depth,
                "pose_refiner": self.pose_refiner.state_dict(), "stats": asdict(self.get_stats()),
                "keyframes": self.store.state_dict() if keyframes else []}

    def load_state_dict(self, state: dict) -> None:
        """Restore `state_dict` output into this (new, empty) reconstructor. The densification statistics
        start over; the newest frames are the restored keyframes."""
        dev = self.device
        self.model.load_params(state["params"], state["knot_times"], state.get("inferred"), state.get("life"),
                               state.get("remembered"))
        self.clock.load_state_dict(state["clock"])
        self.live_stamp_ns = state["live_stamp_ns"]
        self.live_pose = state["last_pose"]
        self.scene_depth = float(state["scene_depth"])
        if state.get("pose_refiner") is not None:
            self.pose_refiner.load_state_dict(state["pose_refiner"])
        # No optimizer saved: no frame had come (a checkpoint taken before the first); the first frame to come
        # sets the scene depth and makes one, as in a new reconstructor.
        if state["optimizer"] is not None:
            self._make_optimizer()
            self.optimizer.load_state_dict({k: ({n: t.to(dev) for n, t in v.items()} if k != "lrs" else v)
                                            for k, v in state["optimizer"].items()})
        self.strategy.reset(self.model.num_gaussians, dev)
        self.store.load_state_dict(state["keyframes"], dev)
        st = state["stats"]
        for key in ("frames_received", "frames_used", "frames_skipped", "iterations", "colour_fit_steps", "frames_past",
                    "time_gaps_shortened", "pose_refined", "pose_refine_rejected"):
            setattr(self.stats, key, int(st.get(key, 0)))
        for key in ("pose_correction_mm", "pose_correction_deg"):
            setattr(self.stats, key, float(st.get(key, 0.0)))
        self.stats.pose_refine_last = str(st.get("pose_refine_last", ""))
        self.stats.inferred_share = self.model.inferred_share()
        self.skips.update(st.get("skip_reasons", {}))


ProgressFn = Callable[[int, TrainerStats], None]


def train_offline(recon: Reconstructor, frames: Iterable[Frame], iterations: int,
                  progress: ProgressFn | None = None) -> TrainerStats:
    """Offline: add all frames (in order, growing the model), then steps of `StepSchedule.offline` until
    `iterations` steps are spent (`Reconstructor.steps_spent`). With `colour_fit_iterations`, the last steps of
    the budget fit each frame's colours once, on the trained geometry (a fit at arrival, before any training,
    would fit the flow's geometry). `progress(steps, stats)` is called about every 50 steps (and with
    -frames_done every 10 added frames)."""
    configure_torch_threads(recon.cfg)
    frames = list(frames)
    start = recon.steps_spent()
    for i, f in enumerate(frames):
        recon.stats.frames_received += 1
        recon.add_frame(f, steps=0)
        if progress is not None and ((i + 1) % 10 == 0 or i + 1 == len(frames)):
            progress(-(i + 1), recon.get_stats())
    recon.stats.state = "running"
    t0 = time.monotonic()
    reported = 0
    c = recon.cfg.colour_fit_iterations
    fits = min(len(recon.store.keyframes), iterations // (c + 1)) if c > 0 else 0
    adam = max(0, iterations - fits * (c + 1))
    while (done := recon.steps_spent() - start) < adam:
        recon.step(StepSchedule.offline(recon.cfg, done, adam))
        if progress is not None and done // 50 > reported:
            reported = done // 50
            progress(done, recon.get_stats())
    for kf in recon.store.keyframes[:fits]:
        recon.fit_colours(kf)
    recon.stats.state = "idle"
    recon.stats.iterations_per_second = iterations / max(1e-9, time.monotonic() - t0)
    return recon.get_stats()


def train_stream(recon: Reconstructor, frames: Iterable[Frame], iterations_per_frame: int,
                 after_frame: Callable[[int, Reconstructor], None] | None = None) -> TrainerStats:
    """Live training without a clock: frames arrive in order and each used frame is followed by exactly
    `iterations_per_frame` steps, its colour fit included (`Reconstructor.steps_spent`), of `StepSchedule.live`
    (what `OnlineTrainer` runs with the same setting, minus the thread), so the result does not depend on the
    machine's speed (bitwise repeatable with the torch backend; the compiled one's threaded sums are not).
    `after_frame(i, recon)` is called after frame i and its steps."""
    configure_torch_threads(recon.cfg)
    recon.stats.state = "running"
    budget = recon.steps_spent()       # a colour fit that overran the last frame's steps is taken from the next
    for i, f in enumerate(frames):
        recon.stats.frames_received += 1
        if recon.add_frame(f, steps=iterations_per_frame):
            budget += iterations_per_frame
            while recon.steps_spent() < budget:
                recon.step(StepSchedule.live(recon.cfg))
        if after_frame is not None:
            after_frame(i, recon)
    recon.stats.state = "idle"
    return recon.get_stats()
