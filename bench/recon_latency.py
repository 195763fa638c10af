"""Frame-to-cloud latency of the trainer node: from publishing a frame (rectified image, depth, mask, pose,
camera info) to receiving the first /recon/points whose stamp includes it (the cloud is stamped with the
newest frame in the model). Starts the real trainer node as its own process on a private ROS domain and
feeds it a synthetic scene from this process.

    python bench/recon_latency.py [--width 320 --height 256] [--frames 60] [--rate 10] [--device cpu]
                                  [--on-frame-rate 30] [--out /tmp/surg3d_latency]

Prints p50 / p95 / max (ms) and the frames that never reached a cloud (the trainer drops the oldest queued
frame when it is busy); writes JSON and a PNG histogram.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from benchlib import latency_histogram, private_ros_domain, spinning_node

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (1 when no cloud arrived at all)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rate", type=float, default=10.0, help="Hz of the frames")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--on-frame-rate", type=float, default=30.0, help="trainer points_on_frame_rate")
    ap.add_argument("--threads", type=int, default=1, help="trainer num_threads (torch CPU threads)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_latency"))
    ap.add_argument("--param", action="append", default=[], help="extra trainer parameter NAME:=VALUE")
    args = ap.parse_args(argv)
    private_ros_domain()

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rosproc import start_node, stop_node, wait_until
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from surg3d_nodes.data.synthetic import SynthConfig, generate
    from surg3d_nodes.ros import topics
    from surg3d_nodes.ros.convert import camera_to_msg, image_to_msg, pose_to_msg, stamp_to_ns

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    print(f"synthetic scene {args.width}x{args.height}, {args.frames} frames", flush=True)
    scene = generate(SynthConfig(width=args.width, height=args.height, frames=args.frames, instruments=1),
                     lambda d, n: print(f"\r  rendering {d}/{n}", end="", flush=True))
    print()
    proc = start_node("surg3d_nodes.ros.nodes.trainer", [
        "--params-file", str(ROOT / "config" / "trainer.yaml"), "-p", f"device:={args.device}",
        "-p", f"points_on_frame_rate:={args.on_frame_rate}", "-p", f"num_threads:={args.threads}",
        "-p", "render_rate:=0.0", "-p", "deoccluded_rate:=0.0", "-p", f"output_dir:={out / 'recon'}",
        "-p", "resume_from_checkpoint:=''", *[a for p in args.param for a in ("-p", p)]], {**os.environ})
    node, ex = spinning_node("latency_bench")
    sent: dict[int, float] = {}
    reached: dict[int, float] = {}
    lock = threading.Lock()

    def on_cloud(msg: PointCloud2) -> None:
        now, stamp = time.monotonic(), stamp_to_ns(msg.header.stamp)
        with lock:
            for s, t in sent.items():
                if s <= stamp and s not in reached:
                    reached[s] = now - t

    node.create_subscription(PointCloud2, topics.RECON_POINTS, on_cloud, 5)
    pubs = {name: node.create_publisher(cls, topic, 10) for name, (cls, topic) in {
        "info": (CameraInfo, topics.LEFT_RECT_INFO), "image": (Image, topics.LEFT_RECT),
        "depth": (Image, topics.DEPTH), "mask": (Image, topics.INSTRUMENT_MASK),
        "pose": (PoseStamped, topics.CAMERA_POSE)}.items()}
    try:
        if not wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 60):
            print("the trainer node did not subscribe within 60 s")
            return 1
        frame_id = topics.LEFT_OPTICAL_FRAME
        t_next = time.monotonic()
        for i, f in enumerate(scene.frames):
            s = f.stamp_ns
            msgs = {"info": camera_to_msg(scene.cam_left, s), "image": image_to_msg(f.left, "rgb8", s, frame_id),
                    "depth": image_to_msg(f.depth.astype(np.float32), "32FC1", s, frame_id),
                    "mask": image_to_msg(f.mask, "mono8", s, frame_id),
                    "pose": pose_to_msg(f.pose, s, topics.WORLD_FRAME)}
            time.sleep(max(0.0, t_next - time.monotonic()))
            with lock:
                sent[s] = time.monotonic()
            for name, m in msgs.items():
                pubs[name].publish(m)
            t_next += 1.0 / args.rate
            print(f"\r  sent {i + 1}/{len(scene.frames)}, reached a cloud {len(reached)}", end="", flush=True)
        wait_until(lambda: len(reached) == len(sent), 5.0)
        print()
    finally:
        stop_node(proc)
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()

    lat = np.array(sorted(reached.values())) * 1e3
    if lat.size == 0:
        print("no frame reached a cloud")
        return 1
    p50, p95 = np.percentile(lat, [50, 95])
    result = {"width": args.width, "height": args.height, "rate_hz": args.rate, "device": args.device,
              "on_frame_rate": args.on_frame_rate, "frames": len(sent), "reached": len(reached),
              "p50_ms": float(p50), "p95_ms": float(p95), "max_ms": float(lat.max()),
              "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(f"frame -> cloud: {len(reached)}/{len(sent)} frames reached a cloud; p50 {p50:.0f} ms, "
          f"p95 {p95:.0f} ms, max {lat.max():.0f} ms")
    (out / "recon_latency.json").write_text(json.dumps(result, indent=2))
    png = latency_histogram([(f"frame -> cloud, {args.width}x{args.height} at {args.rate:g} Hz", lat)],
                            out / "recon_latency.png")
    print(f"wrote {out / 'recon_latency.json'} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
