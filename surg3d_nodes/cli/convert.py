"""`surg3d convert KIND SRC OUT`: a dataset (EndoNeRF, StereoMIS, stereo folders, synthetic) to a rosbag2.

Per frame, at the frame's stamp: left/right images (rgb8) and CameraInfo, the camera pose (PoseStamped and
/tf world -> left optical frame) when the dataset has one, and the dataset's depth (32FC1 m), tool mask
(mono8) and tissue-only image (synthetic) on the /dataset/* topics. The bag is written under a hidden name
and renamed at the end, so a failed conversion leaves no complete-looking OUT.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from surg3d_nodes.data.bags import STORAGES, BagWriter
from surg3d_nodes.data.datasets import READERS, DatasetError, DatasetReader, open_dataset


@dataclass
class ConvertStats:
    """What a conversion wrote."""

    frames: int
    messages: int
    bytes: int
    seconds: float
    topics: list[str]


def convert_reader(reader: DatasetReader, out: str | Path, storage: str = "mcap", topic_prefix: str = "",
                   max_frames: int | None = None, overwrite: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> ConvertStats:
    """Write every frame of `reader` (up to `max_frames`) to a rosbag2 at `out` on the standard topics."""
    from tf2_msgs.msg import TFMessage

    from surg3d_nodes.ros import convert, topics

    def name(topic: str) -> str:
        """The bag's (absolute) name of a graph topic: under topic_prefix, as if recorded in that namespace."""
        return topics.absolute(topic, topic_prefix or "/")

    n = len(reader) if max_frames is None else min(len(reader), max_frames)
    t0 = time.perf_counter()
    written: set[str] = set()
    with BagWriter(out, storage=storage, overwrite=overwrite) as bag:
        def put(topic: str, msg: object, stamp: int) -> None:
            bag.write(name(topic), msg, stamp)
            written.add(name(topic))

        for i in range(n):
            f = reader.frame(i)
            s = f.stamp_ns
            put(topics.LEFT_IMAGE, convert.image_to_msg(f.left, "rgb8", s, f.cam_left.frame_id), s)
            put(topics.LEFT_INFO, convert.camera_to_msg(f.cam_left, s), s)
            if f.right is not None and f.cam_right is not None:
                put(topics.RIGHT_IMAGE, convert.image_to_msg(f.right, "rgb8", s, f.cam_right.frame_id), s)
                put(topics.RIGHT_INFO, convert.camera_to_msg(f.cam_right, s), s)
            if f.pose is not None:
                put(topics.CAMERA_POSE, convert.pose_to_msg(f.pose, s, topics.WORLD_FRAME), s)
                tf = convert.transform_msg(f.pose, s, topics.WORLD_FRAME, f.cam_left.frame_id)
                put(topics.TF, TFMessage(transforms=[tf]), s)
            if f.depth is not None:
                put(topics.DATASET_DEPTH, convert.image_to_msg(f.depth, "32FC1", s, f.cam_left.frame_id), s)
            if f.mask is not None:
                put(topics.DATASET_MASK, convert.image_to_msg(f.mask, "mono8", s, f.cam_left.frame_id), s)
            if "tissue" in f.extras:
                put(topics.DATASET_TISSUE,
                    convert.image_to_msg(f.extras["tissue"], "rgb8", s, f.cam_left.frame_id), s)
            if progress is not None:
                progress(i + 1, n)
        count, size = bag.count, bag.bytes
    return ConvertStats(n, count, size, time.perf_counter() - t0, sorted(written))


def print_progress(prefix: str) -> Callable[[int, int], None]:
    """A progress callback printing `prefix done/total (fps)` about ten times per run."""
    t0 = time.perf_counter()

    def report(done: int, total: int) -> None:
        if done == total or done % max(1, total // 10) == 0:
            rate = done / max(time.perf_counter() - t0, 1e-9)
            print(f"{prefix} {done}/{total} frames ({rate:.1f} frames/s)", flush=True)

    return report


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `surg3d convert`."""
    p = argparse.ArgumentParser(prog="surg3d convert", description=__doc__.split("\n")[0])
    p.add_argument("kind", choices=sorted(READERS), help="dataset layout of SRC")
    p.add_argument("src", type=Path, help="dataset folder (EndoNeRF clip, StereoMIS sequence, stereo folder)")
    p.add_argument("out", type=Path, help="rosbag2 directory to create")
    p.add_argument("--storage", choices=sorted(STORAGES), default="mcap")
    p.add_argument("--fps", type=float, default=None, help="frame rate for the stamps (default: dataset's)")
    p.add_argument("--baseline", type=float, default=None,
                   help="stereo baseline in metres (EndoNeRF only; default 4.28 mm or the clip's own)")
    p.add_argument("--start-ns", type=int, default=None, help="stamp of the first frame (ns)")
    p.add_argument("--topic-prefix", default="", help="prefix for every topic except /tf (e.g. /case1)")
    p.add_argument("--max-frames", type=int, default=None, help="convert only the first N frames")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of `surg3d convert`."""
    args = build_parser().parse_args(argv)
    kwargs: dict[str, object] = {}
    if args.fps is not None:
        kwargs["fps"] = args.fps
    if args.start_ns is not None:
        kwargs["start_ns"] = args.start_ns
    if args.baseline is not None:
        if args.kind not in ("endonerf", "synthetic"):
            print("surg3d convert: error: --baseline applies to endonerf/synthetic clips only",
                  file=sys.stderr)
            return 2
        kwargs["baseline"] = args.baseline
    try:
        reader = open_dataset(args.kind, args.src, **kwargs)
        print(f"{args.kind} {args.src}: {len(reader)} frames {reader.cam_left.width}x{reader.cam_left.height}"
              f"{' stereo' if reader.cam_right is not None else ''}, {reader.fps:g} Hz", flush=True)
        stats = convert_reader(reader, args.out, args.storage, args.topic_prefix, args.max_frames,
                               args.overwrite, print_progress("converted"))
    except (DatasetError, FileExistsError, ValueError, KeyError) as e:
        print(f"surg3d convert: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} ({args.storage}): {stats.frames} frames, {stats.messages} messages, "
          f"{stats.bytes / 1e6:.1f} MB in {stats.seconds:.2f} s "
          f"({stats.frames / stats.seconds:.1f} frames/s); "
          f"topics: {', '.join(stats.topics)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
