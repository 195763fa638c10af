"""Stereo depth node: left/right images + CameraInfo -> rectified left image, depth, confidence (+ points).

Subscribes /stereo/{left,right}/image_raw and camera_info; pairs the images by stamp (core.sync, tolerance
`sync_tolerance_ms`) with the latest CameraInfo of each side (or `left/right_calibration_file`, camera_
calibration YAML, for drivers publishing none or an uncalibrated one); rectifies unless the calibration says
the image already is rectified; computes depth with SGBM (or an ONNX model, `backend: onnx`, falling back to
SGBM with one warning when the model cannot be loaded) on a worker thread fed by a bounded queue (oldest
pair dropped when busy). Publishes /stereo/left/image_rect + camera_info_rect, /depth/image (32FC1 metres,
NaN invalid), /depth/confidence (mono8) and optionally /depth/points (PointCloud2 x y z rgb). Bad input
(encoding, size mismatch, missing/invalid CameraInfo, corrupt data) is counted, logged rate-limited, shown
in the NodeStatus heartbeat, and skipped.
"""

from __future__ import annotations

import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.camera_yaml import load_camera_yaml
from surg3d_nodes.common.geometry import backproject
from surg3d_nodes.common.workers import QueueWorker
from surg3d_nodes.perception.falloff import FalloffEstimator
from surg3d_nodes.perception.rectify import Rectifier, rectified_camera
from surg3d_nodes.perception.stereo_depth import DepthModelError, OnnxDepth, SGBMParams, StereoDepth
from surg3d_nodes.perception.sync import ApproxTimeSync
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import (
    MessageError,
    camera_to_msg,
    image_to_msg,
    msg_to_camera,
    msg_to_image,
    pack_rgb,
    pointcloud_to_msg,
    stamp_to_ns,
)
from surg3d_nodes.ros.runtime import SurgNode, run_node
from surg3d_nodes.system.node_options import StereoDepthOptions

# Stereo pairs the endoscope's fall-off is measured on (one is enough; a few smooth over noise).
FALLOFF_PAIRS = 5


def bad_image_kind(err: MessageError) -> str:
    """Problem kind of an unreadable Image: 'corrupt_image' (data/step/size) or 'encoding'."""
    text = str(err)
    return "corrupt_image" if any(w in text for w in ("bytes", "step", "empty")) else "encoding"


class StereoDepthNode(SurgNode):
    """Stereo pair -> rectified left image, depth and confidence (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("stereo_depth", **kwargs)
        p = self.params.declare(StereoDepthOptions)
        self.sgbm_params = self.params.declare(SGBMParams)
        self.backend = p.backend
        self.onnx_model = p.onnx_model
        self.onnx_mono_output, self.onnx_normalize = p.onnx_mono_output, p.onnx_normalize
        self.publish_points = p.publish_points
        self.points_stride = p.points_stride
        self.points_min_conf = p.points_min_confidence
        self.sync = ApproxTimeSync(2, round(p.sync_tolerance_ms * 1e6), p.sync_queue_size)
        self.rectifier = Rectifier()
        # camera_calibration YAML files override the CameraInfo of their side (uncalibrated drivers).
        self._file_cams: list[CameraModel | None] = [
            load_camera_yaml(path, frame) if path else None
            for path, frame in ((p.left_calibration_file, topics.LEFT_OPTICAL_FRAME),
                                (p.right_calibration_file, topics.RIGHT_OPTICAL_FRAME))]
        self._info: list[CameraInfo | None] = [None, None]
        self._held: tuple[Image, Image] | None = None   # a pair matched before its CameraInfo arrived
        self._engine = None
        self._engine_key: tuple | None = None
        self._times: list[float] = []
        # The endoscope's brightness fall-off, measured on the first pairs and reported (perception.falloff):
        # what the trainer's `falloff` setting should be for this endoscope.
        self._falloff = FalloffEstimator()
        self._falloff_pairs = 0
        self._falloff_status = "measuring"
        self._falloff_corner: float | None = None

        self.rect_pub = self.publisher(Image, topics.LEFT_RECT)
        self.rect_info_pub = self.publisher(CameraInfo, topics.LEFT_RECT_INFO)
        self.depth_pub = self.publisher(Image, topics.DEPTH)
        self.conf_pub = self.publisher(Image, topics.DEPTH_CONFIDENCE)
        self.points_pub = (self.publisher(PointCloud2, topics.DEPTH_POINTS)
                           if self.publish_points else None)
        group = MutuallyExclusiveCallbackGroup()
        for side, (img_topic, info_topic) in enumerate([(topics.LEFT_IMAGE, topics.LEFT_INFO),
                                                        (topics.RIGHT_IMAGE, topics.RIGHT_INFO)]):
            self.subscription(Image, img_topic, lambda m, s=side: self.on_image(s, m), callback_group=group)
            self.subscription(CameraInfo, info_topic, lambda m, s=side: self.on_info(s, m), callback_group=group)
        self._worker = QueueWorker("stereo_depth", lambda item: self.process(*item), p.work_queue_size,
                                   on_error=self._failed).start()
        calib = ["file" if c is not None else "camera_info" for c in self._file_cams]
        self.get_logger().info(f"stereo depth ({self.backend}), calibration left: {calib[0]}, right: {calib[1]}")

    # ------------------------------------------------------------------ inputs
    def on_info(self, side: int, msg: CameraInfo) -> None:
        """Keep the latest CameraInfo of each side (validated when a pair is processed); release a pair
        that was waiting for it."""
        self._info[side] = msg
        if self._held is not None and not self._missing_info():
            held, self._held = self._held, None
            self._submit(*held)

    def _missing_info(self) -> bool:
        return any(self._info[s] is None and self._file_cams[s] is None for s in (0, 1))

    def on_image(self, side: int, msg: Image) -> None:
        """Queue an image for stamp pairing; a matched pair goes to the worker (oldest dropped when busy).

        A pair matched before its CameraInfo (drivers publish the info just after the image) waits for it;
        only the newest such pair is held, an older one goes on and is reported as missing its calibration.
        """
        self.count("images_left" if side == 0 else "images_right")
        out = self.sync.add(side, stamp_to_ns(msg.header.stamp), msg)
        if out is None:
            return
        pair = (out[0][0], out[0][1])
        if self._missing_info():
            pair, self._held = self._held, pair
            if pair is None:
                return
        self._submit(*pair)

    def _submit(self, left: Image, right: Image) -> None:
        item = (left, right, self._info[0], self._info[1])
        if not self._worker.submit(item):
            self.count("pairs_dropped_busy")

    # ------------------------------------------------------------------ processing
    def _failed(self, _item: tuple, e: BaseException) -> None:
        """The worker goes on whatever one pair does: report it."""
        self.report_problem("processing_error", f"{type(e).__name__}: {e}")

    def _cameras(self, left: np.ndarray, right: np.ndarray,
                 infos: tuple) -> tuple[CameraModel, CameraModel] | None:
        """Calibration of both sides: calibration files when given, else the latest CameraInfo."""
        cams: list[CameraModel] = []
        for side, name in enumerate(("left", "right")):
            if self._file_cams[side] is not None:
                cams.append(self._file_cams[side])
                continue
            if infos[side] is None:
                self.report_problem("camera_info_missing", f"no {name} camera_info yet; pair skipped")
                return None
            try:
                cams.append(msg_to_camera(infos[side]))
            except MessageError as e:
                self.report_problem("camera_info_invalid", f"{e}; set {name}_calibration_file to override")
                return None
        for name, img, cam in (("left", left, cams[0]), ("right", right, cams[1])):
            if img.shape[:2] != (cam.height, cam.width):
                self.report_problem("camera_info_size", f"{name} image {img.shape[1]}x{img.shape[0]} but its "
                                    f"calibration says {cam.width}x{cam.height}")
                return None
        if cams[1].baseline <= 0:
            self.report_problem("camera_info_invalid", f"right camera P[0,3] = {cams[1].P[0, 3]}: "
                                "no positive stereo baseline (expected -fx * baseline)")
            return None
        return cams[0], cams[1]

    def process(self, left_msg: Image, right_msg: Image, info_l: CameraInfo | None,
                info_r: CameraInfo | None) -> None:
        """Depth of one stamp-matched pair; publishes everything with the left image's stamp."""
        t0 = time.perf_counter()
        stamp = stamp_to_ns(left_msg.header.stamp)
        try:
            left = msg_to_image(left_msg, ("rgb8", "mono8"))
            right = msg_to_image(right_msg, ("rgb8", "mono8"))
        except MessageError as e:
            self.report_problem(bad_image_kind(e), str(e))
            return
        if left.shape != right.shape:
            self.report_problem("size_mismatch", f"left {left.shape} and right {right.shape} images differ")
            return
        cams = self._cameras(left, right, (info_l, info_r))
        if cams is None:
            return
        cam_l, cam_r = cams
        left_r = self.rectifier.rectify(left, cam_l)
        right_r = self.rectifier.rectify(right, cam_r)
        rect_l, rect_r = rectified_camera(cam_l), rectified_camera(cam_r)
        engine = self._get_engine(rect_l, rect_r)
        res = engine.compute(left_r, right_r)
        frame = cam_l.frame_id or left_msg.header.frame_id
        enc = "rgb8" if left_r.ndim == 3 else "mono8"
        self.rect_pub.publish(image_to_msg(left_r, enc, stamp, frame))
        self.rect_info_pub.publish(camera_to_msg(rect_l, stamp))
        self.depth_pub.publish(image_to_msg(res.depth, "32FC1", stamp, frame))
        self.conf_pub.publish(image_to_msg(res.confidence, "mono8", stamp, frame))
        if self.points_pub is not None:
            self.points_pub.publish(self._points(res.depth, res.confidence, left_r, rect_l, stamp, frame))
        if self._falloff_pairs < FALLOFF_PAIRS:
            self._measure_falloff(left_r, right_r, res.depth, rect_l, rect_r)
        dt = (time.perf_counter() - t0) * 1000.0
        self._times = [*self._times, dt][-50:]
        self.count("pairs_processed")

    def _measure_falloff(self, left: np.ndarray, right: np.ndarray, depth: np.ndarray, cam_l: CameraModel,
                         cam_r: CameraModel) -> None:
        """Add one rectified pair to the fall-off measurement; after FALLOFF_PAIRS, report it once (the
        instruments are not masked here: their ratios are as valid, their highlights fall out as outliers)."""
        self._falloff.add(left, right, depth, None, cam_l.intrinsics(), cam_r.intrinsics(), cam_r.baseline)
        self._falloff_pairs += 1
        if self._falloff_pairs < FALLOFF_PAIRS:
            return
        v = self._falloff.estimate()
        if v is None:
            self._falloff_status = f"not measured ({self._falloff.samples} samples)"
            self.get_logger().warning(f"endoscope fall-off not measured: {self._falloff.samples} samples on "
                                      f"{FALLOFF_PAIRS} pairs (too little tissue with depth)")
            return
        corner = float(v.gain(cam_l.intrinsics(), cam_l.width, cam_l.height)[0, 0])
        self._falloff_status = f"{v.b1:.4f},{v.b2:.4f}"
        self._falloff_corner = corner
        self.get_logger().info(f"endoscope fall-off measured on {FALLOFF_PAIRS} pairs: {corner:.3f} at the image "
                               f"corner; the trainer's setting for it: falloff: [{v.b1:.4f}, {v.b2:.4f}]")

    def _get_engine(self, cam_l: CameraModel, cam_r: CameraModel):
        key = (cam_l.P.tobytes(), cam_r.P.tobytes(), cam_l.width, cam_l.height)
        if self._engine is not None and key == self._engine_key:
            return self._engine
        sgbm = StereoDepth(cam_l, cam_r, self.sgbm_params)
        engine = sgbm
        if self.backend == "onnx":
            try:
                engine = OnnxDepth(self.onnx_model, cam_l, cam_r, mono_output=self.onnx_mono_output,
                                   normalize=self.onnx_normalize, sgbm=sgbm)
                self.get_logger().info(f"ONNX depth model {self.onnx_model} ({engine.kind}) "
                                       f"on {engine.device}")
            except DepthModelError as e:
                self.get_logger().warning(f"{e}; falling back to SGBM")
                self.backend = "sgbm"
                self.count("onnx_fallback")
        self._engine, self._engine_key = engine, key
        return engine

    def _points(self, depth: np.ndarray, conf: np.ndarray, image: np.ndarray, cam: CameraModel, stamp: int,
                frame: str) -> PointCloud2:
        s = self.points_stride
        pts = backproject(depth, cam.intrinsics())[::s, ::s].reshape(-1, 3)
        rgb = (image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2))[::s, ::s].reshape(-1, 3)
        keep = np.isfinite(pts[:, 2]) & (conf[::s, ::s].reshape(-1) >= self.points_min_conf)
        pts, rgb = pts[keep].astype(np.float32), rgb[keep]
        return pointcloud_to_msg({"x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2], "rgb": pack_rgb(rgb)},
                                 stamp, frame)

    def status_values(self) -> dict[str, object]:
        """Sync, queue and timing figures for the heartbeat."""
        st = self.sync.stats
        times = self._times
        return {"backend": self.backend, "pairs_matched": st.sets_emitted,
                "unmatched_left": st.unmatched[0], "unmatched_right": st.unmatched[1],
                "sync_dropped_left": st.dropped[0], "sync_dropped_right": st.dropped[1],
                "work_queue": self._worker.pending,
                "depth_ms_mean": float(np.mean(times)) if times else 0.0,
                "falloff": self._falloff_status, **({"falloff_corner": self._falloff_corner}
                                                    if self._falloff_corner is not None else {})}

    def close(self) -> None:
        """Stop the worker thread."""
        self._worker.stop()
        super().close()


def main() -> None:
    """Process entry point: `python -m surg3d_nodes.ros.nodes.stereo_depth --ros-args ...`."""
    run_node(StereoDepthNode)


if __name__ == "__main__":
    main()
