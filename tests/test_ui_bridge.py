"""The Foxglove bridge node with a raw WebSocket client: outputs, every service, parameter and client-publish
path, and refused bad inputs (NaN pose, unknown command/topic, out-of-range parameter) that change nothing.

The bridge runs as its own process; a stand-in for the trainer's ROS interface (services, parameters,
/recon/points, /recon/status) runs in the test process, so this test does not depend on the trainer.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from foxglove_ws import FoxgloveWsClient
from ui_support import FakeTrainer, start_bridge, stop

from surg3d_nodes.system.node_options import node_parameters

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def trainer(ros_node):
    fake = FakeTrainer(ros_node.context)
    yield fake
    fake.close()


def _status_since(c: FoxgloveWsClient, n: int, pattern: str) -> str:
    """The first status message after index `n` of c.text matching `pattern` (waits for it)."""
    return c.wait_for(lambda: next((t["message"] for t in c.text[n:] if t.get("op") == "status"
                                    and re.search(pattern, t["message"])), None), what=f"status ~ {pattern}")


def test_bridge_outputs_services_parameters_and_refusals(ros_env, trainer, tmp_path) -> None:
    out = tmp_path / "out"
    proc, port, lines = start_bridge(ros_env, out)
    try:
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

        # outputs: the cloud (500 points x 16 B) and the trainer status
        c.subscribe("/recon/points", 1)
        c.subscribe("/recon/status", 2)
        c.subscribe("/ui/rois", 3)
        cloud = c.wait_for(lambda: c.latest_json(1), what="a cloud")
        assert cloud["point_stride"] == 16 and len(__import__("base64").b64decode(cloud["data"])) == 500 * 16
        assert c.wait_for(lambda: c.latest_json(2), what="status")["state"] == "running"

        # services forwarded to the trainer
        assert c.call("/recon/pause", {}, 1) == (True, {"success": True, "message": "paused"})
        c.wait_for(lambda: (c.latest_json(2) or {}).get("state") == "paused", what="paused status")
        assert c.call("/recon/resume", {}, 2)[0] and trainer.state == "running"
        assert c.call("/recon/reset", {}, 3)[0] and trainer.state == "idle"
        ok, res = c.call("/recon/save", {"kind": "checkpoint"}, 4)
        assert ok and res["path"] == "/tmp/x.checkpoint" and trainer.saves == ["checkpoint"]
        # refused calls: bad kind, arguments to pause, unknown service (command) id; nothing forwarded
        ok, why = c.call("/recon/save", {"kind": "obj"}, 5)
        assert not ok and "kind" in why
        ok, why = c.call("/recon/pause", {"now": True}, 6)
        assert not ok and "no arguments" in why and trainer.state == "idle"
        c.call_id(9999, {}, 7)
        assert "Unknown service" in c.wait_for(lambda: c.failures.get(7), what="unknown-service failure")
        assert trainer.saves == ["checkpoint"]

        # parameters: read, set in range (forwarded), refuse out of range / wrong type / unknown
        values = c.get_parameters([], "g1")
        assert values["trainer.iterations_per_frame"] == 10 and values["trainer.points_rate"] == 2.0
        it = "trainer.iterations_per_frame"
        assert c.set_parameters({it: 25}, "s1")[it] == 25
        assert trainer.node.get_parameter("iterations_per_frame").value == 25
        assert c.set_parameters({"trainer.points_rate": 4.5}, "s2")["trainer.points_rate"] == 4.5
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
        assert trainer.node.get_parameter("iterations_per_frame").value == 25
        assert trainer.node.get_parameter("points_rate").value == 4.5

        # client publish: a clicked point -> a region of interest (stored, published, shown)
        c.advertise(1, "/recon/roi")
        c.advertise(2, "/recon/view_request")
        c.poll(0.3)
        c.publish(1, {"center": {"x": 0.01, "y": -0.02, "z": 0.1}, "label": "vessel"})
        c.wait_for(lambda: trainer.rois, what="RegionOfInterest on ROS")
        assert trainer.rois[0].id == 1 and abs(trainer.rois[0].center.z - 0.1) < 1e-9
        scene = c.wait_for(lambda: (s := c.latest_json(3)) and s["entities"] and s, what="ROI scene")
        assert [e["id"] for e in scene["entities"]] == ["roi1"]
        assert json.loads((out / "rois.json").read_text())["rois"][0]["label"] == "vessel"
        # a pose -> a virtual viewpoint
        pose = {"position": {"x": 0.0, "y": 0.0, "z": -0.02}, "orientation": {"x": 0, "y": 0, "z": 0, "w": 1}}
        c.publish(2, {"pose": pose, "width": 320, "height": 256})
        c.wait_for(lambda: trainer.views, what="ViewRequest on ROS")
        assert trainer.views[0].width == 320 and abs(trainer.views[0].pose.position.z + 0.02) < 1e-9
        # RViz's Publish Point tool (ROS /clicked_point) also marks a region; another frame is refused
        from geometry_msgs.msg import PointStamped

        from surg3d_nodes.ros.convert import header
        clicked = trainer.node.create_publisher(PointStamped, "/clicked_point", 10)
        c.wait_for(lambda: clicked.get_subscription_count() > 0, what="bridge subscribed to /clicked_point")
        n = len(c.text)
        clicked.publish(PointStamped(header=header(0, "stereo_left_optical")))
        assert "expected 'world'" in _status_since(c, n, "refused ROS /clicked_point")
        clicked.publish(PointStamped(header=header(0, "world")))
        c.wait_for(lambda: len(trainer.rois) == 2, what="ROI from ROS /clicked_point")
        ok, _ = c.call("/recon/roi/delete", {"id": 2}, 9)
        assert ok and [r["id"] for r in json.loads((out / "rois.json").read_text())["rois"]] == [1]
        # the deletion reaches the trainer as region #2 with radius 0
        c.wait_for(lambda: len(trainer.rois) == 3, what="ROI deletion on ROS")
        assert (trainer.rois[2].id, trainer.rois[2].radius) == (2, 0.0)
        # refused: NaN pose, NaN point, malformed JSON, unknown client topic; nothing reaches ROS
        n = len(c.text)
        bad = json.loads(json.dumps(pose))
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
        c.poll(0.5)
        assert len(trainer.rois) == 3 and len(trainer.views) == 1
        assert len(json.loads((out / "rois.json").read_text())["rois"]) == 1
        # region services: delete an unknown id is refused, clear works
        ok, why = c.call("/recon/roi/delete", {"id": 42}, 8)
        assert not ok and "no region" in why
        c.close()
    finally:
        stop(proc)
    assert proc.returncode == 0, "\n".join(lines)
    assert any("refused" in line for line in lines), "refusals are logged"

    # regions of interest persist: a restarted bridge shows and re-publishes them
    proc, port, lines = start_bridge(ros_env, out)
    try:
        c = FoxgloveWsClient("127.0.0.1", port)
        c.subscribe("/ui/rois", 1)
        scene = c.wait_for(lambda: (s := c.latest_json(1)) and s["entities"] and s, what="restored ROI scene")
        assert [e["id"] for e in scene["entities"]] == ["roi1"]
        ok, res = c.call("/recon/roi/clear", {}, 1)
        assert ok and "1 regions" in res["message"]
        assert json.loads((out / "rois.json").read_text())["rois"] == []
        c.close()
    finally:
        stop(proc)


def test_old_subprotocol_is_refused(ros_env, tmp_path) -> None:
    """foxglove-sdk speaks foxglove.sdk.v1 only: the UI must offer that one."""
    proc, port, _ = start_bridge(ros_env, tmp_path / "out")
    try:
        with pytest.raises(Exception, match="400"):
            FoxgloveWsClient("127.0.0.1", port, subprotocol="foxglove.websocket.v1")
    finally:
        stop(proc)
