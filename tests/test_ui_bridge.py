"""The Foxglove bridge node with a raw WebSocket client, in front of the real trainer node: outputs, every
service, parameter and client-publish path, and refused bad inputs (NaN pose, unknown command/topic,
out-of-range parameter) that change nothing.

The bridge and the trainer run as their own processes; the trainer learns a small synthetic scene, and every
check is made against what it really publishes, writes, renders and reports.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from foxglove_ws import FoxgloveWsClient
from geometry_msgs.msg import PointStamped
from rcl_interfaces.srv import GetParameters
from rclpy.parameter import parameter_value_to_python
from rosproc import Collector, call_service, stop_node, wait_until
from sensor_msgs.msg import Image, PointCloud2
from test_recon_node import _frame_publishers, _send_frames, _start
from ui_support import start_bridge, stop

from surg3d_msgs.msg import NodeStatus, TrainerStatus
from surg3d_msgs.srv import RenderView
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.io.checkpoint import read_checkpoint
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import header, msg_to_image, msg_to_pointcloud, pose_to_msg, stamp_to_ns
from surg3d_nodes.system.node_options import node_parameters

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
TUNABLES = ("iterations_per_frame", "max_gaussians", "points_rate", "render_rate")  # the bridge's default


def _status_since(c: FoxgloveWsClient, n: int, pattern: str) -> str:
    """The first status message after index `n` of c.text matching `pattern` (waits for it)."""
    return c.wait_for(lambda: next((t["message"] for t in c.text[n:] if t.get("op") == "status"
                                    and re.search(pattern, t["message"])), None), what=f"status ~ {pattern}")


def _stamp_ns(stamp: dict) -> int:
    """A viewer message's {sec, nsec} stamp in ns."""
    return stamp["sec"] * 1_000_000_000 + stamp["nsec"]


def _trainer_parameters(ros_node) -> dict[str, object]:
    """The trainer's own values of the bridge's tunables, asked of the trainer itself."""
    res = call_service(ros_node, GetParameters, "/trainer/get_parameters", GetParameters.Request(names=TUNABLES))
    return {f"trainer.{n}": parameter_value_to_python(v) for n, v in zip(TUNABLES, res.values, strict=True)}


def test_bridge_outputs_services_parameters_and_refusals(ros_env, ros_node, tmp_path) -> None:
    scene = generate(SynthConfig(width=64, height=48, frames=6, instruments=1, noise_std=1.0))
    out, recon = tmp_path / "out", tmp_path / "recon"
    # No periodic cloud at first (points_rate 0): clouds go out as frames enter the model.
    trainer = _start(recon, ros_env)
    try:
        # Every outcome stops the trainer (a failure before the second bridge left it running: ci61).
        got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.RECON_POINTS: PointCloud2,
                                   topics.RECON_VIEW_IMAGE: Image, topics.NODE_STATUS: NodeStatus})
        proc, port, lines = start_bridge(ros_env, out)
        try:
            assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 60), "no status from the trainer"
            got.wait_matched(topics.RECON_POINTS)
            got.wait_matched(topics.RECON_VIEW_IMAGE)
            # Clouds go out once, as frames enter the model, and a reader seen by our node may not have matched the
            # trainer yet (ci33: the bridge had no cloud for its viewer): frames go in once the trainer's heartbeat
            # counts both readers (this node, the bridge), and the last one once a viewer watches.
            assert wait_until(lambda: int(got.heartbeat("trainer").get("points_readers", 0)) >= 2, 60), \
                got.heartbeat("trainer")
            pubs = _frame_publishers(ros_node)
            _send_frames(pubs, scene, scene.frames[:-1])
            assert wait_until(lambda: got.last(topics.RECON_STATUS).frames_used >= 3 and got.get(topics.RECON_POINTS),
                              60), got.last(topics.RECON_STATUS)

            c = FoxgloveWsClient("127.0.0.1", port)
            c.poll(0.5)
            for topic in ("/recon/points", "/recon/status", "/ui/live", "/recon/render/depth", "/tf",
                          "/diagnostics", "/ui/rois"):
                c.channel_id(topic)
            assert {"/recon/pause", "/recon/resume", "/recon/reset", "/recon/save"} <= set(c.services)
            # the shipped Foxglove layout only names channels and services the bridge offers
            layout = json.loads((ROOT / "config" / "foxglove_layout.json").read_text())["configById"]
            advertised = {ch["topic"] for ch in c.channels.values()}
            for panel_id, cfg in layout.items():
                for topic in [*cfg.get("topics", {}), cfg.get("imageMode", {}).get("imageTopic"),
                              cfg.get("topicPath"), cfg.get("topicToRender")]:
                    assert topic is None or topic in advertised, f"{panel_id}: {topic} is not advertised"
                assert cfg.get("serviceName") in (None, *c.services), f"{panel_id}: unknown service"

            # outputs: the trainer's cloud (16 B per point) and status, as the trainer published them
            c.subscribe("/recon/points", 1)
            c.subscribe("/recon/status", 2)
            c.subscribe("/ui/rois", 3)
            _send_frames(pubs, scene, scene.frames[-1:])
            # The trainer's cloud of the last frame first (a loaded machine may take a while to train it: ci61 timed out
            # below without saying whether the trainer or the bridge held it up), then the bridge's relay of a cloud.
            last = scene.frames[-1].stamp_ns
            assert wait_until(lambda: any(stamp_to_ns(m.header.stamp) >= last for m in got.get(topics.RECON_POINTS)),
                              60), f"the trainer published no cloud of the last frame: {got.last(topics.RECON_STATUS)}"
            # Then the bridge's own count of the clouds it took in (its heartbeat), so a timeout below says whether
            # the bridge heard no cloud at all (and whether the trainer had matched it) or did not pass one to its
            # viewer: CI after 1f955d2 timed out on the viewer's side and could not tell.
            assert wait_until(lambda: int(got.heartbeat("foxglove_bridge").get(f"out.{topics.RECON_POINTS}", 0)), 30), \
                (f"the bridge took in none of the trainer's clouds (alive: {proc.poll() is None}); its heartbeat: "
                 f"{got.heartbeat('foxglove_bridge')}; the trainer's: {got.heartbeat('trainer')}; "
                 f"its output: {lines[-20:]}")
            cloud = c.wait_for(lambda: c.latest_json(1),
                               what="a cloud (the trainer published its cloud of the last frame)")
            assert cloud["point_stride"] == 16
            xyz = np.frombuffer(base64.b64decode(cloud["data"]), dtype=[("xyz", "<f4", 3), ("rgba", "u1", 4)])["xyz"]

            def matching() -> list:
                return [msg_to_pointcloud(m) for m in got.get(topics.RECON_POINTS)
                        if stamp_to_ns(m.header.stamp) == _stamp_ns(cloud["timestamp"])]
            wait_until(matching, 10)
            sent = matching()
            assert len(xyz) > 100 and any(np.array_equal(xyz, np.stack([p["x"], p["y"], p["z"]], 1)) for p in sent)
            status = c.wait_for(lambda: c.latest_json(2), what="status")
            stamp = _stamp_ns(status["header"]["stamp"])
            assert wait_until(lambda: any(stamp_to_ns(m.header.stamp) == stamp
                                          for m in got.get(topics.RECON_STATUS)), 10)
            same = next(m for m in got.get(topics.RECON_STATUS) if stamp_to_ns(m.header.stamp) == stamp)
            assert (status["state"], status["num_gaussians"], status["iterations"]) == \
                   ("running", same.num_gaussians, same.iterations) and same.state == "running"
            assert status["num_gaussians"] > 500

            # services forwarded to the trainer: its state in its status, its files in its output_dir
            assert c.call("/recon/pause", {}, 1) == (True, {"success": True, "message": "paused"})
            c.wait_for(lambda: (c.latest_json(2) or {}).get("state") == "paused", what="paused status")
            ok, res = c.call("/recon/save", {"kind": "checkpoint"}, 2)
            assert ok and res["success"] and Path(res["path"]).parent == recon, res
            read_checkpoint(res["path"])   # a complete checkpoint of this format, else ValueError
            ok, res = c.call("/recon/save", {"kind": "ply"}, 3)
            assert ok and res["success"] and Path(res["path"]).parent == recon, res
            assert Path(res["path"]).read_bytes().startswith(b"ply\n")
            files = sorted(recon.iterdir())
            # refused calls: bad kind, unknown service (command) id; nothing forwarded
            ok, why = c.call("/recon/save", {"kind": "obj"}, 4)
            assert not ok and "kind" in why
            c.call_id(9999, {}, 5)
            assert "Unknown service" in c.wait_for(lambda: c.failures.get(5), what="unknown-service failure")
            assert sorted(recon.iterdir()) == files

            # a pose -> a virtual viewpoint the trainer renders: the same image as its own render_view service
            # (paused: the model does not change in between)
            pose = pose_to_msg(scene.frames[0].pose, 0, topics.WORLD_FRAME).pose
            pose_json = {"position": {k: getattr(pose.position, k) for k in "xyz"},
                         "orientation": {k: getattr(pose.orientation, k) for k in "xyzw"}}
            c.advertise(2, "/recon/view_request")
            c.poll(0.3)
            c.publish(2, {"pose": pose_json, "width": 32, "height": 24})
            assert wait_until(lambda: got.get(topics.RECON_VIEW_IMAGE), 20), "no view rendered by the trainer"
            view = msg_to_image(got.last(topics.RECON_VIEW_IMAGE), "rgb8")
            own = call_service(ros_node, RenderView, topics.SRV_RENDER_VIEW,
                               RenderView.Request(pose=pose, width=32, height=24))
            assert own.success and view.shape == (24, 32, 3) and view.mean() > 10
            assert np.abs(view.astype(int) - msg_to_image(own.color, "rgb8")).max() <= 2

            assert c.call("/recon/resume", {}, 6) == (True, {"success": True, "message": "running"})
            c.wait_for(lambda: (c.latest_json(2) or {}).get("state") == "running", what="running status")
            ok, why = c.call("/recon/pause", {"now": True}, 7)
            assert not ok and "no arguments" in why
            n = len(got.get(topics.RECON_STATUS))
            assert wait_until(lambda: len(got.get(topics.RECON_STATUS)) > n + 1, 10)
            assert got.last(topics.RECON_STATUS).state == "running"

            # parameters: read (the trainer's own values), set in range (the trainer has it), refuse out of range /
            # wrong type / unknown (the trainer keeps its values)
            values = c.get_parameters([], "g1")
            assert values == _trainer_parameters(ros_node) and values["trainer.points_rate"] == 0.0
            it = "trainer.iterations_per_frame"
            assert c.set_parameters({it: 25}, "s1")[it] == 25
            assert _trainer_parameters(ros_node)[it] == 25
            n = len(got.get(topics.RECON_POINTS))
            assert c.set_parameters({"trainer.points_rate": 4.5}, "s2")["trainer.points_rate"] == 4.5
            # the trainer now sends its cloud periodically, without new frames
            assert wait_until(lambda: len(got.get(topics.RECON_POINTS)) >= n + 3, 20), "no periodic clouds"
            n = len(c.text)
            beyond = node_parameters("trainer")["iterations_per_frame"].high + 1   # the trainer's declared range
            assert c.set_parameters({it: beyond}, "s3")[it] == 25
            assert "outside" in _status_since(c, n, "refused parameter")
            n = len(c.text)
            c.set_parameters({"trainer.points_rate": "fast"}, "s4")
            assert "number" in _status_since(c, n, "refused parameter")
            n = len(c.text)
            c.set_parameters({"trainer.use_gpu_please": 1}, "s5")
            assert "unknown parameter" in _status_since(c, n, "refused parameter")
            trainer_values = _trainer_parameters(ros_node)
            assert (trainer_values[it], trainer_values["trainer.points_rate"]) == (25, 4.5)

            # client publish: a clicked point -> a region of interest (stored, shown, held by the trainer)
            c.advertise(1, "/recon/roi")
            c.poll(0.3)
            c.publish(1, {"center": {"x": 0.01, "y": -0.02, "z": 0.1}, "label": "vessel"})
            assert wait_until(lambda: got.heartbeat("trainer").get("regions") == "1", 20), got.heartbeat("trainer")
            scene_json = c.wait_for(lambda: (s := c.latest_json(3)) and s["entities"] and s, what="ROI scene")
            assert [e["id"] for e in scene_json["entities"]] == ["roi1"]
            assert json.loads((out / "rois.json").read_text())["rois"][0]["label"] == "vessel"
            # RViz's Publish Point tool (ROS /clicked_point) also marks a region; another frame is refused
            clicked = ros_node.create_publisher(PointStamped, "/clicked_point", 10)
            c.wait_for(lambda: clicked.get_subscription_count() > 0, what="bridge subscribed to /clicked_point")
            n = len(c.text)
            clicked.publish(PointStamped(header=header(0, "stereo_left_optical")))
            assert "expected 'world'" in _status_since(c, n, "refused ROS /clicked_point")
            clicked.publish(PointStamped(header=header(0, "world")))
            assert wait_until(lambda: got.heartbeat("trainer").get("regions") == "2", 20), got.heartbeat("trainer")
            ok, _ = c.call("/recon/roi/delete", {"id": 2}, 9)
            assert ok and [r["id"] for r in json.loads((out / "rois.json").read_text())["rois"]] == [1]
            # the deletion reaches the trainer (region #2 with radius 0)
            assert wait_until(lambda: got.heartbeat("trainer").get("regions") == "1", 20), got.heartbeat("trainer")
            # refused: NaN pose, NaN point, malformed JSON, unknown client topic; nothing reaches the trainer
            n_views = len(got.get(topics.RECON_VIEW_IMAGE))
            n = len(c.text)
            bad = json.loads(json.dumps(pose_json))
            bad["orientation"]["w"] = float("nan")
            c.publish(2, json.dumps({"pose": bad}).encode())  # Python writes NaN, as a careless client would
            assert "finite" in _status_since(c, n, "refused message on /recon/view_request")
            n = len(c.text)
            c.publish(1, b'{"center": [0, NaN, 0.1]}')
            assert "finite" in _status_since(c, n, "refused message on /recon/roi")
            n = len(c.text)
            c.publish(1, b"{not json")
            _status_since(c, n, "refused message on /recon/roi")
            n = len(c.text)
            c.advertise(3, "/recon/delete_everything")
            assert "unknown topic" in _status_since(c, n, "refused client channel")
            n = len(got.get(topics.NODE_STATUS))
            assert wait_until(lambda: len(got.get(topics.NODE_STATUS)) > n + 2, 10)   # heartbeats since
            assert got.heartbeat("trainer").get("regions") == "1" and len(got.get(topics.RECON_VIEW_IMAGE)) == n_views
            assert len(json.loads((out / "rois.json").read_text())["rois"]) == 1
            # region services: delete an unknown id is refused, clear works
            ok, why = c.call("/recon/roi/delete", {"id": 42}, 8)
            assert not ok and "no region" in why

            # reset: the trainer drops its model
            assert c.call("/recon/reset", {}, 10) == (True, {"success": True, "message": "reset"})
            c.wait_for(lambda: (s := c.latest_json(2) or {}).get("num_gaussians") == 0 and s["state"] == "idle",
                       what="the model reset")
            c.close()
        finally:
            stop(proc)
        assert proc.returncode == 0, "\n".join(lines)
        assert any("refused" in line for line in lines), "refusals are logged"

        # regions of interest persist: a restarted bridge shows them and re-publishes them to the trainer
        proc, port, lines = start_bridge(ros_env, out)
        try:
            c = FoxgloveWsClient("127.0.0.1", port)
            c.subscribe("/ui/rois", 1)
            scene_json = c.wait_for(lambda: (s := c.latest_json(1)) and s["entities"] and s,
                                    what="restored ROI scene")
            assert [e["id"] for e in scene_json["entities"]] == ["roi1"]
            ok, res = c.call("/recon/roi/clear", {}, 1)
            assert ok and "1 regions" in res["message"]
            assert json.loads((out / "rois.json").read_text())["rois"] == []
            assert wait_until(lambda: got.heartbeat("trainer").get("regions") == "0", 20), got.heartbeat("trainer")
            c.close()
        finally:
            stop(proc)
    finally:
        trainer_out = stop_node(trainer)
    assert trainer.returncode == 0, trainer_out
    # the trainer's regions, update by update: marked, clicked, #2 deleted; restored by the new bridge, cleared
    held = re.findall(r"regions of interest: (.*)", trainer_out)
    assert held == ["[1]", "[1, 2]", "[1]", "[1]", "none"], trainer_out


def test_old_subprotocol_is_refused(ros_env, tmp_path) -> None:
    """foxglove-sdk speaks foxglove.sdk.v1 only: the UI must offer that one."""
    proc, port, _ = start_bridge(ros_env, tmp_path / "out")
    try:
        with pytest.raises(Exception, match="400"):
            FoxgloveWsClient("127.0.0.1", port, subprotocol="foxglove.websocket.v1")
    finally:
        stop(proc)
