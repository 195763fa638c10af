"""Tracker node: the left camera's pose from the stereo stream alone (no kinematics) -> /camera/pose and /tf.

Pairs /stereo/left/image_rect, /depth/image and (with `use_mask`) /instrument/mask by stamp (perception.sync),
with the newest /stereo/left/camera_info_rect for the intrinsics, and runs perception.tracker.CameraTracker on a
worker thread. A frame the tracker cannot vouch for (too few inliers, a jump, a different scene, a view filled by
an instrument) gets NO pose message, as the kinematics node does for stale kinematics, so the trainer never
trains it with a wrong pose. The heartbeat carries the quality figures of the last frame (inliers, inlier ratio,
reprojection error, status) and the counts (posed, lost by reason, keyframes, relocalisations). With
`pose_source: static` it publishes `initial_pose` at every rectified image stamp (a fixed endoscope); with
`kinematics` or `topic` it idles: another node gives the poses.
"""

from __future__ import annotations

import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image
from tf2_msgs.msg import TFMessage

from surg3d_nodes.common.workers import QueueWorker
from surg3d_nodes.perception.sync import ApproxTimeSync
from surg3d_nodes.perception.tracker import CameraTracker, TrackerParams, TrackResult, pose_from_params
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import MessageError, msg_to_camera, msg_to_image, pose_to_msg, stamp_to_ns, transform_msg
from surg3d_nodes.ros.nodes.stereo_depth import bad_image_kind
from surg3d_nodes.ros.runtime import SurgNode, run_node
from surg3d_nodes.system.node_options import TrackerNodeOptions


class TrackerNode(SurgNode):
    """Rectified left image + depth + instrument mask -> camera pose (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("tracker", **kwargs)
        p = self.params.declare(TrackerNodeOptions)
        self.tracker_params = self.params.declare(TrackerParams)
        self.pose_source = p.pose_source
        self.active = p.pose_source == "tracker"
        self.static_pose = pose_from_params(self.tracker_params.initial_pose) if p.pose_source == "static" else None
        self.world_frame, self.camera_frame, self.publish_tf = p.world_frame, p.camera_frame, p.publish_tf
        self.inputs = [topics.LEFT_RECT, topics.DEPTH] + ([topics.INSTRUMENT_MASK] if p.use_mask else [])
        self.sync = ApproxTimeSync(len(self.inputs), round(p.sync_tolerance_ms * 1e6), p.sync_queue_size)
        self.tracker: CameraTracker | None = None
        self._info: CameraInfo | None = None
        self._early: list | None = None   # the newest complete set received before any camera info
        self._last: TrackResult | None = None
        self._last_stamp = -1
        self._world_stamp = 0       # the frame the tracker's world was set at (its pose is initial_pose)
        self.pose_pub = self.publisher(PoseStamped, topics.CAMERA_POSE)
        self.tf_pub = self.publisher(TFMessage, topics.TF)
        self._worker = QueueWorker("tracker", self.process, 2, on_error=self._failed).start()
        if self.static_pose is not None:   # a fixed endoscope: the same pose at every image stamp
            self.subscription(Image, topics.LEFT_RECT, self.on_static)
            return
        if not self.active:
            self.get_logger().info(f"pose_source is {p.pose_source!r}: the tracker publishes no poses")
            return
        group = MutuallyExclusiveCallbackGroup()
        self.subscription(CameraInfo, topics.LEFT_RECT_INFO, self.on_info, callback_group=group)
        for idx, topic in enumerate(self.inputs):
            self.subscription(Image, topic, lambda m, i=idx: self.on_input(i, m), callback_group=group)

    def on_static(self, msg: Image) -> None:
        """pose_source static: publish initial_pose with the image's stamp."""
        self._publish(self.static_pose, stamp_to_ns(msg.header.stamp))

    def _publish(self, pose: np.ndarray, stamp: int) -> None:
        self.pose_pub.publish(pose_to_msg(pose, stamp, self.world_frame))
        if self.publish_tf:
            self.tf_pub.publish(TFMessage(transforms=[transform_msg(pose, stamp, self.world_frame,
                                                                   self.camera_frame)]))
        self.count("poses")

    def on_info(self, msg: CameraInfo) -> None:
        """Keep the newest rectified camera info (its P gives the intrinsics); the first one also releases the
        set that arrived before it (the info and the images come on separate topics, in no set order)."""
        self._info = msg
        if self._early is not None:
            early, self._early = self._early, None
            self._submit(early)

    def on_input(self, idx: int, msg: Image) -> None:
        """Pair image, depth and mask by stamp; a complete set goes to the worker (oldest dropped when busy)."""
        self.count(f"in.{self.inputs[idx]}")
        out = self.sync.add(idx, stamp_to_ns(msg.header.stamp), msg)
        if out is None:
            return
        if self._info is None:
            if self._early is not None:
                self.count("no_camera_info")   # an older set that no camera info came for
            self._early = out[0]
            return
        self._submit(out[0])

    def _submit(self, msgs: list) -> None:
        if not self._worker.submit((msgs, self._info)):
            self.count("frames_dropped_busy")

    def _failed(self, _item: tuple, e: BaseException) -> None:
        self.report_problem("processing_error", f"{type(e).__name__}: {e}")

    def process(self, item: tuple) -> None:
        """Track one frame; publish its pose (and /tf) only when the tracker vouches for it."""
        msgs, info = item
        stamp = stamp_to_ns(msgs[0].header.stamp)
        try:
            cam = msg_to_camera(info)
            image = msg_to_image(msgs[0], ("rgb8", "mono8"))
            depth = msg_to_image(msgs[1], "32FC1")
            mask = msg_to_image(msgs[2], "mono8") if len(msgs) > 2 else None
        except (MessageError, ValueError) as e:
            self.report_problem(bad_image_kind(e) if isinstance(e, MessageError) else "camera_info_invalid", str(e))
            return
        if depth.shape != image.shape[:2] or (mask is not None and mask.shape != depth.shape):
            self.report_problem("size_mismatch", f"image {image.shape[:2]}, depth {depth.shape}, mask "
                                f"{None if mask is None else mask.shape}")
            return
        K = cam.intrinsics()
        if (self.tracker is None or stamp < self._last_stamp or self.tracker.K.tolist() != K.tolist()
                or self.tracker.width != image.shape[1]):
            if self.tracker is not None:   # time went backwards (bag loop) or another camera: a new world
                self.count("tracker_resets")
            self.tracker = CameraTracker(K, image.shape[1], self.tracker_params)
        self._last_stamp = stamp
        res = self.tracker.track(image, depth, mask)
        self._last = res
        if res.status == "init":
            self._world_stamp = stamp
        if res.pose is None:
            self.count("no_pose")
            return
        self._publish(res.pose, stamp)

    def status_values(self) -> dict[str, object]:
        """Quality of the last frame and the tracker's counts."""
        values: dict[str, object] = {"pose_source": self.pose_source,
                                     "work_queue": self._worker.pending, "world_stamp": self._world_stamp}
        r = self._last
        if r is not None:
            values.update({"status": r.status, "inliers": r.inliers, "inlier_ratio": round(r.inlier_ratio, 3),
                           "reproj_px": round(float(np.nan_to_num(r.reproj_px, nan=-1.0)), 3),
                           "tracks": r.tracks, "keyframe": r.keyframe, "track_ms": round(r.ms, 2)})
        if self.tracker is not None:
            st = self.tracker.stats
            values.update({"posed": st.posed, "lost": st.lost, "keyframes": st.keyframes, "revisits": st.revisits,
                           "relocalised": st.relocalised})
            values.update({f"lost.{k}": v for k, v in st.reasons.items()})
        return values

    def close(self) -> None:
        """Stop the worker thread."""
        self._worker.stop()
        super().close()


def main() -> None:
    """Process entry point: `python -m surg3d_nodes.ros.nodes.tracker --ros-args ...`."""
    run_node(TrackerNode)


if __name__ == "__main__":
    main()
