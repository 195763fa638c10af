"""The `live` preset without kinematics: a bag without /camera/pose, the tracker gives the poses, the model trains."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from rosproc import Collector, Launch, free_port, start_node, stop_node

from surg3d_nodes.ros import topics

pytestmark = pytest.mark.ros


def test_live_preset_trains_from_a_bag_without_poses(synth_bag: Path, ros_env, ros_node, tmp_path: Path) -> None:
    """The stereo topics of a synthetic bag (no /camera/pose, no /tf) replayed into `surg3d launch live`: the
    tracker publishes poses and /tf, and the trainer publishes a cloud."""
    from geometry_msgs.msg import PoseStamped
    from sensor_msgs.msg import PointCloud2
    from tf2_msgs.msg import TFMessage

    got = Collector(ros_node, {topics.CAMERA_POSE: PoseStamped, topics.RECON_POINTS: PointCloud2,
                               topics.TF: TFMessage})
    graph = Launch(["live", f"output_dir:={tmp_path}", f"bridge_port:={free_port()}"], ros_env)
    camera = ["/stereo/left/image_raw", "/stereo/right/image_raw", "/stereo/left/camera_info",
              "/stereo/right/camera_info"]
    replay = None
    try:
        graph.wait_for(r"started trainer", 60)
        replay = start_node("surg3d_nodes.ros.nodes.bag_replay",
                            ["-p", f"bag:={synth_bag}", "-p", "loop:=true", "-p", "rate:=0.5",
                             "-p", f"topics:=[{', '.join(camera)}]", "-p", "wait_for_subscribers:=1",
                             "-p", "wait_nodes:=[stereo_depth, instrument_seg, tracker, trainer]"], ros_env)
        deadline = time.monotonic() + 180
        while (not got.get(topics.RECON_POINTS) or not got.get(topics.CAMERA_POSE)) and time.monotonic() < deadline:
            assert graph.proc.poll() is None, "\n".join(graph.lines[-60:])
            time.sleep(0.5)
        poses = got.get(topics.CAMERA_POSE)
        assert poses, "no pose from the tracker; output:\n" + "\n".join(graph.lines[-60:])
        assert got.get(topics.RECON_POINTS), "no cloud; output:\n" + "\n".join(graph.lines[-60:])
        assert got.get(topics.TF)
        assert all(p.header.frame_id == topics.WORLD_FRAME for p in poses)
    finally:
        if replay is not None:
            stop_node(replay)
        code = graph.stop()
    assert code == 0, "\n".join(graph.lines[-60:])


def _publish_frames(ros_node, frames, cam, with_depth: bool = True) -> dict[int, object]:
    """Publish rectified image, camera info, depth and mask of each frame with best-effort publishers (a camera
    driver's sensor-data QoS); returns the stamps published, by frame index."""
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import CameraInfo, Image

    from surg3d_nodes.ros.convert import camera_to_msg, image_to_msg

    pubs = {t: ros_node.create_publisher(cls, t, qos_profile_sensor_data) for t, cls in
            ((topics.LEFT_RECT, Image), (topics.LEFT_RECT_INFO, CameraInfo), (topics.DEPTH, Image),
             (topics.INSTRUMENT_MASK, Image))}
    # each publisher matched with the node's subscription before its first frame: best-effort loses what is
    # sent before (a first frame lost so failed in CI)
    used = [topics.LEFT_RECT, topics.LEFT_RECT_INFO] + ([topics.DEPTH, topics.INSTRUMENT_MASK] if with_depth else [])
    end = time.monotonic() + 20
    while not all(pubs[t].get_subscription_count() > 0 for t in used) and time.monotonic() < end:
        time.sleep(0.05)
    stamps = {}
    for i, (rgb, depth, mask, stamp) in enumerate(frames):
        pubs[topics.LEFT_RECT].publish(image_to_msg(rgb, "rgb8", stamp, topics.LEFT_OPTICAL_FRAME))
        if with_depth:
            pubs[topics.DEPTH].publish(image_to_msg(depth, "32FC1", stamp, topics.LEFT_OPTICAL_FRAME))
            pubs[topics.INSTRUMENT_MASK].publish(image_to_msg(mask, "mono8", stamp, topics.LEFT_OPTICAL_FRAME))
        # the info after its images: topics come in no set order, and the first frame must not be lost for it
        pubs[topics.LEFT_RECT_INFO].publish(camera_to_msg(cam, stamp))
        stamps[i] = stamp
        time.sleep(0.15)   # the tracker's worker keeps up (its queue drops the oldest frame when busy)
    return stamps


def _wait_for_subscriber(ros_node, topic: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while ros_node.count_subscribers(topic) == 0 and time.monotonic() < end:
        time.sleep(0.1)
    assert ros_node.count_subscribers(topic) > 0, f"nobody subscribed {topic}"


def test_tracker_node_poses_from_best_effort_inputs_and_none_for_an_occluded_frame(ros_env, ros_node) -> None:
    """The tracker node over DDS (inputs best-effort): the core tracker's pose for every frame, none for a frame
    an instrument fills, and the quality in its heartbeat."""
    from geometry_msgs.msg import PoseStamped

    from surg3d_msgs.msg import NodeStatus
    from surg3d_nodes.data.synthetic import SynthConfig, generate
    from surg3d_nodes.perception.stereo_depth import StereoDepth
    from surg3d_nodes.perception.tracker import CameraTracker
    from surg3d_nodes.ros.convert import msg_to_pose, stamp_to_ns

    scene = generate(SynthConfig(width=160, height=128, frames=12, camera_motion="moving", instruments=2,
                                 breathing_amplitude=0.0, seed=5))
    sd = StereoDepth(scene.cam_left, scene.cam_right)
    frames = [(f.left, sd.compute(f.left, f.right).depth, f.mask, f.stamp_ns) for f in scene.frames]
    occluded = 8
    rgb, depth, mask, stamp = frames[occluded]
    frames[occluded] = (rgb, depth, np.full_like(mask, 255), stamp)
    got = Collector(ros_node, {topics.CAMERA_POSE: PoseStamped, topics.NODE_STATUS: NodeStatus})
    proc = start_node("surg3d_nodes.ros.nodes.tracker", ["-r", "__node:=tracker", "-p", "heartbeat_period:=0.2"],
                      ros_env)
    try:
        _wait_for_subscriber(ros_node, topics.INSTRUMENT_MASK)
        got.wait_matched(topics.CAMERA_POSE)
        _publish_frames(ros_node, frames, scene.cam_left)
        end = time.monotonic() + 10
        while len(got.get(topics.CAMERA_POSE)) < len(frames) - 1 and time.monotonic() < end:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        out = stop_node(proc)
    poses = {stamp_to_ns(m.header.stamp): msg_to_pose(m) for m in got.get(topics.CAMERA_POSE)}
    assert poses, out
    # Best-effort: the node's readers may match the test's writers after the writers saw them, and lose what
    # came before (CI lost the first frame after a 0.5 s settle), each topic on its own (CI: all 12 images, the
    # first depth and mask lost). The node must pose every frame from the first whose set it received whole (where
    # its world is set: `world_stamp` in its heartbeat), lose no input after it, and agree with the core tracker
    # started on the same frame. Only that first pose may be missing here: the node's writer can publish it before
    # it has matched this test's reader (the reader had matched the writer: CI lost it once so).
    beats = [m for m in got.get(topics.NODE_STATUS) if m.node.endswith("/tracker")]
    counts = got.heartbeat("/tracker")
    start = [f[3] for f in frames].index(int(counts["world_stamp"]))
    assert start < occluded, f"the node received nothing before frame {start}"
    assert all(len(frames) - start <= int(counts[f"in.{t.lstrip('/')}"]) <= len(frames)
               for t in (topics.LEFT_RECT, topics.DEPTH, topics.INSTRUMENT_MASK)), counts
    tracker = CameraTracker(scene.cam_left.intrinsics(), scene.cam_left.width)
    expected = {stamp: r.pose for rgb, depth, mask, stamp in frames[start:]
                if (r := tracker.track(rgb, depth, mask)).pose is not None}
    assert frames[occluded][3] not in expected
    assert set(expected) - {frames[start][3]} <= set(poses) <= set(expected), counts
    for stamp, T in poses.items():
        assert np.allclose(T, expected[stamp], atol=1e-9), (T, expected[stamp])
    keys = {kv.key for m in beats for kv in m.values}
    assert {"inliers", "reproj_px", "posed", "lost"} <= keys, keys


def test_tracker_node_static_pose_source(ros_env, ros_node) -> None:
    """pose_source static: the initial pose at every rectified image stamp, without depth or masks."""
    from geometry_msgs.msg import PoseStamped

    from surg3d_nodes.common.camera import CameraModel
    from surg3d_nodes.ros.convert import msg_to_pose, stamp_to_ns

    cam = CameraModel.pinhole(64, 48, 60.0)
    img = np.zeros((48, 64, 3), np.uint8)
    frames = [(img, None, None, 1_700_000_000 * 10**9 + i * 10**8) for i in range(4)]
    got = Collector(ros_node, {topics.CAMERA_POSE: PoseStamped})
    proc = start_node("surg3d_nodes.ros.nodes.tracker",
                      ["-r", "__node:=tracker", "-p", "pose_source:=static",
                       "-p", "initial_pose:=[0.0, 0.0, 0.01, 0.0, 0.0, 0.0, 1.0]"], ros_env)
    try:
        _wait_for_subscriber(ros_node, topics.LEFT_RECT)
        got.wait_matched(topics.CAMERA_POSE)
        stamps = _publish_frames(ros_node, frames, cam, with_depth=False)
        end = time.monotonic() + 10
        while len(got.get(topics.CAMERA_POSE)) < len(frames) and time.monotonic() < end:
            time.sleep(0.1)
    finally:
        out = stop_node(proc)
    msgs = got.get(topics.CAMERA_POSE)
    posed = sorted(stamp_to_ns(m.header.stamp) for m in msgs)
    # every image from the first the node received on (best-effort loses what precedes the readers' match)
    assert posed and posed == [s for s in sorted(stamps.values()) if s >= posed[0]] and len(posed) >= 3, out
    expected = np.eye(4)
    expected[2, 3] = 0.01
    assert all(np.allclose(msg_to_pose(m), expected) for m in msgs)
