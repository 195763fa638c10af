"""Pure-PyTorch differentiable 3D Gaussian splatting (CPU reference backend).

Same conventions as gsplat 1.5 (`rasterization`, classic mode): wxyz quaternions, EWA projection with a
0.3 px low-pass on the 2D covariance, extent 3.33 sigma (the alpha >= 1/255 cut-off of an opaque
Gaussian), pixel centres at +0.5, front-to-back compositing with alpha clamped to 0.999 (gsplat's
RasterizeToPixels3DGSFwd.cu; 0.99 here until 2026-12-03), contributions below 1/255 skipped and a ray
stopped once its transmittance would fall below 1e-4.

Rasterisation is tiled and vectorised: every (tile, Gaussian) intersection is binned, tiles are grouped
into a few buckets of similar load and padded, and per bucket the Mahalanobis distance of every
(pixel, Gaussian) pair is one batched matmul of per-pixel monomials [x^2, y^2, xy, x, y, 1] with
per-Gaussian quadratic-form coefficients (tile-local coordinates keep it well conditioned in float32).
Transmittance is an exclusive cumulative product done as a cumulative sum of log(1 - alpha).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as tnf

from surg3d_nodes.recon.render.camera import EPS2D, RenderCamera

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
EXTENT_SIGMA = 3.33


def quat_to_rotmat(quats: torch.Tensor) -> torch.Tensor:
    """[N,3,3] rotation matrices of [N,4] wxyz quaternions (normalised here)."""
    w, x, y, z = tnf.normalize(quats, dim=-1).unbind(-1)
    R = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return R.reshape((*quats.shape[:-1], 3, 3))


def covariance(quats: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[N,3,3] world covariances R S S^T R^T from wxyz quaternions and (linear) scales."""
    M = quat_to_rotmat(quats) * scales[..., None, :]
    return M @ M.transpose(-1, -2)


def project(means: torch.Tensor, covars: torch.Tensor, viewmat: torch.Tensor, K: torch.Tensor,
            width: int, height: int, eps2d: float = EPS2D, near_plane: float = 0.01,
            far_plane: float = 1e10) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """EWA projection of 3D Gaussians into one pinhole camera (gsplat's fully fused projection).

    Returns means2d [N,2], conics [N,3] (upper triangle of the inverse 2D covariance), depths [N]
    (camera z) and integer radii [N,2] (0 for Gaussians culled by the near/far planes or the image).
    """
    viewmat, K = viewmat.to(means), K.to(means)
    R = viewmat[:3, :3]
    t = viewmat[:3, 3]
    mc = means @ R.T + t
    cc = R @ covars @ R.T
    tx, ty, tz = mc.unbind(-1)
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    tan_fovx = 0.5 * width / fx
    tan_fovy = 0.5 * height / fy
    # Clamp the Jacobian's evaluation point to 1.3x the frustum, as gsplat does, for stability.
    lim_x_pos = (width - cx) / fx + 0.3 * tan_fovx
    lim_x_neg = cx / fx + 0.3 * tan_fovx
    lim_y_pos = (height - cy) / fy + 0.3 * tan_fovy
    lim_y_neg = cy / fy + 0.3 * tan_fovy
    tzs = torch.where(tz.abs() < 1e-12, torch.full_like(tz, 1e-12), tz)
    jx = tzs * torch.clamp(tx / tzs, min=-lim_x_neg, max=lim_x_pos)
    jy = tzs * torch.clamp(ty / tzs, min=-lim_y_neg, max=lim_y_pos)
    zero = torch.zeros_like(tz)
    J = torch.stack([fx / tzs, zero, -fx * jx / tzs ** 2, zero, fy / tzs, -fy * jy / tzs ** 2],
                    dim=-1).reshape(-1, 2, 3)
    cov2d = J @ cc @ J.transpose(-1, -2)
    means2d = torch.stack([fx * tx / tzs + cx, fy * ty / tzs + cy], dim=-1)
    a = cov2d[:, 0, 0] + eps2d
    b = 0.5 * (cov2d[:, 0, 1] + cov2d[:, 1, 0])
    c = cov2d[:, 1, 1] + eps2d
    det = (a * c - b * b).clamp(min=1e-10)
    conics = torch.stack([c / det, -b / det, a / det], dim=-1)
    with torch.no_grad():
        radius = torch.stack([torch.ceil(EXTENT_SIGMA * a.clamp(min=0).sqrt()),
                              torch.ceil(EXTENT_SIGMA * c.clamp(min=0).sqrt())], dim=-1)
        valid = (det > 0) & (tz > near_plane) & (tz < far_plane)
        inside = ((means2d[:, 0] + radius[:, 0] > 0) & (means2d[:, 0] - radius[:, 0] < width)
                  & (means2d[:, 1] + radius[:, 1] > 0) & (means2d[:, 1] - radius[:, 1] < height))
        radius[~(valid & inside)] = 0.0
    return means2d, conics, tz, radius.int()


def _bin_tiles(means2d: torch.Tensor, radii: torch.Tensor, opacities: torch.Tensor, depths: torch.Tensor,
               tiles_x: int, tiles_y: int, tile_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Depth-ordered (tile, Gaussian) intersections: (gaussian ids, tile ids, slot within tile).

    The box of each Gaussian is its gsplat radius shrunk to where an opacity-o Gaussian can still reach
    alpha 1/255 (Mahalanobis distance sqrt(2 ln(255 o))), which skips only invisible pairs.
    """
    with torch.no_grad():
        shrink = (2.0 * torch.log((opacities * 255.0).clamp(min=1.0))).sqrt() / EXTENT_SIGMA
        r = radii.float() * shrink.clamp(max=1.0)[:, None]
        valid = (radii > 0).all(-1) & (r > 0).all(-1)
        x0 = torch.floor((means2d[:, 0] - r[:, 0]) / tile_size).clamp(0, tiles_x).long()
        x1 = torch.ceil((means2d[:, 0] + r[:, 0]) / tile_size).clamp(0, tiles_x).long()
        y0 = torch.floor((means2d[:, 1] - r[:, 1]) / tile_size).clamp(0, tiles_y).long()
        y1 = torch.ceil((means2d[:, 1] + r[:, 1]) / tile_size).clamp(0, tiles_y).long()
        count = (x1 - x0) * (y1 - y0) * valid
        order = torch.argsort(depths)
        order = order[count[order] > 0]
        cnt = count[order]
        gid = torch.repeat_interleave(order, cnt)
        starts = torch.cumsum(cnt, 0) - cnt
        local = torch.arange(gid.numel(), device=gid.device) - torch.repeat_interleave(starts, cnt)
        bw = (x1 - x0)[gid]
        tile = (y0[gid] + local // bw) * tiles_x + x0[gid] + local % bw
        tile, perm = torch.sort(tile, stable=True)
        gid = gid[perm]
        per_tile = torch.bincount(tile, minlength=tiles_x * tiles_y)
        tile_start = torch.cumsum(per_tile, 0) - per_tile
        slot = torch.arange(gid.numel(), device=gid.device) - tile_start[tile]
    return gid, tile, slot


class _Composite(torch.autograd.Function):
    """Front-to-back compositing of one padded tile bucket with a hand-written backward.

    Inputs: power [T,P,K] = Mahalanobis term - log(opacity) (depth-sorted along K) and features
    [T,K,C]. Outputs: blended features [T,P,C] and accumulated alpha [T,P]. The backward is the
    analytic one of gsplat's rasterizer, with S_k = sum_{j>k} dL/dw_j w_j:
    dL/dalpha_k = (dL/dw_k w_k - alpha_k S_k / (1 - alpha_k)) / alpha_k; it saves only alpha, the
    weights and a mask, which is about twice as fast on CPU as autograd through every step.
    """

    @staticmethod
    def forward(ctx, power: torch.Tensor, feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Clamp before exp: beyond 8 alpha < 1/255 anyway, and denormals make exp very slow on CPU.
        raw = torch.exp(-power.clamp(max=8.0))
        alpha = raw.clamp(max=ALPHA_MAX)
        alpha = alpha * (alpha >= ALPHA_MIN)
        # Transmittance below 1e-4 is cut anyway; clamping keeps exp out of denormals too.
        t_incl = torch.exp(torch.cumsum(torch.log1p(-alpha), dim=-1).clamp(min=-20.0))
        keep = t_incl > T_MIN
        weight = alpha * (t_incl / (1.0 - alpha)) * keep
        # Gaussians whose alpha is clamped at 0.999, skipped (< 1/255) or past the stop get no own gradient.
        grad_mask = keep & (raw <= ALPHA_MAX) & (alpha > 0)
        ctx.save_for_backward(alpha, weight, feat, grad_mask)
        return weight @ feat, weight.sum(-1)

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor, grad_acc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        alpha, weight, feat, grad_mask = ctx.saved_tensors
        grad_feat = weight.transpose(1, 2) @ grad_out
        gw = (grad_out @ feat.transpose(1, 2) + grad_acc[..., None]) * weight
        later = gw.sum(-1, keepdim=True) - gw.cumsum(-1)
        # d power = -alpha * dL/dalpha = -(gw - alpha * later / (1 - alpha))
        grad_power = (alpha * later / (1.0 - alpha) - gw) * grad_mask
        return grad_power, grad_feat


def rasterize(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor,
              depths: torch.Tensor, radii: torch.Tensor, width: int, height: int, tile_size: int = 4,
              buckets: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """Alpha-composite projected Gaussians front to back.

    features: [N,C] per-Gaussian values to blend (colour, depth...). Returns the blended features
    [H,W,C] and the accumulated alpha [H,W]; both differentiable w.r.t. all float inputs.
    """
    device, dtype = means2d.device, means2d.dtype
    n, ch = features.shape
    tiles_x = math.ceil(width / tile_size)
    tiles_y = math.ceil(height / tile_size)
    n_tiles = tiles_x * tiles_y
    npix = tile_size * tile_size
    gid, tile, slot = _bin_tiles(means2d, radii, opacities, depths, tiles_x, tiles_y, tile_size)

    # Pad with one invisible Gaussian (index n): log-opacity -100 gives alpha ~ 0, masked below.
    logop = torch.log(opacities.clamp(min=1e-10))
    means_p = torch.cat([means2d, means2d.new_zeros(1, 2)])
    conic_p = torch.cat([conics, conics.new_zeros(1, 3)])
    logop_p = torch.cat([logop, logop.new_full((1,), -100.0)])
    feat_p = torch.cat([features, features.new_zeros(1, ch)])

    lin = torch.arange(npix, device=device)
    px = (lin % tile_size).to(dtype) + 0.5
    py = (lin // tile_size).to(dtype) + 0.5
    mono = torch.stack([px * px, py * py, px * py, px, py, torch.ones_like(px)], dim=-1)  # [P,6]
    t_all = torch.arange(n_tiles, device=device)
    origin = torch.stack([(t_all % tiles_x) * tile_size, (t_all // tiles_x) * tile_size], -1).to(dtype)

    per_tile = torch.bincount(tile, minlength=n_tiles)
    busy = torch.nonzero(per_tile > 0).squeeze(1)
    busy = busy[torch.argsort(per_tile[busy])]
    out_tiles, out_feat, out_alpha = [], [], []
    for chunk in torch.tensor_split(busy, min(buckets, max(1, busy.numel()))):
        if chunk.numel() == 0:
            continue
        kmax = int(per_tile[chunk].max())
        row_of_tile = torch.full((n_tiles,), -1, dtype=torch.long, device=device)
        row_of_tile[chunk] = torch.arange(chunk.numel(), device=device)
        sel = row_of_tile[tile] >= 0
        idx = torch.full((chunk.numel(), kmax), n, dtype=torch.long, device=device)
        idx[row_of_tile[tile[sel]], slot[sel]] = gid[sel]

        m = means_p[idx] - origin[chunk][:, None, :]
        mx, my = m.unbind(-1)
        a, b, c = conic_p[idx].unbind(-1)
        coef = torch.stack([0.5 * a, 0.5 * c, b, -(a * mx + b * my), -(c * my + b * mx),
                            0.5 * a * mx * mx + 0.5 * c * my * my + b * mx * my - logop_p[idx]], dim=-1)
        power = mono @ coef.transpose(1, 2)  # [T,P,K] = sigma - log(opacity)
        feat_k = feat_p[idx]
        out, acc = _Composite.apply(power, feat_k)
        out_feat.append(out)
        out_alpha.append(acc)
        out_tiles.append(chunk)
    img = features.new_zeros(n_tiles, npix, ch)
    acc = features.new_zeros(n_tiles, npix)
    if out_tiles:
        tiles_cat = torch.cat(out_tiles)
        img = img.index_copy(0, tiles_cat, torch.cat(out_feat))
        acc = acc.index_copy(0, tiles_cat, torch.cat(out_alpha))
    img = img.reshape(tiles_y, tiles_x, tile_size, tile_size, ch).permute(0, 2, 1, 3, 4)
    img = img.reshape(tiles_y * tile_size, tiles_x * tile_size, ch)[:height, :width]
    acc = acc.reshape(tiles_y, tiles_x, tile_size, tile_size).permute(0, 2, 1, 3)
    acc = acc.reshape(tiles_y * tile_size, tiles_x * tile_size)[:height, :width]
    return img, acc


def render(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
           colors: torch.Tensor, camera: RenderCamera, tile_size: int = 4, near_plane: float = 0.01
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render RGB [H,W,3], expected depth [H,W] and alpha [H,W] of world-space Gaussians (the camera's low-pass).

    Returns also an info dict with `means2d` (retains its gradient for densification) and `radii`.
    """
    covars = covariance(quats, scales)
    means2d, conics, depths, radii = project(means, covars, camera.viewmat, camera.K, camera.width,
                                             camera.height, eps2d=camera.eps2d, near_plane=near_plane)
    if means2d.requires_grad:
        means2d.retain_grad()
    feats = torch.cat([colors, depths[:, None]], dim=-1)
    img, alpha = rasterize(means2d, conics, opacities, feats, depths, radii, camera.width, camera.height,
                           tile_size=tile_size)
    depth = img[..., 3] / alpha.clamp(min=1e-10)
    return img[..., :3], depth, alpha, {"means2d": means2d, "radii": radii, "depths": depths}
