"""Data (ROS-free): dataset readers, the synthetic scene generator, rosbag2 reading and writing."""
