"""`ros2 launch surg3d replay.launch.py [name:=value ...]`: the 'replay' preset of config/graph.yaml."""

from surg3d_nodes.ros.launch_description import describe


def generate_launch_description():
    """The 'replay' graph, identical to `surg3d launch replay`."""
    return describe("replay")
