"""The gsplat adapter (render/gsplat_backend.py) exercised without a GPU.

gsplat's CUDA entry points, as `gsplat.rendering` imported them, are routed to gsplat's own pure-PyTorch
reference implementations (`gsplat.cuda._torch_impl`: projection, tile intersection, offsets). The one
kernel without a CPU reference is rasterize_to_pixels (gsplat's `_rasterize_to_pixels` needs the CUDA
`rasterize_to_indices_in_range` and nerfacc): it is written out here in autograd PyTorch from
RasterizeToPixels3DGSFwd.cu, walking gsplat's own tile lists. So the real `gsplat.rasterization` Python
code runs with the arguments our adapter passes, and the test checks what the adapter unpacks: shapes, the
expected depth, the retained `means2d` gradient densification reads, and agreement with our CPU backends.
"""

from __future__ import annotations

import pytest
import torch
from test_recon_render import H, W, _camera, _random_gaussians

gsplat = pytest.importorskip("gsplat")
pytest.importorskip("packaging")      # gsplat's reference code imports it without declaring it

from gsplat.cuda import _torch_impl as ref  # noqa: E402

from surg3d_nodes.recon.render import cpu_backend, gsplat_backend  # noqa: E402
from surg3d_nodes.recon.render import torch_backend as tb  # noqa: E402

torch.set_num_threads(1)


def _fully_fused_projection(means, covars, quats, scales, viewmats, Ks, width, height, eps2d=0.3,
                            near_plane=0.01, far_plane=1e10, radius_clip=0.0, packed=False, sparse_grad=False,
                            calc_compensations=False, camera_model="pinhole", opacities=None):
    # What our adapter asks for: unpacked, pinhole, quaternions and scales, no radius clip.
    assert covars is None and not packed and not sparse_grad and camera_model == "pinhole" and radius_clip == 0
    covars, _ = ref._quat_scale_to_covar_preci(quats, scales, compute_preci=False, triu=False)
    return ref._fully_fused_projection(means, covars, viewmats, Ks, width, height, eps2d, near_plane, far_plane,
                                       calc_compensations, camera_model)


def _isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False,
                 packed=False, n_images=None, image_ids=None, gaussian_ids=None):
    assert not packed and n_images == 1
    return ref._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort)


def _isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
    return ref._isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


def _rasterize_to_pixels(means2d, conics, colors, opacities, image_width, image_height, tile_size, isect_offsets,
                         flatten_ids, backgrounds=None, masks=None, packed=False, absgrad=False):
    """gsplat's 3DGS forward kernel over its own depth-sorted tile lists: alpha = min(0.999, o exp(-sigma)),
    skipped below 1/255, a ray stopped before the Gaussian that takes T to 1e-4 or below."""
    assert backgrounds is None and masks is None and not packed and means2d.shape[0] == 1
    n, ch = means2d.shape[1], colors.shape[-1]
    m2, con, col, op = means2d[0], conics[0], colors[0], opacities[0]
    offsets = torch.cat([isect_offsets.flatten(), torch.tensor([flatten_ids.numel()])]).tolist()
    tiles_x = isect_offsets.shape[-1]
    pix_ids, values = [], []
    for t in range(len(offsets) - 1):
        ids = (flatten_ids[offsets[t]:offsets[t + 1]] % n).long()
        if ids.numel() == 0:
            continue
        x0, y0 = (t % tiles_x) * tile_size, (t // tiles_x) * tile_size
        ys, xs = torch.meshgrid(torch.arange(y0, min(y0 + tile_size, image_height)),
                                torch.arange(x0, min(x0 + tile_size, image_width)), indexing="ij")
        px = torch.stack([xs.flatten(), ys.flatten()], -1).to(m2) + 0.5                    # [P,2]
        d = px[:, None, :] - m2[ids][None]                                                 # [P,K,2]
        c = con[ids]
        sigma = 0.5 * (c[:, 0] * d[..., 0] ** 2 + c[:, 2] * d[..., 1] ** 2) + c[:, 1] * d[..., 0] * d[..., 1]
        alpha = torch.clamp_max(op[ids] * torch.exp(-sigma), 0.999)
        alpha = alpha * ((sigma >= 0) & (alpha >= 1.0 / 255.0))
        t_after = torch.cumprod(1.0 - alpha, dim=-1)
        live = torch.cumsum((t_after <= 1e-4).int(), dim=-1) == 0        # exclusive stop
        weight = alpha * t_after / (1.0 - alpha) * live
        values.append(torch.cat([weight @ col[ids], weight.sum(-1, keepdim=True)], -1))
        pix_ids.append((ys * image_width + xs).flatten())
    flat = means2d.new_zeros(image_height * image_width, ch + 1)
    if values:
        flat = flat.index_add(0, torch.cat(pix_ids), torch.cat(values))
    img = flat.reshape(1, image_height, image_width, ch + 1)
    return img[..., :ch], img[..., ch:]


@pytest.fixture
def gsplat_on_cpu(monkeypatch):
    import gsplat.rendering as rendering

    for name, fn in (("fully_fused_projection", _fully_fused_projection), ("isect_tiles", _isect_tiles),
                     ("isect_offset_encode", _isect_offset_encode), ("rasterize_to_pixels", _rasterize_to_pixels)):
        assert hasattr(rendering, name), f"gsplat.rendering no longer imports {name}"
        monkeypatch.setattr(rendering, name, fn)


def _scene(n=400, seed=11):
    means, quats, scales, opac, cols = _random_gaussians(n, seed=seed)
    opac[:20] = 1.0               # some clamped at alpha 0.999, as the CUDA kernel does
    return [t.clone().requires_grad_() for t in (means, quats, scales, opac, cols)]


def test_gsplat_adapter_outputs_on_cpu(gsplat_on_cpu):
    params = _scene()
    cam = _camera()
    rgb, depth, alpha, info = gsplat_backend.render(*params, cam)
    assert rgb.shape == (H, W, 3) and depth.shape == (H, W) and alpha.shape == (H, W)
    assert info["means2d"].shape == (1, params[0].shape[0], 2)     # kept [1,N,2]: its .grad is read
    assert info["radii"].shape == (params[0].shape[0], 2) and info["depths"].shape == (params[0].shape[0],)
    assert (alpha > 0.5).float().mean() > 0.2
    (rgb.square().sum() + alpha.sum() + (depth * alpha).sum()).backward()
    g2d = info["means2d"].grad
    assert g2d is not None and g2d.shape == (1, params[0].shape[0], 2)
    visible = (info["radii"] > 0).all(-1)
    assert g2d[0, visible].abs().sum(-1).gt(0).float().mean() > 0.5
    assert float(g2d[0, ~visible].abs().sum()) == 0.0
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all()


@pytest.mark.parametrize("other", ["torch", "cpu"])
def test_gsplat_adapter_agrees_with_cpu_backends(gsplat_on_cpu, other):
    cam = _camera()
    weights = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(3))
    outs = []
    for fn in (gsplat_backend.render, {"torch": tb.render, "cpu": cpu_backend.render}[other]):
        params = _scene()
        out = fn(*params, cam)
        ((out[0] * weights).sum() + out[2].sum()).backward()
        outs.append((out, params))
    (g_out, g_params), (o_out, o_params) = outs
    torch.testing.assert_close(g_out[0], o_out[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(g_out[2], o_out[2], atol=1e-4, rtol=0)
    seen = o_out[2] > 1e-2
    torch.testing.assert_close(g_out[1][seen], o_out[1][seen], atol=1e-4, rtol=1e-4)
    assert torch.equal(g_out[3]["radii"].int(), o_out[3]["radii"].int())
    torch.testing.assert_close(g_out[3]["means2d"].grad[0], o_out[3]["means2d"].grad, rtol=1e-3,
                               atol=1e-4 * float(o_out[3]["means2d"].grad.abs().max()))
    for gp, op in zip(g_params, o_params, strict=True):
        torch.testing.assert_close(gp.grad, op.grad, rtol=1e-3, atol=1e-4 * float(op.grad.abs().max()))
