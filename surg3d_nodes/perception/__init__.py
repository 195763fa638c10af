"""Perception (ROS-free): stereo rectification and depth, instrument segmentation, time synchronisation,
the kinematic instrument prior."""
