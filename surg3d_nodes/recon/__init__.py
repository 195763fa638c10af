"""Reconstruction (ROS-free): the deformable Gaussian model, renderers, losses, densification, the trainer."""
