#!/usr/bin/env bash
set -e
source "/opt/ros/${ROS_DISTRO}/setup.bash"
source /opt/surg3d/src/ros2_ws/install/setup.bash
exec "$@"
