"""Throughput and CPU cost of the rclpy executors under a robot's kinematics streams: a publisher process sends
`--streams` PoseStamped topics at `--rate` Hz each (the dVRK emulator's 7 at 100 Hz by default); a subscriber
process takes them with one executor (the node callbacks' layout: one mutually exclusive group) and reports the
messages it took per second and its CPU use. Executors: rclpy's MultiThreadedExecutor, the runtime's NodeExecutor
(the same, handing each callback over once) and rclpy's SingleThreadedExecutor.

    python bench/executor_throughput.py [--streams 7] [--rate 100] [--seconds 10] [--out DIR]

Prints one line per executor and writes executor_throughput.json and executor_throughput.png (bars: messages/s
and CPU %) to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from benchlib import COLOURS, private_ros_domain

EXECUTORS = ("MultiThreadedExecutor", "NodeExecutor", "SingleThreadedExecutor")
WARM_UP_S = 4.0


def _publish(streams: int, rate: float, seconds: float) -> None:
    import rclpy
    from geometry_msgs.msg import PoseStamped

    rclpy.init()
    node = rclpy.create_node("bench_publisher")
    pubs = [node.create_publisher(PoseStamped, f"bench_arm_{i}", 100) for i in range(streams)]
    start, k = time.monotonic(), 0
    while time.monotonic() - start < seconds:   # a fixed schedule: late ticks catch up, as a robot's stream
        k += 1
        for p in pubs:
            p.publish(PoseStamped())
        time.sleep(max(0.0, start + k / rate - time.monotonic()))


def _subscribe(streams: int, executor_name: str, seconds: float) -> dict[str, float]:
    import threading

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.executors import MultiThreadedExecutor, SingleThreadedExecutor

    from surg3d_nodes.ros.runtime import NodeExecutor

    rclpy.init()
    node = rclpy.create_node("bench_subscriber")
    taken = [0]
    group = MutuallyExclusiveCallbackGroup()
    for i in range(streams):
        node.create_subscription(PoseStamped, f"bench_arm_{i}", lambda _m: taken.__setitem__(0, taken[0] + 1), 100,
                                 callback_group=group)
    executor = {"MultiThreadedExecutor": MultiThreadedExecutor, "NodeExecutor": NodeExecutor,
                "SingleThreadedExecutor": SingleThreadedExecutor}[executor_name]()
    executor.add_node(node)
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    time.sleep(WARM_UP_S)   # discovery and matching
    n0, cpu0, t0 = taken[0], os.times(), time.monotonic()
    time.sleep(seconds)
    cpu1, dt = os.times(), time.monotonic() - t0
    executor.shutdown(timeout_sec=5.0)   # before the interpreter exits: a spinning executor then aborts it
    spin.join(timeout=5.0)
    rclpy.try_shutdown()
    return {"messages_per_s": (taken[0] - n0) / dt,
            "cpu_percent": 100.0 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / dt}


def _bars(rows: dict[str, dict[str, float]], offered: float, path: Path) -> Path:
    """Two bar groups (messages/s against the offered rate, CPU %) per executor, drawn with OpenCV."""
    w, h, pad = 720, 320, 40
    img = np.full((h, w, 3), 255, np.uint8)
    panels = (("messages/s", "messages_per_s", offered * 1.1), ("CPU %", "cpu_percent", 110.0))
    for p, (title, key, top) in enumerate(panels):
        x0 = pad + p * (w // 2)
        cv2.putText(img, title, (x0, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 1, cv2.LINE_AA)
        for k, r in enumerate(rows.values()):
            bar = int(r[key] / top * (h - 2 * pad - 20))
            x = x0 + k * 90
            cv2.rectangle(img, (x, h - pad - bar), (x + 60, h - pad), COLOURS[k % len(COLOURS)], -1)
            cv2.putText(img, f"{r[key]:.0f}", (x + 4, h - pad - bar - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                        (0, 0, 0), 1, cv2.LINE_AA)
        if key == "messages_per_s":
            y = h - pad - int(offered / top * (h - 2 * pad - 20))
            cv2.line(img, (x0 - 5, y), (x0 + 90 * len(rows), y), (120, 120, 120), 1)
    for k, name in enumerate(rows):
        cv2.putText(img, name, (pad + k * 230, h - 12), cv2.FONT_HERSHEY_SIMPLEX, 0.42, COLOURS[k % len(COLOURS)],
                    1, cv2.LINE_AA)
    cv2.imwrite(str(path), img)
    return path


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark (or one of its two processes, --role); returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--streams", type=int, default=7)
    ap.add_argument("--rate", type=float, default=100.0, help="Hz of each stream")
    ap.add_argument("--seconds", type=float, default=10.0, help="measured time per executor")
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_executor_bench"))
    ap.add_argument("--role", choices=("publisher", "subscriber"), help=argparse.SUPPRESS)
    ap.add_argument("--executor", choices=EXECUTORS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == "publisher":
        _publish(args.streams, args.rate, args.seconds + 2 * WARM_UP_S)
        return 0
    if args.role == "subscriber":
        print(json.dumps(_subscribe(args.streams, args.executor, args.seconds)), flush=True)
        return 0
    private_ros_domain()
    args.out.mkdir(parents=True, exist_ok=True)
    common = [sys.executable, __file__, "--streams", str(args.streams), "--rate", str(args.rate),
              "--seconds", str(args.seconds)]
    offered = args.streams * args.rate
    rows: dict[str, dict[str, float]] = {}
    for name in EXECUTORS:
        pub = subprocess.Popen([*common, "--role", "publisher"])
        try:
            out = subprocess.run([*common, "--role", "subscriber", "--executor", name], capture_output=True,
                                 text=True, check=True, timeout=args.seconds + 60).stdout
        finally:
            pub.wait(timeout=args.seconds + 60)
        rows[name] = json.loads(out.strip().splitlines()[-1])
        print(f"{name:24s} {rows[name]['messages_per_s']:6.0f} of {offered:.0f} messages/s, "
              f"CPU {rows[name]['cpu_percent']:5.1f} %", flush=True)
    (args.out / "executor_throughput.json").write_text(json.dumps(
        {"streams": args.streams, "rate_hz": args.rate, "seconds": args.seconds, "executors": rows}, indent=1))
    print(f"wrote {_bars(rows, offered, args.out / 'executor_throughput.png')} and executor_throughput.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
