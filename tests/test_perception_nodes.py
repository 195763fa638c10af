"""Perception nodes as real processes over DDS: stereo_depth and instrument_seg fed synthetic stereo frames,
plus bad input (missing CameraInfo, corrupt data, size mismatch, wrong encoding) that they must survive."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from rosproc import Collector, start_node, stop_node, wait_until
from sensor_msgs.msg import CameraInfo, Image, PointCloud2

from surg3d_msgs.msg import NodeStatus
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import camera_to_msg, image_to_msg, msg_to_camera, msg_to_image, stamp_to_ns

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def scene():
    return generate(SynthConfig(width=160, height=128, frames=4, instruments=1, noise_std=1.0))


def test_stereo_depth_node(ros_env, ros_node, scene):
    proc = start_node("surg3d_nodes.ros.nodes.stereo_depth",
                  ["--params-file", str(CONFIG / "stereo_depth.yaml"), "-p", "heartbeat_period:=0.3",
                   "-p", "publish_points:=true", "-p", "backend:=onnx",
                   "-p", "onnx_model:=/nonexistent/stereo.onnx"], ros_env)
    try:
        pub = {t: ros_node.create_publisher(Image, t, 10) for t in (topics.LEFT_IMAGE, topics.RIGHT_IMAGE)}
        info = {t: ros_node.create_publisher(CameraInfo, t, 10)
                for t in (topics.LEFT_INFO, topics.RIGHT_INFO)}
        got = Collector(ros_node, {topics.DEPTH: Image, topics.DEPTH_CONFIDENCE: Image,
                                    topics.LEFT_RECT: Image, topics.LEFT_RECT_INFO: CameraInfo,
                                    topics.NODE_STATUS: NodeStatus, topics.DEPTH_POINTS: PointCloud2})
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in [*pub.values(), *info.values()])
                     and ros_node.count_publishers(topics.DEPTH) > 0, 20), "stereo_depth node not up"
        time.sleep(0.3)

        def send_pair(stamp, left, right, enc="rgb8"):
            pub[topics.LEFT_IMAGE].publish(image_to_msg(left, enc, stamp, "stereo_left_optical"))
            pub[topics.RIGHT_IMAGE].publish(image_to_msg(right, enc, stamp, "stereo_right_optical"))
            time.sleep(0.15)

        f0 = scene.frames[0]
        # Before any CameraInfo: the newest pair waits for it, an older one is skipped and reported. Older
        # pairs are sent until the report shows: the node may match this publisher a moment after the test
        # matched the node (a first pair lost to discovery failed this test in CI).
        early = f0.stamp_ns - 10**9 // 2
        for k in range(20):
            send_pair(f0.stamp_ns - 10**9 + k * 10**7, f0.left, f0.right)
            if k and "problems.camera_info_missing" in got.heartbeat("stereo_depth"):
                break
        send_pair(early, f0.left, f0.right)
        assert wait_until(lambda: "problems.camera_info_missing" in got.heartbeat("stereo_depth"), 5)

        def send_info(stamp):
            info[topics.LEFT_INFO].publish(camera_to_msg(scene.cam_left, stamp))
            info[topics.RIGHT_INFO].publish(camera_to_msg(scene.cam_right, stamp))

        for f in scene.frames:
            send_info(f.stamp_ns)
            time.sleep(0.05)
            send_pair(f.stamp_ns, f.left, f.right)
        assert wait_until(lambda: len(got.get(topics.DEPTH)) >= len(scene.frames) + 1, 10), \
            f"{len(got.get(topics.DEPTH))} depth images; status {got.heartbeat('stereo_depth')}"
        by_stamp = {f.stamp_ns: f for f in scene.frames} | {early: f0}
        assert early in {stamp_to_ns(m.header.stamp) for m in got.get(topics.DEPTH)}   # the held pair
        for msg in got.get(topics.DEPTH):
            f = by_stamp[stamp_to_ns(msg.header.stamp)]
            depth = msg_to_image(msg, "32FC1")
            tissue = (f.mask == 0) & np.isfinite(f.depth) & np.isfinite(depth)
            assert tissue.mean() > 0.5
            rel = np.abs(depth[tissue] - f.depth[tissue]) / f.depth[tissue]
            assert np.median(rel) < 0.03
        conf = msg_to_image(got.get(topics.DEPTH_CONFIDENCE)[-1], "mono8")
        assert conf.shape == (128, 160) and conf.max() > 0
        assert msg_to_camera(got.get(topics.LEFT_RECT_INFO)[-1]).is_rectified
        assert got.get(topics.DEPTH_POINTS) and got.get(topics.DEPTH_POINTS)[-1].width > 1000

        # Bad input: corrupt data, size mismatch, wrong encoding. The node reports and keeps running.
        t = scene.frames[-1].stamp_ns
        bad = image_to_msg(f0.left, "rgb8", t + 10_000_000, "stereo_left_optical")
        bad.data = bad.data[:-100]
        pub[topics.LEFT_IMAGE].publish(bad)
        pub[topics.RIGHT_IMAGE].publish(image_to_msg(f0.right, "rgb8", t + 10_000_000, "right"))
        time.sleep(0.15)
        send_pair(t + 20_000_000, f0.left, np.ascontiguousarray(f0.right[::2, ::2]))
        send_pair(t + 30_000_000, f0.left.astype(np.float32)[..., 0], f0.right.astype(np.float32)[..., 0],
                  enc="32FC1")
        n_before = len(got.get(topics.DEPTH))
        send_info(t + 40_000_000)
        send_pair(t + 40_000_000, f0.left, f0.right)
        assert wait_until(lambda: len(got.get(topics.DEPTH)) > n_before, 5), "node stopped after bad input"

        def reported() -> bool:
            v = got.heartbeat("stereo_depth")
            return (all(f"problems.{k}" in v for k in ("corrupt_image", "size_mismatch", "encoding"))
                    and int(v.get("pairs_processed", 0)) >= len(scene.frames) + 1)
        assert wait_until(reported, 5), got.heartbeat("stereo_depth")
        values = got.heartbeat("stereo_depth")
        assert int(values["pairs_processed"]) >= len(scene.frames) + 1
        assert values["backend"] == "sgbm" and int(values["onnx_fallback"]) == 1  # missing model: SGBM
        # The endoscope's fall-off, measured on the first five pairs: the generator's vignetting at the corner,
        # 1 - v ((x - cx)^2 + (y - cy)^2) / width^2.
        cx, cy = scene.cam_left.intrinsics()[:2, 2]
        truth = 1 - scene.config.vignetting * (cx ** 2 + cy ** 2) / scene.config.width ** 2
        assert float(values["falloff_corner"]) == pytest.approx(truth, abs=0.03), values
        assert proc.poll() is None
    finally:
        out = stop_node(proc)
    assert "Traceback" not in out, out
    assert out.count("corrupt_image:") == 1  # logged once per kind
    assert out.count("falling back to SGBM") == 1
    assert out.count("endoscope fall-off measured on 5 pairs") == 1


def test_stereo_depth_takes_best_effort_cameras_in_a_namespace(ros_env, ros_node, scene):
    """A camera driver that publishes best-effort (as many do) reaches stereo_depth: its image and camera_info
    subscriptions are best-effort (ros/qos.py). Its topic names are relative: under a namespace the whole node
    moves along without one remapping."""
    from rclpy.qos import qos_profile_sensor_data

    ns = "/rig2"
    proc = start_node("surg3d_nodes.ros.nodes.stereo_depth", ["-r", f"__ns:={ns}"], ros_env)
    try:
        name = {t: topics.absolute(t, ns) for t in (topics.LEFT_IMAGE, topics.RIGHT_IMAGE, topics.LEFT_INFO,
                                                    topics.RIGHT_INFO, topics.DEPTH)}
        assert qos_profile_sensor_data.reliability.name == "BEST_EFFORT"
        pub = {t: ros_node.create_publisher(cls, name[t], qos_profile_sensor_data)
               for t, cls in [(topics.LEFT_IMAGE, Image), (topics.RIGHT_IMAGE, Image),
                              (topics.LEFT_INFO, CameraInfo), (topics.RIGHT_INFO, CameraInfo)]}
        got = Collector(ros_node, {name[topics.DEPTH]: Image})
        # A best-effort writer counts only readers that matched it: a reliable subscription would not.
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pub.values())
                          and ros_node.count_publishers(name[topics.DEPTH]) > 0, 20), "no best-effort match"
        time.sleep(0.3)
        for f in scene.frames:
            pub[topics.LEFT_INFO].publish(camera_to_msg(scene.cam_left, f.stamp_ns))
            pub[topics.RIGHT_INFO].publish(camera_to_msg(scene.cam_right, f.stamp_ns))
            time.sleep(0.05)
            pub[topics.LEFT_IMAGE].publish(image_to_msg(f.left, "rgb8", f.stamp_ns, "stereo_left_optical"))
            pub[topics.RIGHT_IMAGE].publish(image_to_msg(f.right, "rgb8", f.stamp_ns, "stereo_right_optical"))
            time.sleep(0.15)
        stamps = {f.stamp_ns for f in scene.frames}
        assert wait_until(lambda: stamps <= {stamp_to_ns(m.header.stamp) for m in got.get(name[topics.DEPTH])},
                          10), f"{len(got.get(name[topics.DEPTH]))} depth images under {ns}"
        assert ros_node.count_publishers(topics.absolute(topics.DEPTH)) == 0   # nothing left at the root
    finally:
        out = stop_node(proc)
    assert "Traceback" not in out, out

def test_instrument_seg_node_cue_with_yolo_fallback(ros_env, ros_node, scene):
    proc = start_node("surg3d_nodes.ros.nodes.instrument_seg",
                  ["--params-file", str(CONFIG / "instrument_seg.yaml"), "-p", "heartbeat_period:=0.3",
                   "-p", "source:=yolo", "-p", "model_path:=/nonexistent/yolo.onnx", "-p", "margin_px:=8"],
                  ros_env)
    try:
        img_pub = ros_node.create_publisher(Image, topics.LEFT_RECT, 10)
        depth_pub = ros_node.create_publisher(Image, topics.DEPTH, 10)
        got = Collector(ros_node, {topics.INSTRUMENT_MASK: Image, topics.NODE_STATUS: NodeStatus})
        assert wait_until(lambda: img_pub.get_subscription_count() > 0 and depth_pub.get_subscription_count() > 0
                     and ros_node.count_publishers(topics.INSTRUMENT_MASK) > 0, 20), "instrument_seg not up"
        time.sleep(0.3)
        for f in scene.frames:
            img_pub.publish(image_to_msg(f.left, "rgb8", f.stamp_ns, "stereo_left_optical"))
            depth_pub.publish(image_to_msg(f.depth, "32FC1", f.stamp_ns, "stereo_left_optical"))
            time.sleep(0.3)
        assert wait_until(lambda: len(got.get(topics.INSTRUMENT_MASK)) >= len(scene.frames), 10), "no masks"
        by_stamp = {f.stamp_ns: f for f in scene.frames}
        recalls = []
        for msg in got.get(topics.INSTRUMENT_MASK):
            f = by_stamp[stamp_to_ns(msg.header.stamp)]
            m = msg_to_image(msg, "mono8") > 0
            gt = f.mask > 0
            recalls.append((m & gt).sum() / gt.sum())
        assert np.mean(recalls) > 0.9, recalls
        t_bad = scene.frames[-1].stamp_ns + 10_000_000
        bad = image_to_msg(scene.frames[0].left, "rgb8", t_bad, "x")
        bad.data = bad.data[:50]
        img_pub.publish(bad)
        depth_pub.publish(image_to_msg(scene.frames[0].depth, "32FC1", t_bad, "x"))
        assert wait_until(lambda: "problems.corrupt_image" in got.heartbeat("instrument_seg"), 5)
        values = got.heartbeat("instrument_seg")
        assert values["source"] == "cue" and int(values["yolo_fallback"]) == 1
        assert proc.poll() is None
    finally:
        out = stop_node(proc)
    assert "Traceback" not in out, out
    assert "falling back to the cue segmenter" in out


def test_instrument_seg_node_dataset_source(ros_env, ros_node, scene):
    proc = start_node("surg3d_nodes.ros.nodes.instrument_seg", ["-p", "source:=dataset"], ros_env)
    try:
        img_pub = ros_node.create_publisher(Image, topics.LEFT_RECT, 10)
        mask_pub = ros_node.create_publisher(Image, topics.DATASET_MASK, 10)
        got = Collector(ros_node, {topics.INSTRUMENT_MASK: Image})
        assert wait_until(lambda: img_pub.get_subscription_count() > 0 and mask_pub.get_subscription_count() > 0
                     and ros_node.count_publishers(topics.INSTRUMENT_MASK) > 0, 20), "instrument_seg not up"
        time.sleep(0.3)
        for f in scene.frames[:2]:
            img_pub.publish(image_to_msg(f.left, "rgb8", f.stamp_ns, "stereo_left_optical"))
            mask_pub.publish(image_to_msg(f.mask, "mono8", f.stamp_ns + 1_000_000, "stereo_left_optical"))
            time.sleep(0.2)
        assert wait_until(lambda: len(got.get(topics.INSTRUMENT_MASK)) >= 2, 10), "no masks"
        for msg, f in zip(got.get(topics.INSTRUMENT_MASK), scene.frames, strict=False):
            assert stamp_to_ns(msg.header.stamp) == f.stamp_ns  # the image's stamp, not the mask's
            assert np.array_equal(msg_to_image(msg, "mono8"), f.mask)
    finally:
        out = stop_node(proc)
    assert "Traceback" not in out, out


def test_stereo_depth_node_calibration_files(ros_env, ros_node, scene, tmp_path):
    """No CameraInfo on the wire: camera_calibration YAML files give the calibration."""
    from surg3d_nodes.common.camera_yaml import save_camera_yaml

    left_yaml = save_camera_yaml(scene.cam_left, tmp_path / "left.yaml", "left")
    right_yaml = save_camera_yaml(scene.cam_right, tmp_path / "right.yaml", "right")
    proc = start_node("surg3d_nodes.ros.nodes.stereo_depth",
                  ["-p", f"left_calibration_file:={left_yaml}",
                   "-p", f"right_calibration_file:={right_yaml}"], ros_env)
    try:
        pub = {t: ros_node.create_publisher(Image, t, 10) for t in (topics.LEFT_IMAGE, topics.RIGHT_IMAGE)}
        got = Collector(ros_node, {topics.DEPTH: Image, topics.LEFT_RECT_INFO: CameraInfo})
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pub.values())
                     and ros_node.count_publishers(topics.DEPTH) > 0, 20), "stereo_depth node not up"
        f = scene.frames[0]

        def came_out() -> bool:
            return len(got.get(topics.DEPTH)) >= 1 and len(got.get(topics.LEFT_RECT_INFO)) >= 1
        # Pairs are sent until one comes out: the node may match these publishers a moment after the test matched
        # the node (one pair, lost to that one-sided discovery, failed this test in CI after c2c8508).
        for k in range(20):
            stamp = f.stamp_ns + k * 10**7
            pub[topics.LEFT_IMAGE].publish(image_to_msg(f.left, "rgb8", stamp, "left"))
            pub[topics.RIGHT_IMAGE].publish(image_to_msg(f.right, "rgb8", stamp, "right"))
            if wait_until(came_out, 0.5):
                break
        assert wait_until(came_out, 10)
        depth = msg_to_image(got.get(topics.DEPTH)[0], "32FC1")
        tissue = (f.mask == 0) & np.isfinite(f.depth) & np.isfinite(depth)
        assert np.median(np.abs(depth[tissue] - f.depth[tissue]) / f.depth[tissue]) < 0.03
        info = got.get(topics.LEFT_RECT_INFO)[0]
        assert info.header.frame_id == topics.LEFT_OPTICAL_FRAME
    finally:
        out = stop_node(proc)
    assert "Traceback" not in out, out
