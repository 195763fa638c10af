"""`surg3d eval endonerf DIR`: train the reconstruction on an EndoNeRF clip and score the test frames."""

from __future__ import annotations

import argparse
import json
import sys

from surg3d_nodes.recon.render import BACKENDS


def build_parser() -> argparse.ArgumentParser:
    """Argument parser of `surg3d eval`."""
    p = argparse.ArgumentParser(prog="surg3d eval", description=__doc__)
    p.add_argument("kind", choices=["endonerf"], help="dataset layout")
    p.add_argument("path", help="clip directory (images/, depth/, masks/, poses_bounds.npy; with tissue/ and "
                                "tissue_depth/, as `surg3d synth` writes, the de-occlusion under the instruments is "
                                "scored too: seen-before / never-seen PSNR and SSIM, depth RMSE, Telea baseline)")
    p.add_argument("--mode", choices=["offline", "stream", "online"], default="offline",
                   help="offline: all training frames known, fixed budget; stream: frames in time order, "
                        "--iterations-per-frame live steps after each (deterministic); online: the threaded "
                        "trainer fed at --rate (wall clock)")
    p.add_argument("--iterations-per-frame", type=int, default=10,
                   help="stream: live training steps after each frame (10 is what a GPU affords at 30 Hz)")
    p.add_argument("--crop", default=None, metavar="WxH",
                   help="native-resolution centre crop instead of --scale (full-resolution pixel statistics)")
    p.add_argument("--rate", type=float, default=30.0, help="online feeding rate in Hz (wall clock)")
    p.add_argument("--scale", type=float, default=0.25, help="image scale (0.25 = 160x128 for EndoNeRF)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="renderer: auto (gsplat on CUDA, the compiled cpu backend on CPU) or one by name")
    p.add_argument("--iterations", type=int, default=None,
                   help="offline iteration budget (default 600 on CPU, 6000 on CUDA)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is fastest when other processes share the cores)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainerConfig field (value parsed as JSON when possible)")
    p.add_argument("--poses", choices=["dataset", "tracked"], default="dataset",
                   help="tracked: train with the camera tracker's poses (the dataset's only score them: ATE, RPE)")
    p.add_argument("--falloff", choices=["stereo", "config"], default="stereo",
                   help="the endoscope's brightness fall-off: stereo: measured on the first training frame's "
                        "stereo pair (perception.falloff); config: the trainer config's `falloff` (--set)")
    p.add_argument("--json", dest="json_out", default=None, help="write the result JSON here")
    p.add_argument("--out-dir", default=None, help="write comparison/depth PNGs and result.json here")
    return p


def _parse_overrides(items: list[str]) -> dict:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    import torch

    from surg3d_nodes.data.datasets.base import DatasetError
    from surg3d_nodes.evaluation.endonerf import EvalOptions, evaluate_endonerf
    from surg3d_nodes.recon.config import TrainerConfig

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    iterations = args.iterations or (600 if device == "cpu" else 6000)
    try:
        cfg = TrainerConfig.from_dict(_parse_overrides(args.set))
        crop = None
        if args.crop:
            try:
                crop = tuple(int(v) for v in args.crop.lower().split("x"))
            except ValueError:
                crop = ()
            if len(crop) != 2:
                raise ValueError(f"--crop expects WxH (e.g. 160x128), got {args.crop!r}")
        opts = EvalOptions(mode=args.mode, scale=args.scale, crop=crop, iterations_per_frame=args.iterations_per_frame,
                           device=device, iterations=iterations,
                           rate_hz=args.rate, out_dir=args.out_dir, backend=args.backend,
                           threads=args.threads, poses=args.poses, falloff=args.falloff)
        result = evaluate_endonerf(args.path, opts, cfg)
    except (DatasetError, ValueError) as e:
        print(f"surg3d eval: {e}", file=sys.stderr)
        return 2
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
