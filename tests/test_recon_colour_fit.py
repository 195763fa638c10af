"""The least-squares colour fit of a frame into its colour knot, knots at frame times, and the step budget that
counts the fit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recon_support import scene_frames

from surg3d_nodes.common.metrics import psnr_star
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.colour_fit import fit_colours
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.runner import Reconstructor, train_offline, train_stream

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scene():
    return generate(SynthConfig(width=64, height=48, frames=8, instruments=1, seed=5))


def _cfg(**kw) -> TrainerConfig:
    base = dict(device="cpu", backend="cpu", image_scale=1.0, knots_at_frames=True, knot_spacing_s=0.01,
                complete_hidden=False, num_threads=1)
    base.update(kw)
    return TrainerConfig(**base)


def _psnr(tr: Reconstructor, f: Frame, rgb: np.ndarray) -> float:
    out, _, _ = tr.render_view(f.pose, tr.time_of(f.stamp_ns))
    return psnr_star(out, rgb, (f.mask == 0).astype(np.float32))


def test_knots_sit_at_frame_times(scene):
    fr = scene_frames(scene)
    tr = Reconstructor(_cfg())
    for f in fr[:5]:
        tr.add_frame(f)
    times = [tr.time_of(f.stamp_ns) for f in fr[:5]]
    np.testing.assert_allclose(tr.model.knot_times, times, atol=1e-9)
    # Frames closer than the spacing share the last knot.
    tr2 = Reconstructor(_cfg(knot_spacing_s=2.5 * (times[1] - times[0])))
    for f in fr[:5]:
        tr2.add_frame(f)
    np.testing.assert_allclose(tr2.model.knot_times, [times[0], times[3]], atol=1e-9)


def test_colour_fit_explains_a_changed_appearance_at_its_own_time_only(scene):
    """A frame whose tissue turned darker with a highlight (the light and the blood supply change, not the
    geometry): the fit brings it close in a few iterations, more iterations fit better, the earlier frame
    keeps its rendering, and Gaussians the frame does not see keep their colour."""
    fr = scene_frames(scene)
    tr = Reconstructor(_cfg(colour_fit_iterations=0))      # fitted by hand below
    for f in fr[:3]:
        tr.add_frame(f)
    f = fr[3]
    rgb = (f.rgb.astype(np.float32) * 0.8).astype(np.uint8)
    rgb[10:16, 20:30] = 250
    changed = Frame(f.stamp_ns, rgb, f.depth, f.mask, f.pose, scene.cam_left)
    tr.add_frame(changed)
    kf = tr.store.newest()
    before_past, _, _ = tr.render_view(fr[1].pose, tr.time_of(fr[1].stamp_ns))
    start = _psnr(tr, changed, rgb)
    # Gaussians the frame does not see: beside the view, far outside its field.
    side = np.array([[0.3, 0.0, 0.05], [0.0, 0.3, 0.05]]) @ f.pose[:3, :3].T + f.pose[:3, 3]
    rows = tr.model.new_gaussians(side, np.full((2, 3), 0.5), kf.t)
    rows["log_scales"].fill_(np.log(1e-3))
    tr.model.append(rows)
    knots = tr.model.params["col_knots"].detach().clone()
    psnrs = []
    saved = {k: v.detach().clone() for k, v in tr.model.params.items()}
    for its in (1, 5):
        tr.model.params = {k: v.clone().requires_grad_() for k, v in saved.items()}
        assert fit_colours(tr.model, kf, tr.backend, its) == its + 1
        psnrs.append(_psnr(tr, changed, rgb))
    assert psnrs[0] > start + 3.0 and psnrs[1] > psnrs[0] + 1.0, (start, psnrs)
    after_past, _, _ = tr.render_view(fr[1].pose, tr.time_of(fr[1].stamp_ns))
    np.testing.assert_array_equal(before_past, after_past)
    new = tr.model.params["col_knots"].detach()
    assert torch.equal(new[:, :-1], knots[:, :-1])          # only the frame's own knot moved
    assert torch.equal(new[-2:], knots[-2:])


def test_stream_budget_counts_the_colour_fit(scene):
    """Each frame costs exactly K steps, the fit included, and the fit takes at most half of them; the fit's share
    shows in the statistics."""
    fr = scene_frames(scene)
    tr = Reconstructor(_cfg(colour_fit_iterations=3, refine_start=10**6))
    k = 10                                                  # the fit's 3 iterations fit in half of it
    train_stream(tr, fr, k)
    st = tr.get_stats()
    assert st.frames_used == len(fr)
    assert st.iterations + st.colour_fit_steps == tr.steps_spent()
    assert len(fr) * k <= tr.steps_spent() < len(fr) * k + 3
    assert st.colour_fit_steps == 4 * len(fr) and st.iterations == len(fr) * (k - 4)
    small = Reconstructor(_cfg(colour_fit_iterations=3, refine_start=10**6))
    train_stream(small, fr, 3)                              # K = 3: no room for a fit
    assert small.get_stats().colour_fit_steps == 0 and small.steps_spent() == 3 * len(fr)


def test_offline_budget_ends_with_one_fit_per_frame(scene):
    """Offline, the frames are fitted once each at the end of the budget, on the trained geometry."""
    fr = scene_frames(scene)
    tr = Reconstructor(_cfg(colour_fit_iterations=2, refine_start=10**6))
    train_offline(tr, fr, 60)
    st = tr.get_stats()
    assert tr.steps_spent() == 60 and st.colour_fit_steps == 3 * len(fr) and st.iterations == 60 - 3 * len(fr)
