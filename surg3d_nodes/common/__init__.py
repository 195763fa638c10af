"""Shared ROS-free basics: camera model, geometry, image metrics, file helpers, bounded workers."""
