"""`ros2 launch surg3d <preset>.launch.py` for real, as a ROS user runs it.

launch, launch_ros and ros2launch (wheels from ../shared/ros2, installed by tools/setup.sh) run the launch files of
a colcon install of ros2_ws, with the install's environment only (nothing from the repository on the path): every
node starts, the graph's outputs arrive, each launch writes into a run folder of its own, and Ctrl-C (SIGINT to
the process group) stops everything with exit code 0.
"""

from __future__ import annotations

import os
import runpy
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from colcon_support import ColconInstall
from rosproc import Collector, Launch, free_port, stop_node, wait_until

from surg3d_nodes.ros import topics
from surg3d_nodes.system.graph import load_preset

pytestmark = pytest.mark.ros
pytest.importorskip("ros2launch.api", reason="launch/launch_ros/ros2launch are not installed "
                    "(tools/setup.sh installs them when ../shared/ros2 exists)")

# What `ros2 launch FILE name:=value ...` runs (ros2cli itself is not needed). SIGINT gets its default handler
# first: a background job of a non-interactive shell (CI) starts with SIGINT ignored, and so would every node.
ROS2_LAUNCH = [sys.executable, "-c", "import signal, sys\n"
               "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
               "from ros2launch.api import launch_a_launch_file\n"
               "sys.exit(launch_a_launch_file(launch_file_path=sys.argv[1], launch_file_arguments=sys.argv[2:]))\n"]

# Every launch file that runs without a robot, on the plain build (files copied: what a ROS user gets, and where a
# file the build leaves out shows) and on the --symlink-install build (the developer's, linked to the source tree).
CASES = [(build, preset) for build in ("plain", "symlink") for preset in ("replay", "live", "dvrk_sim")]


def _outputs(preset: str) -> dict[str, type]:
    """The topics a running preset must publish. `live` has no pose source yet: depth and masks only."""
    from sensor_msgs.msg import Image, PointCloud2

    outputs = {topics.DEPTH: Image, topics.INSTRUMENT_MASK: Image, topics.RECON_POINTS: PointCloud2,
               topics.RECON_RENDER: Image}
    if preset == "live":
        return {t: outputs[t] for t in (topics.DEPTH, topics.INSTRUMENT_MASK)}
    return outputs


def _last_heartbeats(got: Collector) -> str:
    """Each node's newest heartbeat (level, message, counters): what a node did, where the output is all warnings."""
    last = {m.node: m for m in got.get(topics.NODE_STATUS)}
    return "\n".join(f"{name} [{m.level}] {m.message}: " + ", ".join(f"{v.key}={v.value}" for v in m.values)
                     for name, m in sorted(last.items()))


@pytest.mark.parametrize("kind, preset", CASES)
def test_ros2_launch_runs_the_graph_and_stops_on_ctrl_c(colcon_build: Callable[[str], ColconInstall], kind: str,
                                                        preset: str, synth_bag: Path, ros_env: dict[str, str],
                                                        ros_node, tmp_path: Path) -> None:
    from surg3d_msgs.msg import NodeStatus

    colcon_install = colcon_build(kind)
    env = colcon_install.env(ros_env)
    out = tmp_path / "out"
    arguments = [f"output_dir:={out}", f"bridge_port:={free_port()}"]
    if preset == "replay":
        arguments += [f"bag:={synth_bag}", "loop:=true"]
    wanted = _outputs(preset)
    got = Collector(ros_node, {**wanted, topics.NODE_STATUS: NodeStatus}, depth=5)
    nodes = load_preset(preset).nodes
    executables = [s.executable for s in nodes]
    # cwd outside the repository: `python -c` puts the cwd first on sys.path.
    graph = Launch([str(colcon_install.share / "launch" / f"{preset}.launch.py"), *arguments], env,
                   command=ROS2_LAUNCH, process_group=True, cwd=tmp_path)
    camera = None
    try:
        run = Path(graph.wait_for(r"\[launch\.user\]: run folder (\S+)", 60).group(1))
        assert run.parent == out.resolve() and run.name.startswith("run_") and run.is_dir()
        for exe in executables:
            graph.wait_for(rf"\[INFO\] \[{exe}-\d+\]: process started with pid", 60)
        # Up and running: a heartbeat from every node (each imported its modules and built its node).
        def beating() -> set[str]:
            return {m.node.rsplit("/", 1)[-1] for m in got.get(topics.NODE_STATUS)}

        names = {s.name for s in nodes}
        assert wait_until(lambda: names <= beating(), 120), (
            f"no heartbeat from {names - beating()}; output:\n" + "\n".join(graph.lines[-60:]))
        if preset == "live":  # the camera: the bag replayed by the installed bag_replay, beside the launch
            camera = subprocess.Popen([str(colcon_install.prefix / "lib" / "surg3d" / "bag_replay"), "--ros-args",
                                       "-p", f"bag:={synth_bag}", "-p", "loop:=true"],
                                      env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                      text=True)
        arrived = wait_until(lambda: all(got.get(t) for t in wanted) or graph.proc.poll() is not None, 240)
        assert arrived and graph.proc.poll() is None, (
            f"missing {[t for t in wanted if not got.get(t)]}; last heartbeats:\n{_last_heartbeats(got)}\noutput:\n"
            + "\n".join(graph.lines[-60:]))
    finally:
        if camera is not None:
            stop_node(camera, sig=signal.SIGINT)
        code = graph.stop(timeout=60)
    log = "\n".join(graph.lines[-60:])
    assert code == 0, log
    for exe in executables:
        graph.wait_for(rf"\[INFO\] \[{exe}-\d+\]: process has finished cleanly", 5)
    assert not any("process has died" in line for line in graph.lines), log
    assert any(run.glob("recording_*")), f"no recording in {run}"


@pytest.mark.parametrize("preset", ["live", "replay", "dvrk", "dvrk_sim"])
def test_launch_files_declare_the_presets_arguments_and_nodes(colcon_build: Callable[[str], ColconInstall],
                                                             preset: str, monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    """The installed launch files, built with the real launch classes (the dvrk preset, which needs a robot, is
    only checked here): the preset's arguments and defaults, and at launch time its nodes and a run folder."""
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument, OpaqueFunction
    from launch.utilities import perform_substitutions
    from launch_ros.actions import Node

    colcon_install = colcon_build("plain")
    monkeypatch.setenv("AMENT_PREFIX_PATH", colcon_install.env(os.environ)["AMENT_PREFIX_PATH"])
    path = colcon_install.share / "launch" / f"{preset}.launch.py"
    description = runpy.run_path(str(path))["generate_launch_description"]()
    context = LaunchContext()
    declared = {a.name: perform_substitutions(context, a.default_value)
                for a in description.entities if isinstance(a, DeclareLaunchArgument)}
    expected = load_preset(preset)
    assert declared == {name: a.default_text() for name, a in expected.arguments.items()}
    # At launch time, as `ros2 launch ... output_dir:=DIR` resolves it.
    context.launch_configurations.update(declared, output_dir=str(tmp_path))
    opaque = next(a for a in description.entities if isinstance(a, OpaqueFunction))
    nodes = [a for a in opaque.execute(context) if isinstance(a, Node)]
    assert [(n.node_package, n.node_executable) for n in nodes] == [("surg3d", s.executable) for s in expected.nodes]
    assert [p.name[:4] for p in tmp_path.iterdir()] == ["run_"]
