"""Helpers of the benchmarks: a private ROS domain, a spinning helper node, figures drawn with OpenCV (no
plotting dependency)."""

from __future__ import annotations

import os
import random
import sys
import threading
from pathlib import Path

import cv2
import numpy as np


def private_ros_domain() -> dict[str, str]:
    """Put this process (and the nodes it starts with os.environ) on a random ROS domain, loopback only,
    with Fast DDS' large-data transport; returns the variables set. Call before importing rclpy."""
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "FASTDDS_BUILTIN_TRANSPORTS": "LARGE_DATA",
           "ROS_DOMAIN_ID": str(random.SystemRandom().randrange(150, 200)), "AMENT_PREFIX_PATH": sys.prefix}
    os.environ.update(env)
    os.environ.pop("ROS_LOCALHOST_ONLY", None)
    return env


def spinning_node(name: str):
    """rclpy init + a node spun by a SingleThreadedExecutor in a daemon thread; returns (node, executor)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    rclpy.init()
    node = rclpy.create_node(name)
    ex = SingleThreadedExecutor()
    ex.add_node(node)
    threading.Thread(target=ex.spin, daemon=True).start()
    return node, ex


COLOURS = [(200, 80, 0), (0, 140, 255), (40, 160, 40)]


def latency_histogram(rows: list[tuple[str, np.ndarray]], path: Path, unit: str = "ms") -> Path:
    """Overlaid histograms (60 bins from 0 to the largest value) of named samples; writes a PNG."""
    h, w = 300, 600
    canvas = np.full((h, w, 3), 255, np.uint8)
    top = max((float(v.max()) for _, v in rows if len(v)), default=1.0)
    for k, (name, v) in enumerate(rows):
        hist, _ = np.histogram(v, bins=60, range=(0, top))
        colour = COLOURS[k % len(COLOURS)]
        for i, c in enumerate(hist):
            bar = int(c / max(hist.max(), 1) * (h - 60))
            x0 = 10 + i * 9 + k * 3
            cv2.rectangle(canvas, (x0, h - 30 - bar), (x0 + 2, h - 30), colour, -1)
        cv2.putText(canvas, name, (10, 20 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1)
    cv2.putText(canvas, f"0 .. {top:.0f} {unit}", (10, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1)
    cv2.imwrite(str(path), canvas)
    return path
