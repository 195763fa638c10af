"""The monitor node over DDS, watching the real trainer node: rates and health on /diagnostics, a stalled node
flagged ERROR, the end of a replayed bag reported once and not as a stall, periodic checkpoints through
/recon/save (written by the trainer), snapshots of the newest cloud while the trainer is silent (stopped with
SIGSTOP)."""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from diagnostic_msgs.msg import DiagnosticArray
from rcl_interfaces.srv import SetParameters
from rclpy.parameter import Parameter
from rosproc import Collector, call_service, stop_node, wait_until
from sensor_msgs.msg import PointCloud2
from test_recon_node import _frame_publishers, _send_frames, _start
from ui_support import start_node, stop

from surg3d_msgs.msg import NodeStatus, TrainerStatus
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.io.checkpoint import read_checkpoint
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import header, key_values, stamp_to_ns
from surg3d_nodes.system.monitoring import INPUT_ENDED, InputLinks, TopicTracker

pytestmark = pytest.mark.ros


def test_monitor_diagnostics_stall_checkpoint_snapshot(ros_env, ros_node, tmp_path) -> None:
    # Stamped on the live clock, as a camera's: the monitor measures latencies from the frame stamps.
    scene = generate(SynthConfig(width=64, height=48, frames=8, instruments=1, noise_std=1.0,
                                 start_ns=time.time_ns()))
    recon = tmp_path / "recon"
    trainer = _start(recon, ros_env)
    got = Collector(ros_node, {topics.DIAGNOSTICS: DiagnosticArray, topics.HEALTH: NodeStatus,
                               topics.SNAPSHOT_POINTS: PointCloud2, topics.RECON_POINTS: PointCloud2,
                               topics.RECON_STATUS: TrainerStatus}, depth=100)
    beat = ros_node.create_publisher(NodeStatus, topics.NODE_STATUS, 10)
    proc, lines, _ = start_node("monitor", ros_env, ["-p", "period:=0.5", "-p", "stall_periods:=2",
                                                     "-p", "checkpoint_period:=1.0"])
    stopped = False
    try:
        def latest(name: str):
            for arr in reversed(got.get(topics.DIAGNOSTICS)):
                for s in arr.status:
                    if s.name == f"surg3d: {name}":
                        return s
            return None

        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 60), "no status from the trainer"
        # a cloud 5 times a second, more often than the monitor's period: it snapshots only a silent trainer
        res = call_service(ros_node, SetParameters, "/trainer/set_parameters", SetParameters.Request(
            parameters=[Parameter("points_rate", value=5.0).to_parameter_msg()]))
        assert res.results[0].successful, res
        assert wait_until(lambda: got.get(topics.DIAGNOSTICS), 15), "no /diagnostics from the monitor"
        got.wait_matched(topics.RECON_POINTS)
        # frames from a replayed bag (depth on /depth/image among them), a live node with growing drop counters
        pubs = _frame_publishers(ros_node)
        key, ended = INPUT_ENDED
        for i, frame in enumerate(scene.frames):
            beat.publish(NodeStatus(header=header(time.time_ns(), ""), node="/stereo_depth", level=b"\x00",
                                    message="ok", values=key_values({"dropped": i})))
            _send_frames(pubs, scene, [frame])
        # the bag played to its end: its topics stop on purpose
        for _ in range(2):
            beat.publish(NodeStatus(header=header(time.time_ns(), ""), node="/bag_replay", level=b"\x00",
                                    message="ok", values=key_values({"state": "ended", key: ended})))
        # periodic checkpoints: the monitor asks, the trainer writes them into its output_dir
        def written() -> set[str]:
            return {m.group(1) for x in lines if (m := re.search("checkpoint written: (.*)", x))}

        assert wait_until(lambda: len(written()) >= 2, 30), "\n".join(lines)
        assert {Path(p).parent for p in written()} == {recon}
        read_checkpoint(max(written(), key=lambda p: Path(p).stat().st_mtime))   # else ValueError

        # one evaluation, a whole rate window after the monitor's first trainer status (the first arrivals
        # include the latched status history, all at once): the trainer's topics as the trainer published them
        name = {t: f"surg3d: {topics.absolute(t)}" for t in (topics.RECON_POINTS, topics.RECON_STATUS)}
        first = next(stamp_to_ns(a.header.stamp) for a in got.get(topics.DIAGNOSTICS) for s in a.status
                     if s.name == name[topics.RECON_STATUS] and s.message != "no data yet")
        window_ns = int((TopicTracker().window_s + 0.5) * 1e9)   # the monitor's window at a period of 0.5 s
        assert wait_until(lambda: stamp_to_ns(got.last(topics.DIAGNOSTICS).header.stamp) > first + window_ns, 15)
        arr = got.last(topics.DIAGNOSTICS)
        at = stamp_to_ns(arr.header.stamp)
        health = {s.name: s for s in arr.status}
        points, status = health[name[topics.RECON_POINTS]], health[name[topics.RECON_STATUS]]
        values = {kv.key: float(kv.value) for kv in points.values}
        # A cloud carries the newest frame's stamp in the model: the monitor's newest latency is the time from
        # one of those stamps to its arrival, shortly before this evaluation. (Once the bag ended, the latency
        # grows: a WARN, rightly.)
        to_eval_ms = {(at - stamp_to_ns(m.header.stamp)) / 1e6 for m in got.get(topics.RECON_POINTS)}
        assert values["rate_hz"] > 1.0 and any(0 <= t - values["latency_max_ms"] < 1000 for t in to_eval_ms), \
            (values, sorted(to_eval_ms))
        assert points.level == b"\x00" or points.message.startswith("latency"), points
        # the status rate over the monitor's window ending at this evaluation, from the trainer's own stamps
        values = {kv.key: float(kv.value) for kv in status.values}
        stamped = TopicTracker()
        for m in got.get(topics.RECON_STATUS):
            stamped.record(stamp_to_ns(m.header.stamp) / 1e9)
        rate = stamped.rate(at / 1e9)
        assert status.level == b"\x00" and abs(values["rate_hz"] - rate) <= 0.1 * rate + 0.3, (values, rate)
        assert 0 < values["latency_p50_ms"] < 1000.0, values
        # The warning lasts the periods in which the counter grew: any of them (the newest may have none).
        assert any(st.name == "surg3d: /stereo_depth" and st.level == b"\x01"
                   for arr in got.get(topics.DIAGNOSTICS) for st in arr.status), "new drops are a warning"
        model = latest("trainer model").message
        assert int(model.split()[0]) in {m.num_gaussians for m in got.get(topics.RECON_STATUS)} - {0}, model

        # the node stops beating: ERROR after stall_periods; the trainer goes silent: snapshots of its newest
        # cloud keep coming
        os.kill(trainer.pid, signal.SIGSTOP)
        stopped = True
        n_snap = len(got.get(topics.SNAPSHOT_POINTS))
        assert wait_until(lambda: (s := latest("/stereo_depth")) is not None and s.level == b"\x02", 5)
        assert "no heartbeat" in latest("/stereo_depth").message, latest("/stereo_depth")
        assert wait_until(lambda: (s := latest(topics.absolute(topics.DEPTH))) is not None
                          and float({kv.key: kv.value for kv in s.values}.get("age_s", 0)) > 1.5, 5), \
            "/depth/image silent for longer than the stall time"
        finished = latest(topics.absolute(topics.DEPTH))
        assert finished.level == b"\x00" and "input ended (/bag_replay finished)" in finished.message
        assert wait_until(lambda: (s := latest(topics.absolute(topics.RECON_STATUS))) is not None
                          and s.level == b"\x02", 5), "/recon/status stalled"
        assert wait_until(lambda: len(got.get(topics.SNAPSHOT_POINTS)) > n_snap + 1, 5), "no snapshots"
        newest = got.last(topics.RECON_POINTS)
        assert got.last(topics.SNAPSHOT_POINTS).data == newest.data and newest.width > 100
        health = got.last(topics.HEALTH)
        assert health.level == b"\x02" and "/stereo_depth" in health.message
    finally:
        if stopped:
            os.kill(trainer.pid, signal.SIGCONT)
        code = stop(proc)
        trainer_out = stop_node(trainer)
    assert code == 0, "\n".join(lines)
    assert trainer.returncode == 0, trainer_out
    ended_logs = [x for x in lines if "input ended" in x]
    assert len(ended_logs) == 1 and "/bag_replay" in ended_logs[0], "\n".join(lines)
    assert not [x for x in lines if "/depth/image" in x], "\n".join(lines)


def test_input_links_name_an_input_whose_publisher_delivers_nothing_while_others_do() -> None:
    links = InputLinks(["image", "depth", "mask", "pose"], timeout_s=5.0)
    pubs = {"image": 1, "depth": 1, "mask": 1, "pose": 0}
    assert links.silent(pubs, 100.0) == ([], [])                  # nothing yet: nothing to compare with
    links.received("image", 100.0)
    links.received("depth", 101.0)
    assert links.silent(pubs, 104.9) == ([], [])                  # not for timeout_s yet
    assert links.silent(pubs, 105.0) == (["mask"], ["pose"])      # cut off (a publisher), unpublished (none)
    links.received("mask", 106.0)
    links.received("pose", 107.0)
    assert links.silent(pubs, 200.0) == ([], [])
    assert InputLinks(["image", "mask"], 0.0).silent(pubs, 1e9) == ([], [])   # off


def test_input_links_flag_inputs_that_all_arrive_but_never_pair() -> None:
    links = InputLinks(["image", "pose"], timeout_s=5.0)
    links.received("image", 100.0)
    links.received("pose", 102.0)
    assert not links.unpaired(106.9)                  # both arriving for less than timeout_s
    links.received("image", 107.0)
    links.received("pose", 107.0)
    assert links.unpaired(107.0)                      # both for 5 s, no set ever
    links.paired(108.0)
    assert not links.unpaired(112.9)                  # a set within the last timeout_s
    assert not links.unpaired(113.0)                  # nothing arrived for timeout_s: not a pairing fault
    links.received("image", 113.5)
    links.received("pose", 113.5)
    assert links.unpaired(113.5)                      # no set since 108.0
    assert not InputLinks(["image", "pose"], 0.0).unpaired(1e9)   # off
