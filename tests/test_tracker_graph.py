"""The `live` preset without kinematics: a bag without /camera/pose, the tracker gives the poses, the model trains."""

from __future__ import annotations

import time
from pathlib import Path

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
