"""ROS 2 side of surg3d: topic names, message conversion and the node runtime (needs rclpy)."""
