"""`ros2 launch surg3d dvrk.launch.py [name:=value ...]`: the 'dvrk' preset of config/graph.yaml."""

from surg3d_nodes.ros.launch_description import describe


def generate_launch_description():
    """The 'dvrk' graph, identical to `surg3d launch dvrk`."""
    return describe("dvrk")
