"""Instrument segmentation node: rectified left image (+ depth, + kinematic prior) -> /instrument/mask.

`source`: `segmenter` (default: `yolo` when `model_path` is set, else `cue`); `cue` (the weight-free
CueSegmenter: colour, specularity, depth, temporal); `yolo` (a user's YOLO-seg model, `model_path` .onnx
or .pt; falls back to `cue` with one warning when it cannot be loaded); `dataset` (re-publishes
/dataset/tool_mask, stamp-matched to the image). With `use_depth` the image is paired with /depth/image by
stamp (core.sync); with `use_prior` the /instrument/prior_mask nearest in time (within `prior_tolerance_ms`)
is fused in (`fuse_mode`). The mask (mono8, 255 = instrument) carries the image's stamp. Work runs on a
worker thread fed by a bounded queue; bad input is counted, logged rate-limited and skipped.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict

import cv2
import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import Image

from surg3d_nodes.common.workers import QueueWorker
from surg3d_nodes.perception.segmentation import (
    CueParams,
    CueSegmenter,
    SegmentationModelError,
    YoloSegmenter,
    dataset_mask,
    fuse_masks,
)
from surg3d_nodes.perception.sync import ApproxTimeSync
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import MessageError, image_to_msg, msg_to_image, stamp_to_ns
from surg3d_nodes.ros.nodes.stereo_depth import bad_image_kind
from surg3d_nodes.ros.runtime import SurgNode, run_node
from surg3d_nodes.system.node_options import InstrumentSegOptions


class InstrumentSegNode(SurgNode):
    """Rectified image (+ depth, prior or dataset mask) -> instrument mask (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("instrument_seg", **kwargs)
        p = self.params.declare(InstrumentSegOptions)
        cue = self.params.declare(CueParams)
        # "segmenter" (graph.yaml's mask_source) = computed masks: YOLO when a model is given, else cues.
        self.source = p.source
        if self.source == "segmenter":
            self.source = "yolo" if p.model_path else "cue"
        self.margin_px = cue.margin_px
        self.use_depth = p.use_depth and self.source == "cue"
        self.use_prior = p.use_prior
        self.fuse_mode, self.prior_margin = p.fuse_mode, p.prior_margin_px
        self.prior_tol = round(p.prior_tolerance_ms * 1e6)
        self.cue = CueSegmenter(cue)
        self.yolo: YoloSegmenter | None = None
        if self.source == "yolo":
            classes = [c for c in p.yolo_classes if c >= 0] or None
            try:
                self.yolo = YoloSegmenter(p.model_path, conf=p.yolo_conf, classes=classes, imgsz=p.yolo_imgsz,
                                          margin_px=self.margin_px)
                self.get_logger().info(f"YOLO model {p.model_path} on {self.yolo.device}")
            except SegmentationModelError as e:
                self.get_logger().warning(f"{e}; falling back to the cue segmenter")
                self.source = "cue"
                self.use_depth = p.use_depth
                self.count("yolo_fallback")
        # Inputs paired by stamp: the image, then depth (cue source) or the dataset mask (dataset source).
        self.inputs = [topics.LEFT_RECT]
        if self.source == "dataset":
            self.inputs.append(topics.DATASET_MASK)
        elif self.use_depth:
            self.inputs.append(topics.DEPTH)
        tol = round(p.sync_tolerance_ms * 1e6)
        self.sync = ApproxTimeSync(len(self.inputs), tol, p.sync_queue_size) if len(self.inputs) > 1 \
            else None
        self._priors: OrderedDict[int, Image] = OrderedDict()
        self._prior_lock = threading.Lock()
        self._times: list[float] = []
        self._last_stamp = -1

        self.mask_pub = self.publisher(Image, topics.INSTRUMENT_MASK)
        group = MutuallyExclusiveCallbackGroup()
        for idx, topic in enumerate(self.inputs):
            self.subscription(Image, topic, lambda m, i=idx: self.on_input(i, m),
                                     callback_group=group)
        if self.use_prior:
            self.subscription(Image, topics.INSTRUMENT_PRIOR, self.on_prior, callback_group=group)
        self._worker = QueueWorker("instrument_seg", self.process, 2, on_error=self._failed).start()

    # ------------------------------------------------------------------ inputs
    def on_input(self, idx: int, msg: Image) -> None:
        """Pair inputs by stamp; a complete set goes to the worker (oldest dropped when busy)."""
        self.count(f"in.{self.inputs[idx]}")
        if self.sync is None:
            msgs: tuple = (msg,)
        else:
            out = self.sync.add(idx, stamp_to_ns(msg.header.stamp), msg)
            if out is None:
                return
            msgs = out[0]
        if not self._worker.submit(msgs):
            self.count("frames_dropped_busy")

    def on_prior(self, msg: Image) -> None:
        """Keep the last few kinematic prior masks by stamp."""
        with self._prior_lock:
            self._priors[stamp_to_ns(msg.header.stamp)] = msg
            while len(self._priors) > 10:
                self._priors.popitem(last=False)

    def _prior_for(self, stamp: int, shape: tuple[int, int]) -> np.ndarray | None:
        with self._prior_lock:
            if not self._priors:
                return None
            best = min(self._priors, key=lambda s: abs(s - stamp))
            msg = self._priors[best]
        if abs(best - stamp) > self.prior_tol:
            self.count("prior_stale")
            return None
        try:
            prior = msg_to_image(msg, "mono8")
        except MessageError as e:
            self.report_problem("prior_invalid", str(e))
            return None
        if prior.shape != shape:
            prior = cv2.resize(np.ascontiguousarray(prior), (shape[1], shape[0]),
                               interpolation=cv2.INTER_NEAREST)
        return prior

    # ------------------------------------------------------------------ processing
    def _failed(self, _msgs: tuple, e: BaseException) -> None:
        """The worker goes on whatever one frame does: report it."""
        self.report_problem("processing_error", f"{type(e).__name__}: {e}")

    def process(self, msgs: tuple) -> None:
        """Segment one frame (image + its paired depth / dataset mask) and publish the mask."""
        t0 = time.perf_counter()
        img_msg = msgs[0]
        stamp = stamp_to_ns(img_msg.header.stamp)
        try:
            image = msg_to_image(img_msg, ("rgb8", "mono8"))
        except MessageError as e:
            self.report_problem(bad_image_kind(e), str(e))
            return
        if image.ndim == 2:
            image = np.repeat(image[..., None], 3, axis=2)
        h, w = image.shape[:2]
        if self.source == "dataset":
            try:
                mask = dataset_mask(msg_to_image(msgs[1], "mono8"))
            except MessageError as e:
                self.report_problem("dataset_mask_invalid", str(e))
                return
            if mask.shape != (h, w):
                self.report_problem("size_mismatch", f"dataset mask {mask.shape} vs image {(h, w)}")
                return
        elif self.source == "yolo":
            mask = self.yolo.segment(image)
        else:
            depth = None
            if len(msgs) > 1:
                try:
                    depth = msg_to_image(msgs[1], "32FC1")
                except MessageError as e:
                    self.report_problem("depth_invalid", f"{e}; segmenting without depth")
                if depth is not None and depth.shape != (h, w):
                    self.report_problem("size_mismatch", f"depth {depth.shape} vs image {(h, w)}; "
                                        "segmenting without depth")
                    depth = None
            if stamp < self._last_stamp:  # time went backwards (bag loop, new clip): drop the temporal prior
                self.cue.reset()
                self.count("temporal_resets")
            self._last_stamp = stamp
            mask = self.cue.segment(image, depth=depth)
        if self.use_prior:
            prior = self._prior_for(stamp, (h, w))
            if prior is not None:
                mask = fuse_masks(mask, prior, mode=self.fuse_mode, prior_margin_px=self.prior_margin)
                self.count("fused_with_prior")
        self.mask_pub.publish(image_to_msg(mask, "mono8", stamp, img_msg.header.frame_id))
        self._times = [*self._times, (time.perf_counter() - t0) * 1000.0][-50:]
        self.count("masks")

    def status_values(self) -> dict[str, object]:
        """Source, sync and timing figures for the heartbeat."""
        values: dict[str, object] = {"source": self.source, "work_queue": self._worker.pending,
                                     "seg_ms_mean": float(np.mean(self._times)) if self._times else 0.0}
        if self.sync is not None:
            st = self.sync.stats
            values.update({"pairs_matched": st.sets_emitted, "unmatched": sum(st.unmatched),
                           "sync_dropped": sum(st.dropped)})
        return values

    def close(self) -> None:
        """Stop the worker thread."""
        self._worker.stop()
        super().close()


def main() -> None:
    """Process entry point: `python -m surg3d_nodes.ros.nodes.instrument_seg --ros-args ...`."""
    run_node(InstrumentSegNode)


if __name__ == "__main__":
    main()
