"""Metrics on inputs with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from surg3d_nodes.common.metrics import depth_rmse_mm, masked_psnr, psnr, psnr_star, ssim, ssim_map


def test_psnr_known_values():
    a = np.zeros((8, 8, 3), np.float32)
    b = np.full((8, 8, 3), 0.1, np.float32)
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-4)          # mse 0.01
    assert psnr(a, a) == math.inf
    u8 = (b * 255).astype(np.uint8)
    assert psnr(u8, np.zeros_like(u8)) == pytest.approx(-10 * math.log10((25 / 255) ** 2), abs=1e-4)
    with pytest.raises(ValueError, match="shapes differ"):
        psnr(a, b[:4])


def test_masked_psnr_and_psnr_star():
    a = np.zeros((10, 10, 3), np.float32)
    b = np.zeros((10, 10, 3), np.float32)
    b[:5] = 0.1                          # error only on the top half
    mask = np.zeros((10, 10), np.float32)
    mask[:5] = 1                         # top half is tissue
    # masked PSNR: mse over the whole image = 0.01 * 0.5
    assert masked_psnr(a, b, mask) == pytest.approx(-10 * math.log10(0.005), abs=1e-4)
    # PSNR*: tissue pixels only, mse 0.01
    assert psnr_star(a, b, mask) == pytest.approx(20.0, abs=1e-4)
    # errors under the instrument do not count
    mask2 = 1 - mask
    assert masked_psnr(a, b, mask2) == math.inf
    assert math.isnan(psnr_star(a, b, np.zeros((10, 10))))


def test_ssim_properties():
    rng = np.random.default_rng(0)
    img = rng.random((32, 40, 3)).astype(np.float32)
    assert ssim(img, img) == pytest.approx(1.0, abs=1e-6)
    noisy = np.clip(img + rng.normal(0, 0.1, img.shape), 0, 1).astype(np.float32)
    s = ssim(img, noisy)
    assert 0.3 < s < 0.99
    assert ssim(img, np.clip(img + 0.3 * rng.normal(0, 0.1, img.shape), 0, 1).astype(np.float32)) > s
    # Constant images: SSIM reduces to the luminance term (2 m1 m2 + c1) / (m1^2 + m2^2 + c1) in the
    # interior (zero padding changes the borders).
    a = torch.full((40, 40, 1), 0.1)
    b = torch.full((40, 40, 1), 0.05)
    c1 = 0.01 ** 2
    expect = (2 * 0.1 * 0.05 + c1) / (0.01 + 0.0025 + c1)
    assert ssim_map(a, b)[20, 20].item() == pytest.approx(expect, rel=1e-3)


def test_depth_rmse_mm():
    ref = np.full((4, 4), 0.05, np.float32)
    est = ref + 0.002
    assert depth_rmse_mm(est, ref) == pytest.approx(2.0, rel=1e-4)
    ref[0, 0] = 0.0                      # invalid reference pixel is ignored
    est[0, 0] = 1.0
    assert depth_rmse_mm(est, ref) == pytest.approx(2.0, rel=1e-4)
    mask = np.zeros((4, 4))
    assert math.isnan(depth_rmse_mm(est, ref, mask))


def test_ssim_map_matches_the_2d_window():
    # ssim_map filters separably; the textbook form: five depthwise 11x11 convolutions with the 2-D window.
    import torch.nn.functional as tnf

    g = torch.Generator().manual_seed(0)
    img, ref = torch.rand(30, 34, 3, generator=g), torch.rand(30, 34, 3, generator=g)
    x1 = torch.arange(11, dtype=torch.float32) - 5
    w1 = torch.exp(-(x1 ** 2) / (2 * 1.5 ** 2))
    w = (w1[:, None] * w1[None, :] / w1.sum() ** 2).expand(3, 1, 11, 11)
    x, y = img.permute(2, 0, 1)[None], ref.permute(2, 0, 1)[None]
    mx, my, exx, eyy, exy = (tnf.conv2d(t, w, padding=5, groups=3) for t in (x, y, x * x, y * y, x * y))
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * (exy - mx * my) + c2)) / (
        (mx * mx + my * my + c1) * (exx - mx * mx + eyy - my * my + c2))
    torch.testing.assert_close(ssim_map(img, ref), s[0].mean(0), atol=1e-5, rtol=0)
