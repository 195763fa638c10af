"""`ros2 launch surg3d dvrk_sim.launch.py [name:=value ...]`: the 'dvrk_sim' preset of config/graph.yaml."""

from surg3d_nodes.ros.launch_description import describe


def generate_launch_description():
    """The 'dvrk_sim' graph, identical to `surg3d launch dvrk_sim`."""
    return describe("dvrk_sim")
