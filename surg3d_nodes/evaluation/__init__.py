"""Evaluation (ROS-free): EndoNeRF-layout clips and the dVRK reconstruction benchmark."""
