"""The densification strategy alone: statistics from screen-space gradients, prune, clone and split."""

from __future__ import annotations

import numpy as np
import torch

from surg3d_nodes.recon.gaussians import GaussianConfig, GaussianModel
from surg3d_nodes.recon.render import RenderCamera
from surg3d_nodes.recon.sparse_adam import DictAdam
from surg3d_nodes.recon.strategy import DefaultStrategy


def _model(n: int) -> tuple[GaussianModel, DictAdam]:
    model = GaussianModel(GaussianConfig(knot_spacing=0.1, init_opacity=0.5, knots_at_frames=False))
    rng = np.random.default_rng(0)
    pts = np.c_[rng.uniform(-0.01, 0.01, (n, 2)), np.full(n, 0.1)]
    model.append(model.new_gaussians(pts, np.full((n, 3), 0.5), 0.0))
    opt = DictAdam({k: 1e-3 for k in model.params}, knot_keys=GaussianModel.KNOT_KEYS)
    opt.step(model.params, {k: torch.ones_like(v) for k, v in model.params.items()})  # moments for every parameter
    return model, opt


def _info(n: int, grad_px: np.ndarray, radii_px: np.ndarray, cam: RenderCamera) -> dict:
    """What a renderer returns: means2d with a gradient (NDC) and integer radii."""
    m2d = torch.zeros(n, 2, requires_grad=True)
    m2d.grad = torch.as_tensor(np.c_[grad_px * 2 / cam.width, np.zeros(n)], dtype=torch.float32)
    return {"means2d": m2d, "radii": torch.as_tensor(np.c_[radii_px, radii_px], dtype=torch.int32)}


def test_default_strategy_prunes_clones_and_splits():
    n = 6
    model, opt = _model(n)
    cam = RenderCamera.from_ros(np.eye(4), np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]), 64, 48)
    strat = DefaultStrategy(refine_start=2, refine_every=2, grad_threshold=1e-3, split_radius_px=4.0,
                            prune_opacity=0.05, prune_scale_rel=0.5, max_gaussians=100)
    strat.reset(n, torch.device("cpu"))
    with torch.no_grad():
        model.params["opacity_logits"][5] = -10.0            # transparent: pruned
    grads = np.array([0.0, 0.0, 0.1, 0.1, 0.0, 0.1])        # 2: small on screen -> clone, 3: large -> split
    radii = np.array([2, 2, 2, 9, 2, 2])
    strat.step_post_backward(model, opt, _info(n, grads, radii, cam), cam, step=1, densify=True, scene_depth=0.1)
    assert model.num_gaussians == n, "not due yet: statistics only"
    assert float(strat.grad_cnt.sum()) == n
    means_before = model.params["means"].detach().clone()
    scales_before = model.params["log_scales"].detach().clone()
    strat.step_post_backward(model, opt, _info(n, grads, radii, cam), cam, step=2, densify=True, scene_depth=0.1)
    # 6 - 1 pruned - 1 split parent + 1 clone + 2 split children
    assert model.num_gaussians == 7
    for k, v in model.params.items():
        assert opt.m[k].shape == v.shape, f"optimizer state of {k} out of step with the model"
    assert strat.grad_acc.shape == (7,) and float(strat.grad_acc.sum()) == 0.0, "statistics start over"
    kept = model.params["means"].detach()[:4]
    assert torch.equal(kept, means_before[[0, 1, 2, 4]])
    assert torch.equal(model.params["means"].detach()[4], means_before[2]), "the clone sits on its parent"
    children = model.params["log_scales"].detach()[5:]
    np.testing.assert_allclose(children.numpy(), scales_before[[3, 3]].numpy() - np.log(1.6), atol=1e-6)
    offsets = model.params["means"].detach()[5:] - means_before[3]
    assert float(offsets.norm(dim=-1).min()) > 0, "split children are sampled around the parent"
    # Revised opacity: a clone and its parent, and two split children, each 1 - sqrt(1 - o): at the centre
    # of a clone pair the composite opacity is the parent's; the Gaussians not refined keep theirs.
    opac = torch.sigmoid(model.params["opacity_logits"].detach()).numpy()
    o = opac[0]                                   # every Gaussian had this opacity (one optimizer step from 0.5)
    half = 1 - np.sqrt(1 - o)
    np.testing.assert_allclose(opac, [o, o, half, o, half, half, half], atol=1e-5)
    assert abs(1 - (1 - opac[2]) * (1 - opac[4]) - o) < 1e-5


def test_densification_without_revised_opacity_copies_it():
    n = 2
    model, opt = _model(n)
    cam = RenderCamera.from_ros(np.eye(4), np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]), 64, 48)
    strat = DefaultStrategy(refine_start=1, refine_every=1, grad_threshold=1e-3, revised_opacity=False)
    strat.reset(n, torch.device("cpu"))
    strat.step_post_backward(model, opt, _info(n, np.array([0.1, 0.0]), np.array([2, 2]), cam), cam, 1, True, 0.1)
    assert model.num_gaussians == 3
    opac = torch.sigmoid(model.params["opacity_logits"].detach()).numpy()
    np.testing.assert_allclose(opac, opac[0], atol=1e-6)
    assert opac[0] > 0.49


def test_densification_off_keeps_the_model():
    n = 4
    model, opt = _model(n)
    cam = RenderCamera.from_ros(np.eye(4), np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]), 64, 48)
    strat = DefaultStrategy(refine_start=1, refine_every=1, grad_threshold=1e-6)
    strat.reset(n, torch.device("cpu"))
    strat.step_post_backward(model, opt, _info(n, np.full(n, 1.0), np.full(n, 2), cam), cam, 1, False, 0.1)
    assert model.num_gaussians == n
    strat.grow(3)
    assert strat.grad_acc.shape == (n + 3,)
