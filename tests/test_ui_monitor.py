"""The monitor node over DDS: rates and health on /diagnostics, a stalled node flagged ERROR, the end of a
replayed bag reported once and not as a stall, periodic checkpoints through /recon/save, snapshots of the newest
cloud while the trainer is silent."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ui_support import FakeTrainer, start_node, stop

pytestmark = pytest.mark.ros


def _wait(pred, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = pred()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_monitor_diagnostics_stall_checkpoint_snapshot(ros_env, ros_node) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image, PointCloud2

    from surg3d_msgs.msg import NodeStatus
    from surg3d_nodes.ros import topics
    from surg3d_nodes.ros.convert import header, key_values
    from surg3d_nodes.system.monitoring import INPUT_ENDED

    trainer = FakeTrainer(ros_node.context)
    diags: list[DiagnosticArray] = []
    health: list[NodeStatus] = []
    snapshots: list[PointCloud2] = []
    ros_node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, diags.append, 10)
    ros_node.create_subscription(NodeStatus, topics.HEALTH, health.append, 10)
    ros_node.create_subscription(PointCloud2, topics.SNAPSHOT_POINTS, snapshots.append, 10)
    beat = ros_node.create_publisher(NodeStatus, topics.NODE_STATUS, 10)
    depth = ros_node.create_publisher(Image, topics.DEPTH, 10)
    proc, lines, _ = start_node("monitor", ros_env, ["-p", "period:=0.5", "-p", "stall_periods:=2",
                                                     "-p", "checkpoint_period:=1.0"])
    try:
        def latest(name: str):
            for arr in reversed(diags):
                for s in arr.status:
                    if s.name == f"surg3d: {name}":
                        return s
            return None

        _wait(lambda: diags, 15, "the monitor's first /diagnostics")
        # a live node with growing drop counters, the trainer's outputs at 5 Hz, depth from a replayed bag
        key, ended = INPUT_ENDED
        for i in range(12):
            beat.publish(NodeStatus(header=header(time.time_ns(), ""), node="/stereo_depth", level=b"\x00",
                                    message="ok", values=key_values({"dropped": i})))
            depth.publish(Image(header=header(time.time_ns(), "cam")))
            time.sleep(0.25)
        # the bag played to its end: depth stops on purpose
        for _ in range(2):
            beat.publish(NodeStatus(header=header(time.time_ns(), ""), node="/bag_replay", level=b"\x00",
                                    message="ok", values=key_values({"state": "ended", key: ended})))
        points = _wait(lambda: latest(topics.absolute(topics.RECON_POINTS)), 5, "diagnostics of /recon/points")
        values = {kv.key: kv.value for kv in points.values}
        assert points.level == b"\x00" and 3.0 < float(values["rate_hz"]) < 7.0, values
        assert float(values["latency_p50_ms"]) < 1000.0
        # The warning lasts the periods in which the counter grew: any of them (the newest may have none).
        assert any(st.name == "surg3d: /stereo_depth" and st.level == b"\x01" for arr in diags for st in arr.status), \
            "new drops are a warning"
        assert latest("trainer model").message.startswith("500 Gaussians")
        assert trainer.saves and set(trainer.saves) == {"checkpoint"}, "periodic checkpoints"

        # the node stops beating: ERROR after stall_periods; the trainer goes silent: snapshots keep coming
        trainer.publishing = False
        n_snap = len(snapshots)
        stalled = _wait(lambda: (s := latest("/stereo_depth")) is not None and s.level == b"\x02" and s, 5,
                        "/stereo_depth flagged as stalled")
        assert "no heartbeat" in stalled.message
        finished = _wait(lambda: (s := latest(topics.absolute(topics.DEPTH))) is not None
                         and "age_s" in {kv.key for kv in s.values}
                         and float({kv.key: kv.value for kv in s.values}["age_s"]) > 1.5 and s, 5,
                         "/depth/image silent for longer than the stall time")
        assert finished.level == b"\x00" and "input ended (/bag_replay finished)" in finished.message
        _wait(lambda: (s := latest(topics.absolute(topics.RECON_STATUS))) is not None and s.level == b"\x02", 5,
              "/recon/status stalled")
        _wait(lambda: len(snapshots) > n_snap + 1, 5, "snapshots of the last cloud")
        assert snapshots[-1].width == 500
        assert health[-1].level == b"\x02" and "/stereo_depth" in health[-1].message
    finally:
        code = stop(proc)
        trainer.close()
    assert code == 0, "\n".join(lines)
    ended_logs = [x for x in lines if "input ended" in x]
    assert len(ended_logs) == 1 and "/bag_replay" in ended_logs[0], "\n".join(lines)
    assert not [x for x in lines if "/depth/image" in x], "\n".join(lines)
