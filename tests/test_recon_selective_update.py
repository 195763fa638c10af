"""A frame changes only the Gaussians whose centres it sees (Adam's selected rows, the colour fit), so that one
reaching into the image from outside keeps what the frames that saw it gave it; and moves a guess (an inferred
Gaussian) only where it shows its centre as tissue, so that one behind an instrument keeps its place."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from recon_support import scene_frames

from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.render import RenderCamera
from surg3d_nodes.recon.runner import Reconstructor, StepSchedule
from surg3d_nodes.recon.sparse_adam import DictAdam

torch.set_num_threads(1)


def test_camera_sees_the_points_that_project_inside_the_image():
    cam = RenderCamera.from_ros(np.eye(4), np.array([[100.0, 0, 31.5], [0, 100.0, 23.5], [0, 0, 1]]), 64, 48)
    z = 0.1
    # Pixel centres at integers (ROS): the image spans u in [-0.5, 63.5).
    pts = torch.tensor([[0.0, 0.0, z],                      # the centre
                        [(-0.4 - 31.5) * z / 100, 0.0, z],  # just inside the left edge
                        [(-0.6 - 31.5) * z / 100, 0.0, z],  # just outside it
                        [(63.4 - 31.5) * z / 100, 0.0, z],  # just inside the right edge
                        [(63.6 - 31.5) * z / 100, 0.0, z],  # just outside it
                        [0.0, (47.6 - 23.5) * z / 100, z],  # below the image
                        [0.0, 0.0, -z]])                    # behind the camera
    assert cam.sees(pts).tolist() == [True, True, False, True, False, False, False]
    right_half = torch.zeros(48, 64, dtype=torch.bool)
    right_half[:, 32:] = True                                # pixel 32 spans u in [31.5, 32.5)
    edge = torch.tensor([[(31.4 - 31.5) * z / 100, 0.0, z], [(31.6 - 31.5) * z / 100, 0.0, z]])
    # The centre (u = 31.5) and the right edge's inside point in the right half, its outside point not seen at all.
    assert cam.sees(torch.cat([pts, edge]), right_half).tolist() == [True, False, False, True] + [False] * 4 + [True]


def _adam_state(n: int, knots: int) -> tuple[dict[str, torch.Tensor], DictAdam]:
    gen = torch.Generator().manual_seed(0)
    params = {"sh_dc": torch.randn(n, 3, generator=gen), "col_knots": torch.randn(n, knots, 3, generator=gen)}
    opt = DictAdam({"sh_dc": 0.1, "col_knots": 0.1}, knot_keys=("col_knots",))
    for _ in range(3):   # some history in the moments
        opt.step(params, {"sh_dc": torch.randn(n, 3, generator=gen),
                          "col_knots": torch.randn(n, 2, 3, generator=gen)}, knot_window=(1, 3))
    return params, opt


def test_adam_rows_update_the_selected_gaussians_only():
    n, knots = 6, 4
    grads = {"sh_dc": torch.full((n, 3), 0.5), "col_knots": torch.full((n, 2, 3), -0.5)}
    full, opt_full = _adam_state(n, knots)
    opt_full.step(full, grads, knot_window=(1, 3))
    sel, opt_sel = _adam_state(n, knots)
    before, _ = _adam_state(n, knots)
    m_before = {k: v.clone() for k, v in opt_sel.m.items()}
    v_before = {k: v.clone() for k, v in opt_sel.v.items()}
    rows = torch.tensor([True, False, True, False, False, True])
    opt_sel.step(sel, grads, knot_window=(1, 3), rows=rows)
    for k in ("sh_dc", "col_knots"):
        # The selected rows took exactly the step they take in a full update...
        torch.testing.assert_close(sel[k][rows], full[k][rows])
        torch.testing.assert_close(opt_sel.m[k][rows], opt_full.m[k][rows])
        # ...the others kept their values and their moments.
        torch.testing.assert_close(sel[k][~rows], before[k][~rows])
        torch.testing.assert_close(opt_sel.m[k][~rows], m_before[k][~rows])
        torch.testing.assert_close(opt_sel.v[k][~rows], v_before[k][~rows])
    assert not torch.equal(sel["sh_dc"][rows], before["sh_dc"][rows])


def test_a_new_knot_continues_the_last_knots_adam_state():
    """A new knot copies the last one's moments and step count, so a track whose gradients were noise takes a
    small first step on it: from zero moments, Adam's bias correction made that step the full learning rate."""
    lr = 1e-3

    def grown_after_noise(carry: bool) -> torch.Tensor:
        p = {"pos_knots": torch.zeros(1, 1, 3)}
        opt = DictAdam({"pos_knots": lr}, knot_keys=("pos_knots",))
        for i in range(50):                                   # gradients of alternating sign: m ~ 0, v ~ 1
            opt.step(p, {"pos_knots": torch.full((1, 1, 3), (-1.0) ** i)}, knot_window=(0, 1))
        p["pos_knots"] = torch.cat([p["pos_knots"], p["pos_knots"][:, -1:]], 1)
        opt.grow_knots(2)
        if not carry:
            opt.m["pos_knots"][:, 1:] = 0
            opt.v["pos_knots"][:, 1:] = 0
            opt.steps["pos_knots"][1:] = 0
        before = p["pos_knots"][:, 1].clone()
        opt.step(p, {"pos_knots": torch.full((1, 1, 3), 0.01)}, knot_window=(1, 2))
        return (p["pos_knots"][:, 1] - before).abs().max()

    assert float(grown_after_noise(carry=False)) == pytest.approx(lr, rel=1e-3)      # the sign step it was
    assert float(grown_after_noise(carry=True)) < 0.2 * lr


def test_adam_state_keeps_the_knots_first_moment_counts():
    """A checkpoint keeps the knots' first-moment step counts; one from before they were counted apart loads
    them as the second moment's."""
    p = {"pos_knots": torch.zeros(2, 1, 3), "sh_dc": torch.zeros(2, 3)}
    opt = DictAdam({"pos_knots": 1e-3, "sh_dc": 1e-3}, knot_keys=("pos_knots",))
    for _ in range(3):
        opt.step(p, {k: torch.ones_like(v) for k, v in p.items()})
    p["pos_knots"] = torch.cat([p["pos_knots"], p["pos_knots"][:, -1:]], 1)
    opt.grow_knots(2)
    opt.step(p, {"pos_knots": torch.ones(2, 1, 3)}, knot_window=(1, 2))
    sd = opt.state_dict()
    again = DictAdam({}, knot_keys=("pos_knots",))
    again.load_state_dict(sd)
    assert again.m_steps["pos_knots"].tolist() == [3.0, 1.0] and again.steps["pos_knots"].tolist() == [3.0, 4.0]
    old = DictAdam({}, knot_keys=("pos_knots",))
    old.load_state_dict({k: v for k, v in sd.items() if k != "m_steps"})
    assert old.m_steps["pos_knots"].tolist() == [3.0, 4.0] and "sh_dc" not in old.m_steps


@pytest.fixture(scope="module")
def scene():
    return generate(SynthConfig(width=64, height=48, frames=4, instruments=0, seed=3))


def test_a_gaussian_reaching_in_from_outside_the_frame_keeps_its_parameters(scene):
    """Two large Gaussians of a wrong colour at the image's right edge, one centred a pixel inside and one a
    pixel outside, both covering the edge pixels: training steps and the colour fit of the frame change the
    first and leave the second as it was."""
    fr = scene_frames(scene)
    tr = Reconstructor(TrainerConfig(device="cpu", backend="cpu", image_scale=1.0, complete_hidden=False,
                                     num_threads=1, colour_fit_iterations=3))
    tr.add_frame(fr[0])
    f = fr[0]
    K, w = f.camera.intrinsics(), f.camera.width
    z = float(np.nanmedian(f.depth))
    us = np.array([w - 1.5, w + 0.5])        # ROS pixel centres: the image ends at w - 0.5
    pts = np.c_[(us - K[0, 2]) * z / K[0, 0], np.zeros(2), np.full(2, z)]
    pts_w = pts @ f.pose[:3, :3].T + f.pose[:3, 3]
    m = tr.model
    rows = m.new_gaussians(pts_w, np.array([[0.1, 0.9, 0.9]] * 2), tr.time_of(f.stamp_ns))
    rows["log_scales"][:] = float(np.log(3.0 * z / K[0, 0]))        # 3 px: both reach the edge pixels
    m.append(rows)
    tr.optimizer.append(2)
    inside, outside = m.num_gaussians - 2, m.num_gaussians - 1
    before = {k: v.detach()[[inside, outside]].clone() for k, v in m.params.items()}
    tr.fit_colours(tr.store.recent[-1], 3)
    for _ in range(10):
        tr.step(StepSchedule(recent_fraction=1.0, densify=False))
    after = {k: v.detach()[[inside, outside]] for k, v in m.params.items()}
    for k in ("sh_dc", "col_knots", "means", "pos_knots", "log_scales", "opacity_logits"):
        torch.testing.assert_close(after[k][1], before[k][1], msg=f"{k} of the Gaussian outside changed")
    assert not torch.allclose(after["sh_dc"][0], before["sh_dc"][0]), "the Gaussian inside was not trained"
    assert not torch.allclose(after["col_knots"][0], before["col_knots"][0])


def test_a_guess_behind_an_instrument_keeps_its_place_but_not_its_colour(scene):
    """Three large Gaussians of a wrong colour about an instrument mask's edge, each covering tissue pixels: a
    guess centred on tissue, a guess behind the instrument, an observed one behind it. Steps on the frame move the
    first and the third; the second, whose only gradients are that fringe (taken at Adam's full rate, they moved the
    guesses under the instruments off the surface they are put on), keeps its place while its colour trains."""
    f0 = scene_frames(scene)[0]
    mask = np.zeros(f0.rgb.shape[:2], np.uint8)
    mask[:, 40:] = 255
    f = Frame(f0.stamp_ns, f0.rgb, f0.depth, mask, f0.pose, f0.camera)
    tr = Reconstructor(TrainerConfig(device="cpu", backend="cpu", image_scale=1.0, complete_hidden=False,
                                     num_threads=1, colour_fit_iterations=0))
    tr.add_frame(f)
    K = f.camera.intrinsics()
    z = float(np.nanmedian(f.depth))
    us = np.array([37.0, 42.0, 42.0])          # ROS pixel centres: 37 is tissue, 42 is behind the instrument
    pts = np.c_[(us - K[0, 2]) * z / K[0, 0], np.zeros(3), np.full(3, z)]
    m = tr.model
    rows = m.new_gaussians(pts @ f.pose[:3, :3].T + f.pose[:3, 3], np.array([[0.1, 0.9, 0.9]] * 3),
                           tr.time_of(f.stamp_ns))
    rows["log_scales"][:] = float(np.log(3.0 * z / K[0, 0]))        # 3 px: all reach tissue pixels
    m.append(rows, inferred=torch.tensor([True, True, False]))
    tr.optimizer.append(3)
    new = list(range(m.num_gaussians - 3, m.num_gaussians))
    before = {k: v.detach()[new].clone() for k, v in m.params.items()}
    for _ in range(10):
        tr.step(StepSchedule(recent_fraction=1.0, densify=False))
    after = {k: v.detach()[new] for k, v in m.params.items()}
    for k in ("means", "pos_knots"):
        torch.testing.assert_close(after[k][1], before[k][1], msg=f"{k} of the guess behind the instrument moved")
    for j, what in ((0, "the guess on tissue"), (2, "the observed Gaussian behind the instrument")):
        assert not torch.allclose(after["means"][j], before["means"][j]) or \
            not torch.allclose(after["pos_knots"][j], before["pos_knots"][j]), f"{what} did not move"
    assert not torch.allclose(after["col_knots"][1], before["col_knots"][1]), "its colour did not train"
