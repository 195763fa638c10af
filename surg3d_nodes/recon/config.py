"""The reconstruction's configuration (one object, as gsplat's simple_trainer) and its input frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.params import param


@dataclass
class Frame:
    """One synchronised input: rectified left image, depth (m, NaN invalid), instrument mask, pose."""

    stamp_ns: int
    rgb: np.ndarray
    depth: np.ndarray | None
    mask: np.ndarray | None
    pose: np.ndarray | None
    camera: CameraModel


# The renderers the trainer can use (recon/render resolves them; the list lives here so that the config, and
# the launcher that checks it, import no torch).
BACKENDS = ("auto", "cpu", "torch", "gsplat", "gsplat2d")
# The output ranges of a user's ONNX inpainting model (recon.inpaint_model).
INPAINT_OUTPUT_RANGES = ("unit", "byte")


@dataclass
class TrainerConfig:
    """Every knob of the reconstruction (one object, as gsplat's simple_trainer). Each field is also a ROS
    parameter of the trainer node (`param`: default, range, description; `live`: may change while training)."""

    device: str = param("auto", "torch device: auto (CUDA when present), cpu, cuda or cuda:N")
    backend: str = param("auto", "renderer: auto (gsplat on CUDA, the compiled cpu backend on CPU when it builds, "
                                 "else torch), cpu, torch, gsplat, gsplat2d", choices=BACKENDS)
    primitive: str = param("3dgs", "3dgs: 3D Gaussians | 2dgs: 2D Gaussian surfels (two scales; ray-splat "
                                   "intersection, normal and distortion losses; torch2d on CPU, gsplat2d on CUDA)",
                           choices=("3dgs", "2dgs"))
    image_scale: float = param(0.0, "frame resize before training; 0 = auto (1 on CUDA, 1/4 on CPU)", low=0.0,
                               high=4.0)
    max_gaussians: int = param(300_000, "Gaussian budget", low=1000, high=5_000_000, live=True)
    init_stride: int = param(1, "pixel stride of the first frame's back-projection", low=1, high=64)
    add_stride: int = param(1, "pixel stride when adding Gaussians on later frames", low=1, high=64)
    sh_degree: int = param(1, "spherical-harmonics degree of the colours", low=0, high=1)
    # A knot per frame (30 Hz), each frame's colours fitted by least squares (stream K = 10, pulling 1/4: final
    # 36.94 -> 38.0 dB, live 38.72 -> 39.6; README, issue 14).
    knot_spacing_s: float = param(0.03, "s, temporal resolution of the deformation tracks (with knots_at_frames: "
                                        "the shortest gap between two knots)", low=1e-3, high=10.0)
    knots_at_frames: bool = param(True, "a knot at each frame's own time (at most one per knot_spacing_s) instead "
                                        "of a regular grid")
    colour_fit_iterations: int = param(3, "conjugate-gradient iterations of the least-squares colour fit of a "
                                          "frame into its colour knot (recon.colour_fit): live at each new frame, "
                                          "offline once per frame at the end; costs iterations + 1 training steps "
                                          "(0 = off)", low=0, high=50)
    detail_window_s: float = param(0.25, "s, views add the frame detail (recon.detail: image minus render of the "
                                         "stored frames nearest in time within this, re-projected) where asked; "
                                         "0 = the model alone", low=0.0, high=10.0, live=True)
    max_knots: int = param(128, "knot budget (memory); older motion is kept coarser (0 = unbounded)", low=0,
                           high=100_000)
    recent_knots: int = param(32, "the newest knots always keep the full time resolution", low=0, high=100_000)
    deform_scale: bool = param(True, "the Gaussians' scale deforms over time as well")
    init_opacity: float = param(0.7, "opacity of new Gaussians", low=0.01, high=0.99)
    init_scale: float = param(0.5, "scale of new Gaussians x nearest-neighbour distance (1.0: 0.7 dB lower on "
                                   "EndoNeRF at 1/4)", low=0.01, high=10.0)
    ssim_lambda: float = param(0.2, "weight of the SSIM term of the colour loss", low=0.0, high=1.0, live=True)
    depth_weight: float = param(0.5, "weight of depth L1 measured relative to the scene depth", low=0.0,
                                high=100.0, live=True)
    roi_weight: float = param(4.0, "colour-loss weight of pixels that see an operator's region of interest "
                                   "(1 = no emphasis)", low=1.0, high=100.0, live=True)
    roi_step_share: float = param(0.5, "share of the steps that train on the box about the operator's regions, at "
                                       "a finer scale than `image_scale` (0 = none)", low=0.0, high=1.0, live=True)
    # 2DGS's regularisers (gsplat's simple_trainer_2dgs: 5e-2 and 1e-2); only with primitive 2dgs.
    normal_weight: float = param(0.05, "2dgs: weight of the normal consistency (rendered vs depth normals)",
                                 low=0.0, high=100.0, live=True)
    dist_weight: float = param(0.01, "2dgs: weight of the depth distortion (depths relative to the scene depth)",
                               low=0.0, high=1e4, live=True)
    # Tissue is opaque. Without this term the colours are fitted through a cover of about 0.97 (brighter by as much)
    # and a view whose cover differs (another viewpoint, memory under an instrument) is off by the difference.
    # 0.01: seen-before tissue under the instruments +0.3 dB; 0.03 gave more there but cost the native crop's right
    # view 1-1.5 dB (README, Occluded tissue).
    cover_weight: float = param(0.01, "weight of the tissue pixels' uncovered share (1 - alpha): tissue is opaque",
                                low=0.0, high=1e4, live=True)
    smooth_weight: float = param(1.0, "temporal smoothness (2nd differences) of the tracks", low=0.0, high=1e4)
    # 1: the newest frame alone gets recent_fraction (stream, K = 10, pulling 1/4: live 37.86 -> 38.78 dB vs 3).
    recent_window: int = param(1, "newest frames that get recent_fraction of the iterations", low=1, high=1000)
    falloff: tuple[float, ...] = param(
        (0.0, 0.0), "the endoscope's brightness fall-off V(r) = exp(b1 r^2 + b2 r^4), r the distance from the "
        "principal point over the focal length: [b1, b2] (perception.falloff; `surg3d eval` measures it from a "
        "clip's stereo pairs); frames are divided by V and the camera's views multiplied by it", low=-5.0, high=5.0)
    recent_fraction: float = param(0.5, "share of the iterations spent on the recent_window frames", low=0.0,
                                   high=1.0)
    max_keyframes: int = param(300, "keyframes kept for training (oldest thinned first)", low=1, high=100_000)
    keyframe_every: int = param(1, "keep every k-th used frame as keyframe", low=1, high=1000)
    iterations_per_frame: int = param(0, "online: cap iterations per used frame (0 = train continuously)", low=0,
                                      high=100_000, live=True)
    # The canonical position and colour are shared by every moment: learning them 10x slower than the tracks
    # makes a later frame correct its own time's knots instead of rewriting the past (stream, K = 10: early
    # frames fell from 42.9 to 37.0 dB by the end of the clip; final 36.38 -> 37.31 dB, offline unchanged).
    lr_means: float = param(3e-5, "canonical position learning rate x scene depth (the tracks move positions in "
                                  "time at lr_pos_knots)", low=0.0, high=1.0)
    lr_pos_knots: float = param(3e-4, "track knot learning rate x scene depth", low=0.0, high=1.0)
    lr_log_scales: float = param(5e-3, "log-scale learning rate", low=0.0, high=1.0)
    lr_quats: float = param(1e-3, "rotation learning rate", low=0.0, high=1.0)
    # Shared by every moment, like the canonical position: 3DGS's 5e-2 let a new frame rewrite the opacities the
    # frames already fitted rely on (stream K = 10, pulling 1/4: final 40.30 -> 40.77 dB; offline 40.65 -> 40.71).
    lr_opacity: float = param(2e-2, "opacity learning rate", low=0.0, high=1.0)
    lr_sh_dc: float = param(1e-3, "canonical base colour learning rate (the colour knots change it in time)",
                            low=0.0, high=1.0)
    lr_sh_rest: float = param(2.5e-4, "higher SH learning rate", low=0.0, high=1.0)
    lr_col_knots: float = param(5e-3, "colour knot learning rate", low=0.0, high=1.0)
    lr_scale_knots: float = param(2.5e-3, "scale knot learning rate", low=0.0, high=1.0)
    lr_final_factor: float = param(0.1, "offline: exponential decay of position lrs to this factor", low=0.0,
                                   high=1.0)
    refine_every: int = param(100, "iterations between densify / prune steps", low=1, high=100_000)
    refine_start: int = param(200, "first densify / prune iteration", low=0, high=1_000_000)
    refine_stop_fraction: float = param(0.8, "offline: stop densifying after this fraction of the budget",
                                        low=0.0, high=1.0)
    grad_threshold: float = param(2e-4, "mean screen-space gradient (NDC units) that densifies", low=0.0,
                                  high=1.0)
    split_radius_px: float = param(4.0, "densified Gaussians larger than this on screen split, else clone",
                                   low=0.0, high=1000.0)
    densify_revised_opacity: bool = param(True, "a clone and its parent, or two split children, get opacity "
                                                "1 - sqrt(1 - o): the refined model composites as before")
    prune_opacity: float = param(0.005, "prune Gaussians less opaque than this", low=0.0, high=1.0)
    prune_scale_rel: float = param(0.1, "prune Gaussians larger than this x scene depth", low=0.0, high=100.0)
    add_alpha_threshold: float = param(0.5, "pixels less covered than this are unexplained", low=0.0, high=1.0)
    add_color_error: float = param(0.2, "... or with a colour error above this (mean abs, 0..1)", low=0.0,
                                   high=1.0)
    add_depth_error_rel: float = param(0.1, "... and a relative depth error above this", low=0.0, high=100.0)
    complete_hidden: bool = param(True, "complete tissue the instruments hide and no camera has shown with "
                                        "Gaussians flagged inferred (recon.completion)")
    complete_margin_px: int = param(2, "px, instrument masks are widened by this for completion and for "
                                       "replacing inferred Gaussians by observed tissue", low=0, high=64)
    inpaint_model: str = param("", "ONNX inpainting model (LaMa's interface, recon.inpaint_model) for the colour of "
                                   "tissue never seen; empty: the harmonic fill. A model that does not load is "
                                   "reported and the harmonic fill used")
    inpaint_model_output: str = param("unit", "the inpainting model's output range: unit (0..1) or byte (0..255)",
                                      choices=INPAINT_OUTPUT_RANGES)
    add_check_every: int = param(100, "online: iterations between re-checks of the newest frame for "
                                      "unexplained pixels", low=1, high=1_000_000)
    pose_jump_m: float = param(0.05, "m, translation between consecutive poses that counts as a jump (the frame "
                                     "is skipped)", low=0.0, high=100.0, live=True)
    pose_jump_deg: float = param(30.0, "deg, rotation between consecutive poses that counts as a jump", low=0.0,
                                 high=360.0, live=True)
    pose_jump_accept_after: int = param(5, "consecutive jumped frames after which the new pose is accepted",
                                        low=1, high=1000)
    max_time_gap_s: float = param(2.0, "s, a longer pause of the stream counts as this much model time",
                                  low=0.0, high=3600.0)
    flow_tracks: bool = param(True, "start each new frame's deformation from optical flow")
    flow_depth_motion: bool = param(True, "... and from the measured depth change along it")
    flow_hidden_motion: bool = param(True, "... and move tissue hidden by an instrument with the flow around it")
    # 4 frames at 30 Hz: frame-to-frame flows add up DIS's bias on sub-pixel motion, the flow over a longer span
    # errs more on real tissue (recon.flow_tracks._correct_drift; README, issue 16).
    flow_anchor_s: float = param(0.12, "s, the flow from an anchor frame up to this much older than the new frame "
                                       "corrects the drift of the frame-to-frame flows since it (0 = off)",
                                 low=0.0, high=10.0)
    refine_pose_iterations: int = param(0, "> 0: refine each new frame's pose against the model (README "
                                           "'dVRK users'; 30 to use it)", low=0, high=1000)
    refine_pose_mode: str = param("hand_eye", "hand_eye: one constant hand-eye correction | frame: free per "
                                              "frame", choices=("hand_eye", "frame"))
    refine_pose_lr: float = param(1e-3, "pose refinement Adam step (rad; translation x scene depth)", low=0.0,
                                  high=1.0)
    refine_pose_depth_weight: float = param(5.0, "depth weight of pose refinement (depth ignores the moving "
                                                 "light: it pins the pose best)", low=0.0, high=1000.0)
    refine_pose_max_trans_m: float = param(0.005, "m, larger pose corrections are rejected (the input pose is "
                                                  "kept)", low=0.0, high=1.0)
    refine_pose_max_rot_deg: float = param(3.0, "deg, larger pose corrections are rejected", low=0.0, high=180.0)
    queue_size: int = param(16, "frames waiting for the training thread (the oldest is dropped when full)",
                            low=1, high=10_000)
    num_threads: int = param(0, "torch CPU threads for the trainer (0 = leave as is)", low=0, high=1024)
    seed: int = param(0, "random seed", low=0, high=2**31 - 1)

    @classmethod
    def from_dict(cls, d: dict) -> TrainerConfig:
        """Build from a dict, rejecting unknown keys by name."""
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown trainer config keys: {sorted(unknown)}")
        return cls(**d)
