"""The live trainer: a `Reconstructor` driven by a background thread fed by a bounded drop-oldest queue.

`ingest(frame)` only enqueues (never blocks the caller, a ROS callback). The thread adds every queued frame
before the next step (frame-to-cloud latency), then trains with `StepSchedule.live`; with
`iterations_per_frame` > 0 it runs at most that many steps per used frame (a fixed, hardware-independent
budget).

Readers never wait for training. The training thread hands out a frozen copy of the model (`ModelView`): as each
newest frame goes in, before its cloud is asked for, and after a step when a reader took the last copy. A view,
snapshot, render or export uses the newest copy at once, and the statistics are read as they stand. Only what
changes or must see the whole state (reset, load, regions, checkpoints) takes the model lock, and the training
thread lets such a caller in before its next step: Python's locks are not fair, and a thread that releases one
and takes it again at once kept callers waiting through steps for seconds.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from surg3d_nodes.common.workers import DropOldestQueue
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.regions import Region
from surg3d_nodes.recon.runner import (
    ModelView,
    Reconstructor,
    Snapshot,
    StepSchedule,
    TrainerStats,
    configure_torch_threads,
)

REPUBLISH_S = 0.1    # the fastest the training thread refreshes the readers' copy between frames


class OnlineTrainer:
    """Deformable Gaussian reconstruction trained while frames arrive (see the module docstring)."""

    def __init__(self, cfg: TrainerConfig | None = None):
        self.recon = Reconstructor(cfg)
        self.recon.on_frame = self._frame_in
        self._lock = threading.RLock()
        self._callers = 0                        # threads other than training's waiting for the lock or in it
        self._turn = threading.Condition()
        self._publish()                          # the readers' copy of the model (`view`)
        self._newest = True                      # the frame going in is the newest queued
        self._queue: DropOldestQueue[tuple[Frame, float]] = DropOldestQueue(self.recon.cfg.queue_size)
        self._stop = threading.Event()
        self._paused = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.on_frame: Callable[[], None] | None = None   # called (training thread) after a frame is in

    @property
    def cfg(self) -> TrainerConfig:
        """The configuration in force (image_scale resolved)."""
        return self.recon.cfg

    @property
    def device(self):
        """The torch device training runs on."""
        return self.recon.device

    @property
    def backend(self) -> str:
        """The renderer in use."""
        return self.recon.backend

    @property
    def num_gaussians(self) -> int:
        """Gaussians in the model now."""
        return self.recon.model.num_gaussians

    # ------------------------------------------------------------------ control
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
            if not self._thread.is_alive():
                with self._lock:
                    self._publish()     # the model as training left it, for what is read after the stop
            self._thread = None
        self.recon.stats.state = "idle"

    def pause(self) -> None:
        """Stop training iterations (frames are still received and stored)."""
        self._paused.set()
        self.recon.stats.state = "paused"

    def resume(self) -> None:
        """Resume training iterations. The state says so at once (running, or idle without frames), not only at
        the next step: a trainer throttled by `iterations_per_frame` may take none until its next frame."""
        self._paused.clear()
        self.recon.stats.state = "running" if len(self.recon.store) else "idle"
        self._wake.set()

    @property
    def paused(self) -> bool:
        """True while paused."""
        return self._paused.is_set()

    def reset(self) -> None:
        """Drop the model, keyframes and counters (the thread keeps running)."""
        with self._exclusive():
            self._queue.clear()
            self._replace(Reconstructor(self.recon.cfg))

    def set_regions(self, regions: tuple[Region, ...]) -> None:
        """The operator's regions of interest (`Reconstructor.set_regions`); they outlast a reset or a load."""
        with self._exclusive():
            self.recon.set_regions(regions)

    @contextmanager
    def _exclusive(self) -> Iterator[None]:
        """The model lock for a thread other than training's, which waits for it before its next step."""
        with self._turn:
            self._callers += 1
        try:
            with self._lock:
                yield
        finally:
            with self._turn:
                self._callers -= 1
                self._turn.notify_all()

    def _let_callers_in(self) -> None:
        with self._turn:
            self._turn.wait_for(lambda: self._callers == 0)

    def _replace(self, recon: Reconstructor) -> None:
        recon.on_frame = self._frame_in
        recon.set_regions(self.recon.regions)
        self.recon = recon
        self.recon.stats.state = "paused" if self.paused else "idle"
        self._publish()

    def _publish(self) -> None:
        """Hand out a copy of the model as it is now (under the lock)."""
        self._view = self.recon.view()
        self._view_taken = False
        self._view_at = time.monotonic()

    def _frame_in(self) -> None:
        # The newest frame of a backlog only (as `_drain` found it): the copy costs the training thread time, and
        # the cloud it serves would be superseded at once.
        if not self._newest:
            return
        self._publish()
        if self.on_frame is not None:
            self.on_frame()

    # ------------------------------------------------------------------ input
    def ingest(self, frame: Frame) -> bool:
        """Queue a frame for the training thread; never blocks. False when the queue was full
        (the oldest queued frame is dropped and counted as skipped 'queue_full')."""
        self.recon.stats.frames_received += 1
        ok = self._queue.put((frame, time.monotonic()))
        if not ok:
            self.recon.count_skip("queue_full")
        self._wake.set()
        return ok

    def wait_processed(self, timeout: float = 10.0) -> bool:
        """Block until every ingested frame has been used or skipped (tests, shutdown); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.recon.stats
            if len(self._queue) == 0 and st.frames_used + st.frames_skipped >= st.frames_received:
                return True
            time.sleep(0.01)
        return False

    # ------------------------------------------------------------------ reading
    def time_of(self, stamp_ns: int) -> float:
        """Model time of a stamp."""
        return self.recon.time_of(stamp_ns)

    def view(self, time_s: float | None = None) -> ModelView:
        """The newest frozen copy of the model, at `time_s` (default: the newest frame in it); never waits."""
        view, self._view_taken = self._view, True
        return view if time_s is None else dataclasses.replace(view, time_s=float(time_s))

    def stamp_range(self) -> tuple[int, int] | None:
        """Stamps (ns) of the oldest and the newest frame the model covers; None before the first frame."""
        clock = self.recon.clock
        return None if clock.first_ns is None else (clock.first_ns, clock.newest_ns)

    def snapshot(self, time_s: float | None = None) -> Snapshot:
        """Points, colours, opacities and scales at model time `time_s` (default: newest frame)."""
        return self.view(time_s).snapshot()

    def render_view(self, pose: np.ndarray, time_s: float | None = None, width: int | None = None,
                    height: int | None = None, K: np.ndarray | None = None, detail: bool = False,
                    fill: bool = False, remembered: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Render (rgb uint8, depth m with NaN where empty, alpha) at any pose and model time
        (`ModelView.render`)."""
        return self.view(time_s).render(pose, width, height, K, detail, fill, remembered)

    def export_ply(self, path, time_s: float | None = None):
        """Write a 3DGS PLY of the model at model time `time_s` (default newest); returns the path."""
        return self.view(time_s).export_ply(path)

    def live_pose(self) -> np.ndarray | None:
        """Pose of the newest frame by arrival (None before the first)."""
        pose = self.recon.live_pose     # replaced, never changed in place, by the training thread
        return None if pose is None else pose.copy()

    def get_stats(self) -> TrainerStats:
        """A copy of the statistics as they stand (each field as the training thread last set it)."""
        s = self.recon.get_stats()
        if self.paused:
            s.state = "paused"
        return s

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self, keyframes: bool = True) -> dict:
        """The reconstruction's state, consistent (taken under the lock)."""
        with self._exclusive():
            return self.recon.state_dict(keyframes)

    def load_state_dict(self, state: dict, cfg: TrainerConfig) -> None:
        """Replace the model by `state` trained with `cfg` (queued frames are dropped). Raises ValueError
        for inconsistent state, leaving the current model in place."""
        recon = Reconstructor(cfg)
        recon.load_state_dict(state)
        with self._exclusive():
            self._queue.clear()
            self._replace(recon)

    # ------------------------------------------------------------------ thread
    def _run(self) -> None:
        configure_torch_threads(self.cfg)
        while not self._stop.is_set():
            # Every frame queued now goes into the model before the next step (frame-to-cloud latency);
            # frames arriving meanwhile wait for the next loop, so training still runs when frames come
            # faster than they are processed (the bounded queue then drops the oldest, as queue_full).
            drained = self._drain(max_frames=max(1, len(self._queue)))
            if self.paused or not len(self.recon.store) or self._throttled():
                if self._view.iteration != self.recon.stats.iterations:   # the last steps, for readers meanwhile
                    self._let_callers_in()
                    with self._lock:
                        self._publish()
                if not drained:
                    self._wake.wait(0.02)
                    self._wake.clear()
                continue
            self.recon.stats.state = "running"
            try:
                self._let_callers_in()
                with self._lock:
                    self.recon.step(StepSchedule.live(self.cfg))
                    # A reader will want the trained model, and gets it without waiting; at most every
                    # REPUBLISH_S, as a copy of a large model takes the training thread milliseconds.
                    if self._view_taken and time.monotonic() - self._view_at >= REPUBLISH_S:
                        self._publish()
            except Exception as e:  # a bug or a CUDA error must not end live training silently
                self._record_error("training step", e)
                self._stop.wait(0.5)   # not a hot loop if it repeats

    def _record_error(self, where: str, e: BaseException) -> None:
        """Count an unexpected failure of the training thread and keep its description for the status."""
        tb = traceback.extract_tb(e.__traceback__)
        at = f" at {Path(tb[-1].filename).name}:{tb[-1].lineno}" if tb else ""
        self.recon.stats.errors += 1
        self.recon.stats.last_error = f"{where}: {type(e).__name__}: {e}{at}"[:300]

    def _throttled(self) -> bool:
        ipf = self.cfg.iterations_per_frame
        return ipf > 0 and self.recon.steps_spent() >= ipf * self.recon.stats.frames_used

    def _drain(self, max_frames: int) -> bool:
        got = 0
        while got < max_frames:
            # Take the frame under the lock: a reset between taking and processing it would otherwise
            # rebuild the model from a frame of before the reset.
            self._let_callers_in()
            with self._lock:
                item = self._queue.get_nowait()
                if item is None:
                    break
                frame, t_in = item
                got += 1
                try:
                    # A backlog gets one flow update and one colour fit, at its newest frame: their per-frame
                    # cost (tens of ms at 640x512) must not make the trainer fall further behind.
                    newest = self._newest = len(self._queue) == 0
                    self.recon.add_frame(frame, t_in, track=newest,
                                         steps=(self.cfg.iterations_per_frame or None) if newest else 0)
                except Exception as e:  # the frame is lost, not the model or the thread
                    self.recon.count_skip("error")
                    self._record_error(f"frame {frame.stamp_ns}", e)
        return got > 0
