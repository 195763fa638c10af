"""Incremental deformable Gaussian-splatting reconstruction: online (background thread) and offline.

`OnlineTrainer.ingest(frame)` only enqueues (never blocks); a training thread drains the queue, validates
frames (out of order, missing pose/depth, NaN depth, pose jumps are counted and skipped or handled),
grows the model where tissue is new or unexplained, keeps a keyframe store and runs iterations on a mix
of the newest frames and older keyframes. Instrument pixels never enter a loss. `train_offline` runs the
same model and step on a fixed list of frames with a fixed iteration budget (evaluation, CI).
"""

from __future__ import annotations

import math
import queue
import threading
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np
import torch

from surg3d_nodes.common.camera import scale_intrinsics
from surg3d_nodes.common.geometry import backproject
from surg3d_nodes.common.metrics import ssim_map
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.flow_tracks import FlowTrackConfig, update_tracks
from surg3d_nodes.recon.gaussians import GaussianConfig, GaussianModel
from surg3d_nodes.recon.model_clock import ModelClock
from surg3d_nodes.recon.pose_refine import PoseRefineConfig, PoseRefiner
from surg3d_nodes.recon.render import RenderCamera, render_evaluated, resolve_backend
from surg3d_nodes.recon.sparse_adam import DictAdam

# render_view: a view finer than the training images by more than this factor is upsampled from one rendered
# at the training resolution.
UPSAMPLE_ABOVE = 1.5


@dataclass
class _Keyframe:
    stamp_ns: int
    t: float
    rgb: torch.Tensor          # [H,W,3] float 0..1
    depth: torch.Tensor        # [H,W] metres, 0 where invalid
    tissue: torch.Tensor       # [H,W] float 1 = tissue
    camera: RenderCamera
    pose: np.ndarray
    K: np.ndarray              # ROS convention
    has_depth: bool
    raw_pose: np.ndarray | None = None   # the input pose, where a pose refinement changed it


@dataclass
class Snapshot:
    """A consistent copy of the model for publishing (world frame, at model time `time_s`)."""

    points: np.ndarray         # [N,3] float32
    colors: np.ndarray         # [N,3] float32 0..1
    opacities: np.ndarray      # [N] float32
    scales: np.ndarray         # [N] float32 largest axis, metres
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
    iterations: int = 0
    iterations_per_second: float = 0.0
    loss: float = 0.0
    loss_color: float = 0.0
    loss_depth: float = 0.0
    psnr_recent: float = 0.0
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


def pick_device(device: str) -> torch.device:
    """`auto` -> cuda when available else cpu; `cuda` without CUDA raises a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but torch has no CUDA device (use 'cpu' or 'auto')")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r} (expected auto, cpu or cuda)")
    return torch.device(device)


class OnlineTrainer:
    """Deformable Gaussian reconstruction trained while frames arrive (see module docstring)."""

    def __init__(self, cfg: TrainerConfig | None = None):
        self.cfg = replace(cfg) if cfg is not None else TrainerConfig()
        self.device = pick_device(self.cfg.device)
        if self.cfg.image_scale <= 0:
            self.cfg.image_scale = 1.0 if self.device.type == "cuda" else 0.25
        self.backend = resolve_backend(self.cfg.backend, self.device)
        self._lock = threading.RLock()
        self._queue: queue.Queue[tuple[Frame, float]] = queue.Queue(maxsize=self.cfg.queue_size)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._rng = np.random.default_rng(self.cfg.seed)
        self.on_frame: Callable[[], None] | None = None   # called (training thread) after a frame is in
        self._reset_state()

    # ------------------------------------------------------------------ state
    def _reset_state(self) -> None:
        c = self.cfg
        gcfg = GaussianConfig(sh_degree=c.sh_degree, knot_spacing=c.knot_spacing_s, max_knots=c.max_knots,
                              deform_scale=c.deform_scale, init_opacity=c.init_opacity,
                              init_scale=c.init_scale)
        self.model = GaussianModel(gcfg, self.device)
        self.keyframes: list[_Keyframe] = []
        self.stats = TrainerStats(backend=self.backend, device=str(self.device))
        self._skip = Counter()
        self.clock = ModelClock(c.max_time_gap_s)
        self.live_stamp_ns: int | None = None     # the newest frame by arrival (a loop restarts it)
        self._last_pose: np.ndarray | None = None  # pose of that frame
        self._track_ref: _Keyframe | None = None   # the newest frame the flow tracks were updated at
        self._pose_refiner = PoseRefiner(PoseRefineConfig(
            mode=c.refine_pose_mode, iterations=c.refine_pose_iterations, lr=c.refine_pose_lr,
            depth_weight=c.refine_pose_depth_weight, max_trans_m=c.refine_pose_max_trans_m,
            max_rot_deg=c.refine_pose_max_rot_deg))
        self._jumps = 0
        self.scene_depth = 0.0
        self.optimizer: DictAdam | None = None
        self._grad_acc = torch.zeros(0, device=self.device)
        self._grad_cnt = torch.zeros(0, device=self.device)
        self._max_rad = torch.zeros(0, device=self.device)
        self._recent: deque[_Keyframe] = deque(maxlen=max(1, c.recent_window))
        self._iter_times: deque[float] = deque(maxlen=50)
        self._lr_scale = 1.0
        self._since_check = 0
        self.total_iterations_planned = 0

    # ------------------------------------------------------------------ public API
    def start(self) -> None:
        """Start the background training thread (idempotent)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="surg3d-trainer", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop and join the training thread."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self.stats.state = "idle"

    def pause(self) -> None:
        """Stop training iterations (frames are still received and stored)."""
        self._paused.set()
        self.stats.state = "paused"

    def resume(self) -> None:
        """Resume training iterations."""
        self._paused.clear()
        self._wake.set()

    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def reset(self) -> None:
        """Drop the model, keyframes and counters (the thread keeps running)."""
        with self._lock:
            while True:
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    break
            self._reset_state()
            self.stats.state = "paused" if self.paused else "idle"

    def ingest(self, frame: Frame) -> bool:
        """Queue a frame for the training thread; never blocks. False when the queue was full
        (the oldest queued frame is dropped and counted as skipped 'queue_full')."""
        self.stats.frames_received += 1
        item = (frame, time.monotonic())
        try:
            self._queue.put_nowait(item)
            ok = True
        except queue.Full:
            try:
                self._queue.get_nowait()
                self._count_skip("queue_full")
            except queue.Empty:
                pass
            try:
                self._queue.put_nowait(item)
            except queue.Full:
                self._count_skip("queue_full")
            ok = False
        self._wake.set()
        return ok

    def wait_processed(self, timeout: float = 10.0) -> bool:
        """Block until every ingested frame has been used or skipped (tests, shutdown); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.stats
            if self._queue.empty() and st.frames_used + st.frames_skipped >= st.frames_received:
                return True
            time.sleep(0.01)
        return False

    def time_of(self, stamp_ns: int) -> float:
        """Model time (seconds since the first used frame, long pauses shortened) of a stamp."""
        return self.clock.time_of(stamp_ns)

    def snapshot(self, time_s: float | None = None) -> Snapshot:
        """Points, colours, opacities and scales at model time `time_s` (default: newest frame)."""
        with self._lock:
            params = self.model.detached_copy()
            t = self._latest_time() if time_s is None else float(time_s)
            it = self.stats.iterations
            stamp = self.live_stamp_ns or 0
        with torch.no_grad():
            g = self.model.evaluate(t, None, params=params)
        return Snapshot(g["means"].cpu().numpy().astype(np.float32),
                        g["colors"].clamp(0, 1).cpu().numpy().astype(np.float32),
                        g["opacities"].cpu().numpy().astype(np.float32),
                        g["scales"].max(-1).values.cpu().numpy().astype(np.float32), t, stamp, it)

    def render_view(self, pose: np.ndarray, time_s: float | None = None, width: int | None = None,
                    height: int | None = None, K: np.ndarray | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render (rgb uint8 HxWx3, depth float32 m with NaN where empty, alpha float32) at any pose/time.

        K (ROS convention) defaults to the newest frame's intrinsics scaled to width x height. A view finer
        than the training images (by more than `UPSAMPLE_ABOVE`) is rendered at the training resolution and
        upsampled: the model holds no finer detail, and Gaussians fitted to coarse pixels, rendered finer,
        show as separate blobs with gaps between them (measured: 320x256 views of a model trained at 80x64,
        26.6 dB direct vs 29.2 dB upsampled).
        """
        with self._lock:
            if not self.keyframes and K is None:
                raise RuntimeError("render_view: no frame received yet, so no intrinsics (pass K)")
            params = self.model.detached_copy()
            t = self._latest_time() if time_s is None else float(time_s)
            ref = self._recent[-1] if self._recent else (self.keyframes[-1] if self.keyframes else None)
        if K is None:
            width = width or ref.camera.width
            height = height or ref.camera.height
            K = scale_intrinsics(ref.K, width / ref.camera.width, height / ref.camera.height)
        if width is None or height is None:
            raise ValueError("render_view: width and height are required with an explicit K")
        rw, rh, rK = width, height, K
        finer = 1.0 if ref is None else float(K[0, 0]) / float(ref.K[0, 0])
        if finer > UPSAMPLE_ABOVE:
            rw, rh = max(1, round(width / finer)), max(1, round(height / finer))
            rK = scale_intrinsics(K, rw / width, rh / height)
        cam = RenderCamera.from_ros(pose, rK, rw, rh, device=self.device)
        with torch.no_grad():
            g = self.model.evaluate(t, cam.center(), params=params)
            if g["means"].shape[0] == 0:
                z = np.zeros((height, width), np.float32)
                return np.zeros((height, width, 3), np.uint8), np.full_like(z, np.nan), z
            rgb, depth, alpha, _ = render_evaluated(g, cam, self.backend)
        rgb = rgb.clamp(0, 1).cpu().numpy()
        d = depth.cpu().numpy().astype(np.float32)
        a = alpha.cpu().numpy().astype(np.float32)
        if (rw, rh) != (width, height):
            rgb, d, a = (cv2.resize(x, (width, height), interpolation=cv2.INTER_LINEAR) for x in (rgb, d, a))
        d[a < 0.5] = np.nan
        return (rgb * 255.0 + 0.5).astype(np.uint8), d, a

    def export_ply(self, path, time_s: float | None = None):
        """Write a 3DGS PLY of the model at model time `time_s` (default newest); returns the path."""
        from surg3d_nodes.recon.io.ply import save_ply

        with self._lock:
            params = self.model.detached_copy()
            t = self._latest_time() if time_s is None else float(time_s)
        return save_ply(path, self.model, t, params)

    def live_pose(self) -> np.ndarray | None:
        """Pose of the newest frame by arrival (None before the first)."""
        with self._lock:
            return None if self._last_pose is None else self._last_pose.copy()

    def get_stats(self) -> TrainerStats:
        """A copy of the statistics."""
        with self._lock:
            s = TrainerStats(**{k: getattr(self.stats, k) for k in TrainerStats.__dataclass_fields__})
            s.skip_reasons = dict(self._skip)
            s.num_gaussians = self.model.num_gaussians
            s.keyframes = len(self.keyframes)
            if self.paused:
                s.state = "paused"
            return s

    def train_offline(self, frames: list[Frame], iterations: int, progress=None) -> TrainerStats:
        """Offline mode: ingest all frames (in order, growing the model), then `iterations` steps.

        Position learning rates decay exponentially to `lr_final_factor`; densification runs until
        `refine_stop_fraction` of the budget. `progress(iteration, stats)` is called every 50 steps
        (and with -frames_done every 10 ingested frames).
        """
        self._apply_threads()
        with self._lock:
            for i, f in enumerate(frames):
                self._process(f, time.monotonic())
                if progress is not None and ((i + 1) % 10 == 0 or i + 1 == len(frames)):
                    progress(-(i + 1), self.get_stats())
        self.total_iterations_planned = iterations
        self.stats.state = "running"
        t0 = time.monotonic()
        for i in range(iterations):
            self._lr_scale = self.cfg.lr_final_factor ** (i / max(1, iterations - 1))
            self._step(offline=True, refine=i < self.cfg.refine_stop_fraction * iterations)
            if progress is not None and (i + 1) % 50 == 0:
                progress(i + 1, self.get_stats())
        self.stats.state = "idle"
        self.stats.iterations_per_second = iterations / max(1e-9, time.monotonic() - t0)
        return self.get_stats()

    # ------------------------------------------------------------------ thread
    def _apply_threads(self) -> None:
        # Tiny transmittances/alphas would otherwise hit denormal floats, which are ~10x slower on CPU.
        torch.set_flush_denormal(True)
        if self.cfg.num_threads > 0:
            torch.set_num_threads(self.cfg.num_threads)

    def _run(self) -> None:
        self._apply_threads()
        while not self._stop.is_set():
            # Every frame queued now goes into the model before the next step (frame-to-cloud latency);
            # frames arriving meanwhile wait for the next loop, so training still runs when frames come
            # faster than they are processed (the bounded queue then drops the oldest, as queue_full).
            drained = self._drain(max_frames=max(1, self._queue.qsize()))
            if self.paused or not self.keyframes or self._throttled():
                if not drained:
                    self._wake.wait(0.02)
                    self._wake.clear()
                continue
            self.stats.state = "running"
            try:
                self._step(offline=False, refine=True)
            except Exception as e:  # a bug or a CUDA error must not end live training silently
                self._record_error("training step", e)
                self._stop.wait(0.5)   # not a hot loop if it repeats

    def _record_error(self, where: str, e: BaseException) -> None:
        """Count an unexpected failure of the training thread and keep its description for the status."""
        tb = traceback.extract_tb(e.__traceback__)
        at = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        self.stats.errors += 1
        self.stats.last_error = f"{where}: {type(e).__name__}: {e}{at}"[:300]

    def _throttled(self) -> bool:
        ipf = self.cfg.iterations_per_frame
        return ipf > 0 and self.stats.iterations >= ipf * self.stats.frames_used

    def _drain(self, max_frames: int) -> bool:
        got = 0
        while got < max_frames:
            # Take the frame under the lock: a reset between taking and processing it would otherwise
            # rebuild the model from a frame of before the reset.
            with self._lock:
                try:
                    frame, t_in = self._queue.get_nowait()
                except queue.Empty:
                    break
                got += 1
                try:
                    # A backlog gets one flow update, at its newest frame: the per-frame cost of the flow
                    # (tens of ms at 640x512) must not make the trainer fall further behind.
                    self._process(frame, t_in, track=self._queue.empty())
                except Exception as e:  # the frame is lost, not the model or the thread
                    self._count_skip("error")
                    self._record_error(f"frame {frame.stamp_ns}", e)
        return got > 0

    def _count_skip(self, reason: str) -> None:
        self._skip[reason] += 1
        self.stats.frames_skipped += 1

    # ------------------------------------------------------------------ frames
    def _process(self, f: Frame, t_in: float, track: bool = True) -> None:
        """Validate, convert and store one frame; grow the model where its tissue is unexplained; with
        `track`, start its deformation from the flow since the last frame that was tracked."""
        reason = self._validate(f)
        if reason is not None:
            self._count_skip(reason)
            return
        kf = self._to_keyframe(f)
        if self.model.num_gaussians == 0 and not kf.has_depth:
            self._count_skip("no_depth_for_init")
            return
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
        self.live_stamp_ns = int(f.stamp_ns)
        self._last_pose = kf.pose
        if self.model.ensure_time(kf.t):
            self.optimizer.grow_knots(self.model.num_knots)
            for j in self.model.simplify_knots(self.cfg.recent_knots, {"pos_knots": self.scene_depth}):
                self.optimizer.drop_knot(j)
        ref = self._track_ref or (self._recent[-1] if self._recent else None)
        if self.cfg.flow_tracks and track and kf.has_depth and ref is not None and ref.has_depth:
            self.stats.flow_tracked = update_tracks(self.model, ref, kf, self.scene_depth,
                                                    FlowTrackConfig(depth_motion=self.cfg.flow_depth_motion))
            self.stats.flow_frames += int(self.stats.flow_tracked > 0)
        if track and kf.has_depth and (ref is None or kf.t > ref.t):
            self._track_ref = kf        # the tracks pass through the model's positions at this frame
        if kf.has_depth:
            self._add_unexplained(kf, use_error=False)
        self.stats.frames_used += 1
        if self.on_frame is not None:
            self.on_frame()
        self.stats.last_frame_stamp = int(f.stamp_ns)
        self.stats.latency_ms = (time.monotonic() - t_in) * 1000.0
        self._recent.append(kf)
        if (self.stats.frames_used - 1) % max(1, self.cfg.keyframe_every) == 0:
            self.keyframes.append(kf)
            if len(self.keyframes) > self.cfg.max_keyframes:
                # Thin the history uniformly: drop a random keyframe that is not among the newest.
                j = int(self._rng.integers(0, len(self.keyframes) - self.cfg.recent_window))
                self.keyframes.pop(j)

    def _refine_pose(self, kf: _Keyframe) -> _Keyframe:
        """The keyframe with its pose corrected against the model (unchanged when the refinement is
        rejected; hand_eye mode also re-poses the stored frames); the first frame is never refined: its pose
        is the model's gauge."""
        st = self.stats
        with torch.no_grad():
            g = self.model.evaluate(kf.t, kf.camera.center())
        res = self._pose_refiner.refine(g, kf.camera, kf.pose, kf.rgb, kf.depth, kf.tissue, self.scene_depth,
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
        def set_pose(k: _Keyframe, pose: np.ndarray) -> None:
            k.pose = pose
            k.camera = RenderCamera.from_ros(pose, k.K, k.camera.width, k.camera.height, device=self.device)

        kf = replace(kf, raw_pose=kf.pose)
        set_pose(kf, kf.raw_pose @ res.correction)
        if self.cfg.refine_pose_mode == "hand_eye":
            # One correction model for all frames: every refined stored frame moves on to the newest estimate.
            for k in [*self.keyframes, *self._recent]:
                if k.raw_pose is not None:
                    set_pose(k, k.raw_pose @ self._pose_refiner.correction_of(k.raw_pose))
        return kf

    def _validate(self, f: Frame) -> str | None:
        if f.rgb is None or f.rgb.ndim != 3 or f.rgb.shape[2] != 3:
            return "bad_image"
        h, w = f.rgb.shape[:2]
        if f.camera is None or (f.camera.width, f.camera.height) != (w, h):
            return "bad_camera"
        stamp = int(f.stamp_ns)
        if self.clock.first_ns is not None and stamp <= self.clock.newest_ns:
            # Older than the newest (reordered input, a looping replay): the deformable model covers that
            # time, so the frame trains at its own time unless it precedes the model or repeats a frame.
            if stamp < self.clock.first_ns:
                return "out_of_order"
            if any(k.stamp_ns == stamp for k in self._stored()):
                return "duplicate_stamp"
        if f.pose is None or np.asarray(f.pose).shape != (4, 4) or not np.all(np.isfinite(f.pose)):
            return "no_pose"
        if f.depth is not None and f.depth.shape != (h, w):
            return "bad_depth_shape"
        if f.mask is not None and f.mask.shape != (h, w):
            return "bad_mask_shape"
        ref = min(self._stored(), key=lambda k: abs(k.stamp_ns - stamp), default=None)
        if ref is not None:
            # Compared with the frame nearest in time: after a loop that is the frame of the same moment.
            d = np.linalg.inv(ref.pose) @ np.asarray(f.pose, dtype=np.float64)
            ang = math.degrees(math.acos(float(np.clip((np.trace(d[:3, :3]) - 1) / 2, -1, 1))))
            if np.linalg.norm(d[:3, 3]) > self.cfg.pose_jump_m or ang > self.cfg.pose_jump_deg:
                self._jumps += 1
                if self._jumps < self.cfg.pose_jump_accept_after:
                    return "pose_jump"
                self._skip["pose_jump_accepted"] += 1
        self._jumps = 0
        return None

    def _stored(self) -> list[_Keyframe]:
        return [*self.keyframes, *self._recent]

    def _to_keyframe(self, f: Frame) -> _Keyframe:
        s = self.cfg.image_scale
        rgb, depth, mask, cam = f.rgb, f.depth, f.mask, f.camera
        if s != 1.0:
            cam = cam.scaled(s)
            size = (cam.width, cam.height)
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            if depth is not None:
                depth = cv2.resize(depth, size, interpolation=cv2.INTER_NEAREST)
            if mask is not None:
                mask = (cv2.resize(mask, size, interpolation=cv2.INTER_AREA) > 0).astype(np.uint8) * 255
        h, w = rgb.shape[:2]
        dev = self.device
        tissue = np.ones((h, w), np.float32) if mask is None else (mask == 0).astype(np.float32)
        if depth is None:
            d = np.zeros((h, w), np.float32)
        else:
            d = np.asarray(depth, dtype=np.float32)
            d = np.where(np.isfinite(d) & (d > 0), d, 0.0).astype(np.float32)
        has_depth = bool((d * tissue > 0).any())
        if depth is not None and not has_depth:
            self._skip["depth_all_invalid"] += 1
        K = cam.intrinsics()
        pose = np.asarray(f.pose, dtype=np.float64)
        return _Keyframe(int(f.stamp_ns), self.time_of(f.stamp_ns),
                         torch.as_tensor(np.ascontiguousarray(rgb), device=dev).float() / 255.0,
                         torch.as_tensor(d, device=dev), torch.as_tensor(tissue, device=dev),
                         RenderCamera.from_ros(pose, K, w, h, device=dev), pose, K, has_depth)

    def _latest_time(self) -> float:
        return self.time_of(self.live_stamp_ns) if self.live_stamp_ns is not None else 0.0

    # ------------------------------------------------------------------ model growth
    @torch.no_grad()
    def _add_unexplained(self, kf: _Keyframe, use_error: bool) -> int:
        """Back-project tissue pixels the model does not explain into new Gaussians; returns how many."""
        room = self.cfg.max_gaussians - self.model.num_gaussians
        if room <= 0:
            return 0
        valid = (kf.depth > 0) & (kf.tissue > 0.5)
        if self.model.num_gaussians == 0:
            want = valid
            stride = self.cfg.init_stride
        else:
            g = self.model.evaluate(kf.t, kf.camera.center())
            rgb, depth, alpha, _ = render_evaluated(g, kf.camera, self.backend)
            bad = alpha < self.cfg.add_alpha_threshold
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
        if ys.numel() > room:
            pick = torch.as_tensor(self._rng.choice(ys.numel(), room, replace=False), device=ys.device)
            ys, xs = ys[pick], xs[pick]
        pts_c = backproject(kf.depth.cpu().numpy(), kf.K)[ys.cpu().numpy(), xs.cpu().numpy()]
        pts_w = pts_c @ kf.pose[:3, :3].T + kf.pose[:3, 3]
        cols = kf.rgb[ys, xs].cpu().numpy()
        rows = self.model.new_gaussians(pts_w, cols, kf.t, camera_rotation=kf.pose[:3, :3])
        self.model.append(rows)
        self.optimizer.append(int(ys.numel()))
        self._grow_stats(int(ys.numel()))
        return int(ys.numel())

    def _grow_stats(self, n: int) -> None:
        z = torch.zeros(n, device=self.device)
        self._grad_acc = torch.cat([self._grad_acc, z])
        self._grad_cnt = torch.cat([self._grad_cnt, z])
        self._max_rad = torch.cat([self._max_rad, z])

    def _make_optimizer(self) -> None:
        c, s = self.cfg, self.scene_depth
        lrs = {"means": c.lr_means * s, "pos_knots": c.lr_pos_knots * s, "log_scales": c.lr_log_scales,
               "quats": c.lr_quats, "opacity_logits": c.lr_opacity, "sh_dc": c.lr_sh_dc,
               "sh_rest": c.lr_sh_rest, "col_knots": c.lr_col_knots, "scale_knots": c.lr_scale_knots}
        self.optimizer = DictAdam(lrs)

    # ------------------------------------------------------------------ training
    def _sample(self, offline: bool) -> _Keyframe:
        if not offline and self._recent and self._rng.random() < self.cfg.recent_fraction:
            return self._recent[int(self._rng.integers(len(self._recent)))]
        return self.keyframes[int(self._rng.integers(len(self.keyframes)))]

    def _knot_window(self, t: float) -> tuple[int, int]:
        i0 = self.model.knot_index(t)[0]
        return max(0, i0 - 2), min(self.model.num_knots, i0 + 4)

    def _loss(self, kf: _Keyframe) -> tuple[torch.Tensor, dict]:
        g = self.model.evaluate(kf.t, kf.camera.center())
        rgb, depth, alpha, info = render_evaluated(g, kf.camera, self.backend)
        m = kf.tissue
        npx = m.sum().clamp(min=1.0)
        diff = (rgb - kf.rgb) * m[..., None]
        l1 = diff.abs().sum() / (3 * npx)
        ssim = (ssim_map(rgb * m[..., None], kf.rgb * m[..., None]) * m).sum() / npx
        loss_c = (1 - self.cfg.ssim_lambda) * l1 + self.cfg.ssim_lambda * (1 - ssim)
        loss_d = rgb.new_zeros(())
        if kf.has_depth and self.cfg.depth_weight > 0:
            dv = (kf.depth > 0) & (m > 0.5) & (alpha.detach() > 0.1)
            if bool(dv.any()):
                loss_d = ((depth[dv] - kf.depth[dv]).abs() / self.scene_depth).mean()
        lo, hi = self._knot_window(kf.t)
        smooth = rgb.new_zeros(())
        if self.cfg.smooth_weight > 0 and hi - lo >= 3:
            for name, w in (("pos_knots", 1.0 / self.scene_depth), ("col_knots", 1.0), ("scale_knots", 1.0)):
                if name in self.model.params:
                    k = self.model.params[name][:, lo:hi] * w
                    smooth = smooth + (k[:, 2:] - 2 * k[:, 1:-1] + k[:, :-2]).pow(2).sum(-1).mean()
        loss = loss_c + self.cfg.depth_weight * loss_d + self.cfg.smooth_weight * smooth
        mse = float((diff.detach() ** 2).sum() / (3 * npx))
        return loss, {"info": info, "loss_c": float(loss_c.detach()), "loss_d": float(loss_d.detach()),
                      "mse": mse, "window": (lo, hi)}

    def _step(self, offline: bool, refine: bool) -> None:
        t_start = time.monotonic()
        with self._lock:
            if not self.keyframes:
                return
            kf = self._sample(offline)
            loss, aux = self._loss(kf)
            loss.backward()
            self._accumulate_grads(aux["info"], kf.camera)
            pos_scale = self._lr_scale
            pos = ("means", "pos_knots")
            params = self.model.params
            self.optimizer.step({k: v for k, v in params.items() if k in pos}, aux["window"], scale=pos_scale)
            self.optimizer.step({k: v for k, v in params.items() if k not in pos}, aux["window"])
            for v in self.model.params.values():
                v.grad = None
            st = self.stats
            st.iterations += 1
            st.loss, st.loss_color, st.loss_depth = float(loss.detach()), aux["loss_c"], aux["loss_d"]
            if self._recent and kf is self._recent[-1]:
                st.psnr_recent = -10 * math.log10(max(aux["mse"], 1e-12))
            it = st.iterations
            if refine and it >= self.cfg.refine_start and it % self.cfg.refine_every == 0:
                self._refine()
            self._since_check += 1
            if not offline and self._since_check >= self.cfg.add_check_every and self._recent:
                self._since_check = 0
                self._add_unexplained(self._recent[-1], use_error=True)
        self._iter_times.append(time.monotonic() - t_start)
        self.stats.iterations_per_second = len(self._iter_times) / max(1e-9, sum(self._iter_times))

    @torch.no_grad()
    def _accumulate_grads(self, info: dict, cam: RenderCamera) -> None:
        m2d = info.get("means2d")
        if m2d is None or m2d.grad is None:
            return
        g = m2d.grad.reshape(-1, 2).clone()      # torch backend [N,2]; gsplat [1,N,2]
        g[:, 0] *= cam.width / 2.0
        g[:, 1] *= cam.height / 2.0
        radii = info["radii"]
        vis = (radii > 0).all(-1)
        n = min(g.shape[0], self._grad_acc.shape[0])
        self._grad_acc[:n] += g[:n].norm(dim=-1) * vis[:n]
        self._grad_cnt[:n] += vis[:n].float()
        self._max_rad[:n] = torch.maximum(self._max_rad[:n], radii[:n].max(-1).values.float())

    @torch.no_grad()
    def _refine(self) -> None:
        """Prune transparent/huge Gaussians, then clone small / split large high-gradient ones."""
        c, p = self.cfg, self.model.params
        n = self.model.num_gaussians
        if n == 0:
            return
        opac = torch.sigmoid(p["opacity_logits"])
        size = torch.exp(p["log_scales"]).max(-1).values
        keep = (opac > c.prune_opacity) & (size < c.prune_scale_rel * self.scene_depth)
        grads = self._grad_acc / self._grad_cnt.clamp(min=1)
        grads[~keep] = 0
        cand = torch.nonzero(grads > c.grad_threshold).squeeze(1)
        room = c.max_gaussians - int(keep.sum())
        if cand.numel() > max(0, room):
            cand = cand[torch.argsort(grads[cand], descending=True)[:max(0, room)]]
        split = cand[self._max_rad[cand] > c.split_radius_px]
        clone = cand[self._max_rad[cand] <= c.split_radius_px]
        rows = {k: torch.cat([v.detach()[clone], v.detach()[split], v.detach()[split]]) for k, v in p.items()}
        if split.numel():
            # Split: two samples from the parent's distribution, scales shrunk by 1.6 (3DGS).
            ns = split.numel()
            from surg3d_nodes.recon.render.torch_backend import quat_to_rotmat
            R = quat_to_rotmat(p["quats"].detach()[split])
            sc = torch.exp(p["log_scales"].detach()[split])
            off = (R @ (torch.randn(2, ns, 3, device=self.device) * sc)[..., None])[..., 0]
            nc = clone.numel()
            rows["means"][nc:nc + ns] += off[0]
            rows["means"][nc + ns:] += off[1]
            rows["log_scales"][nc:] -= math.log(1.6)
            keep[split] = False
        self.model.select(keep)
        self.optimizer.select(keep)
        n_new = clone.numel() + 2 * split.numel()
        self._grad_acc = torch.zeros(int(keep.sum()), device=self.device)
        self._grad_cnt = torch.zeros_like(self._grad_acc)
        self._max_rad = torch.zeros_like(self._grad_acc)
        if n_new:
            self.model.append(rows)
            self.optimizer.append(n_new)
            self._grow_stats(n_new)
