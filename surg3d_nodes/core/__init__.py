"""ROS-free core of surg3d: importable and testable without rclpy."""
