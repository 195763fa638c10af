"""One thin rclpy node per job; each adapts messages, parameters and timers to the ROS-free core."""
