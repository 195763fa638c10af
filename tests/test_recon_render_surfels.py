"""2D Gaussian surfels: the torch2d backend against gsplat's 2DGS, gradients, and the 2dgs training mode.

gsplat's 2DGS CUDA entry points, as `gsplat.rendering` imported them, are routed to CPU code: projection to
gsplat's own `_torch_impl_2dgs._fully_fused_projection_2dgs`, tile intersection to `_torch_impl`, and the
rasteriser (whose reference needs a CUDA kernel and nerfacc) to `_rasterize_to_pixels_2dgs` below, written
from RasterizeToPixels2DGSFwd.cu and walking gsplat's own tile lists. So the real
`gsplat.rasterization_2dgs` runs with what our `gsplat2d` adapter passes, and the test checks what the adapter
unpacks and that it agrees with torch2d.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from test_recon_render import H, W, _camera, _random_gaussians

from surg3d_nodes.recon.render import gsplat_backend, resolve_backend
from surg3d_nodes.recon.render import surfel_backend as sb

gsplat = pytest.importorskip("gsplat")
pytest.importorskip("packaging")      # gsplat's reference code imports it without declaring it

from gsplat.cuda import _torch_impl as ref  # noqa: E402
from gsplat.cuda import _torch_impl_2dgs as ref2d  # noqa: E402

torch.set_num_threads(1)


def _posed_camera():
    T = np.eye(4)
    a = 0.15
    T[:3, :3] = [[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]]
    T[:3, 3] = [0.03, -0.02, -0.05]
    return _camera(T)


def _scene(n=300, seed=5, dtype=torch.float32):
    means, quats, scales, opac, cols = _random_gaussians(n, seed=seed)
    scales = scales[:, :2] * 2.0          # surfels: two scales
    opac[:15] = 1.0                       # some clamped at alpha 0.999, as the CUDA kernel does
    return [t.to(dtype).clone().requires_grad_() for t in (means, quats, scales, opac, cols)]


def _fully_fused_projection_2dgs(means, quats, scales, viewmats, Ks, width, height, eps2d=0.3, near_plane=0.01,
                                 far_plane=1e10, radius_clip=0.0, packed=False, sparse_grad=False):
    # The CUDA kernel culls only a degenerate box (distance == 0): eps 0 in the reference.
    assert not packed and not sparse_grad and radius_clip == 0
    return ref2d._fully_fused_projection_2dgs(means, quats, scales, viewmats, Ks, width, height, near_plane,
                                              far_plane, eps=0.0)


def _isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort=True, segmented=False,
                 packed=False, n_images=None, image_ids=None, gaussian_ids=None):
    assert not packed and n_images == 1
    return ref._isect_tiles(means2d, radii, depths, tile_size, tile_width, tile_height, sort)


def _isect_offset_encode(isect_ids, n_images, tile_width, tile_height):
    return ref._isect_offset_encode(isect_ids, n_images, tile_width, tile_height)


def _rasterize_to_pixels_2dgs(means2d, ray_transforms, colors, opacities, normals, densify, image_width,
                              image_height, tile_size, isect_offsets, flatten_ids, backgrounds=None, packed=False,
                              absgrad=False, distloss=False):
    """gsplat's 2DGS forward kernel per tile: kernel min(|s|^2, 2|p - c|^2), alpha = min(0.999, o exp(-sigma/2)),
    skipped below 1/255, exclusive stop at T <= 1e-4; distortion 2 sum w_i (d_i (1 - T) - sum_{j<i} w_j d_j)
    with the last colour channel as depth. `densify` shifts the ray transform's centre column by z pixels, so
    its gradient is the kernel's v_densify (v_M[2] z, v_M[5] z)."""
    assert backgrounds is None and not packed and means2d.shape[0] == 1
    n, ch = means2d.shape[1], colors.shape[-1]
    m2, op, col, nrm = means2d[0], opacities[0], colors[0], normals[0]
    M = ray_transforms[0]
    z = M[:, 2, 2:3]
    M = M + torch.nn.functional.pad(torch.cat([densify[0] * z, torch.zeros_like(z)], -1)[..., None], (2, 0))
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
        px = torch.stack([xs.flatten(), ys.flatten()], -1).to(m2) + 0.5                      # [P,2]
        Mk = M[ids]
        h_u = px[:, None, :1] * Mk[None, :, 2] - Mk[None, :, 0]                              # [P,K,3]
        h_v = px[:, None, 1:] * Mk[None, :, 2] - Mk[None, :, 1]
        zeta = torch.linalg.cross(h_u, h_v, dim=-1)
        g3 = (zeta[..., 0] ** 2 + zeta[..., 1] ** 2) / zeta[..., 2] ** 2
        g2 = 2.0 * ((px[:, None] - m2[ids][None]) ** 2).sum(-1)
        alpha = torch.clamp_max(op[ids] * torch.exp(-0.5 * torch.minimum(g3, g2)), 0.999)
        alpha = alpha * (alpha >= 1.0 / 255.0)
        t_after = torch.cumprod(1.0 - alpha, dim=-1)
        live = torch.cumsum((t_after <= 1e-4).int(), dim=-1) == 0
        w = alpha * t_after / (1.0 - alpha) * live
        d = col[ids, -1]
        before = torch.cumsum(w, -1) - w
        before_d = torch.cumsum(w * d, -1) - w * d
        dist = 2.0 * (w * (d * before - before_d)).sum(-1, keepdim=True)
        values.append(torch.cat([w @ col[ids], w.sum(-1, keepdim=True), w @ nrm[ids], dist], -1))
        pix_ids.append((ys * image_width + xs).flatten())
    flat = m2.new_zeros(image_height * image_width, ch + 5)
    if values:
        flat = flat.index_add(0, torch.cat(pix_ids), torch.cat(values))
    img = flat.reshape(1, image_height, image_width, ch + 5)
    return (img[..., :ch], img[..., ch:ch + 1], img[..., ch + 1:ch + 4], img[..., ch + 4:], img[..., ch:ch + 1])


class _TorchOnCpu:
    """`torch` as gsplat.rendering sees it, with its one hard-coded device="cuda" tensor made on the CPU."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def zeros_like(*args, device=None, **kwargs):
        return torch.zeros_like(*args, **kwargs)


@pytest.fixture
def gsplat2d_on_cpu(monkeypatch):
    import gsplat.rendering as rendering

    for name, fn in (("fully_fused_projection_2dgs", _fully_fused_projection_2dgs), ("isect_tiles", _isect_tiles),
                     ("isect_offset_encode", _isect_offset_encode),
                     ("rasterize_to_pixels_2dgs", _rasterize_to_pixels_2dgs), ("torch", _TorchOnCpu())):
        assert hasattr(rendering, name), f"gsplat.rendering no longer imports {name}"
        monkeypatch.setattr(rendering, name, fn)


def test_projection_matches_gsplat_reference():
    means, quats, scales, _, _ = (t.detach() for t in _scene(500))
    cam = _posed_camera()
    scales3 = torch.cat([scales, torch.ones_like(scales[:, :1])], -1)
    radii_r, m2_r, d_r, M_r, n_r = ref2d._fully_fused_projection_2dgs(means, quats, scales3, cam.viewmat[None],
                                                                      cam.K[None], W, H, eps=0.0)
    m2, M, normals, d, radii = sb.project(means, quats, scales, cam.viewmat, cam.K, W, H)
    vis = (radii_r[0] > 0).all(-1)
    assert vis.sum() > 100 and torch.equal(radii, radii_r[0].int())
    torch.testing.assert_close(m2[vis], m2_r[0][vis], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(d, d_r[0])
    torch.testing.assert_close(M, M_r[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(normals, n_r[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(normals.norm(dim=-1), torch.ones(len(normals)))


def test_fronto_parallel_surfel():
    """An opaque disc facing the camera: depth is its z, the normal faces the camera (-z), no distortion."""
    cam = _camera()
    means = torch.tensor([[0.0, 0.0, 1.0]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    scales = torch.tensor([[0.05, 0.05]])
    rgb, depth, alpha, info = sb.render(means, quats, scales, torch.tensor([1.0]), torch.tensor([[0.2, 0.4, 0.6]]),
                                        cam)
    cy, cx = H // 2, W // 2
    assert float(alpha[cy, cx]) > 0.98          # the pixel centre is half a pixel off the axis
    torch.testing.assert_close(rgb[cy, cx] / alpha[cy, cx], torch.tensor([0.2, 0.4, 0.6]))
    assert abs(float(depth[cy, cx]) - 1.0) < 1e-5
    torch.testing.assert_close(info["normals"][cy, cx] / alpha[cy, cx], torch.tensor([0.0, 0.0, -1.0]))
    torch.testing.assert_close(info["surf_normals"][cy, cx], torch.tensor([0.0, 0.0, -1.0]), atol=1e-4, rtol=0)
    assert float(info["distortion"].abs().max()) == 0.0
    # Two pixels right of the axis the ray meets the disc at u = 2 px / (f s / z) (the 3D kernel is the smaller).
    x = cx + 2
    u = (x + 0.5 - float(cam.K[0, 2])) / (float(cam.K[0, 0]) * 0.05)
    v = (cy + 0.5 - float(cam.K[1, 2])) / (float(cam.K[1, 1]) * 0.05)
    assert abs(float(alpha[cy, x]) - math.exp(-0.5 * (u * u + v * v))) < 1e-5


def test_two_layers_distortion():
    """Two half-transparent discs at 1.0 and 1.2 m along the axis: distortion 2 w1 w2 (d2 - d1)."""
    cam = _camera()
    means = torch.tensor([[0.0, 0.0, 1.2], [0.0, 0.0, 1.0]])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 2)
    scales = torch.full((2, 2), 0.5)
    _, depth, alpha, info = sb.render(means, quats, scales, torch.tensor([0.5, 0.5]), torch.ones(2, 3), cam)
    cy, cx = H // 2, W // 2
    w1, w2 = 0.5, 0.25             # the pixel centre is half a pixel off the axis: kernel 0.9999
    assert abs(float(alpha[cy, cx]) - (w1 + w2)) < 1e-3
    assert abs(float(info["distortion"][cy, cx]) - 2 * w1 * w2 * 0.2) < 1e-3
    assert abs(float(depth[cy, cx]) - (w1 * 1.0 + w2 * 1.2) / (w1 + w2)) < 1e-3


def test_gradients_match_finite_differences():
    torch.manual_seed(0)
    params = _scene(40, seed=2, dtype=torch.float64)
    cam = _camera()
    wts = torch.rand(H, W, 3, dtype=torch.float64)

    def loss(*p):
        rgb, depth, alpha, info = sb.render(*p, cam)
        return ((rgb * wts).sum() + (alpha * depth).sum() * 0.1 + info["distortion"].sum()
                + (info["normals"] * wts).sum())

    loss(*params).backward()
    eps = 1e-6
    for p in params:
        flat = p.detach().view(-1)
        for i in torch.randperm(flat.numel())[:6].tolist():
            orig = float(flat[i])
            with torch.no_grad():
                flat[i] = orig + eps
                lp = float(loss(*params))
                flat[i] = orig - eps
                lm = float(loss(*params))
                flat[i] = orig
            fd = (lp - lm) / (2 * eps)
            an = float(p.grad.view(-1)[i])
            assert abs(fd - an) <= 1e-4 * max(1.0, abs(fd)), (p.shape, i, fd, an)


def test_gsplat2d_adapter_on_cpu(gsplat2d_on_cpu):
    cam = _posed_camera()
    wts = torch.rand(H, W, 3, generator=torch.Generator().manual_seed(3))
    outs = []
    # Same 16 px tiles: a surfel thinner than the screen filter reaches past its box, so gsplat's output (CUDA
    # too) depends on the tile size (a pixel 2 px beyond a 1 px box is drawn when it shares the tile).
    for fn in (lambda *p: gsplat_backend.render(*p, mode="2dgs"), lambda *p: sb.render(*p, tile_size=16)):
        params = _scene()
        out = fn(*params, cam)
        rgb, depth, alpha, info = out
        assert rgb.shape == (H, W, 3) and depth.shape == (H, W) and alpha.shape == (H, W)
        assert info["normals"].shape == (H, W, 3) and info["surf_normals"].shape == (H, W, 3)
        assert info["distortion"].shape == (H, W)
        ((rgb * wts).sum() + alpha.sum() + info["distortion"].sum() * 10
         + (info["normals"] * wts).sum()).backward()
        outs.append((out, params))
    (g_out, g_params), (o_out, o_params) = outs
    n = g_params[0].shape[0]
    assert g_out[3]["means2d"].shape == (1, n, 2)      # kept [1,N,2]: its .grad is read
    assert (g_out[2] > 0.5).float().mean() > 0.2
    for a, b in zip(g_out[:3], o_out[:3], strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    for key in ("normals", "distortion"):
        torch.testing.assert_close(g_out[3][key], o_out[3][key], atol=1e-4, rtol=1e-4)
    # gsplat back-projects pixel corners for its depth normals, we the pixel centres: close, not equal.
    seen = (o_out[2] > 0.9) & (o_out[3]["surf_normals"].norm(dim=-1) > 0.5)
    cos = (g_out[3]["surf_normals"][seen] * o_out[3]["surf_normals"][seen]).sum(-1)
    assert float(cos.detach().median()) > 0.99
    assert torch.equal(g_out[3]["radii"].int(), o_out[3]["radii"].int())
    g2d, o2d = g_out[3]["means2d"].grad[0], o_out[3]["means2d"].grad
    visible = (o_out[3]["radii"] > 0).all(-1)
    assert o2d[visible].abs().sum(-1).gt(0).float().mean() > 0.5
    torch.testing.assert_close(g2d, o2d, rtol=1e-3, atol=1e-4 * float(o2d.abs().max()))
    for gp, op in zip(g_params, o_params, strict=True):
        torch.testing.assert_close(gp.grad, op.grad, rtol=1e-3, atol=1e-4 * float(op.grad.abs().max()))


def test_resolve_backend_for_surfels():
    assert resolve_backend("auto", "cpu", "2dgs") == "torch2d"
    assert resolve_backend("torch", "cpu", "2dgs") == "torch2d"
    with pytest.raises(ValueError, match="no compiled"):
        resolve_backend("cpu", "cpu", "2dgs")
    with pytest.raises(ValueError, match="primitive '2dgs'"):
        resolve_backend("gsplat2d", "cpu", "3dgs")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("gsplat2d", "cpu", "2dgs")


def test_training_in_2dgs_mode_and_round_trips(tmp_path):
    """A short offline run with surfels learns the scene; checkpoint and PLY keep the two scales."""
    from test_recon_trainer import _read_ply

    from surg3d_nodes.common.metrics import psnr_star
    from surg3d_nodes.data.synthetic import SynthConfig, generate
    from surg3d_nodes.recon.config import Frame, TrainerConfig
    from surg3d_nodes.recon.io.checkpoint import load_reconstructor, save_checkpoint
    from surg3d_nodes.recon.io.ply import save_ply
    from surg3d_nodes.recon.runner import Reconstructor, train_offline

    scene = generate(SynthConfig(width=48, height=40, frames=6, instruments=1, seed=3))
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
    tr = Reconstructor(TrainerConfig(device="cpu", primitive="2dgs", image_scale=1.0, refine_start=20,
                                     refine_every=20, knot_spacing_s=0.1, num_threads=1))
    assert tr.backend == "torch2d"
    last = scene.frames[-1]
    tissue = (last.mask == 0).astype(np.float32)
    train_offline(tr, frames, 0)                   # the frames are in the model, untrained
    before = psnr_star(tr.render_view(last.pose, tr.time_of(last.stamp_ns))[0], last.left, tissue)
    train_offline(tr, [], 60)
    rgb, depth, _ = tr.render_view(last.pose, tr.time_of(last.stamp_ns))
    after = psnr_star(rgb, last.left, tissue)
    assert tr.steps_spent() == 60 and after > before + 1.0 and after > 24.0, (before, after)
    assert tr.model.params["log_scales"].shape[1] == 2 and tr.model.params["scale_knots"].shape[2] == 2
    ok = np.isfinite(depth) & (last.depth > 0) & (tissue > 0)
    assert np.median(np.abs(depth[ok] - last.depth[ok])) < 0.05 * float(np.median(last.depth[ok]))

    loaded = load_reconstructor(save_checkpoint(tr, tmp_path / "surfels.pt"))
    assert loaded.cfg.primitive == "2dgs" and loaded.backend == "torch2d"
    for k, v in tr.model.params.items():
        torch.testing.assert_close(loaded.model.params[k], v.detach())
    rgb2, _, _ = loaded.render_view(last.pose, tr.time_of(last.stamp_ns))
    np.testing.assert_array_equal(rgb2, rgb)

    t = tr.time_of(last.stamp_ns)
    ply = _read_ply(save_ply(tmp_path / "surfels.ply", tr.model, t))
    assert "scale_1" in ply and "scale_2" not in ply
    alive = tr.model.alive(t).numpy()                     # the PLY holds the Gaussians alive at t
    g = tr.model.evaluate(t)
    np.testing.assert_allclose(np.exp(np.stack([ply["scale_0"], ply["scale_1"]], 1)),
                               g["scales"].detach().numpy()[alive], rtol=1e-5)
