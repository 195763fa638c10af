"""CUDA backend: gsplat.rasterization (3DGS) or gsplat.rasterization_2dgs (2D surfels).

Takes the same evaluated Gaussians and camera as the torch backend and returns the same outputs:
RGB [H,W,3], expected depth [H,W], alpha [H,W] and an info dict with `means2d` ([1,N,2], gradient
retained for densification) and `radii` [N,2]; in 2DGS mode also `normals`, `surf_normals` [H,W,3] (world
frame) and `distortion` [H,W], as the torch2d backend. Colours are already evaluated RGB, so gsplat runs with
sh_degree=None.
"""

from __future__ import annotations

import torch

from surg3d_nodes.recon.render.camera import RenderCamera


def available() -> bool:
    """True when gsplat imports and a CUDA device is present."""
    if not torch.cuda.is_available():
        return False
    try:
        import gsplat  # noqa: F401
    except ImportError:
        return False
    return True


def render(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
           colors: torch.Tensor, camera: RenderCamera, tile_size: int = 16, near_plane: float = 0.01,
           mode: str = "3dgs") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render with gsplat on CUDA (the camera's low-pass); `mode` is "3dgs" or "2dgs" (surfels: the first two
    scales span the disc)."""
    import gsplat

    viewmats = camera.viewmat[None].to(means)
    Ks = camera.K[None].to(means)
    if mode == "3dgs":
        out, alphas, meta = gsplat.rasterization(
            means, quats, scales, opacities, colors, viewmats, Ks, camera.width, camera.height,
            near_plane=near_plane, eps2d=camera.eps2d, tile_size=tile_size, packed=False,
            render_mode="RGB+ED", rasterize_mode="classic")
    elif mode == "2dgs":
        # gsplat takes three scales; a unit third one makes its normals (R s_3's column) unit length.
        scales3 = torch.cat([scales[:, :2], torch.ones_like(scales[:, :1])], dim=-1)
        # Colours per camera [1,N,3]: with sh_degree=None gsplat 1.5.3 appends depths [1,N] to them as they are
        # (plain [N,3] colours fail there: found by the CPU-routed test).
        out, alphas, normals, surf_normals, distort, _median, meta = gsplat.rasterization_2dgs(
            means, quats, scales3, opacities, colors[None], viewmats, Ks, camera.width, camera.height,
            near_plane=near_plane, tile_size=tile_size, packed=False, render_mode="RGB+ED", distloss=True)
    else:
        raise ValueError(f"unknown gsplat mode {mode!r} (expected '3dgs' or '2dgs')")
    # 2DGS carries the densification gradient on a separate tensor.
    means2d = meta.get("gradient_2dgs") if mode == "2dgs" else meta.get("means2d")
    if means2d is not None and means2d.requires_grad:
        means2d.retain_grad()
    # means2d stays [1,N,2]: its .grad lives on this very tensor (a view of it would have none).
    radii, depths = meta.get("radii"), meta.get("depths")
    info = {"means2d": means2d, "radii": None if radii is None else radii[0],
            "depths": None if depths is None else depths[0]}
    if mode == "2dgs":
        # gsplat squeezes the camera axis of its depth normals (one camera: [H,W,3]), not of the others.
        info.update(normals=normals[0], surf_normals=surf_normals, distortion=distort[0, ..., 0])
    return out[0, ..., :3], out[0, ..., 3], alphas[0, ..., 0], info
