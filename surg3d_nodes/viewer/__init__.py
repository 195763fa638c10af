"""Operator view (ROS-free): display encodings, viewer input validation, the served web page (web/)."""
