"""Every node's parameters, declared once (ROS-free): the node's own options here, the domain configs where
they live (TrainerConfig, SGBMParams, CueParams, InstrumentGeometry).

`NODE_PARAMETERS` maps each executable to the config dataclasses whose `param` fields are its ROS parameters;
the node declares them with `ros.params` and the launcher validates parameter files and graph.yaml against
`node_parameters(executable)` before anything starts. Defaults are what the graph runs with: the YAML files in
config/ carry only deliberate overrides.
"""

from __future__ import annotations

from dataclasses import dataclass

from surg3d_nodes.common.params import ParamSpec, param, param_specs
from surg3d_nodes.data.synthetic import MOTIONS
from surg3d_nodes.dvrk.kinematics import NOMINAL_HAND_EYE
from surg3d_nodes.perception.instrument_prior import InstrumentGeometry
from surg3d_nodes.perception.segmentation import CueParams
from surg3d_nodes.perception.stereo_depth import SGBMParams
from surg3d_nodes.perception.tracker import TrackerParams
from surg3d_nodes.recon.config import TrainerConfig
from surg3d_nodes.ros import topics

# Parameters rclpy itself declares on every node: accepted in parameter files, not ours to describe.
BUILTIN_PARAMETERS = ("use_sim_time", "start_type_description_service")
_HZ = 1000.0
# Where the graph's camera poses come from (the `pose_source` launch argument): the tracker node (stereo stream),
# the kinematics node (dVRK), a fixed pose (the tracker node publishes it), or another publisher of /camera/pose.
POSE_SOURCES = ("tracker", "kinematics", "static", "topic")


@dataclass
class NodeOptions:
    """Options of every surg3d node (runtime.SurgNode)."""

    heartbeat_period: float = param(1.0, "s between NodeStatus heartbeats on /surg3d/node_status", low=0.01,
                                    high=60.0)


@dataclass
class StereoDepthOptions:
    """stereo_depth node: inputs, backend choice and outputs (SGBMParams holds the matcher's settings)."""

    left_calibration_file: str = param("", "camera_calibration YAML overriding the left CameraInfo "
                                           "(uncalibrated drivers)")
    right_calibration_file: str = param("", "camera_calibration YAML overriding the right CameraInfo")
    backend: str = param("sgbm", "sgbm | onnx (onnx_model; falls back to sgbm with one warning if unusable)",
                         choices=("sgbm", "onnx"))
    onnx_model: str = param("", "ONNX stereo (inputs left, right -> disparity px) or monocular model")
    onnx_mono_output: str = param("inverse_depth", "monocular output: inverse_depth (MiDaS-like) | depth; "
                                                   "scaled by SGBM", choices=("inverse_depth", "depth"))
    onnx_normalize: str = param("unit", "unit ([0, 1] RGB) | imagenet (mean/std)", choices=("unit", "imagenet"))
    sync_tolerance_ms: float = param(5.0, "left/right stamps further apart than this are never paired",
                                     low=0.0, high=1000.0)
    sync_queue_size: int = param(5, "unpaired images kept per side", low=1, high=1000)
    work_queue_size: int = param(2, "pairs waiting for the depth worker; the oldest is dropped when full",
                                 low=1, high=100)
    publish_points: bool = param(False, "also publish /depth/points (PointCloud2 x y z rgb)")
    points_stride: int = param(2, "pixel stride of /depth/points", low=1, high=64)
    points_min_confidence: int = param(1, "confidence (0..255) a pixel needs to be in /depth/points", low=0,
                                       high=255)


@dataclass
class InstrumentSegOptions:
    """instrument_seg node: mask source, learned model, prior fusion and pairing (CueParams: the cue
    segmenter)."""

    source: str = param("segmenter", "segmenter (yolo if model_path else cue) | cue | yolo | dataset "
                                     "(/dataset/tool_mask)", choices=("segmenter", "cue", "yolo", "dataset"))
    model_path: str = param("", "YOLO segmentation model (.pt or .onnx)")
    yolo_conf: float = param(0.25, "YOLO confidence threshold", low=0.0, high=1.0)
    yolo_classes: tuple[int, ...] = param((-1,), "YOLO class ids kept; [-1] = all", low=-1, high=10_000)
    yolo_imgsz: int = param(640, "YOLO input size (px)", low=32, high=4096)
    use_depth: bool = param(True, "pair the image with /depth/image (cue source)")
    use_prior: bool = param(False, "fuse /instrument/prior_mask (kinematics node) nearest in time")
    fuse_mode: str = param("union", "how the prior is fused: union | intersection | prior_gated",
                           choices=("union", "intersection", "prior_gated"))
    prior_margin_px: int = param(0, "px, dilation of the prior before fusing (kinematic error)", low=0,
                                 high=500)
    prior_tolerance_ms: float = param(20.0, "a prior further than this from the image stamp is not used",
                                      low=0.0, high=10_000.0)
    sync_tolerance_ms: float = param(5.0, "image and depth stamps further apart are never paired", low=0.0,
                                     high=1000.0)
    sync_queue_size: int = param(5, "unpaired messages kept per input", low=1, high=1000)


@dataclass
class TrainerNodeOptions:
    """trainer node: publish rates, outputs, checkpoints and input pairing (TrainerConfig: the training)."""

    points_rate: float = param(2.0, "Hz of /recon/points (0 = off)", low=0.0, high=30.0, live=True)
    points_on_frame_rate: float = param(5.0, "also a cloud as soon as a new frame is in the model, at most this "
                                             "often (Hz, 0 = off)", low=0.0, high=30.0, live=True)
    render_rate: float = param(5.0, "Hz of /recon/render/image + depth (0 = off)", low=0.0, high=60.0,
                               live=True)
    deoccluded_rate: float = param(5.0, "Hz of /recon/deoccluded/image (0 = off)", low=0.0, high=60.0,
                                   live=True)
    deoccluded_detail: bool = param(True, "/recon/deoccluded/image takes the hidden tissue's texture from the frames "
                                          "just before too (recon.detail; on a CPU 32 -> 202 ms a 320x256 view)",
                                    live=True)
    deoccluded_tint_inferred: bool = param(True, "tint the pixels of /recon/deoccluded/image and of the requested "
                                                 "views that are guesses (inferred Gaussians: tissue no camera has "
                                                 "shown; a view's fill of what no frame saw) magenta", live=True)
    status_rate: float = param(1.0, "Hz of /recon/status (0 = off)", low=0.0, high=60.0, live=True)
    points_max: int = param(100_000, "points per cloud (most opaque first when capped)", low=1,
                            high=10_000_000)
    points_min_opacity: float = param(0.1, "Gaussians less opaque than this are left out of the cloud",
                                      low=0.0, high=1.0)
    output_dir: str = param("out", "folder of checkpoints and PLY exports")
    # "" by default: a trainer started on its own must not continue another case's model from a shared folder;
    # the launcher sets auto, where output_dir is the launch's own run folder.
    resume_from_checkpoint: str = param("", "auto: newest checkpoint_*.pt in output_dir (a respawned trainer "
                                            "resumes); \"\": start empty; else a checkpoint path")
    checkpoints_kept: int = param(3, "checkpoints kept in output_dir: after one is saved there (the monitor's "
                                     "periodic ones), older checkpoint_*.pt beyond the newest N are deleted; the "
                                     "older ones are a fallback when the newest does not load (0 = keep all)",
                                  low=0, high=100_000)
    sync_tolerance_ms: float = param(5.0, "image, depth, mask and pose stamps further apart are never paired",
                                     low=0.0, high=1000.0)
    # 1 s at 30 Hz: a pose may come up to 5 x the kinematics node's max_wait_ms (0.5 s) after its image, and a
    # mask a segmentation time late; with 10 a slow pose found its image gone and nothing was paired.
    sync_queue_size: int = param(30, "unpaired messages kept per input", low=1, high=1000)
    use_depth: bool = param(True, "pair /depth/image (false: train on colour only)")
    use_mask: bool = param(True, "pair /instrument/mask (false: every pixel is tissue)")
    static_pose: bool = param(False, "no /camera/pose: the camera is fixed at the world origin")
    input_link_timeout_s: float = param(20.0, "s: an input that has delivered nothing while another input delivered "
                                               "for this long is reported: with a publisher as a broken link (ERROR), "
                                               "without one as not running (WARN); 0 = off", low=0.0, high=3600.0)


@dataclass
class KinematicsOptions:
    """kinematics node: dVRK arms, hand-eye, timing, frames and outputs (InstrumentGeometry: the tools)."""

    ecm_arm: str = param("ECM", "/<ecm_arm>/measured_cp: ECM tip in the cart frame")
    psm_arms: tuple[str, ...] = param(("PSM1", "PSM2"), "/PSMn/measured_cp: instrument tips in the ECM tip frame")
    use_joint_states: bool = param(True, "/PSMn/measured_js + /PSMn/jaw/measured_js: wrist and jaws in the prior")
    hand_eye: tuple[float, ...] = param(NOMINAL_HAND_EYE, "T_ecm_tip_camera (left optical) [x, y, z, qx, qy, qz, qw], "
                                                   "m; default: the nominal ISI -> optical flip (README 'dVRK "
                                                   "users': calibrate it)")
    image_time_offset_ms: float = param(0.0, "subtracted from image stamps to put them on the robot clock",
                                        low=-10_000.0, high=10_000.0)
    max_age_ms: float = param(50.0, "a kinematics sample farther than this from the image stamp is stale",
                              low=0.0, high=10_000.0)
    max_gap_ms: float = param(30.0, "widest interval interpolated across (2 lost samples at 100 Hz)", low=0.0,
                              high=10_000.0)
    max_wait_ms: float = param(100.0, "how long an image waits for kinematics past its stamp", low=0.0,
                               high=10_000.0)
    stamp_source: str = param("camera_info", "where image stamps come from: camera_info (light) | image",
                              choices=("camera_info", "image"))
    calibration_file: str = param("", "camera_calibration YAML overriding an uncalibrated camera_info")
    pose_source: str = param("kinematics", "the graph's pose source (launch argument): /camera/pose and /tf only "
                                           "when kinematics", choices=POSE_SOURCES)
    world_frame: str = param(topics.WORLD_FRAME, "frame of /camera/pose and /tf")
    camera_frame: str = param(topics.LEFT_OPTICAL_FRAME, "left optical frame (child of /tf)")
    publish_tf: bool = param(True, "publish world -> camera on /tf")
    publish_prior: bool = param(True, "publish /instrument/prior_mask")
    pose_rectified: bool = param(True, "pose of the rectified left camera (the trainer's images): needs "
                                       "calibration")
    prior_rectified: bool = param(True, "prior aligned with the rectified image (instrument_seg's input)")
    prior_scale: float = param(1.0, "render the prior at this scale (0.5 for HD video), upsampled", low=0.1,
                               high=1.0)


@dataclass
class TrackerNodeOptions:
    """tracker node: which pose source the graph uses, inputs and outputs (TrackerParams: the tracking)."""

    pose_source: str = param("tracker", "the graph's pose source (launch argument): tracker = poses tracked from "
                                        "the stereo stream; static = initial_pose at every image; else none",
                             choices=POSE_SOURCES)
    use_mask: bool = param(True, "pair /instrument/mask (features on tissue pixels only)")
    sync_tolerance_ms: float = param(5.0, "image, depth and mask stamps further apart are never paired", low=0.0,
                                     high=1000.0)
    sync_queue_size: int = param(10, "unpaired messages kept per input", low=1, high=1000)
    world_frame: str = param(topics.WORLD_FRAME, "frame of /camera/pose and /tf (the first tracked camera)")
    camera_frame: str = param(topics.LEFT_OPTICAL_FRAME, "left optical frame (child of /tf)")
    publish_tf: bool = param(True, "publish world -> camera on /tf")


@dataclass
class DvrkEmulatorOptions:
    """dvrk_emulator node: the synthetic scene and how the emulated robot and video misbehave."""

    rig: str = param("jhu_daVinci", "/<rig>/left|right/image_raw and camera_info")
    ecm_arm: str = param("ECM", "name of the emulated ECM arm")
    psm_arms: tuple[str, ...] = param(("PSM1", "PSM2"), "names of the emulated PSM arms (one per instrument)")
    width: int = param(160, "px", low=16, high=4096)
    height: int = param(128, "px", low=16, high=4096)
    frames: int = param(90, "frames rendered once at start (about 0.1 s per frame at 160x128)", low=1,
                        high=100_000)
    fps: float = param(30.0, "video frame rate", low=0.1, high=1000.0)
    camera_motion: str = param("moving", "endoscope motion", choices=MOTIONS)
    instruments: int = param(2, "instruments in the scene", low=0, high=2)
    articulated: bool = param(True, "EndoWrist instruments: also /PSMn/measured_js and /PSMn/jaw/measured_js")
    wrist_articulation_deg: float = param(40.0, "wrist pitch / yaw amplitude", low=0.0, high=90.0)
    jaw_opening_deg: float = param(60.0, "widest jaw opening", low=0.0, high=90.0)
    seed: int = param(0, "random seed", low=0, high=2**31 - 1)
    kinematics_hz: float = param(100.0, "kinematics rate", low=1.0, high=2000.0)
    sample_jitter_ms: float = param(0.3, "std of the sampling instants", low=0.0, high=1000.0)
    latency_ms: float = param(2.0, "kinematics delivery latency after the stamp", low=0.0, high=10_000.0)
    delivery_jitter_ms: float = param(1.0, "std of the delivery time", low=0.0, high=1000.0)
    video_offset_ms: float = param(0.0, "added to video stamps: video clock offset + capture latency",
                                   low=-10_000.0, high=10_000.0)
    video_latency_ms: float = param(25.0, "video delivery latency after the capture", low=0.0, high=10_000.0)
    dropout: float = param(0.0, "probability that a kinematics message is lost", low=0.0, high=0.999)
    reorder: float = param(0.0, "probability that a kinematics message comes after the next", low=0.0,
                           high=0.999)
    nan_rate: float = param(0.0, "probability that a kinematics message carries NaN", low=0.0, high=0.999)
    ecm_stop_s: float = param(-1.0, ">= 0: the ECM stream stops at this time of each loop", low=-1.0,
                              high=1e6)
    hand_eye: tuple[float, ...] = param(NOMINAL_HAND_EYE, "true T_ecm_cam [x, y, z, qx, qy, qz, qw]")
    loop: bool = param(True, "replay the rendered frames in a loop")
    start_delay_s: float = param(1.0, "s before the first message", low=0.0, high=3600.0)
    publish_ground_truth: bool = param(True, "/dataset/tool_mask and /dataset/depth (evaluation only)")
    uncalibrated_camera_info: bool = param(False, "all-zero K like an uncalibrated dvrk_video")
    calibration_dir: str = param("", "write left.yaml / right.yaml here (camera_calibration format)")


@dataclass
class BagReplayOptions:
    """bag_replay node: which bag, pacing, start gating and publisher history."""

    bag: str = param("", "rosbag2 directory, .mcap or .db3 (required; the launcher's `bag` argument)")
    rate: float = param(1.0, "1.0 = real time, 2.0 = twice as fast; 0.0 = unpaced (as fast as it reads)",
                        low=0.0, high=1000.0)
    loop: bool = param(False, "replay the bag in a loop")
    start_offset: float = param(0.0, "s into the bag", low=0.0, high=1e7)
    publish_clock: bool = param(True, "/clock at each stamp, for nodes with use_sim_time")
    topics: tuple[str, ...] = param(("",), "only these topics; [''] = all")
    late_threshold: float = param(0.05, "s behind schedule that counts a stamp group as late", low=0.0,
                                  high=3600.0)
    drop_late: bool = param(False, "skip stamp groups further behind than drop_threshold to catch up")
    drop_threshold: float = param(0.2, "s behind schedule beyond which drop_late skips", low=0.0, high=3600.0)
    wait_for_subscribers: int = param(0, "publish only once every topic has this many subscribers (0 = start "
                                         "at once)", low=0, high=1000)
    wait_topics: tuple[str, ...] = param(("",), "topics whose subscribers gate the start; [''] = every "
                                                "replayed topic")
    wait_nodes: tuple[str, ...] = param(("",), "also wait until these nodes are up with their subscriptions; "
                                               "[''] = none")
    wait_timeout: float = param(30.0, "s, longest wait for subscribers and nodes", low=0.0, high=3600.0)
    exit_on_end: bool = param(False, "false keeps the process (and the graph) alive after the bag ends")
    qos_depth: int = param(30, "history of image and point-cloud topics (memory: depth x message size)",
                           low=1, high=10_000)
    qos_depth_small: int = param(100, "history of the small topics (camera_info, poses, tf): what reliable QoS "
                                      "can resend", low=1, high=100_000)


@dataclass
class RecorderOptions:
    """recorder node: topics and where the bag goes."""

    # The graph's outputs (the inputs are in the replayed bag or the camera's own log).
    topics: tuple[str, ...] = param((topics.RECON_POINTS, topics.RECON_RENDER, topics.RECON_RENDER_DEPTH,
                          topics.RECON_DEOCCLUDED, topics.RECON_STATUS, topics.RECON_ROI, topics.DEPTH,
                          topics.INSTRUMENT_MASK, topics.CAMERA_POSE, topics.TF, topics.NODE_STATUS,
                          topics.DIAGNOSTICS), "topics recorded")
    output_dir: str = param("out", "the bag goes to <output_dir>/recording_<UTC time>")
    output: str = param("", "explicit bag path (overrides output_dir)")
    storage: str = param("mcap", "bag storage", choices=("mcap", "sqlite3"))
    queue_size: int = param(200, "messages waiting for the writer; a full queue drops (and counts) messages",
                            low=1, high=1_000_000)
    flush_period: float = param(1.0, "s between flushes of the bag to disk: a crashed recorder loses at most "
                                     "what it received since the last one", low=0.05, high=3600.0)
    qos_depth: int = param(100, "DDS reader history: absorbs bursts while the executor is busy", low=1,
                           high=100_000)
    discovery_period: float = param(0.5, "s between looks for publishers of topics not yet subscribed",
                                    low=0.01, high=60.0)


@dataclass
class MonitorOptions:
    """monitor node: evaluation period, thresholds, checkpoints and watched topics."""

    period: float = param(1.0, "s between evaluations (and snapshot pushes)", low=0.01, high=3600.0)
    stall_periods: int = param(3, "a node or topic silent this many periods is an ERROR", low=1, high=10_000)
    checkpoint_period: float = param(30.0, "s between trainer checkpoints (/recon/save kind checkpoint); 0 = off",
                                     low=0.0, high=1e6)
    latency_warn_ms: float = param(1000.0, "frame stamp -> output latency above this is a WARN", low=0.0,
                                   high=1e7)
    gpu_memory_warn_mb: float = param(0.0, "trainer GPU memory above this is a WARN; 0 = no limit", low=0.0,
                                      high=1e7)
    snapshot: bool = param(True, "re-send the newest cloud on /surg3d/snapshot/points when the trainer is busy")
    topics: tuple[str, ...] = param((topics.LEFT_IMAGE, topics.DEPTH, topics.INSTRUMENT_MASK, topics.RECON_STATUS,
                          topics.RECON_POINTS, topics.RECON_RENDER), "topics watched for rate and latency")


@dataclass
class FoxgloveBridgeOptions:
    """foxglove_bridge node: server, what is sent to viewers, and the other nodes' live parameters offered."""

    host: str = param("127.0.0.1", "bind address; 0.0.0.0 exposes the bridge to the network (no "
                                    "authentication!)")
    port: int = param(8765, "Foxglove WebSocket port", low=0, high=65535)
    output_dir: str = param("out", "regions of interest persist in output_dir/rois.json")
    max_points: int = param(60_000, "cloud points sent to viewers (evenly subsampled beyond this)", low=1,
                            high=10_000_000)
    image_rate: float = param(10.0, "Hz, per image channel, only while a viewer subscribes", low=0.01,
                              high=_HZ)
    jpeg_quality: int = param(80, "JPEG quality of the image channels", low=1, high=100)
    roi_radius: float = param(0.005, "m, radius of a clicked region of interest", low=1e-5, high=1.0)
    splats_rate: float = param(1.0, "Hz of Gaussian model updates (/ui/splats, binary) asked of the trainer, "
                                    "only while a viewer subscribes (0 = off)", low=0.0, high=30.0)
    splats_max: int = param(300_000, "Gaussians per splat update (the most opaque)", low=1, high=10_000_000)
    service_timeout: float = param(5.0, "s, waiting for the trainer's services / parameter services", low=0.1,
                                   high=600.0)
    # Which of the other nodes' live parameters the viewers get; type, range and description come from the
    # owning node's declaration (NODE_PARAMETERS), never from here.
    tunables: tuple[str, ...] = param(("trainer.iterations_per_frame", "trainer.max_gaussians", "trainer.points_rate",
                            "trainer.render_rate"), "live parameters of other nodes offered to viewers "
                                                    "(node.parameter)")


NODE_PARAMETERS: dict[str, tuple[type, ...]] = {
    "stereo_depth": (StereoDepthOptions, SGBMParams),
    "instrument_seg": (InstrumentSegOptions, CueParams),
    "trainer": (TrainerNodeOptions, TrainerConfig),
    "kinematics": (KinematicsOptions, InstrumentGeometry),
    "tracker": (TrackerNodeOptions, TrackerParams),
    "dvrk_emulator": (DvrkEmulatorOptions,),
    "bag_replay": (BagReplayOptions,),
    "recorder": (RecorderOptions,),
    "monitor": (MonitorOptions,),
    "foxglove_bridge": (FoxgloveBridgeOptions,),
}


def node_parameters(executable: str) -> dict[str, ParamSpec]:
    """Every parameter of the node `executable` by name (the common NodeOptions included); KeyError for an
    executable that is not a surg3d node."""
    return param_specs(NodeOptions, *NODE_PARAMETERS[executable])
