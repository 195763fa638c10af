"""dVRK nodes over DDS: the kinematics node as a real process fed faulty emulated dVRK streams (poses right
or absent, faults in the heartbeat, prior masks), and the emulator node (articulated instruments, joint
states) driving the kinematics node (articulated prior)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PoseStamped
from rosproc import Collector, start_node, stop_node, wait_until
from sensor_msgs.msg import CameraInfo, Image, JointState

from surg3d_msgs.msg import NodeStatus
from surg3d_nodes.common.geometry import matrix_to_pose
from surg3d_nodes.data.synthetic import SynthConfig
from surg3d_nodes.dvrk.emulator import (
    ECM,
    SYNTHETIC_INSTRUMENT,
    SYNTHETIC_WRISTED_INSTRUMENT,
    VIDEO,
    EmulatorConfig,
    emulate,
)
from surg3d_nodes.dvrk.kinematics import (
    JAW_JOINT_NAMES,
    JAW_MEASURED_JS,
    MEASURED_JS,
    MS,
    PSM_JOINT_NAMES,
    dvrk_arm_topic,
)
from surg3d_nodes.perception.instrument_prior import InstrumentGeometry, mask_iou
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import (
    camera_to_msg,
    msg_to_image,
    msg_to_pose,
    pose_to_msg,
    stamp_to_ns,
)

CONFIG = Path(__file__).resolve().parents[1] / "config"


def geometry_args(g: InstrumentGeometry) -> list[str]:
    """The kinematics node's instrument parameters for a geometry."""
    names = ("shaft_radius", "jaw_radius", "wrist_length", "shaft_length", "pitch_to_yaw", "yaw_to_tip")
    return [arg for name in names for arg in ("-p", f"{name}:={getattr(g, name)}")]


GEOMETRY_ARGS = geometry_args(SYNTHETIC_INSTRUMENT)


def test_kinematics_node_with_faulty_streams(ros_env, ros_node):
    synth = SynthConfig(width=160, height=128, frames=30, camera_motion="moving", instruments=2,
                        noise_std=0.0)
    em = emulate(EmulatorConfig(synth=synth, sample_jitter_ms=1.0, delivery_jitter_ms=4.0, dropout=0.05,
                                reorder=0.1, nan_rate=0.02, ecm_stop_s=0.7, video_offset_ms=8.0, seed=5))
    t, q = matrix_to_pose(em.hand_eye)
    hand_eye = "[" + ",".join(f"{v:.9f}" for v in [*t, *q]) + "]"
    proc = start_node("surg3d_nodes.ros.nodes.kinematics",
                  ["-p", f"hand_eye:={hand_eye}", "-p", "image_time_offset_ms:=8.0",
                   "-p", "max_wait_ms:=1000.0", "-p", "heartbeat_period:=0.5", *GEOMETRY_ARGS], ros_env)
    try:
        pubs = {kind: ros_node.create_publisher(PoseStamped, dvrk_arm_topic(kind), 200)
                for kind in (ECM, "PSM1", "PSM2")}
        info_pub = ros_node.create_publisher(CameraInfo, topics.LEFT_INFO, 50)
        got = Collector(ros_node, {topics.CAMERA_POSE: PoseStamped, topics.INSTRUMENT_PRIOR: Image,
                                    topics.NODE_STATUS: NodeStatus}, depth=200)
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in [*pubs.values(), info_pub])
                     and ros_node.count_publishers(topics.CAMERA_POSE) > 0
                     and ros_node.count_publishers(topics.INSTRUMENT_PRIOR) > 0, 20), "kinematics node not up"
        got.wait_matched(topics.CAMERA_POSE)
        # Replay in delivery order at half speed (bursts lose fewer messages on a loaded machine), stamps as
        # emulated: the node's resolution depends on stamps, its waiting only on wall time.
        t0 = time.monotonic_ns()
        for m in em.messages:
            delay = (2 * (m.send_ns - em.messages[0].send_ns) + t0 - time.monotonic_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            if m.kind == VIDEO:
                info_pub.publish(camera_to_msg(em.scene.cam_left, m.stamp_ns))
            else:
                pubs[m.kind].publish(pose_to_msg(m.T, m.stamp_ns, ""))
        frame_of = {em.image_stamp(i): i for i in range(synth.frames)}

        # Wait until the node has resolved every image it got (those after the stop time out after max_wait;
        # a starved DDS reader on a loaded machine may have lost a few messages, images included).
        time.sleep(2.0)
        assert wait_until(lambda: got.heartbeat("kinematics").get("pending") == "0", 10), \
            f"heartbeat {got.heartbeat('kinematics')}"
        time.sleep(1.0)  # one more heartbeat after the last frame
        # Frames before the stop get poses. On a loaded machine this process may deliver kinematics late or
        # lose some (a starved DDS writer overwrites its history): the node then refuses frames rather than
        # guess, which is the behaviour under test, so the count only has to reach a third of them (all of
        # them when unloaded; exact counts are checked by the core tests).
        before_stop = sum(1 for i in range(synth.frames) if i / synth.fps < 0.7 - 0.05)
        n_poses = len(got.get(topics.CAMERA_POSE))
        assert n_poses >= before_stop // 3, \
            f"{n_poses} poses, {before_stop} frames; heartbeat {got.heartbeat('kinematics')}"
        poses = got.get(topics.CAMERA_POSE)
        for msg in poses:
            i = frame_of[stamp_to_ns(msg.header.stamp)]
            assert i / synth.fps < 0.7 + 0.05, f"frame {i} after the ECM stopped got a pose"
            err = np.linalg.norm(msg_to_pose(msg)[:3, 3] - em.true_camera_pose(i)[:3, 3])
            assert err < 1e-4, f"frame {i}: pose off by {err * 1e3:.3f} mm"
            assert msg.header.frame_id == topics.WORLD_FRAME
        priors = got.get(topics.INSTRUMENT_PRIOR)
        assert len(priors) >= len(poses) // 2, f"{len(priors)} priors for {len(poses)} poses"
        truth = [em.scene.frames[frame_of[stamp_to_ns(m.header.stamp)]].mask for m in priors]
        ious = [mask_iou(msg_to_image(m, "mono8"), ref) for m, ref in zip(priors, truth, strict=True)]
        assert min(ious) >= 0.8, f"prior IoU {np.round(ious, 3).tolist()}"
        values = got.heartbeat("kinematics")
        assert values, "no heartbeat"
        # Faults are reported; which of the few NaN/reordered messages survive a loaded DDS varies (a counter
        # appears once it is non-zero), so their sum is checked here and exact counts in the core tests.
        assert int(values.get("ecm.out_of_order", 0)) + int(values.get("ecm.invalid", 0)) > 0, values
        assert int(values["no_pose.stale"]) >= 5 and int(values["frames_with_pose"]) == len(poses), values
    finally:
        out = stop_node(proc)
    assert "Traceback" not in out, out


def test_emulator_node_drives_kinematics_node(ros_env, ros_node, tmp_path):
    rig = "test_rig"
    emu = start_node("surg3d_nodes.ros.nodes.dvrk_emulator",
                 ["--params-file", str(CONFIG / "dvrk_emulator.yaml"), "-p", f"rig:={rig}",
                  "-p", "frames:=20", "-p", "width:=96", "-p", "height:=80",
                  "-p", "uncalibrated_camera_info:=true", "-p", f"calibration_dir:={tmp_path}",
                  "-p", "start_delay_s:=2.0"], ros_env)
    kin = None
    try:
        js, jaw = dvrk_arm_topic("PSM1", MEASURED_JS), dvrk_arm_topic("PSM1", JAW_MEASURED_JS)
        got = Collector(ros_node, {topics.CAMERA_POSE: PoseStamped, topics.INSTRUMENT_PRIOR: Image,
                                    f"/{rig}/left/image_raw": Image, "/ECM/measured_cp": PoseStamped,
                                    js: JointState, jaw: JointState, topics.DATASET_MASK: Image}, depth=200)
        assert wait_until(lambda: (tmp_path / "left.yaml").is_file(), 30), "emulator did not write its calibration"
        kin = start_node("surg3d_nodes.ros.nodes.kinematics",
                     ["--params-file", str(CONFIG / "kinematics.yaml"),
                      "-r", f"{topics.LEFT_INFO}:=/{rig}/left/camera_info",
                      "-p", f"calibration_file:={tmp_path / 'left.yaml'}",
                      *geometry_args(SYNTHETIC_WRISTED_INSTRUMENT)], ros_env)
        def counts() -> tuple[int, int]:
            return len(got.get(topics.CAMERA_POSE)), len(got.get(topics.INSTRUMENT_PRIOR))

        assert wait_until(lambda: counts()[0] >= 10 and counts()[1] >= 8, 25), f"poses, priors: {counts()}"
        ecm = got.get("/ECM/measured_cp")
        stamps = sorted(stamp_to_ns(m.header.stamp) for m in ecm)
        rate = (len(stamps) - 1) / ((stamps[-1] - stamps[0]) / 1e9)
        assert 90 < rate < 110, f"ECM measured_cp at {rate:.1f} Hz"
        assert got.get(f"/{rig}/left/image_raw")[0].width == 96
        prior = msg_to_image(got.get(topics.INSTRUMENT_PRIOR)[-1], "mono8")
        assert prior.shape == (80, 96) and prior.any()
        # The articulated instruments' joint streams, and the prior drawn with them against the true masks.
        assert tuple(got.get(js)[-1].name) == PSM_JOINT_NAMES and tuple(got.get(jaw)[-1].name) == JAW_JOINT_NAMES
        assert len(got.get(js)) > 0.8 * len(ecm) and len(got.get(jaw)) > 0.8 * len(ecm)
        truth = {stamp_to_ns(m.header.stamp): msg_to_image(m, "mono8") for m in got.get(topics.DATASET_MASK)}
        ious = [mask_iou(msg_to_image(m, "mono8"), truth[stamp_to_ns(m.header.stamp)])
                for m in got.get(topics.INSTRUMENT_PRIOR) if stamp_to_ns(m.header.stamp) in truth]
        assert len(ious) >= 5 and np.median(ious) >= 0.85, f"prior IoU {np.round(ious, 3).tolist()}"
        delays = [abs(stamp_to_ns(m.header.stamp) - time.time_ns()) for m in got.get(topics.CAMERA_POSE)[-1:]]
        assert delays[0] < 5_000 * MS  # stamps follow the emulator's clock (now), not the synthetic epoch
    finally:
        outs = [stop_node(p) for p in (kin, emu) if p is not None]
    for out in outs:
        assert "Traceback" not in out, out


def test_kinematics_pose_is_of_the_rectified_camera(ros_env, ros_node, tmp_path):
    """With a calibration whose rectification rotation R is not identity, /camera/pose is the rectified
    left camera (T_cart_ecm @ hand_eye @ R^T), the frame of the images the trainer gets; the calibration
    file overrides the (here identity) rotation of the camera_info on the wire."""
    from surg3d_nodes.common.camera import CameraModel
    from surg3d_nodes.common.camera_yaml import save_camera_yaml
    from surg3d_nodes.common.geometry import pose_matrix

    R = pose_matrix([0, 0, 0], [0.0, 0.0087, 0.0, 0.99996])[:3, :3]       # ~1 degree about y
    cam = CameraModel(64, 48, [[60.0, 0, 32], [0, 60.0, 24], [0, 0, 1]], R=R)
    save_camera_yaml(cam, tmp_path / "left.yaml")
    proc = start_node("surg3d_nodes.ros.nodes.kinematics",
                  ["-p", f"calibration_file:={tmp_path / 'left.yaml'}", "-p", "psm_arms:=[PSM1]"], ros_env)
    try:
        ecm = ros_node.create_publisher(PoseStamped, dvrk_arm_topic(ECM), 50)
        info = ros_node.create_publisher(CameraInfo, topics.LEFT_INFO, 10)
        got = Collector(ros_node, {topics.CAMERA_POSE: PoseStamped}, depth=200)
        assert wait_until(lambda: ecm.get_subscription_count() > 0 and info.get_subscription_count() > 0
                     and ros_node.count_publishers(topics.CAMERA_POSE) > 0, 20), "kinematics node not up"
        got.wait_matched(topics.CAMERA_POSE)
        T_ecm = pose_matrix([0.01, 0.02, 0.2], [0.1, 0.2, 0.3, 0.9])
        # Our writers seeing the node's readers does not mean its readers match ours yet (ci31 lost the one
        # camera_info sent): repeat the frame, later each time, until a pose comes.
        for start_ms in range(1_000, 6_000, 500):
            for k in range(6):
                ecm.publish(pose_to_msg(T_ecm, (start_ms + k * 10) * MS, "Cart"))
                time.sleep(0.01)
            info.publish(camera_to_msg(CameraModel.pinhole(64, 48, 60.0), (start_ms + 25) * MS))  # R = I
            if wait_until(lambda: got.get(topics.CAMERA_POSE), 1):
                break
        assert got.get(topics.CAMERA_POSE), "no /camera/pose for ten frames with kinematics"
        X = pose_matrix([0, 0, 0], [0, 0, 1, 0])                            # the default hand-eye
        expected = T_ecm @ X @ np.block([[R.T, np.zeros((3, 1))], [np.zeros((1, 3)), np.ones((1, 1))]])
        np.testing.assert_allclose(msg_to_pose(got.get(topics.CAMERA_POSE)[0]), expected, atol=1e-6)
    finally:
        out = stop_node(proc)
    assert "Traceback" not in out, out
