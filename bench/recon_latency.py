"""Frame-to-cloud latency of the trainer node: from publishing a frame (rectified image, depth, mask, pose,
camera info) to receiving the first /recon/points whose stamp includes it (the cloud is stamped with the
newest frame in the model). Starts the real trainer node as its own process on a private ROS domain and
feeds it a synthetic scene from this process.

    python bench/recon_latency.py [--width 320 --height 256] [--frames 60] [--rate 10] [--device cpu]
                                  [--on-frame-rate 30] [--link-loss P] [--out /tmp/surg3d_latency]

With `--link-loss P` (root, iproute2, iptables) the trainer runs across a link: this process in one network
namespace, the trainer in another, joined by a veth pair (tests/netns_support.py, DDS discovery over
ROS_STATIC_PEERS), with random packet loss P each way (0.01 = 1 %; 0 = a clean link).

Runs `--repeats` times (5), each in a process of its own against a fresh trainer node (a run that has not ended
after `--run-timeout` s is killed with its trainer and reported as hung: across a lossy link a publisher once
blocked in Fast DDS's TCP send for good), and prints for each p50 / p95 / max (ms), the
frames that never reached a cloud (the trainer drops the oldest queued frame when it is busy) and the longest
gap between clouds while frames arrive, and what the trainer says it received and used (/recon/status; a frame
it never got "reaches" the next frame's cloud); writes JSON and a PNG histogram (the first three runs). Before the
measured frames, warm-up frames (the first frame, earlier stamps, 2 Hz) go out until the first cloud, unmeasured.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
from benchlib import latency_histogram, private_ros_domain, spinning_node

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


WARMUP_MAX = 100      # warm-up frames at most (50 s)


def run_once(args: argparse.Namespace, scene, out: Path) -> dict | None:
    """One run against a fresh trainer node: frame -> cloud latencies and the gaps between clouds while
    frames arrive; None when the node did not come up."""
    import netns_support as netns
    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rosproc import start_node, stop_node, wait_until
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2

    from surg3d_msgs.msg import TrainerStatus
    from surg3d_nodes.ros import qos, topics
    from surg3d_nodes.ros.convert import camera_to_msg, image_to_msg, pose_to_msg, stamp_to_ns

    across = netns.on_host({"ns": args.trainer_netns}) if args.trainer_netns else []
    env = {**os.environ, **({"ROS_STATIC_PEERS": args.trainer_peer} if args.trainer_peer else {})}
    proc = start_node("surg3d_nodes.ros.nodes.trainer", [
        "--params-file", str(ROOT / "config" / "trainer.yaml"), "-p", f"device:={args.device}",
        "-p", f"points_on_frame_rate:={args.on_frame_rate}", "-p", f"num_threads:={args.threads}",
        "-p", "render_rate:=0.0", "-p", "deoccluded_rate:=0.0", "-p", f"output_dir:={out / 'recon'}",
        "-p", "resume_from_checkpoint:=''", *[a for p in args.param for a in ("-p", p)]], env, across)
    node, ex = spinning_node("latency_bench")
    sent: dict[int, float] = {}
    reached: dict[int, float] = {}
    clouds: list[float] = []
    status: list[tuple[float, TrainerStatus]] = []      # (arrival, message)
    lock = threading.Lock()

    def on_cloud(msg: PointCloud2) -> None:
        now, stamp = time.monotonic(), stamp_to_ns(msg.header.stamp)
        with lock:
            clouds.append(now)
            for s, t in sent.items():
                if s <= stamp and s not in reached:
                    reached[s] = now - t

    node.create_subscription(PointCloud2, topics.RECON_POINTS, on_cloud, 5)
    node.create_subscription(TrainerStatus, topics.RECON_STATUS,
                             lambda m: status.append((time.monotonic(), m)), qos.subscription(topics.RECON_STATUS))
    pubs = {name: node.create_publisher(cls, topic, 10) for name, (cls, topic) in {
        "info": (CameraInfo, topics.LEFT_RECT_INFO), "image": (Image, topics.LEFT_RECT),
        "depth": (Image, topics.DEPTH), "mask": (Image, topics.INSTRUMENT_MASK),
        "pose": (PoseStamped, topics.CAMERA_POSE)}.items()}
    try:
        if not wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 60):
            print("the trainer node did not subscribe within 60 s")
            return None
        frame_id = topics.LEFT_OPTICAL_FRAME

        def messages(f, s: int) -> dict:
            return {"info": camera_to_msg(scene.cam_left, s), "image": image_to_msg(f.left, "rgb8", s, frame_id),
                    "depth": image_to_msg(f.depth.astype(np.float32), "32FC1", s, frame_id),
                    "mask": image_to_msg(f.mask, "mono8", s, frame_id),
                    "pose": pose_to_msg(f.pose, s, topics.WORLD_FRAME)}

        # Warm-up, not measured: the first frame (earlier stamps) at 2 Hz until the first cloud. A writer matches a
        # reader before that reader has matched it, and what it sends meanwhile is lost; the bench's publishers
        # only see their side, and up to the first 11 frames of a run were lost so.
        warm = 0
        while not clouds and warm < WARMUP_MAX:
            for name, m in messages(scene.frames[0], scene.frames[0].stamp_ns - (WARMUP_MAX - warm) * 10**8).items():
                pubs[name].publish(m)
            warm += 1
            wait_until(lambda: bool(clouds), 0.5)
        if not clouds:
            print(f"no cloud after {warm} warm-up frames")
            return None
        time.sleep(1.0)
        with lock:
            clouds.clear()
        t_next = time.monotonic()
        for i, f in enumerate(scene.frames):
            s = f.stamp_ns
            msgs = messages(f, s)
            time.sleep(max(0.0, t_next - time.monotonic()))
            with lock:
                sent[s] = time.monotonic()
            for name, m in msgs.items():
                pubs[name].publish(m)
            t_next += 1.0 / args.rate
            print(f"\r  sent {i + 1}/{len(scene.frames)}, reached a cloud {len(reached)}", end="", flush=True)
        t_last = time.monotonic()
        wait_until(lambda: len(reached) == len(sent), 5.0)
        # The trainer's own counts: a frame it never received, or dropped, "reaches" the next frame's cloud.
        t_done = time.monotonic()
        wait_until(lambda: bool(status) and status[-1][0] > t_done, 3.0)
        print()
    finally:
        stop_node(proc)
        ex.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    lat = np.array(sorted(reached.values())) * 1e3
    # While frames arrive: from the first cloud to the last frame sent (after it, no cloud is due).
    during = [t for t in clouds if t <= t_last]
    gap = max(np.diff([*during, t_last]).tolist(), default=float("nan")) if during else float("nan")
    return {"frames": len(sent), "reached": len(reached), "latencies_ms": lat.tolist(),
            "p50_ms": float(np.percentile(lat, 50)) if lat.size else float("nan"),
            "p95_ms": float(np.percentile(lat, 95)) if lat.size else float("nan"),
            "max_ms": float(lat.max()) if lat.size else float("nan"), "longest_cloud_gap_ms": gap * 1e3,
            "warmup_frames": warm,
            "trainer_received": int(status[-1][1].frames_received) if status else 0,
            "trainer_used": int(status[-1][1].frames_used) if status else 0}


def across_a_link(args: argparse.Namespace, argv: list[str]) -> int:
    """Make the two namespaces and the lossy link, run this benchmark again inside the robot namespace with the
    trainer in the GPU one, print the packets the loss dropped; its exit code."""
    import netns_support as netns

    with netns.two_hosts() as hosts:
        robot, gpu = hosts["robot"], hosts["gpu"]
        if args.link_loss > 0:
            netns.drop(hosts, args.link_loss)
        run = subprocess.run(netns.on_host(robot, sys.executable, __file__, *argv, "--trainer-netns", gpu["ns"],
                                           "--trainer-peer", robot["addr"]),
                             env={**os.environ, "ROS_STATIC_PEERS": gpu["addr"]})
        print(f"link: {100 * args.link_loss:g} % loss each way, {netns.drop(hosts, None)} packets dropped")
    return run.returncode


def in_own_process(argv: list[str], result: Path, timeout: float) -> dict | None:
    """One run of this benchmark (`one_run`) in a process of its own, in a session of its own with the trainer
    node it starts; its result (the run's dict, {} when it got no cloud), or None when it had not ended after
    `timeout` s: then the whole session is killed (a process blocked in native code with the GIL held cannot
    be stopped from inside)."""
    result.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, __file__, *argv, "--one-run", str(result)], start_new_session=True)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return None
    return json.loads(result.read_text()) if result.exists() else {}


def one_run(args: argparse.Namespace) -> int:
    """The body of one run (in its own process): a private ROS domain, the scene, `run_once`; writes its dict (or
    {} without a cloud) to `args.one_run`."""
    private_ros_domain()
    if args.trainer_netns:      # discovery across the link: unicast to the named peers
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"

    from surg3d_nodes.data.synthetic import SynthConfig, generate

    print(f"synthetic scene {args.width}x{args.height}, {args.frames} frames", flush=True)
    scene = generate(SynthConfig(width=args.width, height=args.height, frames=args.frames, instruments=1),
                     lambda d, n: print(f"\r  rendering {d}/{n}", end="", flush=True))
    print()
    r = run_once(args, scene, args.out)
    Path(args.one_run).write_text(json.dumps(r or {}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; returns 0 (1 when a run got no cloud at all or hung)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=320)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--frames", type=int, default=60)
    ap.add_argument("--rate", type=float, default=10.0, help="Hz of the frames")
    ap.add_argument("--repeats", type=int, default=5, help="runs, each against a fresh trainer node")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--on-frame-rate", type=float, default=30.0, help="trainer points_on_frame_rate")
    ap.add_argument("--threads", type=int, default=1, help="trainer num_threads (torch CPU threads)")
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_latency"))
    ap.add_argument("--param", action="append", default=[], help="extra trainer parameter NAME:=VALUE")
    ap.add_argument("--link-loss", type=float, default=None,
                    help="the trainer across a link with this random packet loss each way (root; 0.01 = 1 %%)")
    ap.add_argument("--run-timeout", type=float, default=240.0,
                    help="s: a run not ended by then is killed with its trainer and reported as hung")
    ap.add_argument("--one-run", help=argparse.SUPPRESS)         # set on each run's own process
    ap.add_argument("--trainer-netns", help=argparse.SUPPRESS)   # set on the run re-executed across the link
    ap.add_argument("--trainer-peer", help=argparse.SUPPRESS)
    own = list(sys.argv[1:] if argv is None else argv)
    args = ap.parse_args(own)
    if args.link_loss is not None and not args.trainer_netns:
        return across_a_link(args, own)
    if args.one_run:
        return one_run(args)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    runs = []
    for k in range(args.repeats):
        r = in_own_process(own, out / f"run_{k + 1}.json", args.run_timeout)
        if r is None:
            print(f"run {k + 1}: hung: no result within {args.run_timeout:g} s, killed with its trainer", flush=True)
            runs.append({"hung": True})
            continue
        if not r.get("reached"):
            print(f"run {k + 1}: no frame reached a cloud")
            return 1
        runs.append(r)
        print(f"run {k + 1}: {r['reached']}/{r['frames']} frames reached a cloud; p50 {r['p50_ms']:.0f} ms, "
              f"p95 {r['p95_ms']:.0f} ms, max {r['max_ms']:.0f} ms, longest gap between clouds "
              f"{r['longest_cloud_gap_ms']:.0f} ms; of these and {r['warmup_frames']} warm-up frames the trainer "
              f"received {r['trainer_received']} and used {r['trainer_used']}", flush=True)
    result = {"width": args.width, "height": args.height, "rate_hz": args.rate, "device": args.device,
              "link_loss": args.link_loss,
              "on_frame_rate": args.on_frame_rate, "runs": runs,
              "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    (out / "recon_latency.json").write_text(json.dumps(result, indent=2))
    png = latency_histogram([(f"run {k + 1}", np.array(r["latencies_ms"])) for k, r in enumerate(runs)
                             if not r.get("hung")][:3], out / "recon_latency.png")
    print(f"wrote {out / 'recon_latency.json'} and {png}")
    return 1 if any(r.get("hung") for r in runs) else 0


if __name__ == "__main__":
    sys.exit(main())
