"""Pure-PyTorch differentiable 2D Gaussian surfels (2DGS, Huang et al. 2024) on CPU: the `torch2d` backend.

Same conventions as gsplat 1.5's `rasterization_2dgs` (whose CUDA kernels this follows; its adapter is
`gsplat2d`): a surfel is a flat disc spanned by the first two columns of R diag(s_u, s_v) around its mean. Each
pixel's ray is intersected with the surfel's plane through the ray transform M = K [R s_u, R s_v, mean] (in
camera coordinates): the pixel's two homogeneous planes h_u = x M_w - M_u and h_v = y M_w - M_v meet the
surfel at (u, v) = (h_u x h_v)[:2] / (h_u x h_v)[2], and the kernel is exp(-0.5 min(u^2 + v^2, 2 |p - c|^2)),
the second term a screen-space low-pass that keeps edge-on surfels at least a pixel wide. The screen box is
the 3.33-sigma bounding box of the disc. Colour, centre depth and the camera-facing normal are composited
front to back (alpha clamped to 0.999, skipped below 1/255, the ray stopped before transmittance reaches
1e-4), and so is the depth distortion 2 sum_{j<i} w_i w_j (d_i - d_j) of the paper (gsplat's form, with
the surfels' centre depths). Autograd does the backward (no hand-written one: this is the reference and the
CPU path, not a fast one).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf

from surg3d_nodes.recon.render.camera import RenderCamera
from surg3d_nodes.recon.render.torch_backend import (
    ALPHA_MAX,
    ALPHA_MIN,
    EXTENT_SIGMA,
    T_MIN,
    _bin_tiles,
    quat_to_rotmat,
)

# gsplat's FILTER_INV_SQUARE_2DGS: the screen-space kernel is exp(-|p - c|^2), a ~0.7 px sigma.
FILTER_INV_SQUARE = 2.0


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, viewmat: torch.Tensor,
            K: torch.Tensor, width: int, height: int, near_plane: float = 0.01, far_plane: float = 1e10,
            shift: torch.Tensor | None = None
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ray transforms of surfels in one pinhole camera (gsplat's fully_fused_projection_2dgs).

    scales: [N,2] (or [N,3], the third ignored). `shift` [N,2] (zeros) moves each ray transform by that
    many pixels in the image: its gradient is gsplat's `gradient_2dgs`, the screen-space gradient that
    densification reads. Returns means2d [N,2] (box centres), ray transforms [N,3,3] (rows M_u, M_v, M_w),
    camera-facing unit normals [N,3] in camera coordinates, depths [N] (camera z of the centres) and integer
    radii [N,2] (0 when culled).
    """
    viewmat, K = viewmat.to(means), K.to(means)
    R_cw, t_cw = viewmat[:3, :3], viewmat[:3, 3]
    mc = means @ R_cw.T + t_cw
    rot_c = R_cw @ quat_to_rotmat(quats)
    axes = rot_c[..., :2] * scales[:, None, :2]                        # [N,3,2] tangent axes, scaled
    normals = rot_c[..., 2]
    facing = torch.where((normals * mc).sum(-1, keepdim=True) > 0, -1.0, 1.0)
    normals = normals * facing
    M = K @ torch.cat([axes, mc[..., None]], dim=-1)                  # [N,3,3] pixel <- (u, v, 1)
    box_m = M
    if shift is not None:
        col = torch.cat([shift * mc[:, 2:3], torch.zeros_like(shift[:, :1])], dim=-1)
        M = M + tnf.pad(col[..., None], (2, 0))
    # The 3.33-sigma box of the disc (from the unshifted transform): centre and half-extent from the dual
    # conic of its boundary.
    sign = M.new_tensor([1.0, 1.0, -1.0])
    w = box_m[:, 2]
    d = (w * w * sign).sum(-1, keepdim=True)
    valid = d.squeeze(-1) != 0
    f = torch.where(valid[:, None], sign / torch.where(valid[:, None], d, torch.ones_like(d)), 0.0)
    uv = box_m[:, :2]
    means2d = (uv * w[:, None] * f[:, None]).sum(-1)
    extents = torch.sqrt((means2d ** 2 - (uv * uv * f[:, None]).sum(-1)).clamp(min=1e-4))
    depths = mc[:, 2]
    with torch.no_grad():
        radius = torch.ceil(EXTENT_SIGMA * extents)
        ok = valid & (depths > near_plane) & (depths < far_plane)
        ok &= ((means2d[:, 0] + radius[:, 0] > 0) & (means2d[:, 0] - radius[:, 0] < width)
               & (means2d[:, 1] + radius[:, 1] > 0) & (means2d[:, 1] - radius[:, 1] < height))
        radius[~ok] = 0.0
    return means2d, M, normals, depths, radius.int()


def rasterize(means2d: torch.Tensor, M: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor,
              depths: torch.Tensor, radii: torch.Tensor, width: int, height: int, tile_size: int = 8,
              buckets: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Composite surfels front to back (by centre depth) with ray-splat intersection.

    features: [N,C] values to blend. Returns blended features [H,W,C], accumulated alpha [H,W] and the depth
    distortion [H,W] (2 sum_{j<i} w_i w_j (d_i - d_j) with d the surfels' `depths`).
    """
    device, dtype = means2d.device, means2d.dtype
    n, ch = features.shape
    tiles_x, tiles_y = math.ceil(width / tile_size), math.ceil(height / tile_size)
    n_tiles, npix = tiles_x * tiles_y, tile_size * tile_size
    gid, tile, slot = _bin_tiles(means2d, radii, opacities, depths, tiles_x, tiles_y, tile_size)

    # Pad with one invisible surfel (index n): opacity 0 never reaches 1/255.
    means_p = torch.cat([means2d, means2d.new_zeros(1, 2)])
    M_p = torch.cat([M, M.new_zeros(1, 3, 3)])
    op_p = torch.cat([opacities, opacities.new_zeros(1)])
    feat_p = torch.cat([features, features.new_zeros(1, ch)])
    depth_p = torch.cat([depths, depths.new_zeros(1)])

    lin = torch.arange(npix, device=device)
    local = torch.stack([lin % tile_size, lin // tile_size], -1).to(dtype) + 0.5       # [P,2]
    t_all = torch.arange(n_tiles, device=device)
    origin = torch.stack([(t_all % tiles_x) * tile_size, (t_all // tiles_x) * tile_size], -1).to(dtype)

    per_tile = torch.bincount(tile, minlength=n_tiles)
    busy = torch.nonzero(per_tile > 0).squeeze(1)
    busy = busy[torch.argsort(per_tile[busy])]
    done_tiles, done = [], []
    for chunk in torch.tensor_split(busy, min(buckets, max(1, busy.numel()))):
        if chunk.numel() == 0:
            continue
        kmax = int(per_tile[chunk].max())
        row_of_tile = torch.full((n_tiles,), -1, dtype=torch.long, device=device)
        row_of_tile[chunk] = torch.arange(chunk.numel(), device=device)
        sel = row_of_tile[tile] >= 0
        idx = torch.full((chunk.numel(), kmax), n, dtype=torch.long, device=device)
        idx[row_of_tile[tile[sel]], slot[sel]] = gid[sel]

        px = (origin[chunk][:, None, :] + local[None])[:, :, None, :]                   # [T,P,1,2]
        Mk = M_p[idx][:, None]                                                           # [T,1,K,3,3]
        h_u = px[..., :1] * Mk[..., 2, :] - Mk[..., 0, :]
        h_v = px[..., 1:] * Mk[..., 2, :] - Mk[..., 1, :]
        zeta = torch.linalg.cross(h_u, h_v, dim=-1)                                      # [T,P,K,3]
        zz = zeta[..., 2]
        zz = torch.where(zz.abs() < 1e-12, torch.full_like(zz, 1e-12), zz)
        sig3 = (zeta[..., 0] ** 2 + zeta[..., 1] ** 2) / zz ** 2
        sig2 = FILTER_INV_SQUARE * ((px - means_p[idx][:, None]) ** 2).sum(-1)
        sigma = 0.5 * torch.minimum(sig3, sig2)
        raw = op_p[idx][:, None] * torch.exp(-sigma.clamp(max=30.0))
        alpha = raw.clamp(max=ALPHA_MAX)
        alpha = alpha * (alpha >= ALPHA_MIN)
        t_incl = torch.exp(torch.cumsum(torch.log1p(-alpha), dim=-1).clamp(min=-20.0))
        # Exclusive stop: the surfel that would take the transmittance to 1e-4 or below is not drawn.
        weight = alpha * (t_incl / (1.0 - alpha)) * (t_incl > T_MIN)
        d = depth_p[idx][:, None]
        wd = weight * d
        before_w = torch.cumsum(weight, -1) - weight
        before_wd = torch.cumsum(wd, -1) - wd
        distort = 2.0 * (wd * before_w - weight * before_wd).sum(-1)
        out = weight @ feat_p[idx]
        done.append(torch.cat([out, weight.sum(-1, keepdim=True), distort[..., None]], -1))
        done_tiles.append(chunk)
    img = features.new_zeros(n_tiles, npix, ch + 2)
    if done_tiles:
        img = img.index_copy(0, torch.cat(done_tiles), torch.cat(done))
    img = img.reshape(tiles_y, tiles_x, tile_size, tile_size, ch + 2).permute(0, 2, 1, 3, 4)
    img = img.reshape(tiles_y * tile_size, tiles_x * tile_size, ch + 2)[:height, :width]
    return img[..., :ch], img[..., ch], img[..., ch + 1]


def depth_to_normal(depth: torch.Tensor, camera: RenderCamera) -> torch.Tensor:
    """World-frame unit normals [H,W,3] of the surface a z-depth map [H,W] describes (central differences
    of the back-projected pixel centres, facing the camera; zero on the one-pixel border)."""
    K = camera.K.to(depth)
    h, w = depth.shape
    ys, xs = torch.meshgrid(torch.arange(h, device=depth.device, dtype=depth.dtype) + 0.5,
                            torch.arange(w, device=depth.device, dtype=depth.dtype) + 0.5, indexing="ij")
    pts = torch.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], torch.ones_like(xs)], -1) * depth[..., None]
    pts = pts @ camera.viewmat[:3, :3].to(depth)          # camera -> world rotation (row vectors)
    down = pts[2:, 1:-1] - pts[:-2, 1:-1]
    right = pts[1:-1, 2:] - pts[1:-1, :-2]
    n = tnf.normalize(torch.linalg.cross(down, right, dim=-1), dim=-1)
    return tnf.pad(n, (0, 0, 1, 1, 1, 1))


def render(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
           colors: torch.Tensor, camera: RenderCamera, tile_size: int = 8, near_plane: float = 0.01
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render RGB [H,W,3], expected depth [H,W] and alpha [H,W] of world-space surfels.

    The info dict has `means2d` (the zero screen shift whose gradient densification reads, when the means
    need gradients; else the box centres), `radii`, `depths`, and the 2DGS terms in the world frame:
    `normals` [H,W,3] (alpha-weighted), `surf_normals` [H,W,3] (from the expected depth) and `distortion`
    [H,W].
    """
    shift = torch.zeros(means.shape[0], 2, dtype=means.dtype, device=means.device,
                        requires_grad=means.requires_grad)
    means2d, M, normals, depths, radii = project(means, quats, scales, camera.viewmat, camera.K, camera.width,
                                                 camera.height, near_plane=near_plane, shift=shift)
    feats = torch.cat([colors, depths[:, None], normals], dim=-1)
    img, alpha, distort = rasterize(means2d, M, opacities, feats, depths, radii, camera.width, camera.height,
                                    tile_size=tile_size)
    depth = img[..., 3] / alpha.clamp(min=1e-10)
    R_cw = camera.viewmat[:3, :3].to(means)
    info = {"means2d": shift if shift.requires_grad else means2d.detach(), "radii": radii, "depths": depths,
            "normals": img[..., 4:7] @ R_cw, "surf_normals": depth_to_normal(depth, camera),
            "distortion": distort}
    return img[..., :3], depth, alpha, info
