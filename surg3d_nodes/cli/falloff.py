"""`surg3d falloff KIND PATH`: measure a stereo endoscope's brightness fall-off on a recorded clip.

The same tissue seen by both lenses at one instant, at two image positions, gives the fall-off's ratio there
(perception.falloff). Prints the trainer's `falloff` setting ([b1, b2]) and writes a picture of V over the
image (with its profile along the diagonal) to --out. Depth comes from the clip where it has one, else from the
project's stereo matcher (SGBM).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.data.datasets import READERS, DatasetError, open_dataset
from surg3d_nodes.perception.falloff import Falloff, FalloffEstimator
from surg3d_nodes.perception.stereo_depth import StereoDepth


def build_parser() -> argparse.ArgumentParser:
    """The command's arguments."""
    p = argparse.ArgumentParser(prog="surg3d falloff", description=__doc__.split("\n\n")[0])
    p.add_argument("kind", choices=sorted(READERS), help="dataset layout")
    p.add_argument("path", help="the clip's folder")
    p.add_argument("--frames", type=int, default=5, help="stereo pairs to measure on (spread over the clip)")
    p.add_argument("--out", type=Path, default=Path("falloff.png"), help="picture of the measured V")
    return p


def falloff_picture(v: Falloff, K: np.ndarray, width: int, height: int) -> np.ndarray:
    """RGB uint8: V over the image (grey, 1 = white, the lowest V shown = black) beside its profile from the
    centre to the corner (r in focal units on x, V on y)."""
    gain = v.gain(K, width, height)
    lo = min(float(gain.min()), 1.0)
    grey = np.clip((gain - lo) / max(1.0 - lo, 1e-6), 0, 1)
    left = cv2.cvtColor((grey * 255).astype(np.uint8), cv2.COLOR_GRAY2RGB)
    plot = np.full((height, height, 3), 255, np.uint8)
    r_max = float(np.hypot(max(K[0, 2], width - 1 - K[0, 2]) / K[0, 0],
                           max(K[1, 2], height - 1 - K[1, 2]) / K[1, 1]))
    rs = np.linspace(0, r_max, height)
    vs = np.exp(v.b1 * rs ** 2 + v.b2 * rs ** 4)
    v_lo = min(float(vs.min()), 0.9)
    v_hi = max(float(vs.max()), 1.05)
    pts = np.stack([np.arange(height), (height - 1) * (v_hi - vs) / (v_hi - v_lo)], 1).astype(np.int32)
    y1 = round((height - 1) * (v_hi - 1.0) / (v_hi - v_lo))
    cv2.line(plot, (0, y1), (height - 1, y1), (180, 180, 180), 1)
    cv2.polylines(plot, [pts], False, (200, 30, 30), 2)
    cv2.putText(plot, f"V(r), r 0..{r_max:.2f}", (5, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    cv2.putText(plot, f"{v_lo:.2f}..{v_hi:.2f}", (5, height - 6), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 1)
    return np.concatenate([left, plot], 1)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        reader = open_dataset(args.kind, args.path)
        n = len(reader)
        picks = sorted({round(float(i)) for i in np.linspace(0, n - 1, max(1, min(args.frames, n)))})
        est = FalloffEstimator()
        matcher = None
        K = None
        for i in picks:
            fr = reader.frame(i)
            if fr.right is None or fr.cam_right is None:
                raise DatasetError(f"{args.path}: frame {i} has no right image: the fall-off is measured on "
                                   "stereo pairs")
            depth = fr.depth
            if depth is None:
                matcher = matcher or StereoDepth(fr.cam_left, fr.cam_right)
                depth = matcher.compute(fr.left, fr.right).depth
            K = fr.cam_left.intrinsics()
            got = est.add(fr.left, fr.right, depth, fr.mask, K, fr.cam_right.intrinsics(), fr.cam_right.baseline)
            print(f"frame {i}: {got} tissue samples")
        v = est.estimate()
        if v is None:
            raise DatasetError(f"{args.path}: {est.samples} samples on {len(picks)} pairs, too few to measure the "
                               "fall-off (tissue with depth in both views is needed)")
    except (DatasetError, ValueError) as e:
        print(f"surg3d falloff: {e}", file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(args.out), cv2.cvtColor(falloff_picture(v, K, fr.cam_left.width, fr.cam_left.height),
                                            cv2.COLOR_RGB2BGR))
    corner = float(v.gain(K, fr.cam_left.width, fr.cam_left.height)[0, 0])
    print(f"V(r) = exp({v.b1:.4f} r^2 + {v.b2:.4f} r^4); {corner:.3f} at the image corner")
    print(f"trainer setting: falloff: [{v.b1:.4f}, {v.b2:.4f}]   (picture: {args.out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
