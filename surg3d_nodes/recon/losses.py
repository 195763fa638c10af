"""Training losses of the deformable model. Instrument pixels never enter a loss (`tissue` weights)."""

from __future__ import annotations

import torch

from surg3d_nodes.common.metrics import ssim_map


def photometric_loss(rgb: torch.Tensor, target: torch.Tensor, tissue: torch.Tensor, ssim_lambda: float,
                     weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(1 - λ) L1 + λ (1 - SSIM) over tissue pixels, as 3DGS; also returns the masked squared error sum
    per channel-pixel (for a PSNR figure). `weight` [H,W] (the operator's regions) weighs pixels in both
    terms; the loss stays a weighted mean, so emphasis on some pixels takes share from the others."""
    w = tissue if weight is None else tissue * weight
    npx = w.sum().clamp(min=1.0)
    diff = (rgb - target) * tissue[..., None]
    l1 = (diff.abs() if weight is None else diff.abs() * weight[..., None]).sum() / (3 * npx)
    ssim = (ssim_map(rgb * tissue[..., None], target * tissue[..., None]) * w).sum() / npx
    mse = (diff.detach() ** 2).sum() / (3 * tissue.sum().clamp(min=1.0))
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - ssim), mse


def depth_loss(depth: torch.Tensor, target: torch.Tensor, tissue: torch.Tensor, alpha: torch.Tensor,
               scene_depth: float, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean |rendered - measured| depth relative to the scene depth, over tissue pixels with a measurement
    that the model covers (uncovered pixels are grown, not pulled); `weight` [H,W] makes it a weighted mean."""
    valid = (target > 0) & (tissue > 0.5) & (alpha.detach() > 0.1)
    if not bool(valid.any()):
        return depth.new_zeros(())
    err = (depth[valid] - target[valid]).abs() / scene_depth
    return err.mean() if weight is None else (err * weight[valid]).sum() / weight[valid].sum()


def cover_loss(alpha: torch.Tensor, tissue: torch.Tensor) -> torch.Tensor:
    """Mean uncovered share (1 - alpha) of the tissue pixels: tissue is opaque, so its colours are fitted at full
    cover instead of brightened through a partial one."""
    return ((1.0 - alpha) * tissue).sum() / tissue.sum().clamp(min=1.0)


def track_smoothness(knots: dict[str, torch.Tensor], scene_depth: float) -> torch.Tensor:
    """Squared second differences of the deformation tracks over the knot tensors in `knots` (by name, e.g. a
    `GaussianModel.knot_context`; positions relative to the scene depth): motion is smooth in time unless the
    images say otherwise."""
    out = next(iter(knots.values())).new_zeros(())
    for name, w in (("pos_knots", 1.0 / scene_depth), ("col_knots", 1.0), ("scale_knots", 1.0)):
        if name in knots and knots[name].shape[1] >= 3:
            k = knots[name] * w
            out = out + (k[:, 2:] - 2 * k[:, 1:-1] + k[:, :-2]).pow(2).sum(-1).mean()
    return out


def distortion_loss(distortion: torch.Tensor, tissue: torch.Tensor, scene_depth: float) -> torch.Tensor:
    """2DGS depth distortion (2 sum_{j<i} w_i w_j (d_i - d_j) per pixel, from the renderer) relative to the scene
    depth, mean over tissue pixels: pulls each ray's surfels onto one surface."""
    return (distortion * tissue).sum() / (scene_depth * tissue.sum().clamp(min=1.0))


def normal_consistency_loss(normals: torch.Tensor, surf_normals: torch.Tensor, tissue: torch.Tensor
                            ) -> torch.Tensor:
    """2DGS normal consistency: 1 - <rendered normal (alpha-weighted), normal of the rendered depth>, mean over
    tissue pixels where the depth normal exists (not the image border): surfels lie along the surface they form."""
    valid = tissue * (surf_normals.detach().abs().sum(-1) > 0)
    return ((1.0 - (normals * surf_normals).sum(-1)) * valid).sum() / valid.sum().clamp(min=1.0)
