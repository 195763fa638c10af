"""The endoscope's brightness fall-off (perception.falloff): measured from a stereo pair, and the trainer holding the
tissue's own colour while its camera views show the fall-off."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from surg3d_nodes.common.metrics import psnr_star
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.perception.falloff import Falloff, FalloffEstimator
from surg3d_nodes.perception.stereo_depth import right_tissue_mask
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.runner import Reconstructor, train_stream

torch.set_num_threads(1)


def _truth(scene, r2: float) -> float:
    """The generator's vignetting, 1 - v ((x - cx)^2 + (y - cy)^2) / width^2, at r^2 in focal units."""
    fx = scene.cam_left.fx
    return 1.0 - scene.config.vignetting * r2 * (fx / scene.config.width) ** 2


def _measured(scene, frames: int = 1) -> Falloff | None:
    est = FalloffEstimator()
    for f in scene.frames[:frames]:
        est.add(f.left, f.right, np.where(f.mask == 0, f.depth, np.nan), f.mask, scene.cam_left.intrinsics(),
                scene.cam_right.intrinsics(), scene.cam_right.baseline)
    return est.estimate()


@pytest.mark.parametrize("vignetting", [0.9, 0.4, 0.0])
def test_one_stereo_pair_measures_the_falloff(vignetting: float) -> None:
    scene = generate(SynthConfig(width=320, height=256, frames=1, instruments=2, vignetting=vignetting, seed=4))
    v = _measured(scene)
    assert v is not None
    K = scene.cam_left.intrinsics()
    gain = v.gain(K, 320, 256)
    # At the corner (r^2 = 0.5 in focal units here) and half-way out, within 1.5 % of the generator's.
    for y, x in ((0, 0), (64, 80), (255, 319)):
        r2 = ((x - K[0, 2]) ** 2 + (y - K[1, 2]) ** 2) / K[0, 0] ** 2
        assert gain[y, x] == pytest.approx(_truth(scene, r2), abs=0.015), (vignetting, v)
    assert gain[128, 160] == pytest.approx(1.0, abs=1e-3)


def test_a_narrow_view_measures_the_falloff_without_its_r4_term() -> None:
    # A 96x96 centre crop of a 320x256 pair (focal length 288 px): rays at most 13 degrees off the axis.
    scene = generate(SynthConfig(width=320, height=256, frames=2, instruments=0, seed=6))
    K = scene.cam_left.intrinsics().copy()
    Kr = scene.cam_right.intrinsics().copy()
    x0, y0 = 112, 80
    for k in (K, Kr):
        k[0, 2] -= x0
        k[1, 2] -= y0
    est = FalloffEstimator()
    for f in scene.frames:
        cut = (slice(y0, y0 + 96), slice(x0, x0 + 96))
        est.add(f.left[cut], f.right[cut], f.depth[cut], f.mask[cut], K, Kr, scene.cam_right.baseline)
    v = est.estimate()
    assert v is not None and v.b2 == 0.0
    r2 = ((0 - K[0, 2]) ** 2 + (0 - K[1, 2]) ** 2) / K[0, 0] ** 2
    assert v.gain(K, 96, 96)[0, 0] == pytest.approx(_truth(scene, r2), abs=0.01)


def test_no_measurement_without_depth_or_a_right_image() -> None:
    scene = generate(SynthConfig(width=40, height=32, frames=1, instruments=0))
    f = scene.frames[0]
    est = FalloffEstimator()
    K = scene.cam_left.intrinsics()
    assert est.add(f.left, f.right, None, f.mask, K, K, 0.004) == 0
    assert est.add(f.left, f.right[:, :20], f.depth, f.mask, K, K, 0.004) == 0
    assert est.add(f.left, f.right, np.full_like(f.depth, np.nan), f.mask, K, K, 0.004) == 0
    assert est.estimate() is None
    est.add(f.left, f.right, f.depth, f.mask, K, scene.cam_right.intrinsics(), scene.cam_right.baseline)
    assert est.estimate() is None                       # one 40x32 pair: fewer samples than it takes


def test_the_falloff_is_a_function_of_the_ray_alone() -> None:
    v = Falloff(-0.7, -0.3)
    K = np.array([[100.0, 0, 63.5], [0, 100.0, 47.5], [0, 0, 1]])
    full = v.gain(K, 128, 96)
    Kc = K.copy()
    Kc[0, 2] -= 30
    Kc[1, 2] -= 10
    assert np.allclose(v.gain(Kc, 64, 48), full[10:58, 30:94])      # a crop: the same rays, the same V
    Kh = K.copy()
    Kh[:2] *= 0.5
    Kh[0, 2], Kh[1, 2] = (63.5 + 0.5) * 0.5 - 0.5, (47.5 + 0.5) * 0.5 - 0.5
    assert np.allclose(v.gain(Kh, 64, 48)[24, 32], full[48:50, 64:66].mean(), atol=1e-3)   # half the size
    assert Falloff().is_identity and np.array_equal(Falloff().gain(K, 8, 6), np.ones((6, 8), np.float32))
    # Within 1 % of none over the image (0.6 % at this one's corners): not worth applying.
    assert Falloff(-0.01, 0.0).negligible(K, 128, 96) and not Falloff(-0.02, 0.0).negligible(K, 128, 96)


def test_the_trainer_holds_the_tissue_colour_and_its_camera_views_show_the_falloff() -> None:
    scene = generate(SynthConfig(width=96, height=80, frames=2, instruments=0, seed=2))
    v = _measured(generate(SynthConfig(width=320, height=256, frames=1, instruments=0, seed=2)))
    f = scene.frames[0]
    recon = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, falloff=(v.b1, v.b2)))
    assert recon.add_frame(Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left))
    kf = recon.store.newest()
    K = scene.cam_left.intrinsics()
    gain = v.gain(K, 96, 80)
    assert np.allclose(kf.rgb.numpy(), f.left / 255.0 / gain[..., None], atol=1e-5)
    shown, _, alpha = recon.render_view(f.pose, recon.time_of(f.stamp_ns))
    assert psnr_star(shown, f.left, (alpha > 0.5).astype(np.float32)) > 30.0
    with pytest.raises(ValueError, match="falloff must be two finite numbers"):
        Reconstructor(TrainerConfig(device="cpu", falloff=(0.1, 0.2, 0.3)))


def test_a_measured_falloff_shows_the_right_camera_better() -> None:
    # The right camera sees each point 5 px further left than the left camera: a model that baked the left
    # image's darkening into the tissue shows it in the wrong place there.
    scene = generate(SynthConfig(width=96, height=80, frames=16, camera_motion="moving", instruments=1, seed=3))
    v = _measured(generate(SynthConfig(width=320, height=256, frames=1, instruments=0, seed=3)))
    frames = [Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left) for f in scene.frames]
    cam = scene.cam_right
    scores = {}
    for falloff in ((0.0, 0.0), (v.b1, v.b2)):
        recon = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, num_threads=1,
                                            falloff=falloff))
        train_stream(recon, frames, 10)
        out = []
        for f in scene.frames:
            pose = f.pose.copy()
            pose[:3, 3] += pose[:3, 0] * cam.baseline
            rgb, _, a = recon.render_view(pose, recon.time_of(f.stamp_ns), cam.width, cam.height, K=cam.intrinsics())
            seen = right_tissue_mask(f.depth, f.mask, scene.cam_left.fx, cam.baseline)
            out.append(psnr_star(rgb, f.right, (seen & (a > 0.5)).astype(np.float32)))
        scores[falloff] = float(np.mean(out))
    without, with_ = scores.values()
    assert with_ > without + 0.5, scores


def test_the_falloff_command_measures_a_recorded_clip(synth_bag, tmp_path, capsys) -> None:
    from surg3d_nodes.cli.falloff import main

    clip = synth_bag.parent / "endonerf"          # `surg3d synth` 160x128, the generator's vignetting 0.9
    assert main(["synthetic", str(clip), "--frames", "3", "--out", str(tmp_path / "v.png")]) == 0
    out = capsys.readouterr().out
    b1, b2 = (float(x) for x in out.split("falloff: [")[1].split("]")[0].split(","))
    scene = generate(SynthConfig(width=160, height=128, frames=1))
    K = scene.cam_left.intrinsics()
    r2 = (K[0, 2] ** 2 + K[1, 2] ** 2) / K[0, 0] ** 2
    assert Falloff(b1, b2).gain(K, 160, 128)[0, 0] == pytest.approx(_truth(scene, r2), abs=0.02)
    assert (tmp_path / "v.png").stat().st_size > 0
    # A clip of left images only cannot measure it: a message naming why, exit 2.
    mono = tmp_path / "mono"
    shutil.copytree(clip, mono, ignore=shutil.ignore_patterns("images_right"))
    assert main(["endonerf", str(mono), "--out", str(tmp_path / "m.png")]) == 2
    assert "has no right image" in capsys.readouterr().err
