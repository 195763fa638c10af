"""`surg3d launch replay`: the whole graph on a short synthetic sequence, clean SIGINT, a dying node."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from rosbags.rosbag2 import Reader
from rosproc import Launch, free_port, wait_until

from surg3d_nodes.data.bags import BagReader
from surg3d_nodes.ros import topics

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]


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


def stop_trainer(graph: Launch, since: int, tries: int = 3) -> None:
    """SIGSTOP the trainer the launcher started last (after line `since`), once it runs and beats. A trainer the
    launcher itself restarted for silence in the meantime (ci47: gone before the signal, a heartbeat more than the
    test's 5 s late on a loaded 2-core machine) is the mechanism at work, not a failure: the next one is stopped.
    Any other exit fails."""
    for _ in range(tries):
        started = [m for line in graph.lines[since:] if (m := re.search(r"started trainer \(pid (\d+)\) again", line))]
        pid, at = int(started[-1].group(1)), len(graph.lines)
        graph.wait_for(r"\[trainer\] .*trainer on cpu", 60, after=since)
        time.sleep(3.0)    # spinning, heartbeats going (before the first one a node gets 60 s to start)
        try:
            os.kill(pid, signal.SIGSTOP)
            return
        except ProcessLookupError:
            graph.wait_for(r"node trainer alive but silent for .*killing it to restart it", 1, after=since)
            since = graph.lines.index(graph.wait_for(r"started trainer \(pid \d+\) again", 30, after=at).string)
    raise AssertionError(f"the trainer never stayed up for 3 s in {tries} starts")


def test_a_dying_node_is_respawned_within_its_run_or_stops_the_graph(synth_bag: Path, ros_env,
                                                                      tmp_path: Path) -> None:
    # A config copy whose trainer is restarted after 5 s without a heartbeat (30 s in config/graph.yaml).
    cdir = tmp_path / "config"
    shutil.copytree(ROOT / "config", cdir)
    graph_cfg = yaml.safe_load((cdir / "graph.yaml").read_text())
    graph_cfg["nodes"]["trainer"]["restart_when_silent_s"] = 5.0
    (cdir / "graph.yaml").write_text(yaml.safe_dump(graph_cfg))
    out = tmp_path / "out"

    def launch() -> Launch:
        return Launch(["--config-dir", str(cdir), "replay", f"bag:={synth_bag}", f"output_dir:={out}",
                       "loop:=true", "checkpoint_period:=2.0", f"bridge_port:={free_port()}"], ros_env)

    def run_folder(graph: Launch) -> Path:
        run = Path(graph.wait_for(r"\[launcher\] run folder (\S+)", 30).group(1))
        assert run.parent == out.resolve() and run.name.startswith("run_") and run.is_dir()
        return run

    graph = launch()
    try:
        run = run_folder(graph)
        trainer_pid = int(graph.wait_for(r"started trainer \(pid (\d+)\)", 60).group(1))
        replay_pid = int(graph.wait_for(r"started bag_replay \(pid (\d+)\)", 60).group(1))
        graph.wait_for(rf"checkpoint written: {re.escape(str(run))}/checkpoint_", 120)
        # The trainer's config asks for respawn: it is restarted and continues its own run's model.
        subprocess.run(["kill", "-KILL", str(trainer_pid)], check=True)
        graph.wait_for(r"node trainer exited with code -9; respawning", 30)
        respawned = len(graph.lines)
        graph.wait_for(r"started trainer \(pid \d+\) again", 30, after=respawned)
        graph.wait_for(rf"\[trainer\] .*resumed from {re.escape(str(run))}/checkpoint_", 60, after=respawned)
        # Alive but silent (a stopped process stands for a deadlock): killed, counted and respawned.
        stop_trainer(graph, respawned)
        silent = len(graph.lines)
        graph.wait_for(r"node trainer alive but silent for \d+\.\d s \(no heartbeat\): killing it to restart it "
                       r"\(silent restart \d\)", 30, after=silent)
        graph.wait_for(r"started trainer \(pid \d+\) again", 30, after=silent)
        graph.wait_for(rf"\[trainer\] .*resumed from {re.escape(str(run))}/checkpoint_", 60, after=silent)
        # The recorder aborted from native code (as Fast DDS's TCP transport made it in CI after a link cut): it is
        # respawned into a new recording of the run, and the new recorder closes the bag its predecessor left open.
        recorder_pid = int(graph.wait_for(r"started recorder \(pid (\d+)\)", 5).group(1))
        os.kill(recorder_pid, signal.SIGABRT)
        died = graph.lines.index(graph.wait_for(r"node recorder exited with code -6; respawning", 30).string)
        closed = graph.wait_for(rf"\[recorder\] .*closed ({re.escape(str(run))}/recording_\S+), left unclosed by a "
                                rf"recorder that ended without closing it: (\d+) messages", 60, after=died)
        # The new recorder's bag, still staged, takes depth (it goes to disk every second; ci56: none in the 3 s
        # this test once waited after the subscription, on a loaded machine).
        def depth_recorded() -> bool:
            return any(m.topic == "/" + topics.DEPTH for staged in run.glob(".recording_*.partial-*/recording_*")
                       for m in BagReader(staged).messages())

        assert wait_until(depth_recorded, 60), "\n".join(graph.lines[-40:])
        # The replay has no respawn (it would play the surgery again from its start): the launcher reports it,
        # stops the others and exits non-zero.
        subprocess.run(["kill", "-KILL", str(replay_pid)], check=True)
        graph.wait_for(r"node bag_replay died with exit code -9; stopping the graph", 30)
        assert graph.proc.wait(timeout=60) == 1
    finally:
        graph.stop()
    # Both recordings are closed bags (rosbags' own reader), one after the other, each with the graph's depth.
    recordings = sorted(run.glob("recording_*"))
    assert len(recordings) == 2 and recordings[0] == Path(closed.group(1)), recordings
    spans = []
    for bag in recordings:
        with Reader(bag) as r:
            stamps = [stamp for conn, stamp, _ in r.messages() if conn.topic == "/" + topics.DEPTH]
        assert stamps, f"{bag}: no depth recorded"
        spans.append((min(stamps), max(stamps)))
    with Reader(recordings[0]) as r:
        assert r.message_count == int(closed.group(2)) > 0
    assert spans[0][1] < spans[1][0], spans

    # A new launch into the same output_dir gets a run folder of its own and never resumes the earlier run.
    second = launch()
    try:
        second_run = run_folder(second)
        assert second_run != run
        started = second.wait_for(r"\[trainer\] .*output_dir (\S+)", 90)
        assert Path(started.group(1)) == second_run
        assert not any("resumed from" in line for line in second.lines), "\n".join(second.lines[-40:])
    finally:
        second.stop()  # early, some nodes still importing: their exit codes are not what this checks


def test_split_graph_robot_and_gpu_parts_meet_over_dds(synth_bag: Path, ros_env, ros_node, tmp_path: Path) -> None:
    """The two halves of a split graph started by two launchers (here on one machine, one DDS domain): the
    robot part's depth and masks reach the GPU part's trainer, whose clouds come back."""
    from sensor_msgs.msg import Image, PointCloud2

    seen: set[str] = set()
    wanted = {topics.DEPTH: Image, topics.INSTRUMENT_MASK: Image, topics.RECON_POINTS: PointCloud2}
    for topic, kind in wanted.items():
        ros_node.create_subscription(kind, topic, lambda m, t=topic: seen.add(t), 10)
    gpu = Launch(["replay", "--host", "gpu", f"output_dir:={tmp_path}", f"bridge_port:={free_port()}"], ros_env)
    robot = Launch(["replay", "host:=robot", f"bag:={synth_bag}", "loop:=true"], ros_env)
    try:
        deadline = time.monotonic() + 180
        while seen != set(wanted) and time.monotonic() < deadline and None is gpu.proc.poll() is robot.proc.poll():
            time.sleep(0.5)
        assert seen == set(wanted), f"missing {set(wanted) - seen}; output:\n" + "\n".join(
            robot.lines[-20:] + gpu.lines[-40:])
        started = {n for launch in (robot, gpu) for line in launch.lines
                   if (m := re.match(r"\[launcher\] started (\w+)", line)) for n in [m.group(1)]}
        assert started == {"bag_replay", "stereo_depth", "instrument_seg", "trainer", "recorder", "monitor",
                           "foxglove_bridge"}
        assert not any("started trainer" in line for line in robot.lines)
    finally:
        codes = robot.stop(), gpu.stop()
    assert codes == (0, 0), "\n".join(robot.lines[-20:] + gpu.lines[-40:])


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
