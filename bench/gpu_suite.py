"""The GPU measurements of the reconstruction, in stages that fit the device tool's 10-minute calls.

A GPU host (the `device` tool's H100/H200) has PyTorch and nvcc but no internet and no ROS; prepare on a
machine with a registry (`bash tools/gpu_prepare.sh`: gsplat + pykdtree wheels into .whl/, the EndoNeRF
pulling clip into .devdata/), carry both, and run there from the repository root:

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    python3 bench/gpu_suite.py env test speed --out $OUT        # builds gsplat's kernels (~80 s) first
    python3 bench/gpu_suite.py offline online --out $OUT
    python3 bench/gpu_suite.py dvrk --out $OUT

Stages: `env` (GPU, versions, gsplat kernel build), `test` (tests/test_recon_render.py, the gsplat CUDA
comparison included), `speed` (render 640x512, gsplat, 100k/500k Gaussians), `offline` (EndoNeRF eval at
full resolution, one run per --iterations), `online` (the same, frames fed at --rate), `dvrk` (the dVRK
kinematic-pose reconstruction bench at 640x512). Each stage writes <stage>.log and its JSON into --out
(flat, at most 8 files per call come back) and the suite prints one summary line per stage. The
frame-to-cloud latency needs the ROS node graph, which this host cannot run (no ROS for its Python).
`--device cpu --scale 0.25 --iterations 20` runs the same stages as a quick check on a CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("env", "test", "speed", "offline", "online", "dvrk")

ENV_PROBE = """
import json, time, torch
info = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
if info["cuda"]:
    info["gpu"] = torch.cuda.get_device_name(0)
    import gsplat
    t0 = time.time()
    from gsplat.cuda._backend import _C  # noqa: F401  (JIT-builds the kernels on first import)
    info.update(gsplat=gsplat.__version__, gsplat_build_s=round(time.time() - t0, 1))
print(json.dumps(info))
"""


def stage_commands(stage: str, a: argparse.Namespace, out: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of the runs of one stage; every run writes its JSON into `out`."""
    py = sys.executable
    if stage == "env":
        return [("env", [py, "-c", ENV_PROBE])]
    if stage == "test":
        return [("test", [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_recon_render.py"])]
    if stage == "speed":
        backends = ["gsplat"] if a.device == "cuda" else ["torch"]
        return [("speed", [py, "bench/recon_render_speed.py", "--device", a.device, "--size", a.size,
                           "--backends", *backends, "--gaussians", *map(str, a.gaussians),
                           "--json", str(out / "speed.json")])]
    clip = str(a.data)
    if stage == "offline":
        return [(f"offline_{n}", [py, "-m", "surg3d_nodes.cli", "eval", "endonerf", clip, "--mode", "offline",
                                  "--scale", str(a.scale), "--device", a.device, "--iterations", str(n),
                                  "--json", str(out / f"offline_{n}.json")]) for n in a.iterations]
    if stage == "online":
        return [("online", [py, "-m", "surg3d_nodes.cli", "eval", "endonerf", clip, "--mode", "online",
                            "--rate", str(a.rate), "--scale", str(a.scale), "--device", a.device,
                            "--json", str(out / "online.json")])]
    if stage == "dvrk":
        w, h = a.size.split("x")
        return [("dvrk", [py, "bench/dvrk_recon_psnr.py", "--width", w, "--height", h, "--frames", "12",
                          "--image-scale", "1" if a.device == "cuda" else "0.25", "--out", str(out)])]
    raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}")


def main(argv: list[str] | None = None) -> int:
    """Run the stages in order; returns 1 if any run failed."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stages", nargs="+", choices=STAGES)
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "out/gpu_suite")))
    ap.add_argument("--data", type=Path, default=ROOT / ".devdata" / "pulling_soft_tissues")
    ap.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    ap.add_argument("--scale", type=float, default=1.0, help="EndoNeRF image scale (1 = 640x512)")
    ap.add_argument("--iterations", type=int, nargs="+", default=[2000, 6000], help="offline budgets")
    ap.add_argument("--rate", type=float, default=30.0, help="online feeding rate (Hz)")
    ap.add_argument("--size", default="640x512", help="render size of `speed` and scene size of `dvrk`")
    ap.add_argument("--gaussians", type=int, nargs="+", default=[100000, 500000])
    a = ap.parse_args(argv)
    if {"offline", "online"} & set(a.stages) and not (a.data / "poses_bounds.npy").is_file():
        ap.error(f"{a.data} is not an EndoNeRF clip (run tools/gpu_prepare.sh, or pass --data)")
    a.out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCH_CUDA_ARCH_LIST=os.environ.get("TORCH_CUDA_ARCH_LIST", "9.0"),
               PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    summary, failed = [], False
    for stage in a.stages:
        for name, cmd in stage_commands(stage, a, a.out):
            print(f"== {name}: {' '.join(cmd[:4])} ...", flush=True)
            t0 = time.time()
            with open(a.out / f"{name}.log", "w") as log:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True)
                for line in proc.stdout:         # shown as it comes (progress) and kept in the log
                    sys.stdout.write(line)
                    log.write(line)
                rc = proc.wait()
            failed |= rc != 0
            summary.append({"run": name, "rc": rc, "seconds": round(time.time() - t0, 1)})
            print(f"== {name}: exit {rc} after {summary[-1]['seconds']} s", flush=True)
    print(json.dumps(summary))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
