"""surg3d_msgs (and the tf2_msgs TFMessage built beside it) between two processes over DDS."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time

import pytest

pytestmark = pytest.mark.ros

# Runs in another process: publishes each message type with known values and serves each service.
PEER = textwrap.dedent("""
    import time, rclpy
    from geometry_msgs.msg import TransformStamped
    from surg3d_msgs.msg import NodeStatus, RegionOfInterest, TrainerStatus, ViewRequest
    from surg3d_msgs.srv import LoadCheckpoint, RenderView, SaveModel
    from tf2_msgs.msg import TFMessage
    from diagnostic_msgs.msg import KeyValue
    rclpy.init()
    n = rclpy.create_node("peer")
    pubs = {
        "/t/status": (TrainerStatus, TrainerStatus(state="paused", num_gaussians=1234, psnr_recent=31.5)),
        "/t/node": (NodeStatus, NodeStatus(node="/x", level=b"\\x02", values=[KeyValue(key="k", value="v")])),
        "/t/roi": (RegionOfInterest, RegionOfInterest(id=7, radius=0.004, label="lesion")),
        "/t/view": (ViewRequest, ViewRequest(width=320, height=256, deoccluded=True)),
        "/t/tf": (TFMessage, TFMessage(transforms=[TransformStamped(child_frame_id="cam")])),
    }
    pubs = {t: (n.create_publisher(c, t, 10), m) for t, (c, m) in pubs.items()}
    def render(req, res):
        res.success, res.message = True, f"{req.width}x{req.height}"
        res.color.width = req.width
        return res
    def save(req, res):
        res.success, res.path = True, req.path + "." + req.kind
        return res
    def load(req, res):
        res.success, res.message = False, "no checkpoint at " + req.path
        return res
    n.create_service(RenderView, "/t/render", render)
    n.create_service(SaveModel, "/t/save", save)
    n.create_service(LoadCheckpoint, "/t/load", load)
    n.create_timer(0.1, lambda: [p.publish(m) for p, m in pubs.values()])
    end = time.monotonic() + 60
    while rclpy.ok() and time.monotonic() < end:
        rclpy.spin_once(n, timeout_sec=0.1)
""")


def test_each_custom_message_and_service_crosses_processes(ros_env, ros_node) -> None:
    from tf2_msgs.msg import TFMessage

    from surg3d_msgs.msg import NodeStatus, RegionOfInterest, TrainerStatus, ViewRequest
    from surg3d_msgs.srv import LoadCheckpoint, RenderView, SaveModel

    got: dict[str, object] = {}
    for topic, kind in {"/t/status": TrainerStatus, "/t/node": NodeStatus, "/t/roi": RegionOfInterest,
                        "/t/view": ViewRequest, "/t/tf": TFMessage}.items():
        ros_node.create_subscription(kind, topic, lambda m, t=topic: got.setdefault(t, m), 10)
    peer = subprocess.Popen([sys.executable, "-c", PEER], env=ros_env)
    try:
        deadline = time.monotonic() + 30
        while len(got) < 5 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert got["/t/status"].state == "paused" and got["/t/status"].num_gaussians == 1234
        assert got["/t/status"].psnr_recent == pytest.approx(31.5)
        assert got["/t/node"].level == b"\x02" and got["/t/node"].values[0].key == "k"
        assert got["/t/roi"].id == 7 and got["/t/roi"].label == "lesion"
        assert got["/t/view"].deoccluded and got["/t/view"].width == 320
        assert got["/t/tf"].transforms[0].child_frame_id == "cam"

        def call(kind, name, request):
            client = ros_node.create_client(kind, name)
            assert client.wait_for_service(timeout_sec=20), name
            future = client.call_async(request)
            end = time.monotonic() + 20
            while not future.done() and time.monotonic() < end:
                time.sleep(0.05)
            return future.result()

        assert call(RenderView, "/t/render", RenderView.Request(width=64, height=48)).message == "64x48"
        assert call(SaveModel, "/t/save", SaveModel.Request(path="/m", kind="ply")).path == "/m.ply"
        reply = call(LoadCheckpoint, "/t/load", LoadCheckpoint.Request(path="/c"))
        assert not reply.success and reply.message == "no checkpoint at /c"
    finally:
        peer.terminate()
        peer.wait(timeout=10)
