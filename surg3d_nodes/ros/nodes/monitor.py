"""The periodic monitoring unit: graph health on /diagnostics, periodic checkpoints, snapshots for viewers.

Every `period` seconds it evaluates (core/monitoring.py) every node's heartbeat (/surg3d/node_status), the
rate and frame-stamp-to-output latency of the watched topics (read from the raw CDR header, no
deserialisation), queue drops from the heartbeat counters and the trainer's GPU memory and model size
(TrainerStatus); publishes diagnostic_msgs/DiagnosticArray on /diagnostics and a compact NodeStatus on
/surg3d/health for the UI. A node or topic silent for `stall_periods` periods is an ERROR, except the topics
that stop when a replay reaches the end of its bag (its heartbeat says `input_ended`): logged once, then OK.
Every `checkpoint_period` seconds it asks the trainer for a checkpoint (/recon/save, kind "checkpoint"), and
each period it re-sends the newest cloud on /surg3d/snapshot/points when the trainer has not published one
within the period (viewers stay current while the trainer is busy).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from sensor_msgs.msg import Image, PointCloud2

from surg3d_msgs.msg import NodeStatus, TrainerStatus
from surg3d_msgs.srv import SaveModel
from surg3d_nodes.ros import qos, topics
from surg3d_nodes.ros.convert import header, key_values
from surg3d_nodes.ros.runtime import ERROR, SurgNode, run_node
from surg3d_nodes.system.monitoring import SNMP_PATHS, Monitor, summary, tcp_counters
from surg3d_nodes.system.node_options import MonitorOptions

# Topics the monitor can watch, with their types (every one starts with a std_msgs/Header).
WATCHABLE = {
    topics.RECON_STATUS: TrainerStatus, topics.RECON_POINTS: PointCloud2, topics.RECON_RENDER: Image,
    topics.RECON_RENDER_DEPTH: Image, topics.RECON_DEOCCLUDED: Image, topics.DEPTH: Image,
    topics.DEPTH_CONFIDENCE: Image, topics.INSTRUMENT_MASK: Image, topics.LEFT_RECT: Image,
    topics.LEFT_IMAGE: Image, topics.RIGHT_IMAGE: Image, topics.CAMERA_POSE: PoseStamped,
}


def cdr_stamp_ns(data: bytes) -> int | None:
    """Header stamp of a serialised message that starts with a std_msgs/Header (after the 4-byte CDR
    encapsulation: int32 sec, uint32 nanosec); None when too short or not little-endian CDR."""
    if len(data) < 12 or data[1] not in (1, 3):  # CDR_LE / PL_CDR_LE
        return None
    sec, nsec = struct.unpack_from("<iI", data, 4)
    return sec * 1_000_000_000 + nsec


class MonitorNode(SurgNode):
    """The monitoring unit (see the module docstring)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("monitor", **kwargs)
        p = self.params.declare(MonitorOptions)
        # A topic may be listed relative (as topics.py spells it) or absolute (/depth/image, at the root).
        watched = {t: t.lstrip("/") for t in p.topics}
        unknown = [t for t, known in watched.items() if known not in WATCHABLE]
        if unknown:
            raise ValueError(f"monitor: cannot watch {unknown}: known topics are {sorted(WATCHABLE)}")
        # Topics are reported by their resolved names (/depth/image; /rig2/depth/image in a namespace), as
        # `ros2 topic list` shows them.
        self.points_name = self.resolve_topic_name(topics.RECON_POINTS)
        self.monitor = Monitor(p.period, p.stall_periods, p.latency_warn_ms, p.gpu_memory_warn_mb,
                               trainer_prefix=self.resolve_topic_name(topics.RECON_STATUS).rsplit("/", 1)[0] + "/")
        self.snapshot = p.snapshot
        self._cloud: bytes | None = None
        self._cloud_time = 0.0
        self._saving = False
        self.last_checkpoint: str = ""

        subs = MutuallyExclusiveCallbackGroup()
        for topic, known in watched.items():
            name = self.resolve_topic_name(topic)
            self.monitor.watch(name)
            self.create_subscription(WATCHABLE[known], topic, lambda data, t=name: self.on_raw(t, data),
                                     qos.subscription(known), raw=True, callback_group=subs)
        self.subscription(NodeStatus, topics.NODE_STATUS, self.on_heartbeat, callback_group=subs)
        self.subscription(TrainerStatus, topics.RECON_STATUS, self.on_trainer, callback_group=subs)
        if self.points_name not in self.monitor.topics:
            self.subscription(PointCloud2, topics.RECON_POINTS,
                              lambda data: self.on_raw(self.points_name, data, track=False), 2,
                              raw=True, callback_group=subs)
        self.diag_pub = self.publisher(DiagnosticArray, topics.DIAGNOSTICS)
        self.health_pub = self.publisher(NodeStatus, topics.HEALTH)
        self.snapshot_pub = self.publisher(PointCloud2, topics.SNAPSHOT_POINTS, 2)
        self.save_client = self.create_client(SaveModel, topics.SRV_SAVE,
                                              callback_group=ReentrantCallbackGroup())
        self.create_timer(p.period, self.tick, callback_group=subs)
        if p.checkpoint_period > 0:
            self.create_timer(p.checkpoint_period, self.checkpoint, callback_group=subs)

    def on_raw(self, topic: str, data: bytes, track: bool = True) -> None:
        """A message on a watched topic: rate and latency from its header; keep the newest cloud."""
        now = time.monotonic()
        if track:
            self.monitor.message(topic, now, self.get_clock().now().nanoseconds, cdr_stamp_ns(data))
        if topic == self.points_name:
            self._cloud, self._cloud_time = data, now

    def on_heartbeat(self, msg: NodeStatus) -> None:
        """A node's heartbeat."""
        if self.monitor.heartbeat(msg.node, msg.level[0] if isinstance(msg.level, bytes) else int(msg.level),
                                  msg.message, {kv.key: kv.value for kv in msg.values}, time.monotonic()):
            self.get_logger().info(f"{msg.node}: input ended (bag played to its end); the topics it fed stop "
                                   "on purpose and are not reported as stalled")

    def on_trainer(self, msg: TrainerStatus) -> None:
        """The trainer's state and resources."""
        self.monitor.trainer_status({"state": msg.state, "num_gaussians": int(msg.num_gaussians),
                                     "gpu_memory_mb": float(msg.gpu_memory_mb),
                                     "iterations_per_second": round(float(msg.iterations_per_second), 2),
                                     "latency_ms": round(float(msg.latency_ms), 1),
                                     "psnr_recent": round(float(msg.psnr_recent), 2)})

    def tick(self) -> None:
        """One monitoring period: evaluate, publish /diagnostics and the compact health, push a snapshot."""
        now = time.monotonic()
        try:
            self.monitor.tcp.sample(now, tcp_counters(*(Path(f).read_text() for f in SNMP_PATHS)))
        except (OSError, ValueError) as e:   # not Linux, or another format: no TCP report
            self.report_problem("tcp_counters", f"cannot read TCP counters from {', '.join(SNMP_PATHS)}: {e}")
        health = self.monitor.evaluate(now)
        stamp = self.get_clock().now().nanoseconds
        self.diag_pub.publish(DiagnosticArray(header=header(stamp, ""), status=[
            DiagnosticStatus(level=bytes([h.level]), name=f"surg3d: {h.name}", message=h.message,
                             hardware_id="surg3d", values=key_values(h.values)) for h in health]))
        s = summary(health)
        self.health_pub.publish(NodeStatus(header=header(stamp, ""), node=self.get_fully_qualified_name(),
                                           level=bytes([int(s["level"])]), message=str(s["message"]),
                                           values=key_values({**s["items"],
                                                              "last_checkpoint": self.last_checkpoint})))
        for h in health:
            if h.level >= ERROR:
                self.report_problem("graph", f"{h.name}: {h.message}")
        if self.snapshot and self._cloud is not None and now - self._cloud_time >= self.monitor.period:
            self.snapshot_pub.publish(self._cloud)
            self.count("snapshots")

    def checkpoint(self) -> None:
        """Ask the trainer for a checkpoint (skipped while one is being written or the trainer is down)."""
        if self._saving or not self.save_client.service_is_ready():
            return
        state = (self.monitor.trainer or {}).get("state")
        if state == "idle":
            return  # no model yet
        self._saving = True
        future = self.save_client.call_async(SaveModel.Request(kind="checkpoint", path=""))
        future.add_done_callback(self._saved)

    def _saved(self, future) -> None:
        self._saving = False
        res = future.result()
        if res is None or not res.success:
            self.report_problem("checkpoint", res.message if res is not None else "no answer")
            return
        self.last_checkpoint = res.path
        self.count("checkpoints")
        self.get_logger().info(f"checkpoint written: {res.path}")


def main() -> None:
    """Entry point: `python -m surg3d_nodes.ros.nodes.monitor --ros-args ...`."""
    run_node(MonitorNode)


if __name__ == "__main__":
    main()
