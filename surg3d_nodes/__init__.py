"""surg3d: live 3D reconstruction of the surgical scene as a ROS 2 node graph.

`surg3d_nodes.core` is ROS-free (numpy/torch/OpenCV); `surg3d_nodes.ros` adapts messages;
`surg3d_nodes.nodes` holds one thin rclpy node per job; `surg3d_nodes.cli` the `surg3d` command.
"""

__version__ = "0.1.0"
