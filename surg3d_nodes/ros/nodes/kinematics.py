"""Kinematics node: camera poses and instrument priors from da Vinci Research Kit (dVRK 2.x) kinematics.

Subscribes `/<ecm_arm>/measured_cp` and `/<PSM>/measured_cp` (geometry_msgs/PoseStamped, 100 Hz), with
`use_joint_states` `/<PSM>/measured_js` and `/<PSM>/jaw/measured_js` (sensor_msgs/JointState: wrist pitch and
yaw, jaw angle) and the left camera_info (its stamps are the image stamps; with `stamp_source: image` the left
image's instead). For each
image stamp, once the kinematics streams have passed it (or after `max_wait_ms`), it publishes
- /camera/pose (PoseStamped, frame `world_frame` = the cart frame) and /tf: ECM pose interpolated at the stamp
  (SLERP / linear) composed with the hand-eye transform and, with `pose_rectified` (default), the left
  camera's rectification rotation (the trainer sees rectified images). An image without a valid pose
  (stale, gap, stopped stream, no calibration, ...) gets no pose message, so the trainer never uses it with
  a wrong pose;
- /instrument/prior_mask (mono8, the image stamp): each PSM's shaft, wrist and jaws projected into the left
  image, rectified by default like instrument_seg's input (core.instrument_prior), when a camera model is
  known (camera_info or `calibration_file`). The wrist bends and the jaws open as the joint states at the
  stamp say; a PSM whose joint states are missing, stale or invalid at the stamp is drawn straight
  (counted as `prior_straight.<reason>`).
Stale/gap/out-of-order/invalid counts of every stream are in the heartbeat. The prior is rendered on a worker thread
(640x512, two tools: 40-110 ms on one CPU core; `prior_scale: 0.5` renders at half size, ~4x faster).
"""

from __future__ import annotations

import threading
import time
from collections import Counter

import cv2
import numpy as np
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from sensor_msgs.msg import CameraInfo, Image, JointState
from tf2_msgs.msg import TFMessage

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.camera_yaml import load_camera_yaml
from surg3d_nodes.common.workers import QueueWorker
from surg3d_nodes.dvrk.kinematics import (
    MS,
    PRIOR_JOINT_NAMES,
    FrameKinematics,
    FrameResolver,
    KinematicCamera,
    dvrk_arm_topic,
    hand_eye_from_params,
    psm_joint_values,
)
from surg3d_nodes.perception.instrument_prior import InstrumentGeometry, pixel_rays, project_instruments
from surg3d_nodes.ros import qos, topics
from surg3d_nodes.ros.convert import (
    MessageError,
    image_to_msg,
    msg_to_camera,
    msg_to_joint_state,
    msg_to_pose,
    pose_to_msg,
    stamp_to_ns,
    transform_msg,
)
from surg3d_nodes.ros.runtime import SurgNode, run_node
from surg3d_nodes.system.node_options import KinematicsOptions


class KinematicsNode(SurgNode):
    """ECM/PSM kinematics -> camera pose, /tf and instrument prior at every image stamp (module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("kinematics", **kwargs)
        p = self.params.declare(KinematicsOptions)
        self.world_frame, self.camera_frame = p.world_frame, p.camera_frame
        self.publish_tf, self.publish_prior = p.publish_tf, p.publish_prior
        self.publish_pose = p.pose_source == "kinematics"   # another pose source (the tracker) may be chosen
        self.pose_rectified, self.prior_rectified = p.pose_rectified, p.prior_rectified
        self.prior_scale = p.prior_scale
        self.geometry = self.params.declare(InstrumentGeometry)
        self.use_joint_states = p.use_joint_states
        self.kin = KinematicCamera(hand_eye_from_params(p.hand_eye),
                                   image_offset_ns=round(p.image_time_offset_ms * MS),
                                   max_age_ns=round(p.max_age_ms * MS),
                                   max_gap_ns=round(p.max_gap_ms * MS))
        self.resolver = FrameResolver(self.kin, max_wait_ns=round(p.max_wait_ms * MS))
        self.cam: CameraModel | None = None
        self._rays: np.ndarray | None = None
        if p.calibration_file:
            self.cam = load_camera_yaml(p.calibration_file, self.camera_frame)
            self.get_logger().info(f"camera model from {p.calibration_file} "
                                   f"({self.cam.width}x{self.cam.height})")
        self._lock = threading.Lock()

        self.pose_pub = self.publisher(PoseStamped, topics.CAMERA_POSE)
        self.tf_pub = self.publisher(TFMessage, topics.TF)
        self.prior_pub = self.publisher(Image, topics.INSTRUMENT_PRIOR)
        group = MutuallyExclusiveCallbackGroup()
        arm_qos = qos.for_kind(qos.STATE, subscription=True)   # the dVRK's arm topics (poses, joint states)
        self.create_subscription(PoseStamped, dvrk_arm_topic(p.ecm_arm), self.on_ecm, arm_qos,
                                 callback_group=group)
        self.psm_arms = list(p.psm_arms)
        for arm in self.psm_arms:
            self.create_subscription(PoseStamped, dvrk_arm_topic(arm),
                                     lambda msg, a=arm: self.on_psm(a, msg), arm_qos, callback_group=group)
            for what in PRIOR_JOINT_NAMES if self.use_joint_states else ():
                self.create_subscription(JointState, dvrk_arm_topic(arm, what),
                                         lambda msg, a=arm, w=what: self.on_psm_joints(a, w, msg), arm_qos,
                                         callback_group=group)
        # Every frame's stamp is needed (each gets a pose or a counted refusal): a history of 5, the sensor
        # default, lost stamps whenever a burst of arm samples kept the callbacks busy (10 of 30 in a test).
        self.subscription(CameraInfo, topics.LEFT_INFO, self.on_info, depth=50, callback_group=group)
        if p.stamp_source == "image":
            self.subscription(Image, topics.LEFT_IMAGE, self.on_image, depth=50, callback_group=group)
        self.stamp_source = p.stamp_source
        self.create_timer(0.01, self.poll, callback_group=group)   # resolves images whose wait is over
        # The prior is drawn off the callback thread; when drawing falls behind, the oldest request goes.
        self._prior_worker: QueueWorker[FrameKinematics] = QueueWorker(
            "prior", self._draw_prior, 4, on_error=lambda _fk, e: self.report_problem(
                "prior_error", f"{type(e).__name__}: {e}")).start()

    # ------------------------------------------------------------------ inputs
    def on_ecm(self, msg: PoseStamped) -> None:
        """ECM measured_cp: T_cart_ecm."""
        self._add_pose(None, msg)

    def on_psm(self, arm: str, msg: PoseStamped) -> None:
        """PSM measured_cp: instrument tip in the ECM tip frame."""
        self._add_pose(arm, msg)

    def on_psm_joints(self, arm: str, what: str, msg: JointState) -> None:
        """PSM measured_js (wrist pitch and yaw taken by name) or jaw/measured_js (jaw angle)."""
        stamp = stamp_to_ns(msg.header.stamp)
        try:
            values, why = psm_joint_values(what, *msg_to_joint_state(msg)), ""
        except ValueError as e:             # MessageError is one
            values, why = None, f": {e}"
        with self._lock:
            verdict = self.kin.add_psm_joints(arm, what, stamp, values)
        if verdict in ("invalid", "too_old", "duplicate"):
            self.report_problem(f"joints_{verdict}", f"{dvrk_arm_topic(arm, what)} sample at {stamp} ns{why}")
        self.poll(finalize=False)

    def _add_pose(self, arm: str | None, msg: PoseStamped) -> None:
        stamp = stamp_to_ns(msg.header.stamp)
        try:
            T, why = msg_to_pose(msg), ""
        except MessageError as e:
            T, why = None, f": {e}"
        with self._lock:
            verdict = self.kin.add_ecm(stamp, T) if arm is None else self.kin.add_psm(arm, stamp, T)
        if verdict in ("invalid", "too_old", "duplicate"):
            self.report_problem(f"kinematics_{verdict}", f"{arm or 'ECM'} sample at {stamp} ns{why}")
        self.poll(finalize=False)

    def on_info(self, msg: CameraInfo) -> None:
        """Left camera_info: its stamp is an image stamp; its calibration feeds the prior (unless a file)."""
        if self.cam is None:
            try:
                self.cam = msg_to_camera(msg)
            except MessageError as e:
                self.report_problem("camera_info", f"{e}; set calibration_file for the instrument prior")
        if self.stamp_source == "camera_info":
            self._add_image(stamp_to_ns(msg.header.stamp))

    def on_image(self, msg: Image) -> None:
        """Left image (stamp_source: image): only its stamp is used."""
        self._add_image(stamp_to_ns(msg.header.stamp))

    def _add_image(self, stamp_ns: int) -> None:
        with self._lock:
            self.resolver.add_image(stamp_ns, time.monotonic_ns())
        self.poll(finalize=False)

    # ------------------------------------------------------------------ outputs
    def poll(self, finalize: bool = True) -> None:
        """Publish every image whose kinematics are resolved; the timer's polls also give up on images
        whose kinematics stopped (see FrameResolver)."""
        with self._lock:
            frames = self.resolver.poll(time.monotonic_ns(), finalize)
        for fk in frames:
            self._publish(fk)

    def _publish(self, fk: FrameKinematics) -> None:
        if not fk.camera.ok:
            age = "" if fk.camera.age_ns is None else f" (nearest ECM sample {fk.camera.age_ns / MS:.1f} ms)"
            self.report_problem(f"no_pose_{fk.camera.reason}", f"image {fk.stamp_ns} ns gets no pose{age}")
            return
        T = fk.camera.T
        if self.pose_rectified:  # the rectified left camera the trainer sees: rotated by R (X_rect = R X)
            if self.cam is None:
                self.report_problem("no_calibration", "no calibrated camera_info or calibration_file yet: "
                                    "the rectified camera pose is unknown, frame skipped")
                return
            T = T @ np.block([[self.cam.R.T, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])
        if self.publish_pose:
            self.pose_pub.publish(pose_to_msg(T, fk.stamp_ns, self.world_frame))
        if self.publish_pose and self.publish_tf:
            self.tf_pub.publish(TFMessage(transforms=[
                transform_msg(T, fk.stamp_ns, self.world_frame, self.camera_frame)]))
        if self.publish_prior and self.cam is not None:
            if not self._prior_worker.submit(fk):
                self.count("prior_dropped")

    def _draw_prior(self, fk: FrameKinematics) -> None:
        """Draw and publish the instrument prior mask of one frame."""
        # every configured arm, also one whose stream this node has not heard yet (at start)
        missing = [arm for arm in self.psm_arms if arm not in fk.tools or not fk.tools[arm].ok]
        if missing:  # a partial prior would tell fusion "no instrument here": publish none instead
            self.count("prior_incomplete")
            return
        cam = self.cam
        small = cam.scaled(self.prior_scale) if self.prior_scale != 1.0 else cam
        if self._rays is None or self._rays.shape[:2] != (small.height, small.width):
            self._rays = pixel_rays(small, self.prior_rectified)
        tips = [r.T for r in fk.tools.values()]
        joints = [fk.joints[arm].values if arm in fk.joints else None for arm in fk.tools]
        fallbacks: Counter[str] = Counter()
        for arm in fk.tools:
            if self.use_joint_states and arm in fk.joints and not fk.joints[arm].ok:
                fallbacks[f"straight.{fk.joints[arm].reason}"] += 1
        mask = project_instruments(small, tips, self.geometry, rays=self._rays, joints=joints,
                                   counters=fallbacks)
        for key, n in fallbacks.items():
            self.count(f"prior_{key}", n)
        if small is not cam:
            mask = cv2.resize(mask, (cam.width, cam.height), interpolation=cv2.INTER_NEAREST)
        frame = cam.frame_id or self.camera_frame
        self.prior_pub.publish(image_to_msg(mask, "mono8", fk.stamp_ns, frame))
        self.count("priors")

    def status_values(self) -> dict[str, object]:
        """Kinematics stream and frame counters for the heartbeat."""
        with self._lock:
            values: dict[str, object] = {f"ecm.{k}": v for k, v in self.kin.ecm.counters.items()}
            for arm, buf in self.kin.psms.items():
                values.update({f"{arm.lower()}.{k}": v for k, v in buf.counters.items()})
            for (arm, what), buf in self.kin.psm_joints.items():
                values.update({f"{arm.lower()}.{what}.{k}": v for k, v in buf.counters.items()})
            values.update(self.resolver.counters)
            values["pending"] = self.resolver.pending
        return values

    def close(self) -> None:
        """Stop the prior worker."""
        self._prior_worker.stop()
        super().close()


def main() -> None:
    """Process entry point."""
    run_node(KinematicsNode)


if __name__ == "__main__":
    main()
