"""Completion of hidden tissue (recon.completion): the membrane fill, the `inferred` flag and the life spans
through densification, checkpoints and PLY export, and inferred Gaussians replaced once the tissue shows."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from recon_support import scene_frames

from surg3d_nodes.common.geometry import backproject
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.completion import (
    deoccluded,
    hidden_seeds,
    inpaint,
    membrane_fill,
    smooth_fill,
    tint_inferred,
)
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.gaussians import SH_C0, GaussianConfig, GaussianModel
from surg3d_nodes.recon.io.checkpoint import load_reconstructor, save_checkpoint
from surg3d_nodes.recon.io.ply import save_ply
from surg3d_nodes.recon.runner import Reconstructor, StepSchedule
from surg3d_nodes.recon.strategy import DefaultStrategy

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scene():
    return generate(SynthConfig(width=64, height=48, frames=8, instruments=2, camera_motion="moving", seed=3))


def _cfg(**kw) -> TrainerConfig:
    base = dict(device="cpu", backend="torch", image_scale=1.0, knot_spacing_s=0.1, num_threads=1)
    base.update(kw)
    return TrainerConfig(**base)


def test_membrane_fill_is_exact_on_a_plane_and_smooth_on_a_sphere():
    h, w = 48, 64
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    plane = 0.08 + 1e-4 * xs - 2e-4 * ys
    hole = (np.abs(xs - 30) < 10) & (np.abs(ys - 20) < 12)
    filled = membrane_fill(np.where(hole, np.nan, plane), ~hole)
    assert np.abs(filled - plane)[hole].max() < 1e-6
    # A sphere cap of radius 0.1 m seen along its axis, sagging ~2 mm across the hole: a membrane cannot bend
    # (its Laplacian is zero) so it misses part of the sag, but stays within 1 mm and smooth (no step at the
    # boundary).
    r2 = ((xs - 32) ** 2 + (ys - 24) ** 2) * 1e-6
    sphere = 0.18 - np.sqrt(0.1 ** 2 - r2)
    filled = membrane_fill(np.where(hole, 0.0, sphere), ~hole)
    assert np.abs(filled - sphere)[hole].max() < 1e-3
    assert np.abs(np.diff(filled, axis=1)).max() < 2 * np.abs(np.diff(sphere, axis=1)).max()


def test_a_large_hole_starts_from_the_coarse_fill_and_ends_at_the_same_membrane(monkeypatch):
    """Above `COARSE_FROM_PX` unknown pixels the iterations start from the fill at half the resolution: the same
    solution (to the tolerance) as from Telea's start."""
    from surg3d_nodes.recon import completion

    h, w = 160, 200
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    depth = 0.08 + 0.01 * np.sin(xs / 17.0) * np.cos(ys / 23.0)
    hole = (np.abs(xs - 100) < 45) & (np.abs(ys - 80) < 40)          # 89 x 79 = 7031 pixels
    assert hole.sum() > completion.COARSE_FROM_PX
    coarse = membrane_fill(np.where(hole, 0.0, depth), ~hole)
    monkeypatch.setattr(completion, "COARSE_FROM_PX", 10 ** 9)
    direct = membrane_fill(np.where(hole, 0.0, depth), ~hole)
    assert np.abs(coarse - direct).max() < 1e-6
    assert np.array_equal(coarse[~hole], depth[~hole].astype(np.float32))


def test_the_light_field_of_a_wide_view_is_filled_at_a_coarser_grid_as_well():
    """`smooth_fill` (the de-occluded view's light difference) solves a 640-wide view on a 320-wide grid: a smooth
    field with sensor noise is filled within a grey level or two of its noiseless truth, as the full-size fill, and
    the pixels around the hole are kept."""
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:256, 0:640]
    truth = 128 + 20 * np.sin(xs / 90) + 15 * np.cos(ys / 70)
    img = np.repeat(np.clip(truth + rng.normal(0, 2, truth.shape), 0, 255).astype(np.uint8)[..., None], 3, -1)
    hole = np.zeros(truth.shape, np.uint8)
    cv2.line(hole, (0, 250), (400, 120), 1, 30)
    hole = hole > 0
    coarse, full = smooth_fill(img, hole), inpaint(img, hole)
    assert np.array_equal(coarse[~hole], img[~hole])
    err_coarse = np.abs(coarse[..., 0] - truth)[hole].mean()
    assert err_coarse < 1.5 and err_coarse < np.abs(full[..., 0] - truth)[hole].mean() + 0.5


def test_never_seen_texture_is_guessed_smooth_and_closer_than_telea():
    """The colour guess of a hole (`inpaint`, per channel harmonic) keeps every pixel around it and, on texture
    that the border cannot predict, is closer to the truth than Telea's (which carries the border's streaks in)."""
    from surg3d_nodes.common.metrics import psnr_star

    for seed in range(3):
        rng = np.random.default_rng(seed)
        tex = cv2.GaussianBlur(rng.normal(0, 1, (96, 128, 3)).astype(np.float32), (0, 0), 2.0)
        img = np.clip(128 + tex / tex.std() * 30, 0, 255).astype(np.uint8)
        hole = np.zeros((96, 128), np.uint8)
        cv2.line(hole, (10, 80), (110, 30), 1, 9)                  # an instrument's shaft
        hole = hole > 0
        ours = inpaint(img, hole)
        telea = cv2.inpaint(img, hole.astype(np.uint8), 5, cv2.INPAINT_TELEA)
        assert np.array_equal(ours[~hole], img[~hole])
        w = hole.astype(np.float32)
        assert psnr_star(ours, img, w) > psnr_star(telea, img, w) + 0.5


def test_the_guess_takes_the_memory_where_it_covers_most_of_a_pixel():
    """Instrument pixels the observed Gaussians cover 0.9 (below `MEMORY_ALPHA`, so still completed) take the
    memory's own colour in the completed image; pixels covered 0.5 are filled in from around."""
    from surg3d_nodes.recon.keyframes import to_keyframe

    h, w = 32, 40
    rgb = np.full((h, w, 3), 100, np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[8:24, 10:30] = 255
    cam = generate(SynthConfig(width=w, height=h, frames=1, instruments=0, seed=1)).cam_left
    kf = to_keyframe(Frame(0, rgb, np.full((h, w), 0.05, np.float32), mask, np.eye(4), cam), 1.0, 0.0,
                     torch.device("cpu"))
    alpha = torch.zeros(h, w)
    alpha[8:24, 10:20] = 0.9                                   # the left half of the instrument: memory, thin
    alpha[8:24, 20:30] = 0.5                                   # the right half: a fringe
    red = torch.tensor([0.8, 0.1, 0.1])
    observed = (alpha[..., None] * red, torch.full((h, w), 0.05), alpha)
    _, _, colours, hole = hidden_seeds(kf, observed, alpha, 0, 1)[:4]
    assert hole[8:24, 10:30].all()                             # both halves are completed ...
    np.testing.assert_allclose(colours[9:23, 11:19], np.broadcast_to(red.numpy(), (14, 8, 3)), atol=0.01)
    right = colours[9:23, 22:29]                               # ... the fringe's half from its border
    assert (right[..., 1] > 0.15).all() and (right[..., 1] < 0.4).all()


def test_the_guess_keeps_tissue_the_fall_off_correction_brightens_above_one():
    """A frame divided by the camera's fall-off holds tissue brighter than 1 towards the corners; the completed
    colours beside it stay that bright (cast straight to 8 bits, 1.2 had wrapped round to 0.2)."""
    from surg3d_nodes.perception.falloff import Falloff
    from surg3d_nodes.recon.keyframes import to_keyframe

    h, w = 32, 40
    cam = generate(SynthConfig(width=w, height=h, frames=1, instruments=0, seed=1)).cam_left
    falloff = Falloff(-1.0, 0.0)
    rgb = np.full((h, w, 3), 240, np.uint8)                    # bright tissue: above 1 where the gain is under 0.94
    mask = np.zeros((h, w), np.uint8)
    mask[:, :6] = 255                                          # an instrument along the left edge
    kf = to_keyframe(Frame(0, rgb, np.full((h, w), 0.05, np.float32), mask, np.eye(4), cam), 1.0, 0.0,
                     torch.device("cpu"), falloff=falloff)
    assert float(kf.rgb[:, 6].min()) > 1.05
    none = torch.zeros(h, w)
    _, _, colours, hole = hidden_seeds(kf, (torch.zeros(h, w, 3), torch.full((h, w), 0.05), none), none, 0, 1)[:4]
    assert hole[:, :6].all()
    beside = kf.rgb[:, 6].numpy()                              # [H,3]: the tissue next to the instrument
    assert colours[:, :6].min() > 0.95 * beside.min() and colours[:, :6].max() < 1.05 * beside.max()


def test_hidden_tissue_is_inferred_then_replaced_when_it_shows(scene):
    frames = scene_frames(scene)
    rec = Reconstructor(_cfg())
    assert rec.add_frame(frames[0])
    tool = scene.frames[0].mask > 0
    assert tool.any()
    n_inf = int(rec.model.inferred.sum())
    assert 0 < n_inf < rec.model.num_gaussians
    # Every instrument pixel is covered after completion, the surface continued under it to within 1 mm.
    _, depth, alpha = rec.render_view(frames[0].pose, rec.time_of(frames[0].stamp_ns))
    assert (alpha[tool] > 0.5).mean() > 0.99
    err = np.abs(depth - scene.frames[0].tissue_depth)[tool]
    assert np.nanmean(err) < 1e-3
    # The same frame with no instrument shows all the tissue: every inferred Gaussian is replaced from then on,
    # while the first frame, fitted with them, keeps them.
    f = frames[0]
    clear = Frame(f.stamp_ns + 200_000_000, scene.frames[0].tissue_left, scene.frames[0].tissue_depth,
                  np.zeros_like(f.mask), f.pose, f.camera)
    assert rec.add_frame(clear)
    m = rec.model
    assert not (m.inferred & m.alive(rec.time_of(clear.stamp_ns))).any()
    assert int((m.inferred & m.alive(rec.time_of(f.stamp_ns))).sum()) == n_inf
    now, then = rec.view().snapshot(), rec.view(rec.time_of(f.stamp_ns)).snapshot()   # what the nodes publish
    assert not now.inferred.any() and int(then.inferred.sum()) == n_inf
    assert len(now.points) == int(m.alive(rec.latest_time()).sum()) < m.num_gaussians
    _, _, alpha = rec.render_view(f.pose, rec.time_of(clear.stamp_ns))
    assert (alpha[tool] > 0.5).mean() > 0.99          # observed Gaussians took their place
    assert rec.get_stats().inferred_share == 0.0


def test_a_guess_over_remembered_tissue_gives_way_to_the_memory(scene):
    """Inferred Gaussians lying over tissue the model has seen (in the live graph: guesses seeded next to tissue an
    instrument uncovered only within its band) are retired once an instrument hides that tissue: the memory shows
    there, not the guess in front of it."""
    frames = scene_frames(scene)
    rec = Reconstructor(_cfg())
    f0, s6 = frames[0], scene.frames[6]                     # 0.2 s apart: two knots (life spans end on one)
    assert rec.add_frame(Frame(f0.stamp_ns, scene.frames[0].tissue_left, scene.frames[0].tissue_depth,
                               np.zeros_like(f0.mask), f0.pose, f0.camera))     # all tissue seen, nothing guessed
    assert not rec.model.inferred.any()
    # Wrong guesses (magenta, 0.3 mm in front of the surface) over the tissue frame 6's instruments will hide.
    tool = s6.mask > 0
    pts_c = backproject(s6.tissue_depth - 3e-4, scene.cam_left.intrinsics())[tool]
    pts_w = (pts_c @ s6.pose[:3, :3].T + s6.pose[:3, 3]).astype(np.float32)
    m, t0 = rec.model, rec.time_of(f0.stamp_ns)
    guesses = slice(m.num_gaussians, m.num_gaussians + len(pts_w))
    m.append(m.new_gaussians(pts_w, np.tile([[1.0, 0.0, 1.0]], (len(pts_w), 1)).astype(np.float32), t0,
                             camera_rotation=f0.pose[:3, :3]), inferred=True, life=(m.birth_time(t0), float("inf")))
    rec.optimizer.append(len(pts_w))
    rec.strategy.grow(len(pts_w))
    f6 = frames[6]
    weight = rec.view(rec.time_of(f6.stamp_ns)).inferred_weight(f6.pose)
    assert weight[tool].mean() > 0.5                                       # the guesses cover the tissue
    assert rec.add_frame(f6)
    t6 = rec.time_of(f6.stamp_ns)
    # Retired where the memory covers the instrument (its alpha at least completion.MEMORY_ALPHA: 81 % of the
    # instrument's pixels after one frame of training); frame 0, fitted with the guesses, keeps them. Without the
    # retirement all stay, the inferred weight under the instrument is 0.91 and its colour 63 levels off.
    assert float(m.alive(t6)[guesses].float().mean()) < 0.3
    assert bool(m.alive(t0)[guesses].all())
    weight = rec.view(t6).inferred_weight(f6.pose)
    rgb, _, _ = rec.render_view(f6.pose, t6)
    assert weight[tool].mean() < 0.3
    err = np.abs(rgb.astype(np.float64) - s6.tissue_left)[tool].mean()
    assert err < 15.0, err                                               # the remembered tissue, not magenta


@pytest.mark.parametrize("depth_off", [0.0, 0.2])
def test_tissue_an_instrument_uncovers_gets_observed_gaussians_where_its_depth_agrees(scene, depth_off):
    """An instrument moved 3 px sideways uncovers a strip of tissue the guesses seeded under it still cover within
    the margin (`complete_margin_px`, where they are not retired): the frame grows observed Gaussians there, so the
    memory of that tissue is what the frame showed, not the guess. Not where the measured depth disagrees with the
    surface the model holds there (stereo depth beside an instrument), by 20 % here."""
    frames = scene_frames(scene)
    f0, s0 = frames[0], scene.frames[0]
    rec = Reconstructor(_cfg())
    assert rec.add_frame(f0)
    tool = s0.mask > 0
    moved = np.zeros_like(tool)
    moved[:, 3:] = tool[:, :-3]
    ring = tool & ~moved
    assert ring.sum() > 50
    depth = np.where(ring, s0.tissue_depth * (1 + depth_off), s0.tissue_depth).astype(np.float32)
    f1 = Frame(f0.stamp_ns + 200_000_000, s0.tissue_left, depth, np.where(moved, 255, 0).astype(np.uint8),
               f0.pose, f0.camera)
    m = rec.model
    n0 = m.num_gaussians
    assert rec.add_frame(f1)
    t1 = rec.time_of(f1.stamp_ns)
    _, _, alpha = rec.render_view(f1.pose, t1)
    observed = alpha - rec.view(t1).inferred_weight(f1.pose)
    new = torch.zeros(m.num_gaussians, dtype=torch.bool)
    new[n0:] = True
    kf = rec.store.recent[-1]
    grown_in_ring = kf.camera.sees(m.evaluate(t1)["means"].detach(), torch.as_tensor(ring)) & new & ~m.inferred
    if depth_off == 0.0:
        # A Gaussian grown at each of the strip's 123 pixels, its cover by observed Gaussians 0.73 (without the rule:
        # 3 grown, the cover 0.24: the guesses make the rest)
        assert int(grown_in_ring.sum()) > 0.8 * ring.sum()
        assert observed[ring].mean() > 0.5, observed[ring].mean()
    else:
        assert int(grown_in_ring.sum()) < 0.1 * ring.sum()      # 3, as without the rule (by alpha < 0.5)


def test_guesses_are_put_back_on_the_surface_completed_at_each_frame(scene):
    """Guesses moved 1 mm towards the camera (as the fringe's steps once took them) are back on the surface
    completed at the next frame, along their rays: there they lie as deep as the same guesses never moved, from
    that frame's time on; the frame fitted before keeps them where they were."""
    frames = scene_frames(scene)
    f0, f1 = frames[0], frames[1]
    depths = {}
    for push in (0.0, 1e-3):
        rec = Reconstructor(_cfg(knot_spacing_s=1e-3))      # a knot per frame: the past is frame 0's knot
        assert rec.add_frame(f0)
        m, t0 = rec.model, rec.time_of(f0.stamp_ns)
        guesses = torch.nonzero(m.inferred).squeeze(1)
        assert guesses.numel() > 0
        with torch.no_grad():
            centre = torch.as_tensor(f0.pose[:3, 3], dtype=torch.float32)
            m.params["means"][guesses] -= push * torch.nn.functional.normalize(m.params["means"][guesses] - centre,
                                                                               dim=-1)
        before = m.evaluate(t0)["means"][guesses].clone()
        assert rec.add_frame(f1)
        torch.testing.assert_close(m.evaluate(t0)["means"][guesses], before)
        t1 = rec.time_of(f1.stamp_ns)
        alive = guesses[m.alive(t1)[guesses]]
        pose = torch.as_tensor(f1.pose, dtype=torch.float32)
        depths[push] = ((m.evaluate(t1)["means"].detach()[alive] - pose[:3, 3]) @ pose[:3, :3])[:, 2]
    assert len(depths[0.0]) == len(depths[1e-3]) > 20           # the same guesses carried on (the rest retired)
    gap = (depths[1e-3] - depths[0.0]).abs() * 1000
    assert float(gap.median()) < 0.02 and float(gap.max()) < 0.2, gap  # mm; the push was 1 mm


def test_the_remembered_view_shows_hidden_tissue_as_it_was_seen(scene):
    """Behind an instrument a Gaussian's colour is fitted to its fringe over the tissue around; the view the
    de-occlusion takes shows the colour it had when a frame last showed its centre as tissue. Magenta written
    into the hidden Gaussians' colour track after the instrument came (a fringe gone wrong) shows in the plain
    render, not in the remembered one; earlier times remember what they had."""
    frames = scene_frames(scene)
    f0, s6 = frames[0], scene.frames[6]
    rec = Reconstructor(_cfg(knot_spacing_s=1e-3))
    assert rec.add_frame(Frame(f0.stamp_ns, scene.frames[0].tissue_left, scene.frames[0].tissue_depth,
                               np.zeros_like(f0.mask), f0.pose, f0.camera))   # all tissue seen
    m = rec.model
    t0 = rec.time_of(f0.stamp_ns)
    seen0 = m.remembered_at(t0).clone()
    f6 = frames[6]
    assert rec.add_frame(f6)
    t6 = rec.time_of(f6.stamp_ns)
    tool = s6.mask > 0
    kf = rec.store.recent[-1]
    hidden = ~kf.camera.sees(m.evaluate(t6)["means"].detach(), kf.tissue > 0.5) & ~m.inferred & m.alive(t6)
    assert int(hidden.sum()) > 20
    rows = torch.nonzero(hidden).squeeze(1)
    base = SH_C0 * m.params["sh_dc"].detach()[rows] + 0.5
    m.fit_track("col_knots", t6, rows, torch.tensor([1.0, 0.0, 1.0]) - base)
    plain, _, _ = rec.render_view(f6.pose, t6)
    remembered, _, _ = rec.render_view(f6.pose, t6, remembered=True)
    err = lambda img: np.abs(img.astype(np.float64) - s6.tissue_left)[tool].mean()  # noqa: E731
    assert err(plain) > 30.0 and err(remembered) < 15.0, (err(plain), err(remembered))   # 99 and 10 levels
    torch.testing.assert_close(m.remembered_at(t0)[: len(seen0)], seen0)


def test_the_remembered_view_takes_the_texture_the_newest_frames_showed(scene):
    """Tissue that a frame showed and the next one hides behind an instrument: the view the de-occlusion takes
    (remembered, with the frame detail) shows the texture that frame saw, where the Gaussians hold none of it (every
    colour and every memory made flat grey)."""
    frames = scene_frames(scene)
    rec = Reconstructor(_cfg())
    for f in frames[:6]:
        assert rec.add_frame(f)
    m = rec.model
    with torch.no_grad():
        for name in ("sh_dc", "col_knots", "sh_rest"):
            m.params[name].zero_()
        m.remembered[:] = 0.5
    t5 = rec.time_of(frames[5].stamp_ns)
    hidden = (scene.frames[5].mask > 0) & (scene.frames[4].mask == 0)
    assert hidden.sum() > 20
    err = lambda img: np.abs(img.astype(np.float64) - scene.frames[5].tissue_left)[hidden].mean()  # noqa: E731
    alone, _, _ = rec.render_view(frames[5].pose, t5, remembered=True)
    detail, _, _ = rec.render_view(frames[5].pose, t5, detail=True, remembered=True)
    assert err(detail) < 0.6 * err(alone), (err(detail), err(alone))   # 24 against 50 grey levels


def test_a_checkpoint_without_memories_loads_and_a_wrong_one_is_named(scene):
    """A checkpoint from before the remembered colours restores with each Gaussian's base colour as its memory; a
    memory of the wrong shape or type is refused with a message naming it."""
    rec = Reconstructor(_cfg())
    rec.add_frame(scene_frames(scene)[0])
    state = rec.state_dict()
    old = {k: v for k, v in state.items() if k != "remembered"}
    back = Reconstructor(_cfg())
    back.load_state_dict(old)
    base = (SH_C0 * back.model.params["sh_dc"].detach() + 0.5).clamp(0, 1)
    torch.testing.assert_close(back.model.remembered_at(0.0), base)
    for bad in (state["remembered"][:, :, :2], "red"):
        with pytest.raises(ValueError, match="remembered"):
            Reconstructor(_cfg()).load_state_dict({**state, "remembered": bad})


def test_completion_can_be_switched_off(scene):
    rec = Reconstructor(_cfg(complete_hidden=False))
    rec.add_frame(scene_frames(scene)[0])
    assert rec.model.num_gaussians > 0 and not rec.model.inferred.any()


def test_flag_survives_densification_checkpoint_and_ply(scene, tmp_path):
    strategy = DefaultStrategy(grad_threshold=0.0, split_radius_px=3.0, prune_opacity=0.0)
    rec = Reconstructor(_cfg(), strategy=strategy)
    rec.add_frame(scene_frames(scene)[0])
    m = rec.model
    n0, flag0 = m.num_gaussians, m.inferred.clone()
    m.life[:, 0] = -1.0 - torch.arange(n0, dtype=torch.float64)    # distinct spans, to follow them
    life0 = m.life.clone()
    m.remembered[:] = torch.rand(m.remembered.shape)                # distinct memories too
    mem0 = m.remembered.clone()
    assert flag0.any() and (~flag0).any()
    # Every Gaussian is a candidate: odd ones split (large on screen), even ones are cloned.
    strategy.grad_acc[:] = 1.0
    strategy.grad_cnt[:] = 1.0
    strategy.max_rad[:] = torch.arange(n0) % 2 * 10.0
    first = m.params["means"].detach().clone()
    strategy.refine(m, rec.optimizer, rec.scene_depth)
    clone, split = torch.arange(0, n0, 2), torch.arange(1, n0, 2)
    assert m.num_gaussians == clone.numel() * 2 + split.numel() * 2
    assert m.inferred.shape == (m.num_gaussians,)
    # Kept parents (the cloned ones), then their clones, then two children per split parent, in order.
    expect = torch.cat([flag0[clone], flag0[clone], flag0[split], flag0[split]])
    assert torch.equal(m.inferred, expect)
    assert torch.equal(m.life, torch.cat([life0[clone], life0[clone], life0[split], life0[split]]))
    assert torch.equal(m.remembered, torch.cat([mem0[clone], mem0[clone], mem0[split], mem0[split]]))
    assert torch.equal(m.params["means"].detach()[clone.numel():2 * clone.numel()], first[clone])
    rec.step(StepSchedule(densify=False))      # the model still trains after the refinement
    path = save_checkpoint(rec, tmp_path / "c.pt")
    back = load_reconstructor(path, device="cpu")
    assert torch.equal(back.model.inferred, m.inferred) and torch.equal(back.model.life, m.life)
    assert torch.equal(back.model.remembered, m.remembered)
    ply = save_ply(tmp_path / "m.ply", m, 0.0)
    raw = ply.read_bytes()
    head, body = raw.split(b"end_header\n", 1)
    names = [ln.split()[-1].decode() for ln in head.splitlines() if ln.startswith(b"property")]
    assert names[-1] == "inferred"
    data = np.frombuffer(body, dtype=[(k, "<f4") for k in names])
    assert np.array_equal(data["inferred"] > 0.5, m.inferred.numpy())


def test_the_deoccluded_view_takes_the_render_under_the_instrument_in_the_live_light():
    """The model remembers the tissue as an earlier frame showed it (here 20 % darker, rendered at the cover its
    Gaussians were fitted with, 0.97); some rows under the instrument are guesses (inferred Gaussians, half
    covering). Under the instrument the view shows the memory as rendered, moved by the live image's difference
    from the render around the instrument, and the guesses un-premultiplied, in their own colour; elsewhere the
    live image, untouched."""
    yy, xx = np.mgrid[0:48, 0:64]
    tissue = np.stack([120 + 40 * np.sin(xx / 5.0), 90 + 30 * np.cos(yy / 4.0), 80 + 0 * xx], -1).astype(np.float32)
    mask = np.zeros((48, 64), np.uint8)
    mask[15:30, 20:44] = 255
    tool = mask > 0
    live = np.where(tool[..., None], 200.0, tissue).astype(np.uint8)           # the instrument in front
    alpha = np.full((48, 64), 0.97, np.float32)
    render = 0.8 * tissue                                                       # memory: what the model predicts
    inferred = np.zeros((48, 64), np.float32)
    guess = np.zeros((48, 64), bool)
    guess[20:25] = True
    alpha[guess], inferred[guess] = 0.5, 0.5
    render[guess] = 0.7 * tissue[guess] * 0.5                                    # a guess, half covering
    render = (render + 0.5).astype(np.uint8)
    out = deoccluded(live, render, alpha, mask, inferred)
    assert np.array_equal(out[~tool], live[~tool])
    mem = tool & ~guess
    err = np.abs(out.astype(np.float32) - tissue)[mem].mean()
    err_render = np.abs(render.astype(np.float32) - tissue)[mem].mean()
    assert err < 0.2 * err_render, (err, err_render)
    # 1.5 levels: the half-covered guess's uint8 rounding (0.5) doubled by the division, and the output's own.
    assert np.abs(out.astype(np.float32) - 0.7 * tissue)[tool & guess].max() <= 1.5, "a guess keeps its own colour"
    # Dividing the memory by its alpha (as before 2026-12-06) makes it 3 % too bright: the view takes it as rendered.
    same_light = deoccluded((0.8 * tissue + 0.5).astype(np.uint8) * ~tool[..., None] + live * tool[..., None],
                            render, alpha, mask, inferred)
    assert np.abs(same_light.astype(np.float32) - render)[mem].max() <= 1.0
    assert np.array_equal(deoccluded(live, render, alpha, np.zeros_like(mask), inferred), live)


def test_tint_marks_only_inferred_pixels():
    rgb = np.full((4, 4, 3), 100, np.uint8)
    w = np.zeros((4, 4), np.float32)
    w[0, 0] = 1.0
    out = tint_inferred(rgb, w)
    assert np.array_equal(out[1:], rgb[1:]) and not np.array_equal(out[0, 0], rgb[0, 0])


def test_retired_gaussians_make_room_before_the_present_is_short(scene):
    """At the Gaussian budget, retired Gaussians (kept for the fitted past) go first, the longest retired first;
    the Gaussians alive now are kept."""
    frames = scene_frames(scene)
    rec = Reconstructor(_cfg())
    rec.add_frame(frames[0])
    m = rec.model
    n = m.num_gaussians
    m.life[:10, 1] = torch.arange(10, 0, -1, dtype=torch.float64)     # ten retired, 0 retired the latest
    rec.cfg.max_gaussians = n
    assert rec.room(0) == 0 and m.num_gaussians == n
    assert rec.room(4) == 4 and m.num_gaussians == n - 4
    assert m.life[:6, 1].tolist() == [10.0, 9.0, 8.0, 7.0, 6.0, 5.0]   # 1-4 were retired longest
    assert rec.step(StepSchedule(densify=False)) and rec.optimizer.m["means"].shape[0] == m.num_gaussians
    assert rec.room(100) == 10 and torch.isinf(m.life[:, 1]).all()     # then the present is short


def test_a_new_frame_leaves_the_frames_already_fitted_as_they_were(scene):
    """Growth, flow tracks, completion (its recolouring too) and the colour fit change the model from the knot
    before the new frame on: what the earlier frames were fitted to stays, bit for bit."""
    frames = scene_frames(scene)
    rec = Reconstructor(_cfg(knot_spacing_s=1e-3))
    shown: dict[int, np.ndarray] = {}
    for f in frames[:5]:
        assert rec.add_frame(f)
        shown[f.stamp_ns] = rec.render_view(f.pose, rec.time_of(f.stamp_ns))[0]
    assert rec.get_stats().inferred_share > 0, "the instruments hid tissue: completion ran"
    for f in frames[:4]:
        again = rec.render_view(f.pose, rec.time_of(f.stamp_ns))[0]
        assert np.array_equal(again, shown[f.stamp_ns]), f"frame {f.stamp_ns} changed after later frames came"


def test_life_spans_fade_between_knots_as_the_tracks_do():
    """Visibility is a piecewise-linear track over the knots: 0 or 1 at every knot, as the life span (born,
    retired] says; a time between two knots blends the two states."""
    m = GaussianModel(GaussianConfig(knot_spacing=0.1, knots_at_frames=False))
    m.ensure_time(0.3)                                        # knots 0, 0.1, 0.2, 0.3
    m.append(m.new_gaussians(np.full((3, 3), 0.1), np.full((3, 3), 0.5), 0.0),
             life=torch.tensor([[-np.inf, np.inf], [m.knot_times[1], np.inf], [-np.inf, m.knot_times[2]]],
                               dtype=torch.float64))
    k = m.knot_times
    expect = {k[0]: [1, 0, 1], k[1]: [1, 0, 1], (k[1] + k[2]) / 2: [1, 0.5, 1], k[2]: [1, 1, 1],
              (k[2] + k[3]) / 2: [1, 1, 0.5], k[3]: [1, 1, 0]}
    for t, vis in expect.items():
        np.testing.assert_allclose(m.visibility(t).numpy(), vis, atol=1e-6, err_msg=f"t={t}")
        assert m.alive(t).tolist() == [v > 0 for v in vis]
    o = m.evaluate((k[1] + k[2]) / 2)["opacities"].detach()
    assert abs(float(o[1] / o[0]) - 0.5) < 1e-6
