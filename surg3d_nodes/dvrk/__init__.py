"""da Vinci Research Kit (ROS-free): kinematics, hand-eye calibration, the dVRK emulator."""
