"""Compiled CPU backend against the torch oracle: forward values, gradients (autograd and finite differences)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_recon_render import H, W, _camera, _random_gaussians

from surg3d_nodes.recon.render import cpu_backend as cb
from surg3d_nodes.recon.render import render_evaluated
from surg3d_nodes.recon.render import torch_backend as tb

torch.set_num_threads(1)


def _posed_camera():
    T = np.eye(4)
    a = 0.15
    T[:3, :3] = [[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]]
    T[:3, 3] = [0.02, -0.01, -0.05]
    return _camera(T)


def test_library_builds_and_is_cached():
    # CI builds it in tools/setup.sh; a second build() finds the cached library instead of compiling.
    path = cb.build()
    assert path.exists() and cb.build() == path
    assert cb.available()


def test_forward_matches_torch_oracle():
    args = _random_gaussians(3000, seed=4)
    cam = _posed_camera()
    ref = tb.render(*args, cam)
    out = cb.render(*args, cam)
    assert torch.equal(out[3]["radii"], ref[3]["radii"])
    assert (ref[2] > 0.5).float().mean() > 0.3          # a scene that covers the image
    torch.testing.assert_close(out[0], ref[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(out[2], ref[2], atol=1e-4, rtol=0)
    seen = ref[2] > 1e-2                                 # depth is a ratio: compare where it is defined
    torch.testing.assert_close(out[1][seen], ref[1][seen], atol=1e-4, rtol=1e-4)
    for k in ("means2d", "depths"):
        torch.testing.assert_close(out[3][k], ref[3][k], atol=1e-4, rtol=1e-5)


def test_projection_matches_torch_oracle():
    means, quats, scales, _, _ = _random_gaussians(500, seed=5)
    cam = _posed_camera()
    ref = tb.project(means, tb.covariance(quats, scales), cam.viewmat, cam.K, W, H)
    out = cb.project(means, quats, scales, cam.viewmat, cam.K, W, H)
    vis = (ref[3] > 0).all(-1)
    torch.testing.assert_close(out[0][vis], ref[0][vis], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out[1][vis], ref[1][vis], atol=1e-5, rtol=1e-4)
    assert torch.equal(out[3], ref[3])


def _loss(out, weights):
    rgb, depth, alpha, _ = out
    return (rgb * weights).sum() + alpha.sum() * 0.3 + (depth * alpha).sum() * 0.1


@pytest.mark.parametrize("opaque", [False, True])
def test_gradients_match_torch_autograd(opaque):
    cam = _posed_camera()
    base = list(_random_gaussians(5000 if opaque else 800, seed=6))
    if opaque:  # most rays stop early (transmittance would fall below 1e-4): a pixel's list is cut short
        base[3] = torch.full_like(base[3], 0.98)
    weights = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(0))
    grads = []
    for fn in (tb.render, cb.render):
        params = [t.clone().requires_grad_() for t in base]
        view = cam.viewmat.clone().requires_grad_()
        out = fn(*params, type(cam)(view, cam.K, W, H))
        _loss(out, weights).backward()
        grads.append([p.grad for p in params] + [out[3]["means2d"].grad, view.grad])
    if opaque:
        assert (out[2] > 0.999).float().mean() > 0.5
    names = ["means", "quats", "scales", "opacities", "colors", "means2d", "viewmat"]
    for name, g_ref, g in zip(names, *grads, strict=True):
        scale = g_ref.abs().max()
        assert scale > 0, name
        err = (g - g_ref).abs().max() / scale
        assert err < 2e-3, f"{name}: max error {err:.2e} of the largest gradient"


@pytest.mark.parametrize("which", [0, 1, 2, 3, 4, 5])   # means, quats, scales, opacities, colours, viewmat
def test_gradient_matches_finite_difference(which):
    inputs = [t.double() for t in _random_gaussians(40, seed=2)]
    cam0 = _posed_camera()
    view0 = cam0.viewmat.double()
    weights = torch.linspace(0, 1, W, dtype=torch.float64)[None, :, None]

    def f(x):
        args = list(inputs)
        view = view0
        if which == 5:
            view = x
        else:
            args[which] = x
        return _loss(cb.render(*args, type(cam0)(view, cam0.K.double(), W, H)), weights)

    x0 = view0 if which == 5 else inputs[which]
    x = x0.clone().requires_grad_()
    f(x).backward()
    flat = x.grad.reshape(x.shape[0], -1)
    rows = [0, 1, 2] if which == 5 else [int(torch.argmax(flat.abs().sum(-1)))]
    for i in rows:
        for k in range(flat.shape[1]):
            e = torch.zeros_like(flat)
            e[i, k] = 1e-6
            e = e.reshape(x.shape)
            num = (f(x.detach() + e) - f(x.detach() - e)) / 2e-6
            assert flat[i, k].item() == pytest.approx(num.item(), rel=2e-3, abs=1e-3), (i, k)


def test_threads_agree():
    args = [t.clone().requires_grad_() for t in _random_gaussians(3000, seed=7)]
    cam = _posed_camera()
    outs = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            for a in args:
                a.grad = None
            out = cb.render(*args, cam)
            (out[0].square().mean() + out[2].mean()).backward()
            outs.append((out[0].detach(), out[2].detach(), [a.grad.clone() for a in args]))
    finally:
        torch.set_num_threads(1)
    # Tiles are independent: the images agree bit for bit; gradients differ only in summation order.
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])
    for g1, g2 in zip(outs[0][2], outs[1][2], strict=True):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-6 * g1.abs().max().item())


def test_empty_and_culled_scenes():
    cam = _camera()
    empty = [torch.zeros(0, 3), torch.zeros(0, 4), torch.zeros(0, 3), torch.zeros(0), torch.zeros(0, 3)]
    rgb, _, alpha, info = cb.render(*empty, cam)
    assert rgb.shape == (H, W, 3) and float(alpha.abs().sum()) == 0.0 and info["radii"].shape == (0, 2)
    # Everything behind the camera: nothing drawn, zero gradients, no crash.
    means, quats, scales, opac, cols = _random_gaussians(50)
    means = (means * torch.tensor([1.0, 1.0, -1.0])).requires_grad_()
    rgb, _, alpha, info = cb.render(means, quats, scales, opac, cols, cam)
    assert float(alpha.detach().sum()) == 0.0 and int(info["radii"].abs().sum()) == 0
    (rgb.sum() + alpha.sum()).backward()
    assert float(means.grad.abs().sum()) == 0.0


def test_render_evaluated_dispatch():
    means, quats, scales, opac, cols = _random_gaussians(200, seed=8)
    g = {"means": means, "quats": quats, "scales": scales, "opacities": opac, "colors": cols}
    out = render_evaluated(g, _camera(), "cpu")
    ref = render_evaluated(g, _camera(), "torch")
    torch.testing.assert_close(out[0], ref[0], atol=1e-4, rtol=0)
