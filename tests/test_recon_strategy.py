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


def _alive_state(model: GaussianModel, t: float) -> dict[str, torch.Tensor]:
    """What the model shows at time t: the evaluated Gaussians alive then."""
    g, alive = model.evaluate(t), model.alive(t)
    return {k: v.detach()[alive] for k, v in g.items()}


def test_live_refinement_changes_the_model_after_since_only():
    """Live training (`since`): the refined Gaussians stay as they were for the frames already fitted, retired at
    `since`; their clones and split children are born there (the clone's parent replaced by a copy)."""
    n = 6
    model, opt = _model(n)
    model.ensure_time(0.2)                        # knots at 0, 0.1, 0.2: the newest frame's changes start at 0.1
    opt.grow_knots(model.num_knots)
    since = model.birth_time(0.2)
    assert since == 0.1
    cam = RenderCamera.from_ros(np.eye(4), np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]), 64, 48)
    strat = DefaultStrategy(refine_start=1, refine_every=1, grad_threshold=1e-3, split_radius_px=4.0,
                            prune_opacity=0.05, prune_scale_rel=0.5, max_gaussians=100)
    strat.reset(n, torch.device("cpu"))
    with torch.no_grad():
        model.params["opacity_logits"][5] = -10.0            # transparent: pruned (for all times)
    before = {t: _alive_state(model, t) for t in (0.0, 0.1)}
    gen = torch.Generator().manual_seed(0)
    for d in (opt.m, opt.v):
        for v in d.values():
            v.copy_(torch.rand(v.shape, generator=gen) + 0.1)              # each row's own moments
    state_of_2 = [{k: v[2].clone() for k, v in d.items()} for d in (opt.m, opt.v)]
    o = float(torch.sigmoid(model.params["opacity_logits"].detach()[0]))
    grads = np.array([0.0, 0.0, 0.1, 0.1, 0.0, 0.1])        # 2: clone, 3: split
    strat.step_post_backward(model, opt, _info(n, grads, np.array([2, 2, 2, 9, 2, 2]), cam), cam, step=1,
                             densify=True, scene_depth=0.1, since=since)
    # 5 kept (2 and 3 retired at 0.1) + the clone pair + 2 split children
    assert model.num_gaussians == 9
    for k, v in model.params.items():
        assert opt.m[k].shape == v.shape, f"optimizer state of {k} out of step with the model"
    for t in (0.0, 0.1):
        after = _alive_state(model, t)
        for k, v in before[t].items():
            assert torch.equal(after[k], v[[0, 1, 2, 3, 4]]), f"{k} at t={t} changed"
    assert torch.equal(model.life[:, 1], torch.tensor([np.inf, np.inf, 0.1, 0.1, np.inf] + [np.inf] * 4,
                                                      dtype=torch.float64))
    assert torch.all(model.life[5:, 0] == 0.1), "children born at `since`"
    now = model.alive(0.2)
    assert now.tolist() == [True, True, False, False, True, True, True, True, True]
    opac = torch.sigmoid(model.params["opacity_logits"].detach()).numpy()
    half = 1 - np.sqrt(1 - o)
    # rows 5..8: clone of 2, two children of 3, the copy that takes 2's place; 2 keeps its own opacity
    np.testing.assert_allclose(opac[[2, 5, 6, 7, 8]], [o, half, half, half, half], atol=1e-5)
    assert torch.equal(model.params["means"].detach()[8], model.params["means"].detach()[2])
    # The copy continues 2's optimizer state (zero moments under the shared step count would make its next steps
    # several times the learning rate); the clone and the split children start afresh.
    for d, kept in zip((opt.m, opt.v), state_of_2, strict=True):
        for k, v in d.items():
            assert torch.equal(v[8], kept[k]) and torch.equal(v[2], kept[k]), f"{k}: the copy's moments"
            assert float(v[5:8].abs().sum()) == 0.0, f"{k}: new Gaussians' moments"
    # A Gaussian retired before `since` lives in the past only: it is never refined for the present.
    strat.step_post_backward(model, opt, _info(9, np.full(9, 0.1), np.full(9, 2), cam), cam, step=2,
                             densify=True, scene_depth=0.1, since=0.15)
    # (the 7 alive at 0.2 were all born before 0.15: each retired, each with a clone and a copy; 2 and 3 not)
    assert int(model.alive(0.2).sum()) == 14 and model.num_gaussians == 9 + 14


def test_densification_at_the_budget_drops_the_longest_retired_first():
    """At the Gaussian budget the past (retired Gaussians, kept for the frames already fitted) makes room, the
    longest retired first, before the present goes without refinement."""
    n = 6
    model, opt = _model(n)
    model.life[:3, 1] = torch.tensor([0.3, 0.1, 0.2], dtype=torch.float64)
    cam = RenderCamera.from_ros(np.eye(4), np.array([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]]), 64, 48)
    strat = DefaultStrategy(refine_start=1, refine_every=1, grad_threshold=1e-3, max_gaussians=7)
    strat.reset(n, torch.device("cpu"))
    means = model.params["means"].detach().clone()
    grads = np.array([0.0, 0.0, 0.0, 0.1, 0.1, 0.0])         # 3 and 4 cloned: one row more than the budget
    strat.step_post_backward(model, opt, _info(n, grads, np.full(n, 2), cam), cam, 1, True, 0.1)
    assert model.num_gaussians == 7
    assert sorted(model.life[torch.isfinite(model.life[:, 1]), 1].tolist()) == [0.2, 0.3], "0.1 went first"
    assert torch.equal(model.params["means"].detach()[5:], means[[3, 4]]), "both clones made"


def test_growth_reuses_spare_room_and_checkpoints_stay_compact():
    """Rows and knots appended one at a time fill spare room in place (recon.capacity): the values are those a
    concatenation gives, the storage moves only now and then, and a saved tensor holds no spare room."""
    from surg3d_nodes.recon.capacity import compact, grown
    ref = torch.arange(2 * 3 * 3, dtype=torch.float32).reshape(2, 3, 3)
    t, moves, last = ref.clone(), 0, None
    for i in range(40):
        if i % 2:
            t = grown(t, t.shape[0], t.shape[1] + 1)
            t[:, -1] = t[:, -2]
            ref = torch.cat([ref, ref[:, -1:]], 1)
        else:
            t = grown(t, t.shape[0] + 3, t.shape[1])
            t[-3:] = i
            ref = torch.cat([ref, torch.full((3, *ref.shape[1:]), float(i))])
        assert torch.equal(t, ref)
        moves += int(t.untyped_storage().data_ptr() != last)
        last = t.untyped_storage().data_ptr()
    assert moves <= 10, f"the storage moved {moves} times in 40 appends"
    saved = compact(t)
    assert torch.equal(saved, ref) and saved.untyped_storage().nbytes() == ref.numel() * 4
    model, opt = _model(4)
    model.ensure_time(0.3)
    opt.grow_knots(model.num_knots)
    model.append(model.new_gaussians(np.full((2, 3), 0.1), np.full((2, 3), 0.5), 0.3))
    opt.append(2)
    for k, v in model.params.items():
        assert opt.m[k].shape == v.shape and v.is_leaf and v.requires_grad
    # New Gaussians start with zero moments; new knots with the last knot's (DictAdam.grow_knots).
    assert float(opt.m["pos_knots"][4:].abs().sum()) == 0
    assert torch.equal(opt.v["col_knots"][:4, 1:], opt.v["col_knots"][:4, :1].expand(-1, 3, -1))
