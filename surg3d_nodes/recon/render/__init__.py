"""Differentiable Gaussian rendering with interchangeable backends.

`cpu` (compiled C++, multithreaded; the default on CPU), `torch` (pure PyTorch: the reference the tests
check the others against) and `gsplat` (CUDA) render 3D Gaussians; `torch2d` (pure PyTorch, CPU) and
`gsplat2d` (CUDA) render 2D surfels (`primitive: 2dgs`), whose info dict adds `normals`, `surf_normals` and
`distortion` for the 2DGS losses.

`render(model, camera, time)` -> RenderOutput(rgb [H,W,3], depth [H,W] expected depth in metres
(meaningful where alpha > 0), alpha [H,W]). `render_evaluated` is the same for already evaluated
Gaussians and also returns the info dict (means2d with retained gradient, radii) used by densification.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from surg3d_nodes.recon.gaussians import GaussianModel
from surg3d_nodes.recon.render import cpu_backend, gsplat_backend, surfel_backend, torch_backend
from surg3d_nodes.recon.render.camera import RenderCamera

BACKENDS = ("auto", "cpu", "torch", "gsplat", "gsplat2d")
PRIMITIVES = ("3dgs", "2dgs")

__all__ = ["BACKENDS", "PRIMITIVES", "RenderCamera", "RenderOutput", "render", "render_evaluated", "resolve_backend"]


class RenderOutput(NamedTuple):
    """Rendered colour [H,W,3], expected depth [H,W] and accumulated alpha [H,W]."""

    rgb: torch.Tensor
    depth: torch.Tensor
    alpha: torch.Tensor


def resolve_backend(backend: str, device: str | torch.device, primitive: str = "3dgs") -> str:
    """Concrete backend for a request.

    3D Gaussians: `auto` is gsplat on a CUDA device with gsplat, the compiled CPU backend on CPU when it
    builds here (a C++ compiler is needed), else torch. 2D surfels: gsplat2d on CUDA (`auto`, `gsplat`,
    `gsplat2d`), torch2d on CPU (`auto`, `torch`); there is no compiled surfel renderer yet.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown render backend {backend!r}; expected one of {BACKENDS}")
    if primitive not in PRIMITIVES:
        raise ValueError(f"unknown primitive {primitive!r}; expected one of {PRIMITIVES}")
    dev = torch.device(device)
    if primitive == "2dgs":
        if backend == "cpu":
            raise ValueError("primitive '2dgs' has no compiled CPU renderer: use backend 'torch' or 'auto'")
        if backend.startswith("gsplat") or (backend == "auto" and dev.type == "cuda" and gsplat_backend.available()):
            backend = "gsplat2d"
        else:
            return "torch2d"
    elif backend == "gsplat2d":
        raise ValueError("backend 'gsplat2d' renders surfels: set primitive '2dgs'")
    if backend == "auto":
        if dev.type == "cuda":
            return "gsplat" if gsplat_backend.available() else "torch"
        return "cpu" if dev.type == "cpu" and cpu_backend.available() else "torch"
    if backend.startswith("gsplat") and dev.type != "cuda":
        raise ValueError(f"backend {backend!r} needs a CUDA device, got {dev}")
    if backend == "cpu":
        if dev.type != "cpu":
            raise ValueError(f"backend 'cpu' renders on the CPU, got device {dev}")
        cpu_backend.load()   # raises, with the compiler's message, when the library cannot be built
    return backend


def render_evaluated(g: dict[str, torch.Tensor], camera: RenderCamera, backend: str = "torch",
                     tile_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render evaluated Gaussians (dict of means, quats, scales, opacities, colors) with a backend.

    `tile_size` applies to torch, torch2d and gsplat; the CPU backend's tiles are fixed at 16 px. The surfel
    backends read the first two scales.
    """
    args = (g["means"], g["quats"], g["scales"], g["opacities"], g["colors"], camera)
    if backend == "cpu":
        return cpu_backend.render(*args)
    if backend == "torch":
        return torch_backend.render(*args, tile_size=tile_size or 4)
    if backend == "torch2d":
        return surfel_backend.render(*args, tile_size=tile_size or 8)
    if backend in ("gsplat", "gsplat2d"):
        return gsplat_backend.render(*args, tile_size=tile_size or 16,
                                     mode="2dgs" if backend == "gsplat2d" else "3dgs")
    raise ValueError(f"unknown render backend {backend!r}; use resolve_backend first")


def render(model: GaussianModel, camera: RenderCamera, time: float, backend: str = "auto",
           params: dict[str, torch.Tensor] | None = None) -> RenderOutput:
    """Render the model at `time` from `camera` (no gradient bookkeeping beyond autograd's own)."""
    be = resolve_backend(backend, model.device, model.cfg.primitive)
    cam = camera.to(model.device)
    g = model.evaluate(time, cam.center(), params=params)
    rgb, depth, alpha, _ = render_evaluated(g, cam, be)
    return RenderOutput(rgb, depth, alpha)
