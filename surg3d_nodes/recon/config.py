"""The reconstruction's configuration (one object, as gsplat's simple_trainer) and its input frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surg3d_nodes.common.camera import CameraModel


@dataclass
class Frame:
    """One synchronised input: rectified left image, depth (m, NaN invalid), instrument mask, pose."""

    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray | None
    mask: np.ndarray | None
    pose: np.ndarray | None
    camera: CameraModel



@dataclass
class TrainerConfig:
    """Every knob of the reconstruction (one object, as gsplat's simple_trainer)."""

    device: str = "auto"                 # auto | cpu | cuda
    backend: str = "auto"                # auto | torch | gsplat | gsplat2d
    image_scale: float = 1.0             # frame resize before training (<= 0: 1 on CUDA, 1/4 on CPU)
    max_gaussians: int = 300_000
    init_stride: int = 1                 # pixel stride of the first frame's back-projection
    add_stride: int = 1                  # pixel stride when adding Gaussians on later frames
    sh_degree: int = 1
    knot_spacing_s: float = 0.1          # temporal resolution of the deformation tracks
    max_knots: int = 128                 # knot budget (memory); older motion is kept coarser (0 = unbounded)
    recent_knots: int = 32               # the newest knots always keep the full resolution
    deform_scale: bool = True
    init_opacity: float = 0.7
    init_scale: float = 0.5              # x nearest-neighbour distance (1.0: 0.7 dB lower on EndoNeRF at 1/4)
    ssim_lambda: float = 0.2
    depth_weight: float = 0.5            # weight of depth L1 measured relative to the scene depth
    smooth_weight: float = 1.0           # temporal smoothness (2nd differences) of the tracks
    recent_window: int = 3               # newest frames that get `recent_fraction` of the iterations
    recent_fraction: float = 0.5
    max_keyframes: int = 300
    keyframe_every: int = 1              # keep every k-th used frame as keyframe
    iterations_per_frame: int = 0        # online: cap iterations per used frame (0 = train continuously)
    lr_means: float = 3e-4               # x scene depth (3DGS: 1.6e-4; higher converges in fewer steps)
    lr_pos_knots: float = 3e-4           # x scene depth
    lr_log_scales: float = 5e-3
    lr_quats: float = 1e-3
    lr_opacity: float = 5e-2
    lr_sh_dc: float = 1e-2
    lr_sh_rest: float = 2.5e-4
    lr_col_knots: float = 5e-3
    lr_scale_knots: float = 2.5e-3
    lr_final_factor: float = 0.1         # offline: exponential decay of position lrs to this factor
    refine_every: int = 100
    refine_start: int = 200
    refine_stop_fraction: float = 0.8    # offline: stop densifying after this fraction of the budget
    grad_threshold: float = 2e-4         # mean screen-space gradient (NDC units) that densifies
    split_radius_px: float = 4.0         # densified Gaussians larger than this on screen split, else clone
    prune_opacity: float = 0.005
    prune_scale_rel: float = 0.1         # prune Gaussians larger than this x scene depth
    add_alpha_threshold: float = 0.5     # pixels less covered than this are unexplained
    add_color_error: float = 0.2         # ... or with a colour error above this (mean abs, 0..1)
    add_depth_error_rel: float = 0.1     # ... and a relative depth error above this
    add_check_every: int = 100           # online: re-check the newest frame for unexplained pixels
    pose_jump_m: float = 0.05            # translation between consecutive poses that counts as a jump
    pose_jump_deg: float = 30.0
    pose_jump_accept_after: int = 5      # consecutive jumped frames after which the new pose is accepted
    max_time_gap_s: float = 2.0          # a longer pause of the stream counts as this much model time
    flow_tracks: bool = True             # start each new frame's deformation from optical flow (flow_tracks)
    flow_depth_motion: bool = True       # ... and from the measured depth change along it
    refine_pose_iterations: int = 0      # > 0: refine each new frame's pose against the model (core.pose_refine)
    refine_pose_mode: str = "hand_eye"   # hand_eye: one constant hand-eye correction | frame: free per frame
    refine_pose_lr: float = 1e-3         # Adam step (rad; translation x scene depth)
    refine_pose_depth_weight: float = 5.0   # depth ignores the moving light: it pins the pose best
    refine_pose_max_trans_m: float = 0.005   # larger corrections are rejected (the input pose is kept)
    refine_pose_max_rot_deg: float = 3.0
    queue_size: int = 16
    num_threads: int = 0                 # torch CPU threads for the trainer (0 = leave as is)
    seed: int = 0

    @classmethod
    def from_dict(cls, d: dict) -> TrainerConfig:
        """Build from a dict, rejecting unknown keys by name."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown trainer config keys: {sorted(unknown)}")
        return cls(**d)
