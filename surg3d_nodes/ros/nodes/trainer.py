"""Reconstruction node: incremental deformable Gaussian splatting trained while frames arrive.

Subscribes /stereo/left/image_rect + /stereo/left/camera_info_rect, /depth/image, /instrument/mask and
/camera/pose; pairs image, depth, mask and pose by stamp (core.sync; `use_depth`/`use_mask` drop an input,
`static_pose` replaces the pose topic by the identity for a fixed endoscope) and feeds core.trainer's
OnlineTrainer, whose own thread trains (ingestion never blocks the callbacks). Timers publish at their
rates /recon/points (PointCloud2 x y z rgb opacity scale inferred, world frame), /recon/render/image and
/recon/render/depth at the live pose, /recon/deoccluded/image (live image with instrument pixels replaced
by the rendering, tissue no camera has shown tinted: recon.completion) and /recon/status. Services:
/recon/pause, /recon/resume, /recon/reset (Trigger),
/recon/save (SaveModel: ply | checkpoint), /recon/load (LoadCheckpoint), /recon/render_view (RenderView);
topic /recon/view_request (ViewRequest) -> /recon/view/image. These requested views carry the frame detail of
the frames nearest their moment (recon.detail, `detail_window_s`). The operator's regions of interest
(/recon/roi, latched, updates by id) are weighted in training (recon.regions); their PSNR is in the heartbeat.
A request on /recon/gaussians/request (a stamp, 0 = newest) sends every Gaussian at that moment on
/recon/gaussians (the viewer bridge's splat view and time slider), with the training pixels' low-pass in
their scales (ModelView.gaussians for_display) so that a splat viewer at any resolution shows what the trainer
renders.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from surg3d_msgs.msg import RegionOfInterest, TrainerStatus, ViewRequest
from surg3d_msgs.srv import LoadCheckpoint, RenderView, SaveModel
from surg3d_nodes.common.camera import scale_intrinsics
from surg3d_nodes.perception.sync import ApproxTimeSync
from surg3d_nodes.recon.completion import deoccluded, tint_inferred
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.inpaint_model import InpaintModelError
from surg3d_nodes.recon.io.checkpoint import load_checkpoint, save_checkpoint
from surg3d_nodes.recon.online import OnlineTrainer
from surg3d_nodes.recon.regions import Region, update_regions
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import (
    MessageError,
    header,
    image_to_msg,
    msg_to_camera,
    msg_to_image,
    msg_to_pose,
    msg_to_region,
    ns_to_stamp,
    pack_rgb,
    pointcloud_to_msg,
    stamp_to_ns,
)
from surg3d_nodes.ros.runtime import ERROR, SurgNode, run_node
from surg3d_nodes.system.monitoring import InputLinks
from surg3d_nodes.system.node_options import TrainerNodeOptions
from surg3d_nodes.system.runs import CHECKPOINT_GLOB, checkpoints, prune_checkpoints


class TrainerNode(SurgNode):
    """ROS adapter of OnlineTrainer (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("trainer", **kwargs)
        # Every TrainerConfig field is a parameter; the live ones reach the training thread's copy.
        self.cfg = self.params.declare(TrainerConfig, lambda name, value: setattr(self.trainer.cfg, name, value))
        p = self.params.declare(TrainerNodeOptions, self._on_option)
        self.output_dir = Path(p.output_dir)
        self.points_max = p.points_max
        self.points_min_opacity = p.points_min_opacity
        self.checkpoints_kept = p.checkpoints_kept
        self.points_on_frame_rate = p.points_on_frame_rate
        self.deocc_tint = p.deoccluded_tint_inferred
        self.deocc_detail = p.deoccluded_detail
        self._points_frames = -1               # frames_used when the last cloud was taken
        self._points_last = 0.0                # monotonic time of the last cloud
        try:
            self.trainer = OnlineTrainer(self.cfg)
        except InpaintModelError as e:     # the node runs on with the classical fill; the heartbeat counts it
            self.get_logger().error(f"{e}; the tissue never seen is filled harmonically instead")
            self.cfg.inpaint_model = ""
            self.count("inpaint_model_fallback")
            self.trainer = OnlineTrainer(self.cfg)
        resume = p.resume_from_checkpoint
        if resume == "auto":
            self._resume_newest()
        elif resume:              # an explicit checkpoint must load: a wrong path fails the start, named
            load_checkpoint(resume, self.trainer)
            self.get_logger().info(f"resumed from {resume}: {self.trainer.num_gaussians} Gaussians")
        # Inputs paired by stamp: image always, then depth, mask, pose unless disabled.
        self.inputs = ["image"] + [n for n, on in (("depth", p.use_depth), ("mask", p.use_mask),
                                                    ("pose", not p.static_pose)) if on]
        self.sync = ApproxTimeSync(max(2, len(self.inputs)), round(p.sync_tolerance_ms * 1e6), p.sync_queue_size)
        self._info: CameraInfo | None = None
        self._live: tuple[np.ndarray, np.ndarray | None, int] | None = None   # rgb, mask, stamp
        self._errors_reported = 0

        inputs = MutuallyExclusiveCallbackGroup()
        self.subscription(CameraInfo, topics.LEFT_RECT_INFO, self.on_info, callback_group=inputs)
        subs = {"image": (Image, topics.LEFT_RECT), "depth": (Image, topics.DEPTH),
                "mask": (Image, topics.INSTRUMENT_MASK), "pose": (PoseStamped, topics.CAMERA_POSE)}
        for i, name in enumerate(self.inputs):
            cls, topic = subs[name]
            # A deeper history than the stream default: bursts wait while the input group is busy pairing.
            self.subscription(cls, topic, lambda m, i=i: self.on_input(i, m), 10, callback_group=inputs)
        self._input_topics = {name: subs[name][1] for name in self.inputs}
        self._links = InputLinks(self.inputs, p.input_link_timeout_s)
        if p.input_link_timeout_s > 0:
            self.create_timer(1.0, self._check_links, callback_group=MutuallyExclusiveCallbackGroup())

        self.points_pub = self.publisher(PointCloud2, topics.RECON_POINTS)
        self.render_pub = self.publisher(Image, topics.RECON_RENDER)
        self.render_depth_pub = self.publisher(Image, topics.RECON_RENDER_DEPTH)
        self.deocc_pub = self.publisher(Image, topics.RECON_DEOCCLUDED)
        self.view_pub = self.publisher(Image, topics.RECON_VIEW_IMAGE)
        self.status_pub = self.publisher(TrainerStatus, topics.RECON_STATUS)
        # Publishing runs in groups apart from the inputs, and the cheap status apart from the slow renders,
        # so a busy renderer neither delays ingestion nor starves the status.
        render_group = MutuallyExclusiveCallbackGroup()
        points_group = MutuallyExclusiveCallbackGroup()
        timers = ((p.points_rate, self.publish_points, points_group),
                  (p.render_rate, self.publish_render, render_group),
                  (p.deoccluded_rate, self.publish_deoccluded, render_group),
                  (p.status_rate, self.publish_status, MutuallyExclusiveCallbackGroup()))
        self._pub_timers = {}
        for (rate, fn, group), name in zip(timers, ("points_rate", "render_rate", "deoccluded_rate",
                                                     "status_rate"), strict=True):
            # Created even at rate 0 (then cancelled) so a live parameter change can start it.
            self._pub_timers[name] = self.create_timer(1.0 / max(float(rate), 1e-3), fn, callback_group=group)
            if float(rate) <= 0:
                self._pub_timers[name].cancel()
        # A cloud also goes out as soon as a new frame is in the model (frame-to-cloud latency): the
        # training thread triggers a guard condition, which wakes the executor (no polling timer).
        guard = self.create_guard_condition(self._points_on_frame, callback_group=points_group)
        self.trainer.on_frame = guard.trigger
        services = MutuallyExclusiveCallbackGroup()
        self.create_service(Trigger, topics.SRV_PAUSE, self.srv_pause, callback_group=services)
        self.create_service(Trigger, topics.SRV_RESUME, self.srv_resume, callback_group=services)
        self.create_service(Trigger, topics.SRV_RESET, self.srv_reset, callback_group=services)
        self.create_service(SaveModel, topics.SRV_SAVE, self.srv_save, callback_group=services)
        self.create_service(LoadCheckpoint, topics.SRV_LOAD, self.srv_load, callback_group=services)
        self.create_service(RenderView, topics.SRV_RENDER_VIEW, self.srv_render_view, callback_group=services)
        self.subscription(ViewRequest, topics.RECON_VIEW_REQUEST, self.on_view_request,
                                 callback_group=services)
        self.gaussians_pub = self.publisher(PointCloud2, topics.RECON_GAUSSIANS)
        # Depth 1: a viewer asking faster than the model evaluates gets the newest moment, not a backlog.
        self.subscription(Time, topics.RECON_GAUSSIANS_REQUEST, self.on_gaussians_request, 1,
                          callback_group=render_group)
        self._regions: dict[int, Region] = {}
        self.subscription(RegionOfInterest, topics.RECON_ROI, self.on_region, callback_group=services)
        # The training thread runs Python between torch ops and holds the GIL for up to the switch interval
        # (5 ms) whenever an executor thread wants it; each message needs several hand-overs, so at the
        # default the callbacks fall behind the stream. A 0.5 ms interval keeps them prompt.
        sys.setswitchinterval(5e-4)
        self.trainer.start()
        self.get_logger().info(f"trainer on {self.trainer.device} ({self.trainer.backend}), inputs "
                               f"{'+'.join(self.inputs)}, output_dir {self.output_dir}")

    def _on_option(self, name: str, value: float) -> None:
        """A live publish rate changed (range and liveness were checked by ros.params)."""
        if name in self._pub_timers:
            timer = self._pub_timers[name]
            if value > 0:
                timer.timer_period_ns = int(1e9 / value)
                timer.reset()
            else:
                timer.cancel()
        elif name == "points_on_frame_rate":
            self.points_on_frame_rate = value
        elif name == "deoccluded_tint_inferred":
            self.deocc_tint = bool(value)
        elif name == "deoccluded_detail":
            self.deocc_detail = bool(value)

    # ------------------------------------------------------------------ inputs
    def on_info(self, msg: CameraInfo) -> None:
        """Keep the newest rectified CameraInfo."""
        self._info = msg

    def on_input(self, index: int, msg) -> None:
        """Queue one input for stamp pairing; a complete set becomes a Frame for the trainer."""
        self.count(f"{self.inputs[index]}_received")
        now = time.monotonic()
        self._links.received(self.inputs[index], now)
        stamp = stamp_to_ns(msg.header.stamp)
        if len(self.inputs) == 1:
            self._links.paired(now)
            self.on_set((msg,), stamp)
            return
        out = self.sync.add(index, stamp, msg)
        if out is not None:
            self._links.paired(now)
            self.on_set(out[0], out[1][0])

    def _check_links(self) -> None:
        """Report inputs that arrive but never pair, and an input that delivers nothing while the others do
        (system.monitoring.InputLinks): no frame can be paired. With a publisher its DDS link is broken (ERROR);
        without one, its node is not running or was never discovered (WARN)."""
        now = time.monotonic()
        if self._links.unpaired(now):
            sync = self.sync.stats
            lost = ", ".join(f"{n} {sync.dropped[i]} dropped / {sync.unmatched[i]} unmatched / {sync.late[i]} late"
                             for i, n in enumerate(self.inputs))
            self.report_problem("inputs_unpaired", f"every input arrives but no set was paired in "
                                f"{self._links.timeout_s:.0f} s ({lost}): their stamps differ by more than "
                                f"sync_tolerance_ms, or one comes later than sync_queue_size messages of the others",
                                ERROR)
        publishers = {n: self.count_publishers(t) for n, t in self._input_topics.items()}
        cut, unpublished = self._links.silent(publishers, now)
        if not (cut or unpublished):
            return
        others = (f"nothing received in {self._links.timeout_s:.0f} s while "
                  f"{', '.join(sorted(self._links.first))} arrive")
        if cut:
            self.report_problem("input_link", f"{', '.join(cut)}: {'+'.join(str(publishers[n]) for n in cut)} "
                                f"publisher(s) but {others}: its DDS link is broken", ERROR)
        if unpublished:
            self.report_problem("input_unpublished", f"{', '.join(unpublished)}: no publisher discovered and "
                                f"{others}: its node is not running, or not discovered")

    def on_set(self, msgs: tuple, stamp: int) -> None:
        """Convert a matched set (never blocks: the trainer only enqueues)."""
        by_name = dict(zip(self.inputs, msgs, strict=False))
        if self._info is None:
            self.report_problem("camera_info_missing", "no /stereo/left/camera_info_rect yet; frame skipped")
            return
        try:
            cam = msg_to_camera(self._info)
            rgb = np.array(msg_to_image(by_name["image"], "rgb8"))
            depth = np.array(msg_to_image(by_name["depth"], "32FC1")) if "depth" in by_name else None
            mask = np.array(msg_to_image(by_name["mask"], "mono8")) if "mask" in by_name else None
            pose = msg_to_pose(by_name["pose"]) if "pose" in by_name else np.eye(4)
        except MessageError as e:
            self.report_problem("bad_input", str(e))
            return
        if rgb.shape[:2] != (cam.height, cam.width):
            self.report_problem("camera_info_size", f"image {rgb.shape[1]}x{rgb.shape[0]} but camera_info "
                                f"says {cam.width}x{cam.height}")
            return
        self._live = (rgb, mask, stamp)
        if not self.trainer.ingest(Frame(stamp, rgb, depth, mask, pose, cam)):
            self.count("frames_dropped_busy")

    def on_region(self, msg: RegionOfInterest) -> None:
        """A region of interest added, replaced, deleted or cleared: training weighs the new set."""
        try:
            self._regions = update_regions(self._regions, msg_to_region(msg, topics.WORLD_FRAME))
        except MessageError as e:
            self.report_problem("bad_region", str(e))
            return
        self.trainer.set_regions(tuple(self._regions.values()))
        self.count("regions_received")
        self.get_logger().info(f"regions of interest: {sorted(self._regions) or 'none'}")

    # ------------------------------------------------------------------ publishing
    def _frame_id(self) -> str:
        return self._info.header.frame_id if self._info is not None else topics.LEFT_OPTICAL_FRAME

    def _points_on_frame(self) -> None:
        # At most points_on_frame_rate clouds a second; a frame skipped here is in the next periodic cloud.
        rate = self.points_on_frame_rate
        if (rate > 0 and self.trainer.get_stats().frames_used != self._points_frames
                and time.monotonic() - self._points_last >= 1.0 / rate):
            self.publish_points()

    def publish_points(self) -> None:
        """Publish the model as PointCloud2 (world frame, stamped with the newest frame in it), most
        opaque points first when capped."""
        frames = self.trainer.get_stats().frames_used
        s = self.trainer.snapshot()
        if s.points.shape[0] == 0:   # nothing yet (the readers' copy is handed out as the first frame goes in)
            return
        self._points_frames = frames
        self._points_last = time.monotonic()
        keep = np.nonzero(s.opacities >= self.points_min_opacity)[0]
        if keep.size > self.points_max:
            keep = keep[np.argsort(-s.opacities[keep])[:self.points_max]]
        cols = (s.colors[keep] * 255.0 + 0.5).astype(np.uint8)
        fields = {"x": s.points[keep, 0], "y": s.points[keep, 1], "z": s.points[keep, 2],
                  "rgb": pack_rgb(cols), "opacity": s.opacities[keep], "scale": s.scales[keep],
                  "inferred": s.inferred[keep].astype(np.float32)}
        self.points_pub.publish(pointcloud_to_msg(fields, s.stamp_ns, topics.WORLD_FRAME))
        if not self.counters["points_published"]:    # once: the model is out (launch logs and tests wait for it)
            self.get_logger().info(f"first cloud: {keep.size} points from {self._points_frames} frame(s)")
        self.count("points_published")

    def on_gaussians_request(self, msg: Time) -> None:
        """Every Gaussian at the requested moment (stamp 0: the newest frame), stamped with that moment."""
        if self.trainer.num_gaussians == 0:
            return
        ns = stamp_to_ns(msg)
        view = self.trainer.view(self.trainer.time_of(ns) if ns else None)
        g = view.gaussians(for_display=True)
        cols = (g["colors"] * 255.0 + 0.5).astype(np.uint8)
        fields = {"x": g["means"][:, 0], "y": g["means"][:, 1], "z": g["means"][:, 2], "rgb": pack_rgb(cols),
                  "opacity": g["opacities"]}
        fields.update({f"scale_{a}": g["scales"][:, i] for i, a in enumerate("xyz")})
        fields.update({f"rot_{a}": g["quats"][:, i] for i, a in enumerate("wxyz")})
        self.gaussians_pub.publish(pointcloud_to_msg(fields, ns or view.stamp_ns, topics.WORLD_FRAME))
        self.count("gaussians_published")

    def publish_render(self) -> None:
        """Render at the live pose and newest time (training resolution)."""
        pose = self.trainer.live_pose()
        if pose is None or self.trainer.num_gaussians == 0:
            return
        stamp = self.trainer.get_stats().last_frame_stamp
        try:
            rgb, depth, _ = self.trainer.render_view(pose)
        except RuntimeError:  # a reset (service thread) between the checks above and the render
            return
        self.render_pub.publish(image_to_msg(rgb, "rgb8", stamp, self._frame_id()))
        self.render_depth_pub.publish(image_to_msg(depth, "32FC1", stamp, self._frame_id()))

    def publish_deoccluded(self) -> None:
        """Live image with instrument pixels replaced by the tissue as the model remembers it, with the texture the
        newest frames showed of it while `deoccluded_detail` is on (recon.completion.deoccluded, `ModelView.render`
        remembered); pixels that inferred Gaussians make are tinted while `deoccluded_tint_inferred` is on."""
        live = self._live
        pose = self.trainer.live_pose()
        if live is None or pose is None or self.trainer.num_gaussians == 0:
            return
        rgb_live, mask, stamp = live
        img = rgb_live
        if mask is not None and (mask > 0).any():    # no instrument: the live image as it is
            view = self.trainer.view()
            try:
                render, _, alpha = view.render(pose, detail=self.deocc_detail, remembered=True)
            except RuntimeError:  # no frame in the model (a reset between the checks above and the render)
                return
            size = (rgb_live.shape[1], rgb_live.shape[0])
            if render.shape[:2] != rgb_live.shape[:2]:
                render, alpha = (cv2.resize(x, size, interpolation=cv2.INTER_LINEAR) for x in (render, alpha))
            weight = view.inferred_weight(pose)
            if weight.shape != mask.shape:
                weight = cv2.resize(weight, size, interpolation=cv2.INTER_LINEAR)
            img = deoccluded(rgb_live, render, alpha, mask, weight)
            if self.deocc_tint:
                img = tint_inferred(img, weight * (mask > 0))
        self.deocc_pub.publish(image_to_msg(img, "rgb8", stamp, self._frame_id()))

    def publish_status(self) -> None:
        """TrainerStatus of the trainer's counters; failures of the training thread become problems."""
        st = self.trainer.get_stats()
        if st.errors > self._errors_reported:
            self._errors_reported = st.errors
            self.report_problem("training_error", f"{st.errors} so far, newest: {st.last_error}", ERROR)
        gpu = torch.cuda.memory_allocated() / 1e6 if self.trainer.device.type == "cuda" else 0.0
        msg = TrainerStatus(
            header=header(self.get_clock().now().nanoseconds, topics.WORLD_FRAME), state=st.state,
            backend=st.backend, device=st.device, frames_received=st.frames_received,
            frames_used=st.frames_used, frames_skipped=st.frames_skipped, keyframes=st.keyframes,
            num_gaussians=st.num_gaussians, iterations=st.iterations,
            iterations_per_second=float(st.iterations_per_second), loss=float(st.loss),
            loss_color=float(st.loss_color), loss_depth=float(st.loss_depth),
            psnr_recent=float(st.psnr_recent), inferred_share=float(st.inferred_share),
            gpu_memory_mb=float(gpu), latency_ms=float(st.latency_ms),
            last_frame_stamp=ns_to_stamp(st.last_frame_stamp))
        self.status_pub.publish(msg)

    def status_values(self) -> dict[str, object]:
        st = self.trainer.get_stats()
        vals = {"state": st.state, "gaussians": st.num_gaussians, "iterations": st.iterations,
                "frames_used": st.frames_used, "frames_skipped": st.frames_skipped}
        vals.update({f"skipped.{k}": v for k, v in st.skip_reasons.items()})
        # Inputs that never pair (one arriving later than the others' queues hold) show here, not as skips.
        sync = self.sync.stats
        vals["sets_matched"] = sync.sets_emitted
        for i, name in enumerate(self.inputs):
            vals.update({f"sync.{name}.{what}": n for what, n in (("dropped", sync.dropped[i]),
                                                                   ("unmatched", sync.unmatched[i]),
                                                                   ("late", sync.late[i])) if n})
        span = self.trainer.stamp_range()
        if span is not None:   # the time slider's range
            vals["model.first_stamp_ns"], vals["model.newest_stamp_ns"] = span
        vals["regions"] = len(self._regions)
        # Readers DDS has matched to the cloud (viewers, bridge, monitor): a viewer with no cloud shows whether it
        # is connected at all.
        vals["points_readers"] = self.points_pub.get_subscription_count()
        if self._regions and st.psnr_regions > 0:    # 0: not measured yet (no step on the newest frame since)
            vals["psnr_regions"] = round(st.psnr_regions, 2)
        vals["region_steps"] = st.region_steps
        if self.cfg.refine_pose_iterations > 0:
            vals.update({"pose_refine.accepted": st.pose_refined, "pose_refine.rejected": st.pose_refine_rejected,
                         "pose_refine.last": st.pose_refine_last,
                         "pose_refine.mean_mm": round(st.pose_correction_mm, 3),
                         "pose_refine.mean_deg": round(st.pose_correction_deg, 3)})
        return vals

    # ------------------------------------------------------------------ services
    def srv_pause(self, _req, res):
        """Pause training."""
        self.trainer.pause()
        res.success, res.message = True, "paused"
        return res

    def srv_resume(self, _req, res):
        """Resume training."""
        self.trainer.resume()
        res.success, res.message = True, "running"
        return res

    def srv_reset(self, _req, res):
        """Drop the model and keyframes."""
        self.trainer.reset()
        self.sync.reset()
        res.success, res.message = True, "reset"
        return res

    def srv_save(self, req, res):
        """Save a PLY (model at the newest time) or a full checkpoint."""
        kind = req.kind or "checkpoint"
        if kind not in ("ply", "checkpoint"):
            res.success, res.message = False, f"unknown kind {kind!r} (expected 'ply' or 'checkpoint')"
            return res
        stamp = time.strftime("%Y%m%d_%H%M%S")
        default = (f"recon_{stamp}.ply" if kind == "ply"
                   else f"checkpoint_{stamp}_{self.trainer.get_stats().iterations}.pt")
        path = Path(req.path) if req.path else self.output_dir / default
        try:
            if kind == "ply":
                self.trainer.export_ply(path)
            else:
                save_checkpoint(self.trainer, path)
                if not req.path:
                    self.count("checkpoints_deleted", len(prune_checkpoints(self.output_dir, self.checkpoints_kept)))
        except (OSError, RuntimeError, ValueError) as e:
            res.success, res.message = False, f"save failed: {e}"
            return res
        res.success, res.message, res.path = True, f"saved {kind}", str(path)
        return res

    def srv_load(self, req, res):
        """Load a checkpoint (empty path: newest in output_dir) and continue training from it."""
        path = Path(req.path) if req.path else None
        if path is None:
            found = self._checkpoints()
            if not found:
                res.success, res.message = False, f"no {CHECKPOINT_GLOB} in {self.output_dir}"
                return res
            path = found[-1]
        try:
            load_checkpoint(path, self.trainer)
        except (OSError, ValueError) as e:
            res.success, res.message = False, f"load failed: {e}"
            return res
        self.sync.reset()
        res.success = True
        res.message = f"loaded {path}: {self.trainer.num_gaussians} Gaussians"
        return res

    def _resume_newest(self) -> None:
        """A respawned trainer continues from the newest checkpoint in output_dir that loads; one that does
        not (truncated, another format version) is reported and left in place, never a reason to crash-loop."""
        for path in reversed(self._checkpoints()):
            try:
                load_checkpoint(path, self.trainer)
            except (ValueError, OSError, KeyError) as e:
                self.report_problem("checkpoint_unusable", f"not resuming from {path}: {e}")
                self.trainer = OnlineTrainer(self.cfg)     # whatever a failed load left half-restored
                continue
            self.get_logger().info(f"resumed from {path}: {self.trainer.num_gaussians} Gaussians")
            return

    def _checkpoints(self) -> list[Path]:
        """Complete checkpoints in output_dir, oldest first (temp files are hidden, never matched)."""
        return checkpoints(self.output_dir)

    def _view(self, pose_msg, stamp_msg, width: int, height: int, fill: bool) -> tuple[np.ndarray, np.ndarray]:
        pose = msg_to_pose(pose_msg)
        ns = stamp_to_ns(stamp_msg)
        t = None if ns == 0 else self.trainer.time_of(ns)
        live = self._live
        w = int(width) or (live[0].shape[1] if live else 0) or None
        h = int(height) or (live[0].shape[0] if live else 0) or None
        K = None
        if self._info is not None and w and h:
            cam = msg_to_camera(self._info)
            K = scale_intrinsics(cam.intrinsics(), w / cam.width, h / cam.height)
        # The operator's views of any moment carry the frame detail (trainer parameter detail_window_s), and with
        # `fill` (a tissue-only view request) what no frame saw beside the model's cover; the live /recon/render
        # stays the model alone, to be compared with the camera image. Their guesses are marked.
        view = self.trainer.view(t)          # one frozen model for the view and its marks
        rgb, depth, _ = view.render(pose, w, h, K, detail=True, fill=fill)
        if self.deocc_tint:
            rgb = tint_inferred(rgb, view.inferred_weight(pose, w, h, K, fill))
        return rgb, depth

    def srv_render_view(self, req, res):
        """Render the model from any pose at any past time (stamp 0 = newest)."""
        try:
            rgb, depth = self._view(req.pose, req.header.stamp, req.width, req.height, fill=False)
        except (MessageError, RuntimeError, ValueError) as e:
            res.success, res.message = False, str(e)
            return res
        stamp = stamp_to_ns(req.header.stamp)
        res.color = image_to_msg(rgb, "rgb8", stamp, req.header.frame_id or topics.WORLD_FRAME)
        res.depth = image_to_msg(depth, "32FC1", stamp, req.header.frame_id or topics.WORLD_FRAME)
        res.success, res.message = True, "ok"
        return res

    def on_view_request(self, msg: ViewRequest) -> None:
        """Render a requested view to /recon/view/image (the model holds tissue only either way; `deoccluded`
        also fills in what no frame saw beside the model's cover, marked)."""
        try:
            rgb, _ = self._view(msg.pose, msg.header.stamp, msg.width, msg.height, fill=msg.deoccluded)
        except (MessageError, RuntimeError, ValueError) as e:
            self.report_problem("view_request", str(e))
            return
        self.view_pub.publish(image_to_msg(rgb, "rgb8", stamp_to_ns(msg.header.stamp), topics.WORLD_FRAME))

    def close(self) -> None:
        """Stop the training thread."""
        self.trainer.stop()
        super().close()


def main() -> None:
    """Process entry point."""
    run_node(TrainerNode)


if __name__ == "__main__":
    main()
