"""The CPU targets on EndoNeRF 'pulling' at 160x128: offline masked PSNR >= 30 dB; live training beats copying the
previous frame. The eval command's modes and its input checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from surg3d_nodes.cli.eval import main


def test_cpu_eval_target(shared_data: Path, tmp_path: Path):
    clip = shared_data / "endonerf" / "pulling_soft_tissues"
    if not clip.is_dir():
        pytest.skip(f"EndoNeRF clip absent: {clip}")
    out = tmp_path / "out"
    rc = main(["endonerf", str(clip), "--mode", "offline", "--scale", "0.25", "--device", "cpu",
               "--iterations", "300", "--json", str(tmp_path / "r.json"), "--out-dir", str(out)])
    assert rc == 0
    r = json.loads((tmp_path / "r.json").read_text())
    print(f"\nPSNR {r['psnr']:.2f} PSNR* {r['psnr_star']:.2f} SSIM {r['ssim']:.4f} depth RMSE "
          f"{r['depth_rmse_mm']:.2f} mm right PSNR* {r['right_psnr_star']:.2f} "
          f"train {r['train_time_s']:.0f} s")
    assert r["test_frames"] == [1, 9, 17, 25, 33, 41, 49, 57] and r["train_frames"] == 55
    assert r["resolution"] == [160, 128]
    assert r["psnr"] >= 30.0
    assert r["psnr_star"] > 25.0 and r["ssim"] > 0.85 and r["depth_rmse_mm"] < 10.0
    assert r["baseline_neighbour_mean_psnr"] > r["baseline_copy_prev_psnr"] > 30.0
    assert r["right_psnr_star"] > 20.0
    assert (out / "result.json").is_file() and len(list(out.glob("test_*_gt_render_error.png"))) == 3


def test_stream_beats_copying_the_previous_frame(shared_data: Path, tmp_path: Path):
    """Issue 14's CI check: live training (stream mode, K = 10 steps per frame, the smallest K that does here; K = 5
    gave 39.82 dB against 40.08) on the shared clip at 1/4 scale renders the held-out frames better than copying
    the previous frame, computed in the same run. The views the product shows (the model plus the frame detail,
    recon.detail) meet the issue's stream targets: final at least copy-previous + 1 dB (43.49 against 40.08 here),
    live at least copy-previous, depth RMSE at most 2.5 mm (1.92-1.95 mm, the model alone 2.57-2.60, copying the
    previous frame's measured depth 2.54, on 2026-12-07)."""
    clip = shared_data / "endonerf" / "pulling_soft_tissues"
    if not clip.is_dir():
        pytest.skip(f"EndoNeRF clip absent: {clip}")
    assert main(["endonerf", str(clip), "--mode", "stream", "--iterations-per-frame", "10", "--scale", "0.25",
                 "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    print(f"\nstream K=10: final {r['psnr']:.2f} dB, live {r['live_psnr']:.2f}, copy-previous "
          f"{r['baseline_copy_prev_psnr']:.2f}, neighbour mean {r['baseline_neighbour_mean_psnr']:.2f}; with the "
          f"frame detail final {r['detail_psnr']:.2f}, live {r['detail_live_psnr']:.2f}, depth RMSE "
          f"{r['detail_depth_rmse_mm']:.2f} mm (the model alone {r['depth_rmse_mm']:.2f})")
    assert r["iterations"] + r["colour_fit_steps"] == 10 * r["train_frames"]
    assert r["psnr"] > r["baseline_copy_prev_psnr"]
    assert r["detail_psnr"] >= r["baseline_copy_prev_psnr"] + 1.0
    assert r["detail_live_psnr"] >= r["baseline_copy_prev_psnr"]
    assert r["detail_depth_rmse_mm"] <= 2.5


def test_stream_on_a_slowly_changing_clip_beats_copying_the_previous_frame(shared_data: Path, tmp_path: Path):
    """The same target on a clip that changes slowly, as the real clip kept from the team in issue 14's table does
    (copying the previous frame 42.09 dB, the neighbours' mean 46.43): the shared clip's first 32 frames (45.20 /
    47.09), where the final view with the frame detail was 0.27 dB short of copy-previous + 1 before the detail
    took the rim of the generous masks and half the model's change (46.65 dB on 2026-12-07)."""
    clip = shared_data / "endonerf" / "pulling_soft_tissues"
    if not clip.is_dir():
        pytest.skip(f"EndoNeRF clip absent: {clip}")
    first = tmp_path / "first32"
    for sub in ("images", "images_right", "depth", "masks", "gt_masks"):
        (first / sub).mkdir(parents=True)
        for f in sorted((clip / sub).iterdir())[:32]:
            (first / sub / f.name).symlink_to(f)
    np.save(first / "poses_bounds.npy", np.load(clip / "poses_bounds.npy")[:32])
    assert main(["endonerf", str(first), "--mode", "stream", "--iterations-per-frame", "10", "--scale", "0.25",
                 "--device", "cpu", "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    print(f"\nfirst 32 frames, stream K=10: copy-previous {r['baseline_copy_prev_psnr']:.2f}, neighbour mean "
          f"{r['baseline_neighbour_mean_psnr']:.2f}; with the frame detail final {r['detail_psnr']:.2f}, live "
          f"{r['detail_live_psnr']:.2f}")
    assert r["test_frames"] == [1, 9, 17, 25]
    assert r["detail_psnr"] >= r["baseline_copy_prev_psnr"] + 1.0
    assert r["detail_live_psnr"] >= r["baseline_copy_prev_psnr"]


def test_eval_rejects_bad_input(tmp_path: Path, capsys):
    assert main(["endonerf", str(tmp_path / "missing")]) == 2
    assert "expected a directory" in capsys.readouterr().err
    assert main(["endonerf", str(tmp_path), "--set", "no_such_knob=1"]) == 2
    assert "unknown trainer config keys" in capsys.readouterr().err


def test_stream_mode_is_deterministic_and_scores_live(synth_bag: Path, tmp_path: Path):
    """Stream mode on a native-resolution crop: the same numbers twice (no wall clock), a live score for the test
    frames, the training-frame fit and the right-view warp baseline in the JSON."""
    clip = synth_bag.parent / "endonerf"
    results = []
    for k in range(2):
        out = tmp_path / f"r{k}.json"
        assert main(["endonerf", str(clip), "--mode", "stream", "--iterations-per-frame", "2", "--crop", "96x80",
                     "--device", "cpu", "--backend", "torch", "--json", str(out)]) == 0
        results.append(json.loads(out.read_text()))
    a, b = results
    assert a["resolution"] == [96, 80] and a["mode"] == "stream"
    assert a["iterations"] == 2 * a["train_frames"]
    assert a["psnr"] == b["psnr"] and a["live_psnr"] == b["live_psnr"] and a["num_gaussians"] == b["num_gaussians"]
    live = [p for p in a["per_frame"] if "live_psnr" in p]
    assert len(live) == len(a["test_frames"]) and all(p["live_psnr"] > 15 for p in live)
    assert len(a["train_fit_per_frame"]) == a["train_frames"] and a["train_fit_psnr"] > 15
    assert 15 < a["baseline_right_warp_psnr_star"] < 60 and a["right_psnr_star"] > 10
    # The synthetic clip has tissue/ and tissue_depth/: the de-occlusion under the instrument is scored (never seen:
    # the grasper holds its place), every hidden pixel covered, the surface continued to within 1 mm.
    assert a["deocc_coverage"] > 0.99 and a["deocc_depth_rmse_mm"] < 1.0
    assert a["deocc_unseen_psnr"] > 15 and a["baseline_telea_unseen_psnr"] > 15 and 0 < a["deocc_unseen_ssim"] < 1
    assert a["deocc_unseen_psnr"] == b["deocc_unseen_psnr"]


def test_eval_rejects_a_crop_larger_than_the_images(synth_bag: Path, capsys):
    clip = synth_bag.parent / "endonerf"
    assert main(["endonerf", str(clip), "--mode", "stream", "--crop", "4000x80", "--device", "cpu"]) == 2
    assert "does not fit" in capsys.readouterr().err
    assert main(["endonerf", str(clip), "--crop", "96"]) == 2
    assert "WxH" in capsys.readouterr().err

