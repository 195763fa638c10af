"""Data path timings: synthetic rendering, dataset -> rosbag2 conversion, bag reading.

Run: .venv/bin/python bench/bench_data.py [--out /tmp/surg3d_bench_data] [--data ../shared/data]
Prints a table, writes results.json and a contact sheet of the 640x512 synthetic render into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import cv2

from surg3d_nodes.cli.convert import convert_reader
from surg3d_nodes.cli.synth import contact_sheet, sample_indices
from surg3d_nodes.data.bags import BagReader
from surg3d_nodes.data.datasets import open_dataset
from surg3d_nodes.data.synthetic import SynthConfig, generate


def timed(fn, *args, **kwargs) -> tuple[object, float]:
    """(result, seconds) of one call."""
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def main() -> None:
    """Run the timings and print them."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/surg3d_bench_data"))
    ap.add_argument("--data", type=Path, default=Path(os.environ.get("SURG3D_DATA", "../shared/data")))
    args = ap.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    res: dict[str, float] = {}
    for w, h, n, inst in ((160, 128, 30, 1), (160, 128, 30, 2), (640, 512, 5, 2)):
        scene, dt = timed(generate, SynthConfig(width=w, height=h, frames=n, instruments=inst,
                                                camera_motion="moving"))
        res[f"synth_{w}x{h}_{inst}tools_ms_per_frame"] = 1e3 * dt / n
        print(f"synthetic {w}x{h}, {inst} instrument(s): {n} frames in {dt:.2f} s "
              f"({1e3 * dt / n:.0f} ms/frame)")
    sheet = contact_sheet([(i, scene.frames[i]) for i in sample_indices(len(scene.frames))])
    sheet = cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR)
    cv2.imwrite(str(args.out / "synthetic_640x512.png"), sheet)
    clip = args.data / "endonerf" / "pulling_soft_tissues"
    if clip.is_dir():
        for storage in ("mcap", "sqlite3"):
            stats = convert_reader(open_dataset("endonerf", clip), args.out / f"endonerf_{storage}", storage)
            res[f"convert_endonerf_{storage}_fps"] = stats.frames / stats.seconds
            print(f"convert EndoNeRF 640x512 stereo ({storage}): {stats.frames} frames, {stats.messages} "
                  f"msgs, {stats.bytes / 1e6:.0f} MB in {stats.seconds:.2f} s "
                  f"({stats.frames / stats.seconds:.1f} frames/s)")
            reader = BagReader(args.out / f"endonerf_{storage}")
            n, dt = timed(lambda r=reader: sum(1 for _ in r.messages()))
            res[f"read_{storage}_msgs_per_s"] = n / dt
            print(f"read back ({storage}): {n} messages in {dt:.2f} s")
    else:
        print(f"no EndoNeRF clip at {clip}: conversion timings skipped")
    (args.out / "results.json").write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out / 'results.json'} and {args.out / 'synthetic_640x512.png'}")


if __name__ == "__main__":
    main()
