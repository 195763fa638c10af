"""Reconstruction from dVRK kinematic camera poses scores like the one from ground-truth poses (small scale)."""

from __future__ import annotations

import torch

from surg3d_nodes.data.synthetic import SynthConfig
from surg3d_nodes.dvrk.emulator import EmulatorConfig, emulate
from surg3d_nodes.evaluation.dvrk import kinematic_poses, train_and_score


def test_kinematic_poses_reconstruct_within_1db_of_ground_truth() -> None:
    torch.set_num_threads(1)
    frames = 6
    em = emulate(EmulatorConfig(synth=SynthConfig(width=80, height=64, frames=frames, camera_motion="moving",
                                                  instruments=2)))
    truth = {i: em.true_camera_pose(i) for i in range(frames)}
    kin = kinematic_poses(em, em.hand_eye)
    assert sorted(kin) == list(range(frames)), "every emulated frame gets a kinematic pose"
    psnr_truth = train_and_score(em, truth, 80, "ground-truth poses", num_threads=1).psnr
    psnr_kin = train_and_score(em, kin, 80, "kinematic poses", num_threads=1).psnr
    assert psnr_truth > 28.0, f"the reconstruction itself failed: {psnr_truth:.2f} dB"
    assert abs(psnr_kin - psnr_truth) < 1.0, f"kinematic {psnr_kin:.2f} dB vs ground truth {psnr_truth:.2f} dB"
