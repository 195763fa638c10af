"""`ros2 launch surg3d live.launch.py [name:=value ...]`: the 'live' preset of config/graph.yaml."""

from surg3d_nodes.ros.launch_description import describe


def generate_launch_description():
    """The 'live' graph, identical to `surg3d launch live`."""
    return describe("live")
