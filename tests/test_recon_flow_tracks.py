"""Scene-flow track starts (core.flow_tracks): the deforming synthetic tissue is followed before any
training iteration, and the knot update is the least-norm one."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.metrics import masked_psnr
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.flow_tracks import FlowTrackConfig, _correct_drift, _sample, _Targets, update_tracks
from surg3d_nodes.recon.gaussians import GaussianConfig, GaussianModel
from surg3d_nodes.recon.online import OnlineTrainer
from surg3d_nodes.recon.runner import Reconstructor

torch.set_num_threads(1)


def test_fit_track_changes_only_the_later_knot():
    model = GaussianModel(GaussianConfig(knot_spacing=1.0, knots_at_frames=False))
    model.append(model.new_gaussians(np.array([[0.0, 0.0, 1.0], [0.1, 0.0, 1.0]]), np.full((2, 3), 0.5), 0.0))
    model.ensure_time(2.0)
    rows = torch.tensor([1])
    model.fit_track("pos_knots", 0.75, rows, torch.tensor([[0.3, 0.0, 0.0]]))
    k = model.params["pos_knots"].detach()
    assert k[1, :, 0].tolist() == pytest.approx([0.0, 0.4, 0.0])   # exact: 0.75 * 0.4 = 0.3; past kept
    assert model.track_at(0.75, "pos_knots")[1, 0].item() == pytest.approx(0.3)
    model.fit_track("pos_knots", 1.25, rows, torch.tensor([[1.4, 0.0, 0.0]]))
    # Early in the interval the step is limited to twice the residual (1.4 - 0.3): knot 2 = 0 + 2.2.
    assert model.params["pos_knots"][1, :, 0].tolist() == pytest.approx([0.0, 0.4, 2.2])
    assert torch.all(model.params["pos_knots"][0] == 0)           # other Gaussians untouched
    model.fit_track("pos_knots", 1.0, rows, torch.tensor([[0.5, 0.0, 0.0]]))   # on a knot: that knot
    assert model.params["pos_knots"][1, :, 0].tolist() == pytest.approx([0.0, 0.5, 2.2])


def test_flow_tracks_follow_the_deforming_tissue():
    scene = generate(SynthConfig(width=128, height=96, frames=16, instruments=1, seed=3))
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
    last = scene.frames[-1]
    tissue = (last.mask == 0).astype(np.float32)
    out = {}
    for flow in (True, False):
        tr = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, num_threads=1,
                                         flow_tracks=flow, colour_fit_iterations=0))
        for f in frames:
            tr.add_frame(f)             # ingestion only: no training iteration, no colour fit
        rgb, depth, _ = tr.render_view(last.pose, tr.time_of(last.stamp_ns))
        err = np.abs(depth - last.depth)[tissue > 0]
        out[flow] = (masked_psnr(rgb, last.left, tissue), float(np.nanmedian(err)), tr.get_stats(), tr)
    (p_on, e_on, st_on, tr_on), (p_off, e_off, _, _) = out[True], out[False]
    print(f"\nlast frame without training: flow tracks {p_on:.2f} dB, depth error {e_on * 1e3:.2f} mm; "
          f"without {p_off:.2f} dB, {e_off * 1e3:.2f} mm; {st_on.flow_tracked} Gaussians moved")
    assert st_on.flow_tracked > 0.8 * tr_on.model.num_gaussians
    # Followed laterally by the flow and along the optical axis by the depth change (measured 1.22 -> 0.12 mm).
    assert p_on > p_off + 0.4 and e_on < 0.5 * e_off


def test_tiny_images_are_not_flow_tracked():
    """Below min_width (96 px) the 8-px DIS patches cover too much of the image; measured on the 64x48
    de-occlusion scene, tracking there cost 4 dB, so it is skipped."""
    scene = generate(SynthConfig(width=64, height=48, frames=3, instruments=1, seed=3))
    tr = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, num_threads=1))
    for f in scene.frames:
        tr.add_frame(Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left))
    assert tr.get_stats().frames_used == 3 and tr.get_stats().flow_tracked == 0


def test_sampling_many_points():
    """Full-resolution models project far more than cv2.remap's 32767-column limit of points (a 640x512
    dVRK run crashed the training thread here)."""
    rng = np.random.default_rng(0)
    img = rng.random((50, 60, 3)).astype(np.float32)
    u, v = rng.random(70_000) * 59, rng.random(70_000) * 49
    u0, v0 = np.floor(u).astype(int), np.floor(v).astype(int)
    a, b = (u - u0)[:, None], (v - v0)[:, None]
    u1, v1 = np.minimum(u0 + 1, 59), np.minimum(v0 + 1, 49)
    ref = (img[v0, u0] * (1 - a) * (1 - b) + img[v0, u1] * a * (1 - b) + img[v1, u0] * (1 - a) * b
           + img[v1, u1] * a * b)
    np.testing.assert_allclose(_sample(img, u, v), ref, atol=1e-5)
    assert _sample(img[..., 0], u[:5], v[:5]).shape == (5,) and _sample(img, u[:0], v[:0]).shape == (0, 3)


def test_flow_at_a_reduced_width_follows_like_full_width():
    """Wide images get their flow at `max_flow_width` (the live budget at 640x512): the tracks it gives match
    those from the full-width flow."""
    # Measured: no tracks 28.92 dB / 0.61 mm; full-width flow 30.17 dB / 0.068 mm; half width 30.08 dB / 0.066 mm.
    scene = generate(SynthConfig(width=256, height=192, frames=6, instruments=1, seed=3))
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
    last = scene.frames[-1]
    tissue = (last.mask == 0).astype(np.float32)
    scores = {}
    for width in (None, 256, 128):
        tr = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, num_threads=1,
                                         flow_tracks=False, colour_fit_iterations=0))
        tr.add_frame(frames[0])
        prev = tr.store.recent[-1]
        for f in frames[1:]:
            tr.add_frame(f)
            cur = tr.store.recent[-1]
            if width is not None:
                assert update_tracks(tr.model, prev, cur, tr.scene_depth, FlowTrackConfig(max_flow_width=width))
            prev = cur
        rgb, depth, _ = tr.render_view(last.pose, tr.time_of(last.stamp_ns))
        err = float(np.nanmedian(np.abs(depth - last.depth)[tissue > 0]))
        scores[width] = (masked_psnr(rgb, last.left, tissue), err)
    print(f"\nno tracks {scores[None]}, full-width flow {scores[256]}, half-width flow {scores[128]}")
    assert scores[128][0] > scores[None][0] + 0.4 and abs(scores[128][0] - scores[256][0]) < 0.3
    assert scores[128][1] < 0.5 * scores[None][1]


def test_a_backlog_gets_one_flow_update_at_its_newest_frame():
    """Frames queued while the trainer was busy are all used, but only the newest starts its deformation
    from the flow (from the last tracked frame) and gets its colours fitted, so a backlog does not cost one
    flow computation and one fit per frame."""
    scene = generate(SynthConfig(width=128, height=96, frames=6, instruments=1, seed=3))
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
    tr = OnlineTrainer(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, num_threads=1))
    for f in frames:                      # queued before the thread starts: one backlog
        assert tr.ingest(f)
    tr.start()
    try:
        assert tr.wait_processed(60)
    finally:
        tr.stop()
    st = tr.get_stats()
    assert st.frames_used == 6 and st.flow_frames == 1 and st.flow_tracked > 0
    assert st.colour_fit_steps == TrainerConfig.colour_fit_iterations + 1     # one colour fit too
    assert tr.recon.track_ref.stamp_ns == frames[-1].stamp_ns


def test_tissue_hidden_by_an_instrument_moves_with_the_tissue_around_it():
    """Tissue sliding 3 px to the right under a still instrument: the Gaussians behind the instrument, which no
    flow reaches, move with the flow continued under it (`hidden_motion`); without, those beyond the neighbour
    reach stay where they were last seen."""
    w, h, z, fx, shift = 160, 128, 0.05, 150.0, 3
    rng = np.random.default_rng(0)
    texture = cv2.GaussianBlur(rng.random((h, w + shift)).astype(np.float32), (0, 0), 2.0)
    texture = (texture - texture.min()) / np.ptp(texture)
    bar = np.zeros((h, w), bool)
    bar[:, 60:90] = True                                  # the instrument, 30 px wide, in front of the tissue
    K = np.array([[fx, 0, w / 2], [0, fx, h / 2], [0, 0, 1]])

    def view(t: float, tissue_image: np.ndarray) -> SimpleNamespace:
        rgb = np.where(bar[..., None], 0.8, tissue_image[..., None].repeat(3, -1)).astype(np.float32)
        return SimpleNamespace(rgb=torch.from_numpy(rgb), depth=torch.from_numpy(np.where(bar, 0.04, z).astype(
            np.float32)), tissue=torch.from_numpy((~bar).astype(np.float32)), pose=np.eye(4), K=K, t=t)

    prev, cur = view(0.0, texture[:, shift:]), view(1.0, texture[:, :w])     # cur = prev moved right by 3 px
    vv, uu = np.mgrid[4:h - 4:4, 4:w - 4:4]
    pts = np.stack([(uu - w / 2) / fx * z, (vv - h / 2) / fx * z, np.full(uu.shape, z)], -1).reshape(-1, 3)
    middle = np.abs(pts[:, 0] / z * fx + w / 2 - 75) < 4        # behind the instrument's middle
    moved = {}
    for hidden_motion in (True, False):
        model = GaussianModel(GaussianConfig(knot_spacing=1.0, knots_at_frames=False))
        model.append(model.new_gaussians(pts, np.full((len(pts), 3), 0.5), 0.0))
        model.ensure_time(1.0)
        update_tracks(model, prev, cur, z, FlowTrackConfig(hidden_motion=hidden_motion))
        moved[hidden_motion] = (model.evaluate(1.0)["means"].detach().numpy() - pts)[middle, 0] / z * fx  # px
    print(f"\nbehind the instrument, moved (px): {np.median(moved[True]):.2f} with the continued flow, "
          f"{np.median(moved[False]):.2f} without")
    assert np.all(np.abs(moved[True] - shift) < 0.5) and np.all(np.abs(moved[False]) < 0.1)


def _sliding_texture_frames(step_px: float, n: int) -> tuple[list[Frame], float, float, np.ndarray]:
    """A flat textured tissue 5 cm from a still camera sliding right by `step_px` per frame (30 Hz), the texture
    evaluated exactly at each shift (a sum of sinusoids, no resampling), behind a still instrument bar."""
    w, h, z, fx = 160, 128, 0.05, 150.0
    rng = np.random.default_rng(0)
    k = rng.uniform(0.15, 0.6, (40, 2)) * rng.choice([-1, 1], (40, 2))
    phase, amp = rng.uniform(0, 2 * np.pi, 40), rng.uniform(0.5, 1.0, 40)
    vv, uu = np.mgrid[0:h, 0:w].astype(np.float64)
    bar = np.zeros((h, w), bool)
    bar[:, 70:95] = True
    cam = CameraModel(w, h, [[fx, 0, w / 2], [0, fx, h / 2], [0, 0, 1]])
    frames = []
    for i in range(n + 1):
        texture = sum(a * np.sin(kx * (uu - step_px * i) + ky * vv + p) for (kx, ky), a, p in
                      zip(k, amp, phase, strict=True))
        grey = np.clip(0.5 + 1.5 * texture / amp.sum(), 0, 1)
        rgb = (np.where(bar, 0.8, grey)[..., None].repeat(3, -1) * 255 + 0.5).astype(np.uint8)
        frames.append(Frame(i * 33_333_333, rgb, np.where(bar, 0.04, z).astype(np.float32),
                            bar.astype(np.uint8) * 255, np.eye(4), cam))
    return frames, z, fx, bar


def _ingested(frames: list[Frame], **cfg) -> tuple[Reconstructor, np.ndarray, np.ndarray]:
    """A trainer that took `frames` without training (the flow alone moves the tracks) and the positions at the
    first and the last frame of the Gaussians the first frame made."""
    tr = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, num_threads=1,
                                     colour_fit_iterations=0, complete_hidden=False, **cfg))
    for f in frames:
        tr.add_frame(f)
    t0, t1 = tr.time_of(frames[0].stamp_ns), tr.time_of(frames[-1].stamp_ns)
    first = (tr.model.life[:, 0] <= t0).numpy()
    a, b = (tr.model.evaluate(t)["means"].detach().numpy()[first] for t in (t0, t1))
    return tr, a, b


@pytest.mark.parametrize("step_px", [0.3, 0.7])
def test_the_anchor_takes_the_chained_flows_drift_off(step_px):
    """DIS overestimates sub-pixel motion by a few percent (+0.024 px of 0.3, +0.018 of 0.7; within 1 % from a pixel
    on), the same way across the view; chained frame to frame the tracks slide off the texture. The flow from the
    anchor frame, four frames back at 30 Hz (`flow_anchor_s`), measures the larger motion since and takes that
    drift off."""
    n = 24
    frames, z, fx, _ = _sliding_texture_frames(step_px, n)
    err = {}
    for anchor_s in (0.0, TrainerConfig.flow_anchor_s):
        _, a, b = _ingested(frames, flow_anchor_s=anchor_s)
        x0 = a[:, 0] / a[:, 2] * fx + 80
        x1 = x0 + step_px * n
        tissue = ((x1 < 60) | (x0 > 105)) & (x0 > 4) & (x1 < 150)    # shown throughout, clear of the borders
        err[anchor_s] = float(np.mean((b[tissue, 0] - a[tissue, 0]) / z * fx - step_px * n))
    chained, anchored = err[0.0], err[TrainerConfig.flow_anchor_s]
    print(f"\n{step_px} px a frame, mean error after {n} frames: chained {chained:+.3f} px, "
          f"anchored {anchored:+.3f} px")
    assert abs(anchored) < 0.6 * abs(chained)


def test_tissue_beside_and_under_a_still_instrument_keeps_its_pace():
    """DIS smooths its flow across the edges of a still instrument: tissue sliding past it moved 10-17 % short in
    the last 10 px before it and 12 % short under it (the flow continued there). The flow is computed with the
    instruments blurred over from the tissue around them (measured: 3-4 % short)."""
    step, n = 0.7, 12
    frames, z, fx, _ = _sliding_texture_frames(step, n)
    _, a, b = _ingested(frames)
    x1 = a[:, 0] / a[:, 2] * fx + 80 + step * n               # where the texture took them (the bar: 70-95 px)
    pace = (b[:, 0] - a[:, 0]) / z * fx / (step * n)
    beside, under = pace[(x1 >= 60) & (x1 < 70)], pace[(x1 >= 70) & (x1 < 80)]
    print(f"\npace of the texture: beside the instrument {beside.mean():.3f}, under it {under.mean():.3f}")
    assert beside.size > 300 and under.size > 300
    assert beside.mean() > 0.94 and under.mean() > 0.94


def test_the_chain_keeps_its_steps_less_its_drift_and_hidden_tissue_takes_the_anchors_flow():
    """`_correct_drift`: the chain's targets less their median difference from the anchor's flow over the tissue
    both follow (a Gaussian's own offset, what training gave it since, is kept); tissue hidden since the anchor
    (moved under an instrument by the anchor's flow, not shown to the chain) takes the anchor's targets, also where
    the chain does not reach it."""
    rng = np.random.default_rng(0)
    truth = rng.normal(size=(130, 3))
    own = rng.normal(scale=0.01, size=(130, 3))           # what training moved each Gaussian since the anchor
    drift = np.array([0.2, -0.1, 0.05])
    hidden_direct = np.zeros(130, bool)
    hidden_direct[100:105] = hidden_direct[120] = True
    chain_rows = np.r_[0:111]
    seen, hidden = np.r_[np.ones(100, bool), np.zeros(11, bool)], np.r_[np.zeros(100, bool), np.ones(10, bool), False]
    chain = _Targets(chain_rows, truth[chain_rows] + own[chain_rows] + drift, np.zeros((111, 3)), seen, hidden)
    direct_rows = np.r_[0:105, 120]
    direct = _Targets(direct_rows, truth[direct_rows] + np.where(hidden_direct[direct_rows, None], 0.3, 0.0),
                      np.ones((106, 3)), ~hidden_direct[direct_rows], hidden_direct[direct_rows])
    out = _correct_drift(chain, direct)
    pos = dict(zip(out.rows.tolist(), out.pos, strict=True))
    assert np.allclose([pos[r] for r in range(100)], truth[:100] + own[:100], atol=0.03)
    assert np.allclose([pos[r] for r in range(100, 105)], truth[100:105] + 0.3)         # the anchor's, hidden
    assert np.allclose([pos[r] for r in range(105, 111)], (truth + own)[105:111], atol=0.03)   # less the drift
    assert np.allclose(pos[120], truth[120] + 0.3) and out.col[out.rows == 120].tolist() == [[1.0, 1.0, 1.0]]
    assert sorted(out.rows.tolist()) == [*range(111), 120]
