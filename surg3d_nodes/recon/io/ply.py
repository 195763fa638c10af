"""3DGS PLY export (Inria layout, readable by common splat viewers) of the model at a chosen time.

Binary little-endian vertex properties: x y z nx ny nz f_dc_0..2 f_rest_0.. opacity scale_0..2 (scale_0..1 for
2D surfels, as 2DGS writes them) rot_0..3,
then `inferred` (1.0 for a Gaussian completing tissue no camera has seen, else 0.0; viewers ignore unknown
properties), all float32, with Inria conventions: opacity as a logit, log scales, rotation as a wxyz quaternion,
f_rest channel-major (all coefficients of R, then G, then B). The deformation is baked in at time t, and only the
Gaussians alive at t are written (`GaussianModel.life`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from surg3d_nodes.recon.gaussians import SH_C0, GaussianModel


def ply_arrays(model: GaussianModel, time_s: float, params: dict[str, torch.Tensor] | None = None
               ) -> dict[str, np.ndarray]:
    """Named per-Gaussian float32 columns of the PLY at model time `time_s`."""
    p = model.params if params is None else params
    with torch.no_grad():
        means = p["means"] + model._interp(p, "pos_knots", time_s)
        log_s = p["log_scales"]
        if "scale_knots" in p:
            log_s = log_s + model._interp(p, "scale_knots", time_s)
        dc = p["sh_dc"] + model._interp(p, "col_knots", time_s) / SH_C0
        quats = torch.nn.functional.normalize(p["quats"], dim=-1)
        cols = {"x": means[:, 0], "y": means[:, 1], "z": means[:, 2]}
        zero = torch.zeros_like(means[:, 0])
        cols.update({"nx": zero, "ny": zero, "nz": zero})
        cols.update({f"f_dc_{i}": dc[:, i] for i in range(3)})
        if "sh_rest" in p:
            rest = p["sh_rest"].transpose(1, 2).reshape(means.shape[0], -1)   # [N, 3 channels x K-1]
            cols.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
        cols["opacity"] = p["opacity_logits"]
        cols.update({f"scale_{i}": log_s[:, i] for i in range(log_s.shape[1])})   # surfels: 2 (2DGS's PLY)
        cols.update({f"rot_{i}": quats[:, i] for i in range(4)})
        cols["inferred"] = (p["inferred"] if "inferred" in p else model.inferred).float()
        alive = model.alive(time_s, params)
        if alive is not None:           # only the Gaussians that exist at that time
            cols = {k: v[alive] for k, v in cols.items()}
        return {k: v.detach().float().cpu().numpy() for k, v in cols.items()}


def save_ply(path: str | os.PathLike, model: GaussianModel, time_s: float,
             params: dict[str, torch.Tensor] | None = None) -> Path:
    """Write the model at `time_s` as a binary 3DGS PLY (written to a temp file, then renamed)."""
    cols = ply_arrays(model, time_s, params)
    names = list(cols)
    n = len(cols["x"])
    data = np.empty(n, dtype=[(k, "<f4") for k in names])
    for k in names:
        data[k] = cols[k]
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    header += [f"property float {k}" for k in names]
    header.append("end_header")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(("\n".join(header) + "\n").encode("ascii"))
        f.write(data.tobytes())
    os.replace(tmp, out)
    return out
