"""The trainer: Reconstructor (frames, steps, offline loop) and OnlineTrainer (background ingestion,
pause/resume/reset, bad inputs), checkpoints, PLY, de-occlusion."""

from __future__ import annotations

import math
import struct
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from recon_support import scene_frames

from surg3d_nodes.common.camera import scale_intrinsics
from surg3d_nodes.common.metrics import psnr_star
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.io.checkpoint import load_reconstructor, save_checkpoint
from surg3d_nodes.recon.io.ply import save_ply
from surg3d_nodes.recon.online import OnlineTrainer
from surg3d_nodes.recon.runner import Reconstructor, StepSchedule, train_offline

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def scene():
    # Two instruments: the second sweeps over the tissue, so tissue it hides was seen earlier.
    return generate(SynthConfig(width=64, height=48, frames=16, instruments=2, seed=3))


def _cfg(**kw) -> TrainerConfig:
    base = dict(device="cpu", backend="torch", image_scale=1.0, refine_start=20, refine_every=20,
                add_check_every=25, knot_spacing_s=0.1, num_threads=1)
    base.update(kw)
    return TrainerConfig(**base)


def _wait(cond, timeout=30.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return False


def test_online_thread_pause_resume_reset(scene):
    tr = OnlineTrainer(_cfg())
    tr.start()
    try:
        t0 = time.monotonic()
        for f in scene_frames(scene)[:6]:
            assert tr.ingest(f)
        assert time.monotonic() - t0 < 0.5          # ingestion never waits for training
        assert tr.wait_processed(30)
        assert _wait(lambda: tr.get_stats().iterations >= 10)
        st = tr.get_stats()
        assert st.frames_used == 6 and st.keyframes == 6 and st.num_gaussians > 500
        assert st.state == "running" and st.iterations_per_second > 0 and st.loss > 0

        snap = tr.snapshot()
        n = snap.points.shape[0]
        assert snap.colors.shape == (n, 3) and snap.opacities.shape == (n,) and snap.scales.shape == (n,)
        assert np.isfinite(snap.points).all() and (snap.colors >= 0).all() and (snap.colors <= 1).all()

        tr.pause()
        time.sleep(0.3)                                # let a running iteration finish
        it = tr.get_stats().iterations
        time.sleep(0.5)
        assert tr.get_stats().iterations == it and tr.get_stats().state == "paused"
        tr.ingest(scene_frames(scene)[6])                   # frames still arrive while paused
        assert tr.wait_processed(10) and tr.get_stats().frames_used == 7
        rgb, depth, alpha = tr.render_view(scene.frames[6].pose)   # renders while paused
        assert np.isfinite(depth[alpha > 0.5]).all()
        assert rgb.shape == (48, 64, 3) and rgb.dtype == np.uint8 and alpha.mean() > 0.5
        tr.resume()
        assert tr.get_stats().state == "running"       # at once, not at the next step
        assert _wait(lambda: tr.get_stats().iterations > it + 3)

        tr.reset()
        st = tr.get_stats()
        assert st.num_gaussians == 0 and st.keyframes == 0 and st.frames_used == 0
        tr.ingest(scene_frames(scene)[7])                   # starts over from the next frame
        assert tr.wait_processed(10) and tr.get_stats().num_gaussians > 500
    finally:
        tr.stop()


def test_readers_never_wait_for_training_and_callers_get_in_at_the_next_step(scene):
    """A viewer's reads (view, snapshot, render, statistics, live pose) need no lock: they return while a step
    holds the model lock (here held by the test). A caller that changes the model (reset) gets in before the
    training thread's next step, however fast it takes the lock again (Python's locks are not fair)."""
    import threading

    tr = OnlineTrainer(_cfg())
    tr.start()
    try:
        for f in scene_frames(scene)[:4]:
            tr.ingest(f)
        assert tr.wait_processed(30) and _wait(lambda: tr.get_stats().iterations >= 5)
        read: dict[str, object] = {}
        with tr._lock:                                   # as a training step holds it
            def reads() -> None:
                read["stats"], read["pose"] = tr.get_stats(), tr.live_pose()
                read["snapshot"], read["render"] = tr.snapshot(), tr.render_view(scene.frames[3].pose)
            reader = threading.Thread(target=reads)
            reader.start()
            reader.join(20)
            assert not reader.is_alive() and len(read) == 4, "a read waited for the model lock"
        assert read["snapshot"].points.shape[0] > 500 and read["render"][0].shape == (48, 64, 3)
        assert _wait(lambda: tr.view().iteration > read["snapshot"].iteration)   # a newer copy once one was taken
        old = tr.recon
        steps = old.stats.iterations
        tr.reset()
        assert old.stats.iterations - steps <= 1, "the reset waited through training steps"
        assert tr.get_stats().num_gaussians == 0 and tr.view().snapshot().points.shape[0] == 0
    finally:
        tr.stop()


def test_bad_inputs_are_counted_not_fatal(scene):
    tr = OnlineTrainer(_cfg(iterations_per_frame=1))
    fr = scene_frames(scene)
    tr.start()
    try:
        nodepth = Frame(fr[0].stamp_ns, fr[0].rgb, None, fr[0].mask, fr[0].pose, scene.cam_left)
        tr.ingest(nodepth)                                                   # cannot initialise
        tr.ingest(fr[1])                                                     # ok: initialises
        tr.ingest(fr[1])                                                     # same stamp
        tr.ingest(fr[0])                                                     # older stamp
        tr.ingest(Frame(fr[2].stamp_ns, fr[2].rgb, fr[2].depth, fr[2].mask, None, scene.cam_left))
        nan_pose = fr[2].pose.copy()
        nan_pose[0, 3] = np.nan
        tr.ingest(Frame(fr[2].stamp_ns, fr[2].rgb, fr[2].depth, fr[2].mask, nan_pose, scene.cam_left))
        tr.ingest(Frame(fr[2].stamp_ns, fr[2].rgb[:10], fr[2].depth, fr[2].mask, fr[2].pose, scene.cam_left))
        tr.ingest(Frame(fr[2].stamp_ns, fr[2].rgb, fr[2].depth[:10], fr[2].mask, fr[2].pose, scene.cam_left))
        all_nan = np.full_like(fr[2].depth, np.nan)
        tr.ingest(Frame(fr[2].stamp_ns, fr[2].rgb, all_nan, fr[2].mask, fr[2].pose, scene.cam_left))  # used
        jump = fr[3].pose.copy()
        jump[:3, 3] += [0.5, 0, 0]
        tr.ingest(Frame(fr[3].stamp_ns, fr[3].rgb, fr[3].depth, fr[3].mask, jump, scene.cam_left))
        tr.ingest(Frame(fr[4].stamp_ns, fr[4].rgb, None, None, fr[4].pose, scene.cam_left))   # used
        assert tr.wait_processed(20)
        st = tr.get_stats()
        r = st.skip_reasons
        assert r["no_depth_for_init"] == 1 and r["out_of_order"] == 1 and r["duplicate_stamp"] == 1
        assert r["no_pose"] == 2
        assert r["bad_camera"] == 1 and r["bad_depth_shape"] == 1 and r["pose_jump"] == 1
        assert r["depth_all_invalid"] == 1
        assert st.frames_used == 3 and st.frames_received == 11
        assert st.frames_used + st.frames_skipped == st.frames_received
        assert _wait(lambda: tr.get_stats().iterations >= 3)
        assert math.isfinite(tr.get_stats().loss)
    finally:
        tr.stop()


def test_past_frames_train_at_their_own_time(scene):
    """Reordered input and a looping replay: an older frame trains at its own time, a repeat is skipped,
    and the live view follows the newest frame by arrival."""
    fr = scene_frames(scene)
    tr = Reconstructor(_cfg())
    for f in [fr[0], fr[1], fr[3], fr[2], fr[4]]:          # fr[2] arrives late
        tr.add_frame(f)
    for f in fr[:6]:                                        # the replay loops: stamps start over
        tr.add_frame(f)
    st = tr.get_stats()
    assert st.frames_used == 6 and st.frames_past == 1 and st.skip_reasons == {"duplicate_stamp": 5}
    assert st.last_frame_stamp == fr[5].stamp_ns and np.array_equal(tr.live_pose, fr[5].pose)
    t = sorted(k.t for k in tr.store.keyframes)
    np.testing.assert_allclose(t, [(f.stamp_ns - fr[0].stamp_ns) * 1e-9 for f in fr[:6]], atol=1e-9)
    # A second pass with the same stamps but a camera displaced at that moment is a pose jump.
    moved = fr[3].pose.copy()
    moved[:3, 3] += [0.2, 0.0, 0.0]
    tr2 = Reconstructor(_cfg())
    for f in [fr[0], fr[2], fr[4], Frame(fr[3].stamp_ns, fr[3].rgb, fr[3].depth, fr[3].mask, moved,
                                         scene.cam_left)]:
        tr2.add_frame(f)
    assert tr2.get_stats().skip_reasons == {"pose_jump": 1}


def test_long_pause_does_not_allocate_knots(scene):
    fr = scene_frames(scene)
    tr = Reconstructor(_cfg(max_time_gap_s=1.0))
    tr.add_frame(fr[0])
    hour = 3600 * 10**9
    later = Frame(fr[1].stamp_ns + hour, fr[1].rgb, fr[1].depth, fr[1].mask, fr[1].pose, scene.cam_left)
    tr.add_frame(later)
    st = tr.get_stats()
    assert st.frames_used == 2 and st.time_gaps_shortened == 1
    assert tr.model.num_knots <= 12                          # 1 s of model time at 0.1 s spacing
    assert tr.time_of(later.stamp_ns) == pytest.approx(1.0)
    assert tr.time_of(fr[1].stamp_ns) == pytest.approx((fr[1].stamp_ns - fr[0].stamp_ns) * 1e-9)


def test_ingest_never_blocks_when_queue_full(scene):
    tr = OnlineTrainer(_cfg(queue_size=2))             # thread not started: nothing drains the queue
    fr = scene_frames(scene)
    t0 = time.monotonic()
    results = [tr.ingest(f) for f in fr[:5]]
    assert time.monotonic() - t0 < 0.2
    assert results[:2] == [True, True] and not any(results[2:])
    assert tr.get_stats().skip_reasons["queue_full"] == 3


def _read_ply(path: Path) -> dict[str, np.ndarray]:
    """Minimal independent PLY reader (binary little-endian float vertex properties only)."""
    raw = path.read_bytes()
    end = raw.index(b"end_header\n") + len(b"end_header\n")
    lines = raw[:end].decode("ascii").splitlines()
    assert lines[0] == "ply" and lines[1] == "format binary_little_endian 1.0"
    n = int(next(ln.split()[2] for ln in lines if ln.startswith("element vertex")))
    names = [ln.split()[2] for ln in lines if ln.startswith("property float")]
    rec = len(names) * 4
    assert len(raw) - end == n * rec
    vals = struct.unpack("<" + "f" * (n * len(names)), raw[end:])
    arr = np.array(vals, dtype=np.float32).reshape(n, len(names))
    return {k: arr[:, i] for i, k in enumerate(names)}


def test_offline_checkpoint_ply_and_deocclusion(scene, tmp_path):
    fr = scene_frames(scene)
    tr = Reconstructor(_cfg())
    train_offline(tr, fr, 150)
    st = tr.get_stats()
    assert tr.steps_spent() == 150 and st.frames_used == len(fr)

    # De-occlusion: the last frame's instrument pixels whose tissue was visible in an earlier frame.
    last = scene.frames[-1]
    seen = np.zeros(last.mask.shape, bool)
    for f in scene.frames[:-1]:
        seen |= f.mask == 0
    hidden = (last.mask > 0) & seen
    assert hidden.sum() > 20
    rgb, _, alpha = tr.render_view(last.pose, tr.time_of(last.stamp_ns))
    deocc = psnr_star(rgb, last.tissue_left, hidden.astype(np.float32))
    vis = psnr_star(rgb, last.left, (last.mask == 0).astype(np.float32))
    print(f"\nde-occlusion PSNR over {hidden.sum()} instrument pixels: {deocc:.2f} dB; "
          f"tissue PSNR* {vis:.2f} dB")
    assert alpha[hidden].mean() > 0.9
    assert deocc > 20.0 and vis > 24.0

    # PLY: header names and values (at the last frame's time) read back by an independent parser.
    t_last = tr.time_of(last.stamp_ns)
    ply = _read_ply(save_ply(tmp_path / "model.ply", tr.model, t_last))
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"] + \
        [f"f_rest_{i}" for i in range(9)] + ["opacity", "scale_0", "scale_1", "scale_2",
                                             "rot_0", "rot_1", "rot_2", "rot_3", "inferred"]
    assert list(ply) == expected
    # Only the Gaussians alive then: inferred ones that later frames replaced by observed tissue are retired.
    alive = tr.model.alive(t_last).numpy()
    assert len(ply["x"]) == alive.sum() and (~alive).any()
    g = {k: v.detach().numpy()[alive] for k, v in tr.model.evaluate(t_last).items()}
    np.testing.assert_allclose(np.stack([ply["x"], ply["y"], ply["z"]], 1), g["means"], atol=1e-6)
    np.testing.assert_allclose(1 / (1 + np.exp(-ply["opacity"])), g["opacities"], atol=1e-5)
    np.testing.assert_allclose(np.exp(ply["scale_0"]), g["scales"][:, 0], rtol=1e-5)
    rgb_ply = 0.28209479177387814 * np.stack([ply[f"f_dc_{i}"] for i in range(3)], 1) + 0.5
    np.testing.assert_allclose(np.clip(rgb_ply, 0, None), g["colors"], atol=1e-5)
    q = np.stack([ply[f"rot_{i}"] for i in range(4)], 1)
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def test_checkpoint_during_training_reloads_identically(scene, tmp_path):
    fr = scene_frames(scene)
    tr = OnlineTrainer(_cfg())
    tr.start()
    try:
        for f in fr[:5]:
            tr.ingest(f)
        assert tr.wait_processed(30)
        assert _wait(lambda: tr.get_stats().iterations >= 5)
        path = save_checkpoint(tr, tmp_path / "ckpt.pt")        # written while training runs
        assert not list(tmp_path.glob(".*tmp*"))
    finally:
        tr.stop()
    state = torch.load(path, weights_only=True)
    loaded = load_reconstructor(path)
    # Renders of the saved parameters and of the reloaded model are identical.
    pose, t = fr[4].pose, loaded.time_of(fr[4].stamp_ns)
    from surg3d_nodes.recon.render import RenderCamera, render
    cam = RenderCamera.from_ros(pose, scene.cam_left.intrinsics(), 64, 48)
    ref = render(loaded.model, cam, t, backend="torch", params={**state["params"], "life": state["life"]})
    assert torch.equal(render(loaded.model, cam, t, backend="torch").rgb, ref.rgb)
    # A view renders the Gaussians alive then only (the torch renderer's sums depend on how many share a tile,
    # invisible ones included): so does its reference.
    alive = loaded.model.alive(t)
    ref = render(loaded.model, cam, t, backend="torch",
                 params={**{k: v[alive] for k, v in state["params"].items()}, "life": state["life"][alive]})
    out = loaded.render_view(pose, t)
    assert np.array_equal(out[0], (ref.rgb.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy())
    st = loaded.get_stats()
    assert st.keyframes == 5 and st.frames_used == 5 and st.iterations >= 5
    # ... and training continues from it.
    train_offline(loaded, [], 5)
    assert loaded.steps_spent() == st.iterations + st.colour_fit_steps + 5
    state["version"] = 1
    old = tmp_path / "old.pt"
    torch.save(state, old)
    with pytest.raises(ValueError, match="format version 1"):
        load_reconstructor(old)
    with pytest.raises(ValueError, match="not a surg3d"):
        bad = tmp_path / "bad.pt"
        torch.save({"x": 1}, bad)
        load_reconstructor(bad)


def test_checkpoint_of_an_empty_model_resumes_into_a_trainer_that_learns(scene, tmp_path):
    """A checkpoint written before the first frame (the monitor's timer does not wait for one) restores a
    trainer that starts like a new one: the first frame sets the scene depth and training runs."""
    path = save_checkpoint(Reconstructor(_cfg()), tmp_path / "empty.pt")
    loaded = load_reconstructor(path)
    assert loaded.model.num_gaussians == 0
    train_offline(loaded, scene_frames(scene)[:3], 10)
    assert loaded.scene_depth > 0 and math.isfinite(loaded.scene_depth)
    assert loaded.steps_spent() == 10 and loaded.get_stats().iterations > 0 and loaded.model.num_gaussians > 0


def test_knot_budget_bounds_memory_and_keeps_motion(scene, tmp_path):
    """A long sequence with a small knot budget: the knot count stays bounded, the newest knots keep full
    resolution, the removed knots are the ones a straight line explains, and a checkpoint keeps the times."""
    from surg3d_nodes.recon.gaussians import GaussianConfig, GaussianModel

    model = GaussianModel(GaussianConfig(knot_spacing=0.1, max_knots=8, knots_at_frames=False))
    model.append(model.new_gaussians(np.array([[0.0, 0.0, 0.1], [0.01, 0.0, 0.1]]), np.full((2, 3), 0.5), 0.0))
    removed = []
    for step in range(1, 31):
        t = 0.1 * step
        model.ensure_time(t)
        with torch.no_grad():                       # x moves linearly until 1.0 s, then stays (a kink)
            model.params["pos_knots"][:, -1, 0] = min(t, 1.0) * 0.01
        removed += model.simplify_knots(keep_recent=3)
        assert model.num_knots <= 8 and len(model.knot_times) == model.params["col_knots"].shape[1]
    assert len(removed) == 31 - 8
    kt = model.knot_times
    assert kt[0] == 0.0 and np.allclose(kt[-3:], [2.8, 2.9, 3.0])
    assert any(abs(x - 1.0) < 1e-9 for x in kt)     # the kink survives: a line through it is wrong
    for t in (0.35, 0.8, 1.0, 1.7, 2.95):
        x = model.evaluate(t)["means"][0, 0].item()
        assert x == pytest.approx(min(t, 1.0) * 0.01, abs=1e-6)

    fr = scene_frames(scene)
    tr = Reconstructor(_cfg(knot_spacing_s=0.02, knots_at_frames=False, max_knots=6, recent_knots=2))
    train_offline(tr, fr, 10)
    st = tr.get_stats()
    assert st.frames_used == len(fr) and tr.steps_spent() == 10
    assert tr.model.num_knots == 6
    for name in tr.model.KNOT_KEYS:
        assert tr.optimizer.m[name].shape == tr.model.params[name].shape
        assert tr.optimizer.steps[name].shape == (6,)
    # the higher SH coefficients ([N, 3, 3]) are no knots: stepped whole at every iteration
    assert tr.optimizer.m["sh_rest"].shape == tr.model.params["sh_rest"].shape
    assert tr.optimizer.steps["sh_rest"].tolist() == [tr.get_stats().iterations]
    loaded = load_reconstructor(save_checkpoint(tr, tmp_path / "k.pt"))
    assert loaded.model.knot_times == tr.model.knot_times
    _, _, alpha = loaded.render_view(fr[-1].pose, loaded.time_of(fr[-1].stamp_ns))
    assert alpha.mean() > 0.5


def test_views_finer_than_training_have_no_gaps(scene):
    """A model trained on half-size images (small initial Gaussians), viewed 4x finer than it was trained: the
    view takes the training pixel's low-pass, so it covers the tissue as the training-size view does (with the
    view's own, the Gaussians fitted to coarse pixels leave gaps between them); at the camera's own size (2x) it
    matches the camera's image better than the training-size view upsampled."""
    tr = Reconstructor(_cfg(image_scale=0.5, init_scale=0.5, seed=0))
    train_offline(tr, scene_frames(scene)[:4], 40)
    f = scene.frames[3]
    t = tr.time_of(f.stamp_ns)
    rgb, _, alpha = tr.render_view(f.pose, t)                       # training size, 32x24
    assert rgb.shape == (24, 32, 3)
    K = scale_intrinsics(scene.cam_left.intrinsics(), 2.0, 2.0)
    rgb4, depth4, alpha4 = tr.render_view(f.pose, t, 128, 96, K)
    assert rgb4.shape == (96, 128, 3) and depth4.shape == alpha4.shape == (96, 128)
    cover, cover4 = float((alpha > 0.5).mean()), float((alpha4 > 0.5).mean())
    assert cover > 0.8 and cover4 > cover - 0.02, f"coverage {cover:.3f} at 32x24, {cover4:.3f} at 128x96"
    assert np.isnan(depth4[alpha4 < 0.5]).all() and np.isfinite(depth4[alpha4 >= 0.5]).all()
    own, _, alpha2 = tr.render_view(f.pose, t, 64, 48, scene.cam_left.intrinsics())
    tissue = ((f.mask == 0) & (alpha2 > 0.5)).astype(np.float32)
    p_own = psnr_star(own, f.left, tissue)
    p_up = psnr_star(cv2.resize(rgb, (64, 48), interpolation=cv2.INTER_LINEAR), f.left, tissue)
    assert p_own > p_up, f"at 64x48: {p_own:.2f} dB, the 32x24 view upsampled {p_up:.2f} dB"


def test_display_gaussians_carry_the_training_pixels_low_pass(scene):
    """The Gaussians sent to splat viewers (`for_display`), rendered 4x finer than the training images with that
    pixel's own low-pass, look like the trainer's own view (rendered with the training pixel's); the raw
    Gaussians, rendered so, fall apart into specks."""
    from surg3d_nodes.recon.render import RenderCamera, render_evaluated

    tr = Reconstructor(_cfg(image_scale=0.5, init_scale=0.5, seed=0))
    train_offline(tr, scene_frames(scene)[:4], 40)
    f = scene.frames[3]
    t = tr.time_of(f.stamp_ns)
    K = scale_intrinsics(scene.cam_left.intrinsics(), 2.0, 2.0)
    shown, _, alpha = tr.render_view(f.pose, t, 128, 96, K)
    cam = RenderCamera.from_ros(f.pose, K, 128, 96)

    def direct(g: dict[str, np.ndarray]) -> np.ndarray:
        rgb, *_ = render_evaluated({k: torch.from_numpy(v) for k, v in g.items()}, cam, "torch")
        return (rgb.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)

    view = tr.view(t)
    raw, display = view.gaussians(), view.gaussians(for_display=True)
    assert np.array_equal(raw["means"], display["means"]) and (display["scales"] > raw["scales"]).all()
    tissue = alpha > 0.5
    p_raw, p_display = psnr_star(direct(raw), shown, tissue), psnr_star(direct(display), shown, tissue)
    assert p_display > 25 and p_display > p_raw + 2, f"direct render vs the trainer's: raw {p_raw:.1f} dB, " \
                                                      f"for display {p_display:.1f} dB"


def test_training_thread_survives_unexpected_errors(scene, monkeypatch):
    """A failing frame is skipped and a failing step is counted; the thread, the model and later frames go on."""
    tr = OnlineTrainer(_cfg())
    fr = scene_frames(scene)
    real_step, real_add = tr.recon.step, tr.recon.add_frame
    calls = {"step": 0}

    def step(schedule):
        calls["step"] += 1
        if calls["step"] == 3:
            raise RuntimeError("simulated CUDA error")
        return real_step(schedule)

    def add_frame(f, t_in=None, track=True, steps=None):
        if f.stamp_ns == fr[2].stamp_ns:
            raise ValueError("simulated bad frame")
        return real_add(f, t_in, track, steps)

    monkeypatch.setattr(tr.recon, "step", step)
    monkeypatch.setattr(tr.recon, "add_frame", add_frame)
    tr.start()
    try:
        for f in fr[:4]:
            tr.ingest(f)
        assert _wait(lambda: tr.get_stats().iterations >= 10)
        st = tr.get_stats()
        assert st.errors == 2 and st.skip_reasons.get("error") == 1 and st.frames_used == 3
        assert "simulated" in st.last_error and "test_recon_trainer.py" in st.last_error
        tr.ingest(fr[4])                                 # later frames are still used
        assert _wait(lambda: tr.get_stats().frames_used == 4)
    finally:
        tr.stop()


class _Payload:
    """Unpickling this runs code (creates a file): what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_crafted_checkpoint_is_refused_without_running_code(scene, tmp_path):
    from surg3d_nodes.recon.io.checkpoint import FORMAT, VERSION, load_checkpoint

    marker = tmp_path / "code_ran"
    crafted = tmp_path / "crafted.pt"
    torch.save({"format": FORMAT, "version": VERSION, "config": {}, "payload": _Payload(marker)}, crafted)
    tr = OnlineTrainer(_cfg())
    with pytest.raises(ValueError, match="refused: not a file of tensors and plain containers"):
        load_checkpoint(crafted, tr)
    assert not marker.exists(), "loading a checkpoint ran code from the file"
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x80\x02not a checkpoint")
    with pytest.raises(ValueError, match=r"garbage\.pt"):
        load_checkpoint(garbage, tr)
    assert tr.num_gaussians == 0 and tr.get_stats().frames_used == 0   # the trainer is left as it was


def test_a_step_trains_only_the_knots_its_frame_is_rendered_with(scene):
    """A step on a frame at a knot's time moves that knot only: the smoothness term sees its neighbours (fixed),
    and the optimizer's momentum does not carry knots the step does not render."""
    rec = Reconstructor(_cfg(knot_spacing_s=1e-3, refine_start=10_000))
    frames = scene_frames(scene)
    for f in frames[:4]:
        assert rec.add_frame(f)
    for _ in range(10):                                  # moments on the earlier knots
        rec.step(StepSchedule(recent_fraction=0.0, densify=False))
    knots = {k: rec.model.params[k].detach().clone() for k in rec.model.KNOT_KEYS}
    newest = rec.model.num_knots - 1
    for _ in range(5):
        rec.step(StepSchedule(recent_fraction=1.0, densify=False, keep_past=True))
    for k, before in knots.items():
        after = rec.model.params[k].detach()
        assert torch.equal(after[:, :newest], before[:, :newest]), f"{k}: a knot not rendered moved"
        assert not torch.equal(after[:, newest], before[:, newest]), f"{k}: the frame's own knot did not train"
    # Between two knots, both train and no other.
    mid = 0.5 * (rec.model.knot_times[1] + rec.model.knot_times[2])
    assert rec._knot_window(mid, True) == (1, 3) and rec._knot_window(rec.model.knot_times[2], True) == (2, 3)


def test_cover_term_makes_the_tissue_opaque(scene):
    """With `cover_weight` the model covers its tissue pixels more fully than without (the colours are then the
    tissue's own, not brightened to make up for a cover below 1)."""
    cover = {}
    for w in (0.0, 1.0):
        tr = Reconstructor(_cfg(cover_weight=w))
        train_offline(tr, scene_frames(scene)[:4], 60)
        f = scene.frames[2]
        _, _, alpha = tr.render_view(f.pose, tr.time_of(f.stamp_ns))
        cover[w] = float(alpha[f.mask == 0].mean())
    assert cover[1.0] > cover[0.0] + 0.005 and cover[1.0] > 0.98, cover
