"""Latency of the viewer path: a ROS message (stamped with the wall clock) -> foxglove_bridge -> a WebSocket
client, for the Gaussian cloud (PointCloud2 -> foxglove.PointCloud JSON) and the live image (rgb8 + mask ->
JPEG overlay). Starts the bridge as its own process on a private ROS domain; publishes from this process.

    python bench/ui_bridge_latency.py [--points 100000] [--width 640 --height 512] [--rate 5] [--seconds 10]

Prints p50 / p95 / max latency (ms) and message sizes for each path, and writes a PNG of the latency
histogram to --out (default /tmp/surg3d_ui_bench).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
from benchlib import latency_histogram, private_ros_domain, spinning_node

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--width", type=int, default=640)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--rate", type=float, default=5.0, help="Hz of each stream")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_ui_bench"))
    args = ap.parse_args(argv)
    private_ros_domain()

    import rclpy
    from foxglove_ws import FoxgloveWsClient
    from sensor_msgs.msg import Image, PointCloud2
    from ui_support import start_bridge, stop

    from surg3d_nodes.ros import topics
    from surg3d_nodes.ros.convert import image_to_msg, pack_rgb, pointcloud_to_msg

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    proc, port, _ = start_bridge({**os.environ}, out / "bridge", "-p", f"max_points:={args.points}",
                                     "-p", f"image_rate:={max(args.rate * 2, 1.0)}")
    node, ex = spinning_node("ui_bench")
    pub_pts = node.create_publisher(PointCloud2, topics.RECON_POINTS, 2)
    pub_img = node.create_publisher(Image, topics.LEFT_RECT, 2)
    pub_mask = node.create_publisher(Image, topics.INSTRUMENT_MASK, 2)
    rng = np.random.default_rng(0)
    n = args.points
    xyz = rng.normal(0, 0.02, (n, 3)).astype(np.float32) + np.float32([0, 0, 0.1])
    fields = {"x": xyz[:, 0], "y": xyz[:, 1], "z": xyz[:, 2], "rgb": pack_rgb(rng.integers(0, 255, (n, 3))),
              "opacity": rng.random(n).astype(np.float32), "scale": np.full(n, 1e-3, np.float32)}
    yy, xx = np.mgrid[0:args.height, 0:args.width]
    img = np.stack([xx * 255 // args.width, yy * 255 // args.height, np.full_like(xx, 90)], -1)
    img = img.astype(np.uint8)
    disc = (xx - args.width / 2) ** 2 + (yy - args.height / 2) ** 2 < (args.height / 4) ** 2
    mask = disc.astype(np.uint8) * 255

    client = FoxgloveWsClient("127.0.0.1", port)
    client.subscribe(topics.RECON_POINTS, 1)
    client.subscribe("/ui/live", 2)
    client.poll(1.0)
    lat: dict[int, list[float]] = {1: [], 2: []}
    size: dict[int, list[int]] = {1: [], 2: []}
    seen = 0
    end = time.monotonic() + args.seconds
    next_pub = time.monotonic()
    print(f"bridge on port {port}; {n} points, {args.width}x{args.height} images at {args.rate} Hz "
          f"for {args.seconds} s", flush=True)
    while time.monotonic() < end:
        if time.monotonic() >= next_pub:
            now = time.time_ns()
            pub_mask.publish(image_to_msg(mask, "mono8", now, topics.LEFT_OPTICAL_FRAME))
            pub_img.publish(image_to_msg(img, "rgb8", now, topics.LEFT_OPTICAL_FRAME))
            pub_pts.publish(pointcloud_to_msg(fields, now, topics.WORLD_FRAME))
            next_pub += 1.0 / args.rate
        client.poll(0.01)
        for sub, _, payload in client.messages[seen:]:
            recv = time.time_ns()
            ts = json.loads(payload)["timestamp"]
            lat[sub].append((recv - (ts["sec"] * 1_000_000_000 + ts["nsec"])) / 1e6)
            size[sub].append(len(payload))
        seen = len(client.messages)
    client.close()
    stop(proc)
    ex.shutdown()
    node.destroy_node()
    rclpy.try_shutdown()

    rows = []
    for sub, name in [(1, f"cloud {n} pts"), (2, f"live {args.width}x{args.height} JPEG+mask")]:
        v = np.asarray(lat[sub])
        if len(v) == 0:
            print(f"{name}: nothing received")
            continue
        p50, p95 = np.percentile(v, [50, 95])
        rows.append((name, v))
        print(f"{name}: {len(v)} msgs, latency p50 {p50:.1f} ms, p95 {p95:.1f} ms, max {v.max():.1f} ms, "
              f"{np.mean(size[sub]) / 1e6:.2f} MB/msg")
    latency_histogram(rows, out / "ui_bridge_latency.png")
    print(f"histogram: {out / 'ui_bridge_latency.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
