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

from surg3d_nodes.system.supervisor import graph_env


def private_ros_domain() -> dict[str, str]:
    """Put this process (and the nodes it starts with os.environ) on a random ROS domain, loopback only,
    with Fast DDS' large-data transport; returns the variables set. Call before importing rclpy."""
    env = {"ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", **graph_env(Path(__file__).resolve().parents[1] / "config"),
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


COLOURS = [(200, 80, 0), (0, 140, 255), (40, 160, 40), (160, 40, 160)]


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


def curve_plot(series: dict[str, list[float]], path: Path, title: str, lo: float = 0.0, hi: float = 1.0,
               ticks: tuple[float, ...] = (0.25, 0.5, 0.75, 0.95)) -> Path:
    """Per-frame curves with values in [lo, hi] (grid lines at `ticks`) as a PNG, drawn with OpenCV."""
    w, h, pad = 760, 340, 50
    img = np.full((h, w, 3), 255, np.uint8)
    cv2.rectangle(img, (pad, pad), (w - pad, h - pad), (0, 0, 0), 1)

    def y_of(v: float) -> float:
        return h - pad - (min(max(v, lo), hi) - lo) / (hi - lo) * (h - 2 * pad)

    for y in ticks:
        yy = int(y_of(y))
        cv2.line(img, (pad, yy), (w - pad, yy), (220, 220, 220), 1)
        cv2.putText(img, f"{y:g}", (2, yy + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    for k, (name, vals) in enumerate(series.items()):
        n = max(len(vals) - 1, 1)
        pts = np.array([[pad + i * (w - 2 * pad) / n, y_of(v)] for i, v in enumerate(vals)], np.int32)
        colour = COLOURS[k % len(COLOURS)]
        cv2.polylines(img, [pts], False, colour, 2, cv2.LINE_AA)
        cv2.putText(img, f"{name} (mean {np.mean(vals):.3g})", (pad + 10 + 340 * (k % 2), 16 + 18 * (k // 2)),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.5, colour, 1, cv2.LINE_AA)
    cv2.putText(img, title, (pad, h - 10), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)
    return path
