"""dVRK emulator node: publishes what a da Vinci Research Kit publishes, from the synthetic scene.

`/ECM/measured_cp`, `/PSMn/measured_cp` (PoseStamped, `kinematics_hz`), with articulated instruments
(`articulated`, default) `/PSMn/measured_js` and `/PSMn/jaw/measured_js` (JointState, `kinematics_hz`: the
true wrist pitch / yaw and jaw angle), `/<rig>/left|right/image_raw` (rgb8) and `/<rig>/left|right/camera_info`
at the clip's fps, with the imperfections of core.dvrk_emulator (jitter,
latency, dropouts, reordering, NaN, a video clock offset, a stopping ECM). The clip is rendered once at start
(progress logged) and replayed in real time, in a loop by default; stamps follow this node's clock.
With `publish_ground_truth` the true tool mask and depth go to /dataset/tool_mask and /dataset/depth.
`uncalibrated_camera_info` sends all-zero K like an uncalibrated dvrk_video; `calibration_dir` then receives
left.yaml / right.yaml (camera_calibration format) for the consumers' `calibration_file` parameters.
"""

from __future__ import annotations

import threading
from pathlib import Path

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, Image, JointState

from surg3d_nodes.common.camera_yaml import save_camera_yaml
from surg3d_nodes.data.synthetic import SynthConfig
from surg3d_nodes.dvrk.emulator import ECM, VIDEO, DvrkMessage, EmulatorConfig, emulate
from surg3d_nodes.dvrk.kinematics import (
    MEASURED_CP,
    STREAM_JOINT_NAMES,
    dvrk_arm_topic,
    dvrk_video_topic,
)
from surg3d_nodes.ros import qos, topics
from surg3d_nodes.ros.convert import camera_to_msg, image_to_msg, joint_state_to_msg, pose_to_msg
from surg3d_nodes.ros.runtime import SurgNode, run_node
from surg3d_nodes.system.node_options import DvrkEmulatorOptions


class DvrkEmulatorNode(SurgNode):
    """Publishes emulated dVRK kinematics and stereo video in real time (module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("dvrk_emulator", **kwargs)
        p = self.params.declare(DvrkEmulatorOptions)
        synth = SynthConfig(width=p.width, height=p.height, frames=p.frames, fps=p.fps,
                            camera_motion=p.camera_motion, instruments=p.instruments, seed=p.seed,
                            articulated=p.articulated, wrist_articulation_deg=p.wrist_articulation_deg,
                            jaw_opening_deg=p.jaw_opening_deg)
        cfg = EmulatorConfig(
            synth=synth, kinematics_hz=p.kinematics_hz, sample_jitter_ms=p.sample_jitter_ms,
            latency_ms=p.latency_ms, delivery_jitter_ms=p.delivery_jitter_ms,
            video_offset_ms=p.video_offset_ms, video_latency_ms=p.video_latency_ms,
            dropout=p.dropout, reorder=p.reorder, nan_rate=p.nan_rate,
            ecm_stop_s=p.ecm_stop_s if p.ecm_stop_s >= 0 else None,
            psm_arms=p.psm_arms[:synth.instruments], hand_eye=p.hand_eye, seed=p.seed)
        cfg.validate()
        log = self.get_logger()
        log.info(f"rendering {synth.frames} synthetic frames {synth.width}x{synth.height} ...")
        step = max(1, synth.frames // 5)
        self.em = emulate(cfg, lambda done, total: log.info(f"rendered {done}/{total}")
                          if done % step == 0 or done == total else None)
        self.loop = p.loop
        self.start_delay_ns = round(p.start_delay_s * 1e9)
        self.ground_truth = p.publish_ground_truth
        rig = p.rig
        cam_l, cam_r = self.em.scene.cam_left, self.em.scene.cam_right
        self.cams = {"left": cam_l, "right": cam_r}
        if p.calibration_dir:
            folder = Path(p.calibration_dir)
            folder.mkdir(parents=True, exist_ok=True)
            for side, cam in self.cams.items():
                save_camera_yaml(cam, folder / f"{side}.yaml", f"{rig}_{side}")
            log.info(f"wrote {folder}/left.yaml and right.yaml")
        self.uncalibrated = p.uncalibrated_camera_info
        self.ecm_arm = p.ecm_arm
        arm_names = {ECM: self.ecm_arm, **{a: a for a in cfg.psm_arms}}
        # The dVRK's own topics (not in topics.py): arm kinematics as robot state, video as sensor streams.
        arm_qos = qos.for_kind(qos.STATE, subscription=False)
        video_qos = qos.for_kind(qos.SENSOR, subscription=False)
        self.pose_pubs = {k: self.create_publisher(PoseStamped, dvrk_arm_topic(v), arm_qos)
                          for k, v in arm_names.items()}
        self.joint_pubs = {(arm, what): self.create_publisher(JointState, dvrk_arm_topic(arm, what), arm_qos)
                           for arm in cfg.psm_arms for what in STREAM_JOINT_NAMES} if synth.articulated else {}
        self.image_pubs = {s: self.create_publisher(Image, dvrk_video_topic(rig, s), video_qos) for s in self.cams}
        self.info_pubs = {s: self.create_publisher(CameraInfo, dvrk_video_topic(rig, s, "camera_info"), video_qos)
                          for s in self.cams}
        self.mask_pub = self.publisher(Image, topics.DATASET_MASK)
        self.depth_pub = self.publisher(Image, topics.DATASET_DEPTH)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="emulator", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        msgs = self.em.messages
        first = min(m.send_ns for m in msgs)
        span = max(m.send_ns for m in msgs) - first + round(1e9 / self.em.config.synth.fps)
        base = self.get_clock().now().nanoseconds + self.start_delay_ns
        loops = 0
        while not self._stop.is_set():
            shift = base + loops * span - first      # emulator time -> this node's clock
            for m in msgs:
                wait = (m.send_ns + shift - self.get_clock().now().nanoseconds) / 1e9
                if wait > 0 and self._stop.wait(wait):
                    return
                self._publish(m, m.stamp_ns + shift)
            loops += 1
            self.count("loops")
            if not self.loop:
                self.get_logger().info("clip done (loop:=false)")
                return

    def _publish(self, m: DvrkMessage, stamp_ns: int) -> None:
        if m.kind != VIDEO and m.what != MEASURED_CP:
            self.joint_pubs[(m.kind, m.what)].publish(joint_state_to_msg(STREAM_JOINT_NAMES[m.what], m.joints,
                                                                         stamp_ns))
            self.count(f"{m.kind.lower()}_{m.what.replace('/', '_')}_sent")
            return
        if m.kind != VIDEO:  # ECM in the cart frame, PSMs in the ECM tip frame (NaN kept: a faulty driver)
            parent = "Cart" if m.kind == ECM else self.ecm_arm
            self.pose_pubs[m.kind].publish(pose_to_msg(m.T, stamp_ns, parent))
            self.count(f"{m.kind.lower()}_sent")
            return
        f = self.em.scene.frames[m.frame]
        for side, img in (("left", f.left), ("right", f.right)):
            cam = self.cams[side]
            self.image_pubs[side].publish(image_to_msg(img, "rgb8", stamp_ns, cam.frame_id))
            info = camera_to_msg(cam, stamp_ns)
            if self.uncalibrated:
                info.k = [0.0] * 9
                info.p = [0.0] * 12
            self.info_pubs[side].publish(info)
        if self.ground_truth:
            self.mask_pub.publish(image_to_msg(f.mask, "mono8", stamp_ns, self.cams["left"].frame_id))
            self.depth_pub.publish(image_to_msg(f.depth, "32FC1", stamp_ns, self.cams["left"].frame_id))
        self.count("frames_sent")

    def status_values(self) -> dict[str, object]:
        """Emulation settings worth seeing next to the counters."""
        c = self.em.config
        return {"frames": len(self.em.scene.frames), "kinematics_hz": c.kinematics_hz,
                "video_offset_ms": c.video_offset_ms, "fps": c.synth.fps}

    def close(self) -> None:
        """Stop the publishing thread."""
        self._stop.set()
        self._thread.join(timeout=2.0)
        super().close()


def main() -> None:
    """Process entry point."""
    run_node(DvrkEmulatorNode)


if __name__ == "__main__":
    main()
