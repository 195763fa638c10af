"""`surg3d launch replay`: the whole graph on a short synthetic sequence, clean SIGINT, a dying node."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rosproc import Launch

from surg3d_nodes.ros import topics

pytestmark = pytest.mark.ros


def free_port() -> int:
    """A TCP port nobody listens on right now (for the viewer bridge of a test graph)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def synth_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, "-m", "surg3d_nodes.cli", "synth", str(out), "--width", "160", "--height", "128",
                    "--frames", "24"], check=True, capture_output=True, timeout=300)
    return out / "bag"


def test_replay_graph_outputs_arrive_and_sigint_stops_everything(synth_bag: Path, ros_env, ros_node,
                                                                  tmp_path: Path) -> None:
    from sensor_msgs.msg import Image, PointCloud2

    seen: dict[str, int] = {}
    wanted = {topics.DEPTH: Image, topics.INSTRUMENT_MASK: Image, topics.RECON_POINTS: PointCloud2,
              topics.RECON_RENDER: Image}
    for topic, kind in wanted.items():
        ros_node.create_subscription(kind, topic, lambda m, t=topic: seen.__setitem__(t, seen.get(t, 0) + 1), 10)
    graph = Launch(["replay", f"bag:={synth_bag}", f"output_dir:={tmp_path}", "loop:=true",
                   f"bridge_port:={free_port()}"], ros_env)
    try:
        deadline = time.monotonic() + 180
        while set(seen) != set(wanted) and time.monotonic() < deadline and graph.proc.poll() is None:
            time.sleep(0.5)
        assert set(seen) == set(wanted), f"missing topics {set(wanted) - set(seen)}; output:\n" + "\n".join(
            graph.lines[-60:])
    finally:
        code = graph.stop()
    assert code == 0, "\n".join(graph.lines[-60:])
    graph.wait_for(r"\[launcher\] all nodes exited cleanly", 5)
    for name in ("bag_replay", "stereo_depth", "instrument_seg", "trainer", "recorder"):
        assert any(line.startswith(f"[{name}]") or f"started {name}" in line for line in graph.lines)


def test_a_dying_node_is_respawned_or_stops_the_graph(synth_bag: Path, ros_env, tmp_path: Path) -> None:
    graph = Launch(["replay", f"bag:={synth_bag}", f"output_dir:={tmp_path}", "loop:=true",
                   f"bridge_port:={free_port()}"], ros_env)
    try:
        trainer_pid = int(graph.wait_for(r"started trainer \(pid (\d+)\)", 60).group(1))
        depth_pid = int(graph.wait_for(r"started stereo_depth \(pid (\d+)\)", 60).group(1))
        time.sleep(5)  # let the nodes come up
        # The trainer's config asks for respawn: it is restarted.
        subprocess.run(["kill", "-KILL", str(trainer_pid)], check=True)
        graph.wait_for(r"node trainer exited with code -9; respawning", 30)
        graph.wait_for(r"started trainer \(pid \d+\) again", 30)
        # stereo_depth has no respawn: the launcher reports it, stops the others and exits non-zero.
        subprocess.run(["kill", "-KILL", str(depth_pid)], check=True)
        graph.wait_for(r"node stereo_depth died with exit code -9; stopping the graph", 30)
        assert graph.proc.wait(timeout=60) == 1
    finally:
        graph.stop()


def test_single_process_mode_runs_the_same_graph(synth_bag: Path, ros_env, ros_node, tmp_path: Path) -> None:
    from sensor_msgs.msg import Image, PointCloud2

    seen: set[str] = set()
    wanted = {topics.DEPTH: Image, topics.INSTRUMENT_MASK: Image, topics.RECON_POINTS: PointCloud2}
    for topic, kind in wanted.items():
        ros_node.create_subscription(kind, topic, lambda m, t=topic: seen.add(t), 10)
    graph = Launch(["replay", f"bag:={synth_bag}", f"output_dir:={tmp_path}", "loop:=true",
                    f"bridge_port:={free_port()}", "--single-process"], ros_env)
    try:
        deadline = time.monotonic() + 180
        while seen != set(wanted) and time.monotonic() < deadline and graph.proc.poll() is None:
            time.sleep(0.5)
        assert seen == set(wanted), f"missing {set(wanted) - seen}; output:\n" + "\n".join(graph.lines[-40:])
    finally:
        code = graph.stop(timeout=90)
    assert code == 0, "\n".join(graph.lines[-40:])
    assert any("[trainer]" in line for line in graph.lines) and any("[stereo_depth]" in line for line in graph.lines)
