"""Shared helpers of the operator-view tests: start/stop node processes, a stand-in for the trainer's ROS
interface (services, parameters, /recon/points, /recon/status) that records what it receives."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
UI_TESTS = ROOT / "tests" / "ui"
WEB = ROOT / "surg3d_nodes" / "viewer" / "web"


def browser_requirements() -> str | None:
    """Why the real-browser test cannot run here, or None when it can."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if not (UI_TESTS / "node_modules" / "playwright-core").is_dir():
        return "tests/ui/node_modules is missing (cd tests/ui && npm ci)"
    if not (WEB / "node_modules" / "@sparkjsdev" / "spark").is_dir():
        return "the page's 3D libraries are missing (tools/setup.sh, or npm ci in surg3d_nodes/viewer/web)"
    if shutil.which("node") is None:
        return "node is not on PATH (Node 20)"
    return None


def start_node(module: str, ros_env: dict, args: list[str], ready: str = "",
               timeout: float = 30.0) -> tuple[subprocess.Popen, list[str], re.Match | None]:
    """Start `python -m surg3d_nodes.ros.nodes.<module> --ros-args <args>`; with `ready`, wait for an output line
    matching that regex. Returns (process, its output lines (kept up to date), the match)."""
    proc = subprocess.Popen([sys.executable, "-m", f"surg3d_nodes.ros.nodes.{module}", "--ros-args", *args],
                            env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found: list[re.Match] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = re.search(ready, line) if ready else None
            if m:
                found.append(m)

    threading.Thread(target=read, daemon=True).start()
    end = time.monotonic() + timeout
    while ready and not found:
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{module} did not start:\n" + "\n".join(lines))
        time.sleep(0.05)
    return proc, lines, found[0] if found else None


def start_bridge(ros_env: dict, out: Path, *extra: str) -> tuple[subprocess.Popen, int, list[str]]:
    """Start the bridge on a free port; returns (process, port, its output lines)."""
    args = ["-p", "port:=0", "-p", f"output_dir:={out}", *extra]
    proc, lines, m = start_node("foxglove_bridge", ros_env, args, ready=r"ws://[\d.]+:(\d+)")
    return proc, int(m.group(1)), lines


def stop(proc: subprocess.Popen) -> int:
    """SIGINT, then kill after 10 s; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(2)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


class FakeTrainer:
    """The trainer's ROS interface, recording what the bridge forwards."""

    def __init__(self, context) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from std_srvs.srv import Trigger

        from surg3d_msgs.msg import RegionOfInterest, TrainerStatus, ViewRequest
        from surg3d_msgs.srv import SaveModel
        from surg3d_nodes.ros import topics

        self.node = rclpy.create_node("trainer", context=context)
        self.state = "running"
        self.publishing = True  # False: silent, as a trainer busy with a long step
        self.saves: list[str] = []
        self.rois: list = []
        self.views: list = []
        for name in ("iterations_per_frame", "max_gaussians"):
            self.node.declare_parameter(name, 10 if name == "iterations_per_frame" else 100000)
        self.node.declare_parameter("points_rate", 2.0)
        self.node.declare_parameter("render_rate", 5.0)

        def trigger(state):
            def handle(req, res):
                self.state = state
                res.success, res.message = True, state
                return res
            return handle

        for srv, state in [(topics.SRV_PAUSE, "paused"), (topics.SRV_RESUME, "running"),
                           (topics.SRV_RESET, "idle")]:
            self.node.create_service(Trigger, srv, trigger(state))

        def save(req, res):
            self.saves.append(req.kind)
            res.success, res.message, res.path = True, "saved", f"/tmp/x.{req.kind}"
            return res

        self.node.create_service(SaveModel, topics.SRV_SAVE, save)
        from rclpy.qos import DurabilityPolicy, QoSProfile
        self.node.create_subscription(RegionOfInterest, topics.RECON_ROI, self.rois.append,
                                      QoSProfile(depth=100, durability=DurabilityPolicy.TRANSIENT_LOCAL))
        self.node.create_subscription(ViewRequest, topics.RECON_VIEW_REQUEST, self.views.append, 10)
        self.status_pub = self.node.create_publisher(TrainerStatus, topics.RECON_STATUS, 10)
        from sensor_msgs.msg import PointCloud2
        self.points_pub = self.node.create_publisher(PointCloud2, topics.RECON_POINTS, 2)
        self.node.create_timer(0.2, self.publish)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def publish(self) -> None:
        if not self.publishing:
            return
        from surg3d_msgs.msg import TrainerStatus
        from surg3d_nodes.ros.convert import header, pack_rgb, pointcloud_to_msg

        rng = np.random.default_rng(0)
        xyz = rng.normal(0, 0.02, (500, 3)).astype(np.float32) + np.float32([0, 0, 0.1])
        rgb = rng.integers(0, 255, (500, 3))
        self.points_pub.publish(pointcloud_to_msg({"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2],
                                                   "rgb": pack_rgb(rgb), "opacity": np.full(500, 0.8)},
                                                  time.time_ns(), "world"))
        self.status_pub.publish(TrainerStatus(header=header(time.time_ns(), "world"), state=self.state,
                                              num_gaussians=500))

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=5.0)
        self.thread.join(timeout=5.0)
        self.node.destroy_node()
