"""Torch reference renderer vs gsplat's own pure-PyTorch projection, analytic values, gradients.

The analytic and ordering tests run on every CPU backend (torch, the compiled cpu one)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from surg3d_nodes.recon.render import RenderCamera, render, resolve_backend
from surg3d_nodes.recon.render import cpu_backend as cb
from surg3d_nodes.recon.render import torch_backend as tb

torch.set_num_threads(1)
W, H, F = 96, 64, 80.0


def _camera(T=None) -> RenderCamera:
    K = np.array([[F, 0, (W - 1) / 2], [0, F * 1.1, (H - 1) / 2], [0, 0, 1]])
    return RenderCamera.from_ros(np.eye(4) if T is None else T, K, W, H)


def _random_gaussians(n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = 0.5 + torch.rand(n, generator=g)
    u = torch.rand(n, generator=g) * W * 1.2 - 0.1 * W
    v = torch.rand(n, generator=g) * H * 1.2 - 0.1 * H
    means = torch.stack([(u - W / 2) / F * z, (v - H / 2) / F * z, z], -1)
    quats = torch.randn(n, 4, generator=g)
    scales = 0.002 + 0.02 * torch.rand(n, 3, generator=g)
    opac = 0.2 + 0.8 * torch.rand(n, generator=g)
    cols = torch.rand(n, 3, generator=g)
    return means, quats, scales, opac, cols


def test_projection_matches_gsplat_reference():
    pytest.importorskip("packaging")
    from gsplat.cuda._torch_impl import _fully_fused_projection, _quat_scale_to_covar_preci

    means, quats, scales, _, _ = _random_gaussians(500)
    # A non-trivial camera pose: rotate and translate the world.
    T = np.eye(4)
    a = 0.2
    T[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    T[:3, 3] = [0.05, -0.02, -0.1]
    cam = _camera(T)
    covars, _ = _quat_scale_to_covar_preci(quats, scales, compute_preci=False)
    radii_ref, m2_ref, d_ref, con_ref, _ = _fully_fused_projection(
        means, covars, cam.viewmat[None], cam.K[None], W, H, eps2d=0.3)
    m2, con, d, radii = tb.project(means, tb.covariance(quats, scales), cam.viewmat, cam.K, W, H, eps2d=0.3)
    torch.testing.assert_close(tb.covariance(quats, scales), covars, rtol=1e-5, atol=1e-8)
    vis = (radii_ref[0] > 0).all(-1)
    assert vis.sum() > 100
    assert torch.equal(radii, radii_ref[0].int())
    torch.testing.assert_close(m2[vis], m2_ref[0][vis], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d, d_ref[0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(con[vis], con_ref[0][vis], rtol=1e-4, atol=1e-5)


CPU_RENDERERS = {"torch": tb.render, "cpu": cb.render}


@pytest.mark.parametrize("backend", CPU_RENDERERS)
def test_single_gaussian_matches_analytic_value(backend):
    # An isotropic Gaussian on the optical axis: pixel value = colour * min(0.999, o * exp(-0.5 d^2 / s2)).
    z, s, o = 1.0, 0.03, 0.8
    means = torch.tensor([[0.0, 0.0, z]])
    quats = torch.tensor([[1.0, 0, 0, 0]])
    scales = torch.full((1, 3), s)
    cols = torch.tensor([[0.2, 0.5, 1.0]])
    cam = _camera()
    rgb, depth, alpha, _ = CPU_RENDERERS[backend](means, quats, scales, torch.tensor([o]), cols, cam)
    fx, fy = F, F * 1.1
    cx, cy = (W - 1) / 2 + 0.5, (H - 1) / 2 + 0.5
    var_x = (fx * s / z) ** 2 + 0.3
    var_y = (fy * s / z) ** 2 + 0.3
    for v, u in [(32, 48), (30, 50), (36, 44), (20, 48)]:
        dx, dy = u + 0.5 - cx, v + 0.5 - cy
        a = o * math.exp(-0.5 * (dx * dx / var_x + dy * dy / var_y))
        a = 0.0 if a < 1 / 255 else min(a, 0.999)
        assert alpha[v, u].item() == pytest.approx(a, abs=1e-5)
        assert rgb[v, u, 2].item() == pytest.approx(a, abs=1e-5)
        assert rgb[v, u, 0].item() == pytest.approx(0.2 * a, abs=1e-5)
        if a > 0:
            assert depth[v, u].item() == pytest.approx(z, rel=1e-5)


@pytest.mark.parametrize("backend", CPU_RENDERERS)
def test_compositing_order_and_stop(backend):
    # Two opaque Gaussians on the same ray: the nearer one dominates whatever the input order.
    means = torch.tensor([[0.0, 0.0, 2.0], [0.0, 0.0, 1.0]])
    quats = torch.tensor([[1.0, 0, 0, 0]] * 2)
    scales = torch.full((2, 3), 0.3)   # wide: the half-pixel offset of the centre pixel is negligible
    cols = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    rgb, depth, _, _ = CPU_RENDERERS[backend](means, quats, scales, torch.tensor([0.99, 0.99]), cols, _camera())
    c = rgb[H // 2, W // 2]
    assert c[1] == pytest.approx(0.99, abs=1e-3)
    assert c[0] == pytest.approx(0.01 * 0.99, abs=2e-3)
    assert depth[H // 2, W // 2].item() == pytest.approx((0.99 + 2 * 0.0099) / (0.99 + 0.0099), rel=1e-3)


def test_tile_sizes_agree_and_gradients_flow():
    means, quats, scales, opac, cols = _random_gaussians(300, seed=1)
    params = [t.clone().requires_grad_() for t in (means, quats, scales, opac, cols)]
    cam = _camera()
    out8 = tb.render(*params, cam, tile_size=8)
    out16 = tb.render(*[p.detach() for p in params], cam, tile_size=16)
    torch.testing.assert_close(out8[0], out16[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out8[2], out16[2], atol=1e-5, rtol=1e-4)
    loss = out8[0].square().mean() + out8[2].mean()
    loss.backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    m2 = out8[3]["means2d"]
    assert m2.grad is not None and m2.grad.abs().sum() > 0


@pytest.mark.parametrize("which", [0, 2, 3, 4])     # means, scales, opacities, colours
def test_gradient_matches_finite_difference(which):
    inputs = [t.double() for t in _random_gaussians(40, seed=2)]
    cam = _camera()
    weights = torch.linspace(0, 1, W, dtype=torch.float64)[None, :, None]

    def f(x):
        args = list(inputs)
        args[which] = x
        rgb, depth, alpha, _ = tb.render(*args, cam)
        return (rgb * weights).sum() + alpha.sum() * 0.3 + (depth * alpha).sum() * 0.1

    x = inputs[which].clone().requires_grad_()
    f(x).backward()
    flat = x.grad.reshape(x.shape[0], -1)
    i = int(torch.argmax(flat.abs().sum(-1)))
    for k in range(flat.shape[1]):
        e = torch.zeros_like(flat)
        e[i, k] = 1e-6
        e = e.reshape(x.shape)
        num = (f(x.detach() + e) - f(x.detach() - e)) / 2e-6
        assert flat[i, k].item() == pytest.approx(num.item(), rel=2e-3, abs=1e-3)


def test_backend_selection():
    assert resolve_backend("auto", "cpu") == "cpu"      # the compiled backend builds here (g++)
    assert resolve_backend("torch", "cpu") == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("gsplat", "cpu")
    with pytest.raises(ValueError, match="unknown render backend"):
        resolve_backend("vulkan", "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="gsplat rasterization needs a CUDA device; none here")
def test_torch_backend_matches_gsplat_cuda():
    from surg3d_nodes.recon.render import gsplat_backend

    means, quats, scales, opac, cols = _random_gaussians(2000, seed=3)
    cam = _camera()
    ref = tb.render(means, quats, scales, opac, cols, cam)
    dev = "cuda"
    out = gsplat_backend.render(means.to(dev), quats.to(dev), scales.to(dev), opac.to(dev), cols.to(dev),
                                cam.to(dev))
    torch.testing.assert_close(out[0].cpu(), ref[0], atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(out[2].cpu(), ref[2], atol=2e-3, rtol=1e-2)


@pytest.mark.parametrize("backend", CPU_RENDERERS)
def test_render_model_interface(backend):
    from surg3d_nodes.recon.gaussians import GaussianConfig, GaussianModel

    model = GaussianModel(GaussianConfig(sh_degree=1, knot_spacing=0.5, knots_at_frames=False))
    pts = np.array([[0.0, 0.0, 1.0], [0.05, 0.0, 1.0], [0.0, 0.05, 1.0]])
    model.append(model.new_gaussians(pts, np.array([[1.0, 0, 0]] * 3), 0.0))
    model.ensure_time(1.0)
    with torch.no_grad():
        model.params["pos_knots"][:, 2, 0] = 0.1     # move everything right by 0.1 m at t = 1
    out0 = render(model, _camera(), 0.0, backend=backend)
    out1 = render(model, _camera(), 1.0, backend=backend)
    col0 = out0.rgb[..., 0].sum(0)
    col1 = out1.rgb[..., 0].sum(0)
    shift = (col1 * torch.arange(W)).sum() / col1.sum() - (col0 * torch.arange(W)).sum() / col0.sum()
    assert shift.item() == pytest.approx(0.1 * F, rel=0.15)
