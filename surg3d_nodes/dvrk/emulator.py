"""dVRK emulator (ROS-free part): the message streams a da Vinci Research Kit would publish while filming the
synthetic scene (core.synthetic), with exact ground truth, for tests and demos without a robot.

Streams (dVRK 2.x names, metres): `/ECM/measured_cp` (ECM tip in the cart frame) and `/PSMn/measured_cp`
(instrument tip in the ECM tip frame), both at `kinematics_hz` (100 Hz), and the stereo video at the clip's
fps (30 Hz). With articulated instruments (SynthConfig.articulated, the default here) also `/PSMn/measured_js`
(the true wrist pitch and yaw; the four outer joints, which the synthetic scene does not model, are zero) and
`/PSMn/jaw/measured_js` (jaw angle), at `kinematics_hz` with the same faults as measured_cp.
The ECM pose is T_cart_ecm(t) = T_cart_world T_world_cam(t) inv(T_ecm_cam): the synthetic
camera moved by an ECM whose tip carries the camera through the hand-eye transform `hand_eye`.
Imperfections for tests: sampling-instant jitter (stamps stay true), delivery latency and jitter, random
dropouts, reordering, NaN messages, ECM gaps, a stopped ECM stream and a video clock offset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

import numpy as np

from surg3d_nodes.common.geometry import pose_matrix
from surg3d_nodes.data.synthetic import SceneKinematics, SynthConfig, SynthScene, generate
from surg3d_nodes.dvrk.kinematics import JAW_MEASURED_JS, MEASURED_CP, MEASURED_JS, NOMINAL_HAND_EYE
from surg3d_nodes.perception.instrument_prior import InstrumentGeometry

MS = 1_000_000
ECM = "ECM"
VIDEO = "video"

# The synthetic instruments' geometry in the prior's model (core.synthetic tool dimensions).
SYNTHETIC_INSTRUMENT = InstrumentGeometry(shaft_radius=SceneKinematics.shaft_radius,
                                          jaw_radius=SceneKinematics.tip_radius,
                                          wrist_length=SceneKinematics.tip_length,
                                          shaft_length=SceneKinematics.shaft_length)
# The articulated synthetic instruments (SynthConfig.articulated); straight, the jaw capsule reaches the yaw axis.
SYNTHETIC_WRISTED_INSTRUMENT = InstrumentGeometry(shaft_radius=SceneKinematics.shaft_radius,
                                                  jaw_radius=SceneKinematics.tip_radius,
                                                  wrist_length=SceneKinematics.yaw_to_tip,
                                                  shaft_length=SceneKinematics.shaft_length,
                                                  pitch_to_yaw=SceneKinematics.pitch_to_yaw,
                                                  yaw_to_tip=SceneKinematics.yaw_to_tip)


@dataclass
class EmulatorConfig:
    """What the emulated robot does. Times in ms unless named `_s` (seconds from the first frame)."""

    synth: SynthConfig = field(default_factory=lambda: SynthConfig(camera_motion="moving", instruments=2,
                                                                   articulated=True))
    kinematics_hz: float = 100.0
    sample_jitter_ms: float = 0.3        # std of the sampling instants around the nominal period
    latency_ms: float = 2.0              # kinematics delivery latency after the stamp
    delivery_jitter_ms: float = 1.0      # std of the delivery time (reorders messages when ~ the period)
    video_offset_ms: float = 0.0         # added to video header stamps: video clock offset + capture latency
    video_latency_ms: float = 25.0       # video delivery latency after the (true) capture time
    dropout: float = 0.0                 # probability that a kinematics message is lost
    reorder: float = 0.0                 # probability that a kinematics message is delivered after the next
    nan_rate: float = 0.0                # probability that a kinematics message carries NaN
    ecm_stop_s: float | None = None      # the ECM stream stops at this time
    ecm_gaps_s: tuple[tuple[float, float], ...] = ()   # (start, length) windows without ECM messages
    psm_arms: tuple[str, ...] = ("PSM1", "PSM2")
    hand_eye: tuple[float, ...] = NOMINAL_HAND_EYE     # true T_ecm_cam [x, y, z, qx, qy, qz, qw]
    cart_from_world: tuple[float, ...] = (0.05, -0.02, 0.25, 0.9238795, 0.0, 0.0, 0.3826834)
    lead_s: float = 0.1                  # kinematics start this long before the first frame and end after
    seed: int = 0

    def validate(self) -> None:
        """Raise ValueError naming the first setting outside its range."""
        self.synth.validate()
        if not 1.0 <= self.kinematics_hz <= 2000.0:
            raise ValueError(f"kinematics_hz must be in [1, 2000], got {self.kinematics_hz}")
        for name in ("sample_jitter_ms", "latency_ms", "delivery_jitter_ms", "video_latency_ms", "lead_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("dropout", "reorder", "nan_rate"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {getattr(self, name)}")
        if len(self.psm_arms) > self.synth.instruments:
            raise ValueError(f"{len(self.psm_arms)} PSM arms {self.psm_arms} for a scene with "
                             f"{self.synth.instruments} instruments")
        if len(self.hand_eye) != 7 or len(self.cart_from_world) != 7:
            raise ValueError("hand_eye and cart_from_world are [x, y, z, qx, qy, qz, qw]")


@dataclass(frozen=True)
class DvrkMessage:
    """One published message: `kind` is an arm name (its stream `what`: measured_cp with the pose T,
    measured_js / jaw/measured_js with the joint positions) or VIDEO (stereo images of `frame`)."""

    send_ns: int
    kind: str
    stamp_ns: int
    T: np.ndarray | None = None
    frame: int = -1
    what: str = MEASURED_CP
    joints: np.ndarray | None = None


@dataclass
class DvrkEmulation:
    """The rendered scene, the time-ordered messages and the ground truth to check consumers against."""

    config: EmulatorConfig
    scene: SynthScene
    messages: list[DvrkMessage]
    hand_eye: np.ndarray                 # true T_ecm_cam
    T_cart_world: np.ndarray
    kinematics: SceneKinematics

    def true_camera_pose(self, frame: int) -> np.ndarray:
        """True T_cart_cam (left optical frame) of a video frame."""
        return self.T_cart_world @ self.scene.frames[frame].pose

    def image_stamp(self, frame: int) -> int:
        """Header stamp the video carries for a frame (with the video clock offset)."""
        return self.scene.frames[frame].stamp_ns + round(self.config.video_offset_ms * MS)


def true_tool_poses(kin: SceneKinematics, T_world_cam: np.ndarray, t: float) -> list[np.ndarray]:
    """T_camera_tip of every synthetic instrument at time t."""
    inv = np.linalg.inv(T_world_cam)
    return [inv @ T for T in kin.tip_poses(t)]


def emulate(cfg: EmulatorConfig | None = None,
            progress: Callable[[int, int], None] | None = None) -> DvrkEmulation:
    """Render the synthetic clip and build the dVRK message streams; `progress` as in synthetic.generate."""
    cfg = cfg or EmulatorConfig()
    cfg.validate()
    rng = np.random.default_rng(cfg.seed + 101)
    scene = generate(cfg.synth, progress)
    kin = SceneKinematics(cfg.synth)
    X = pose_matrix(cfg.hand_eye[:3], cfg.hand_eye[3:])
    X_inv = np.linalg.inv(X)
    T_cart_world = pose_matrix(cfg.cart_from_world[:3], cfg.cart_from_world[3:])
    start = cfg.synth.start_ns
    duration = (cfg.synth.frames - 1) / cfg.synth.fps
    period = 1.0 / cfg.kinematics_hz
    n = int(np.floor((duration + 2 * cfg.lead_s) / period)) + 1
    times = -cfg.lead_s + np.arange(n) * period + rng.normal(0, cfg.sample_jitter_ms / 1e3, n)
    times = np.sort(times)

    joint_streams = (MEASURED_JS, JAW_MEASURED_JS) if cfg.synth.articulated else ()
    streams: dict[tuple[str, str], list[DvrkMessage]] = {
        (arm, what): [] for arm in (ECM, *cfg.psm_arms) for what in (MEASURED_CP, *joint_streams)
        if arm != ECM or what == MEASURED_CP}

    def deliver(m: DvrkMessage) -> None:
        """Queue one message through the faults: dropout, NaN, delivery latency and jitter."""
        if rng.random() < cfg.dropout:
            return
        if rng.random() < cfg.nan_rate:
            if m.T is not None:
                T = m.T.copy()
                T[:3, 3] = np.nan
                m = replace(m, T=T)
            else:
                m = replace(m, joints=np.full_like(m.joints, np.nan))
        send = m.stamp_ns + round((cfg.latency_ms + abs(rng.normal(0, cfg.delivery_jitter_ms))) * MS)
        streams[(m.kind, m.what)].append(replace(m, send_ns=send))

    for t in times:
        stamp = start + round(t * 1e9)
        T_wc = kin.camera_pose(t)
        T_cart_ecm = T_cart_world @ T_wc @ X_inv
        poses = {ECM: T_cart_ecm}
        for arm, T_cam_tip in zip(cfg.psm_arms, true_tool_poses(kin, T_wc, t), strict=False):
            poses[arm] = X @ T_cam_tip                 # tip in the ECM tip frame
        for arm, T in poses.items():
            if arm == ECM and ((cfg.ecm_stop_s is not None and t >= cfg.ecm_stop_s)
                               or any(g0 <= t < g0 + gl for g0, gl in cfg.ecm_gaps_s)):
                continue
            deliver(DvrkMessage(0, arm, stamp, T))
        if joint_streams:
            for arm, (pitch, yaw, jaw) in zip(cfg.psm_arms, kin.joints(t), strict=False):
                deliver(DvrkMessage(0, arm, stamp, what=MEASURED_JS, joints=np.array([0, 0, 0, 0, pitch, yaw])))
                deliver(DvrkMessage(0, arm, stamp, what=JAW_MEASURED_JS, joints=np.array([jaw])))

    messages: list[DvrkMessage] = []
    for msgs in streams.values():
        sends = [m.send_ns for m in msgs]
        for i in range(len(msgs) - 1):        # swap delivery order of neighbours
            if rng.random() < cfg.reorder:
                sends[i], sends[i + 1] = sends[i + 1] + 1, sends[i]
        messages += [replace(m, send_ns=s) for s, m in zip(sends, msgs, strict=True)]
    for i, f in enumerate(scene.frames):
        messages.append(DvrkMessage(f.stamp_ns + round(cfg.video_latency_ms * MS), VIDEO,
                                    f.stamp_ns + round(cfg.video_offset_ms * MS), frame=i))
    messages.sort(key=lambda m: m.send_ns)
    return DvrkEmulation(cfg, scene, messages, X, T_cart_world, kin)
