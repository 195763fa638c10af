"""launch_ros description of a graph preset, for `ros2 launch surg3d <preset>.launch.py` on a full ROS 2 install.

The launch files in launch/ call `describe(preset)`. Arguments are declared from config/graph.yaml and resolved
at launch time by the same `load_preset` that `surg3d launch` uses, so both run identical graphs.
"""

from __future__ import annotations

from pathlib import Path

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from surg3d_nodes.system.graph import load_preset
from surg3d_nodes.system.links import split_host_warnings
from surg3d_nodes.system.runs import start_run
from surg3d_nodes.system.supervisor import graph_env


def _nodes(context, preset: str, config_dir: Path | None) -> list[LogInfo | Node]:
    names = load_preset(preset, config_dir=config_dir).arguments
    overrides = {n: LaunchConfiguration(n).perform(context) for n in names}
    resolved = load_preset(preset, overrides, config_dir)
    # Runs once per launch; launch_ros respawns a node with the same parameters, so it keeps the run folder.
    folder = start_run(resolved)
    notes = [LogInfo(msg=f"run folder {folder}")] if folder is not None else []
    if resolved.values.get("host", "all") != "all":
        notes += [LogInfo(msg=f"warning: {w}") for w in split_host_warnings()]
    return notes + [Node(package="surg3d", executable=s.executable, name=s.name, output="screen",
                 parameters=[*(str(f) for f in s.parameter_files), dict(s.parameters)],
                 remappings=list(s.remappings.items()), respawn=s.respawn, respawn_delay=s.respawn_delay,
                 additional_env=graph_env(config_dir))
            for s in resolved.nodes]


def describe(preset: str, config_dir: Path | None = None) -> LaunchDescription:
    """LaunchDescription of `preset`: its declared arguments plus the nodes resolved at launch time."""
    if config_dir is None:
        from ament_index_python.packages import get_package_share_directory

        config_dir = Path(get_package_share_directory("surg3d")) / "config"
    arguments = load_preset(preset, config_dir=config_dir).arguments
    return LaunchDescription([
        *(DeclareLaunchArgument(a.name, default_value=a.default_text(), description=a.description)
          for a in arguments.values()),
        OpaqueFunction(function=_nodes, args=[preset, config_dir]),
    ])
