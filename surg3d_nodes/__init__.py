"""surg3d: live 3D reconstruction of the surgical scene as a ROS 2 node graph.

ROS-free domain packages: `common`, `data`, `perception`, `recon`, `dvrk`, `evaluation`, `viewer` and `system`
(graph configuration and process orchestration). `ros` is the only package that imports rclpy: message conversion,
parameters, the node runtime and `ros.nodes` (one thin node per job). `cli` is the `surg3d` command.
"""

__version__ = "0.1.0"
