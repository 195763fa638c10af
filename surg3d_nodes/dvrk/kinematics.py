"""Robot kinematics at image stamps: buffers for 100 Hz pose and joint streams (dVRK `measured_cp`,
`measured_js`), interpolation, hand-eye composition and hand-eye calibration.

A camera pose is only ever produced from two kinematics samples that bracket the image stamp closely
(SLERP rotation, linear translation); a stamp outside the stream, inside a gap or beyond a stopped stream
gets no pose and a reason, never an extrapolated or held pose, so a frame never carries a wrong pose.

dVRK frames (dVRK 2.x with setup joints): `/ECM/measured_cp` is the ECM tip ("camera") frame in the patient
cart frame, `/PSMn/measured_cp` the instrument tip in that ECM tip frame, metres. The ECM tip frame follows
the ISI convention (x left, y up, z forward), so the optical frame (x right, y down, z forward) is, nominally,
rotated 180 degrees about z: the default hand-eye. A real endoscope needs `calibrate_hand_eye`.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from surg3d_nodes.common.geometry import matrix_to_quat, pose_matrix, quat_to_matrix, slerp

MS = 1_000_000
# ECM tip (ISI: x left, y up, z forward) -> optical frame (x right, y down, z forward), as x y z qx qy qz qw.
NOMINAL_HAND_EYE = (0.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0)


# dVRK 2.x CRTK streams of a PSM (`dvrk_arm_topic`'s `what`) and the joint names they carry.
MEASURED_CP = "measured_cp"            # geometry_msgs/PoseStamped: the tool tip frame
MEASURED_JS = "measured_js"            # sensor_msgs/JointState of the arm's joints
JAW_MEASURED_JS = "jaw/measured_js"    # sensor_msgs/JointState: the jaw opening angle
PSM_JOINT_NAMES = ("outer_yaw", "outer_pitch", "outer_insertion", "outer_roll", "outer_wrist_pitch",
                   "outer_wrist_yaw")
JAW_JOINT_NAMES = ("jaw",)
STREAM_JOINT_NAMES = {MEASURED_JS: PSM_JOINT_NAMES, JAW_MEASURED_JS: JAW_JOINT_NAMES}   # what each carries
PRIOR_JOINT_NAMES = {MEASURED_JS: PSM_JOINT_NAMES[4:], JAW_MEASURED_JS: JAW_JOINT_NAMES}  # what the prior uses


def psm_joint_values(what: str, names: Sequence[str], positions: Sequence[float]) -> np.ndarray:
    """The joints the instrument prior uses from one PSM joint message, picked by name: (outer_wrist_pitch,
    outer_wrist_yaw) of measured_js, (jaw,) of jaw/measured_js. Raises ValueError naming what is wrong."""
    if what not in PRIOR_JOINT_NAMES:
        raise ValueError(f"PSM joint stream must be one of {sorted(PRIOR_JOINT_NAMES)}, got {what!r}")
    names = list(names)
    if len(names) != len(positions):
        raise ValueError(f"{what}: {len(names)} joint names but {len(positions)} positions")
    missing = [n for n in PRIOR_JOINT_NAMES[what] if n not in names]
    if missing:
        raise ValueError(f"{what} has no joint {', '.join(missing)} (joints: {', '.join(names) or 'none'})")
    return np.array([positions[names.index(n)] for n in PRIOR_JOINT_NAMES[what]], dtype=np.float64)


def dvrk_arm_topic(arm: str, what: str = MEASURED_CP) -> str:
    """dVRK 2.x CRTK topic of an arm, e.g. /ECM/measured_cp, /PSM1/measured_cp, /PSM1/jaw/measured_js."""
    if not arm or "/" in arm:
        raise ValueError(f"dVRK arm name must be a plain name like ECM or PSM1, got {arm!r}")
    return f"/{arm}/{what}"


def dvrk_video_topic(rig: str, side: str, what: str = "image_raw") -> str:
    """dvrk_video stereo topic, e.g. /jhu_daVinci/left/image_raw, /jhu_daVinci/right/camera_info."""
    if not rig or side not in ("left", "right"):
        raise ValueError(f"dvrk_video topics need a rig name and side left|right, got {rig!r}, {side!r}")
    return f"/{rig}/{side}/{what}"


# Why a lookup has no pose.
OK = "ok"
NO_DATA = "no_data"          # nothing received yet (or everything was invalid)
PENDING = "pending"          # the stream has not reached the stamp yet: ask again later
STALE = "stale"              # the nearest sample is older than max_age (stream stopped or far behind)
LATE = "late"                # stream behind the stamp by less than max_age after the wait: no bracket
GAP = "gap"                  # the bracketing samples are further apart than max_gap (dropouts)
TOO_OLD = "too_old"          # the stamp is older than the oldest buffered sample


@dataclass(frozen=True)
class PoseLookup:
    """Result of a lookup: a 4x4 pose, or None and the reason; `age_ns` = distance to the nearest sample."""

    T: np.ndarray | None
    reason: str
    age_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.T is not None


@dataclass(frozen=True)
class JointLookup:
    """Result of a joint lookup: joint positions (radians), or None and the reason (as PoseLookup)."""

    values: np.ndarray | None
    reason: str
    age_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.values is not None


def interpolate_pose(T0: np.ndarray, T1: np.ndarray, a: float) -> np.ndarray:
    """Pose a fraction `a` (0..1) of the way from T0 to T1: SLERP rotation, linear translation."""
    q = slerp(matrix_to_quat(T0[:3, :3]), matrix_to_quat(T1[:3, :3]), a)
    T = np.eye(4)
    T[:3, :3] = quat_to_matrix(q)
    T[:3, 3] = (1 - a) * T0[:3, 3] + a * T1[:3, 3]
    return T


def is_rigid(T: np.ndarray | None, tol: float = 1e-3) -> bool:
    """True for a finite 4x4 rigid transform (orthonormal rotation with det +1, last row 0 0 0 1)."""
    if T is None:
        return False
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4) or not np.all(np.isfinite(T)):
        return False
    R = T[:3, :3]
    return bool(np.allclose(R @ R.T, np.eye(3), atol=tol) and abs(np.linalg.det(R) - 1) < tol
                and np.allclose(T[3], [0, 0, 0, 1]))


def pose_error(T_est: np.ndarray, T_ref: np.ndarray) -> tuple[float, float]:
    """(translation error in metres, rotation error in degrees) between two 4x4 poses."""
    dR = T_est[:3, :3].T @ T_ref[:3, :3]
    ang = np.degrees(np.arccos(np.clip((np.trace(dR) - 1) / 2, -1.0, 1.0)))
    return float(np.linalg.norm(T_est[:3, 3] - T_ref[:3, 3])), float(ang)


def hand_eye_from_params(values: Sequence[float]) -> np.ndarray:
    """4x4 T_ecm_camera from a parameter list [x, y, z, qx, qy, qz, qw] (metres, ROS quaternion order)."""
    v = [float(x) for x in values]
    if len(v) != 7:
        raise ValueError(f"hand_eye needs 7 numbers [x, y, z, qx, qy, qz, qw], got {len(v)}: {v}")
    return pose_matrix(v[:3], v[3:])


class StreamBuffer:
    """Time-ordered buffer of one stamped stream queried at image stamps; subclasses say what a valid sample
    is and how two are interpolated (PoseBuffer, JointBuffer).

    `max_age_ns`: a sample farther than this from the stamp is stale (default 50 ms);
    `max_gap_ns`: the widest interval interpolated across (default 30 ms: up to two lost samples at 100 Hz);
    `horizon_ns`: how much history is kept behind the newest sample. Stamps going back by more than
    `reset_ns` are taken as a clock reset (robot restart, looping bag): the buffer restarts from them.
    `counters` counts received, accepted, invalid (NaN, non-rigid, ...), duplicate, out_of_order (accepted,
    inserted in order), too_old (dropped), gaps (intervals > max_gap), clock_reset and per-reason lookups.
    """

    _result: type = PoseLookup      # what lookup returns: (value, reason, age_ns)

    def __init__(self, max_age_ns: int = 50 * MS, max_gap_ns: int = 30 * MS, horizon_ns: int = 2000 * MS,
                 reset_ns: int = 1000 * MS) -> None:
        if max_age_ns <= 0 or max_gap_ns <= 0 or horizon_ns <= 0 or reset_ns <= 0:
            raise ValueError(f"PoseBuffer limits must be positive: max_age={max_age_ns} max_gap={max_gap_ns} "
                             f"horizon={horizon_ns} reset={reset_ns} ns")
        self.max_age_ns, self.max_gap_ns = int(max_age_ns), int(max_gap_ns)
        self.horizon_ns, self.reset_ns = int(horizon_ns), int(reset_ns)
        self._stamps: list[int] = []
        self._values: list[np.ndarray] = []
        self.counters: Counter[str] = Counter()

    def _valid(self, value: np.ndarray | None) -> bool:
        """Whether a sample can be buffered."""
        raise NotImplementedError

    def _interpolate(self, v0: np.ndarray, v1: np.ndarray, a: float) -> np.ndarray:
        """The value a fraction `a` (0..1) of the way from v0 to v1."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self._stamps)

    @property
    def newest_ns(self) -> int | None:
        return self._stamps[-1] if self._stamps else None

    def add(self, stamp_ns: int, value: np.ndarray | None) -> str:
        """Add one sample (None = a message that could not be read). Returns what happened to it:
        'ok', 'out_of_order' (older than the newest, inserted in order), 'invalid', 'duplicate', 'too_old'."""
        self.counters["received"] += 1
        stamp_ns = int(stamp_ns)
        if not self._valid(value) or stamp_ns <= 0:
            self.counters["invalid"] += 1
            return "invalid"
        value = np.array(value, dtype=np.float64)
        newest = self.newest_ns
        if newest is not None and stamp_ns < newest - self.reset_ns:
            self.counters["clock_reset"] += 1
            self._stamps.clear()
            self._values.clear()
            newest = None
        if newest is None or stamp_ns > newest:
            if newest is not None and stamp_ns - newest > self.max_gap_ns:
                self.counters["gaps"] += 1
            self._stamps.append(stamp_ns)
            self._values.append(value)
            self.counters["accepted"] += 1
            self._trim()
            return OK
        i = bisect.bisect_left(self._stamps, stamp_ns)
        if i < len(self._stamps) and self._stamps[i] == stamp_ns:
            self.counters["duplicate"] += 1
            return "duplicate"
        if stamp_ns < newest - self.horizon_ns:
            self.counters["too_old"] += 1
            return "too_old"
        self._stamps.insert(i, stamp_ns)
        self._values.insert(i, value)
        self.counters["accepted"] += 1
        self.counters["out_of_order"] += 1
        return "out_of_order"

    def _trim(self) -> None:
        cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self.horizon_ns)
        if cut > 0:
            del self._stamps[:cut]
            del self._values[:cut]

    def lookup(self, stamp_ns: int, final: bool = False) -> PoseLookup | JointLookup:
        """The value at `stamp_ns`, interpolated between the two samples around it.

        While the stream has not reached the stamp the answer is PENDING unless `final` (the caller waited
        long enough): then it is STALE (newest sample older than max_age) or LATE. Every answer without a
        pose is counted under `lookup.<reason>`.
        """
        res = self._result(*self._lookup(int(stamp_ns), final))
        if res.reason != PENDING:
            self.counters[f"lookup.{res.reason}"] += 1
        return res

    def _lookup(self, t: int, final: bool) -> tuple[np.ndarray | None, str, int | None]:
        if not self._stamps:
            return None, NO_DATA, None
        newest = self._stamps[-1]
        if t > newest:
            age = t - newest
            if not final:
                return None, PENDING, age
            return None, STALE if age > self.max_age_ns else LATE, age
        i = bisect.bisect_left(self._stamps, t)
        if self._stamps[i] == t:
            return self._values[i].copy(), OK, 0
        if i == 0:
            return None, TOO_OLD, self._stamps[0] - t
        t0, t1 = self._stamps[i - 1], self._stamps[i]
        age = min(t - t0, t1 - t)
        if age > self.max_age_ns:
            return None, STALE, age
        if t1 - t0 > self.max_gap_ns:
            return None, GAP, age
        return self._interpolate(self._values[i - 1], self._values[i], (t - t0) / (t1 - t0)), OK, age


class PoseBuffer(StreamBuffer):
    """Buffer of one pose stream (e.g. 100 Hz `/ECM/measured_cp`): rigid 4x4 samples, SLERP + linear
    interpolation; lookups give PoseLookup (StreamBuffer has the limits and counters)."""

    _result = PoseLookup

    def _valid(self, value: np.ndarray | None) -> bool:
        return is_rigid(value)

    def _interpolate(self, v0: np.ndarray, v1: np.ndarray, a: float) -> np.ndarray:
        return interpolate_pose(v0, v1, a)


class JointBuffer(StreamBuffer):
    """Buffer of one joint-state stream (e.g. the wrist joints of `/PSM1/measured_js`): `size` finite angles
    within +-pi per sample (NaN, a wrong count or a wild value: invalid), linear interpolation; lookups give
    JointLookup."""

    _result = JointLookup

    def __init__(self, size: int, **limits) -> None:
        super().__init__(**limits)
        self.size = int(size)

    def _valid(self, value: np.ndarray | None) -> bool:
        if value is None:
            return False
        v = np.asarray(value, dtype=np.float64)
        return v.shape == (self.size,) and bool(np.all(np.isfinite(v)) and np.all(np.abs(v) <= np.pi))

    def _interpolate(self, v0: np.ndarray, v1: np.ndarray, a: float) -> np.ndarray:
        return (1 - a) * v0 + a * v1


class KinematicCamera:
    """Camera poses from ECM kinematics: T_world_camera(t) = T_cart_ecm(t) @ T_ecm_camera (hand-eye).

    The world frame is the cart frame (the dVRK ECM base), so poses are consistent across ECM motion;
    `image_offset_ns` is subtracted from image stamps to bring them onto the kinematics clock (the video
    machine's clock offset plus capture latency). PSM tip poses (in the ECM tip frame) are mapped into the
    camera frame with the same hand-eye. PSM joint streams (`add_psm_joints`: the wrist pitch and yaw of
    measured_js, the jaw angle of jaw/measured_js) are buffered and interpolated like the poses.
    """

    def __init__(self, hand_eye: np.ndarray, image_offset_ns: int = 0, **buffer_kwargs) -> None:
        if not is_rigid(hand_eye):
            raise ValueError("hand-eye transform is not a rigid 4x4 transform: "
                             f"{np.asarray(hand_eye).tolist()}")
        self.hand_eye = np.asarray(hand_eye, dtype=np.float64)
        self.ecm_to_camera_inv = np.linalg.inv(self.hand_eye)
        self.image_offset_ns = int(image_offset_ns)
        self.buffer_kwargs = buffer_kwargs
        self.ecm = PoseBuffer(**buffer_kwargs)
        self.psms: dict[str, PoseBuffer] = {}
        self.psm_joints: dict[tuple[str, str], JointBuffer] = {}   # (arm, MEASURED_JS | JAW_MEASURED_JS)

    @property
    def streams(self) -> list[StreamBuffer]:
        """Every buffered stream: ECM, PSM poses, PSM joints."""
        return [self.ecm, *self.psms.values(), *self.psm_joints.values()]

    def add_ecm(self, stamp_ns: int, T_cart_ecm: np.ndarray | None) -> str:
        """Add an ECM measured_cp sample; returns PoseBuffer.add's verdict."""
        return self.ecm.add(stamp_ns, T_cart_ecm)

    def add_psm(self, arm: str, stamp_ns: int, T_ecm_tip: np.ndarray | None) -> str:
        """Add a PSM measured_cp sample (tip in the ECM tip frame)."""
        buf = self.psms.setdefault(arm, PoseBuffer(**self.buffer_kwargs))
        return buf.add(stamp_ns, T_ecm_tip)

    def add_psm_joints(self, arm: str, what: str, stamp_ns: int, values: np.ndarray | None) -> str:
        """Add a PSM joint sample: `what` MEASURED_JS with (wrist pitch, wrist yaw) or JAW_MEASURED_JS with
        (jaw,), radians (None = unreadable); returns PoseBuffer.add's verdict."""
        if what not in PRIOR_JOINT_NAMES:
            raise ValueError(f"PSM joint stream must be one of {sorted(PRIOR_JOINT_NAMES)}, got {what!r}")
        buf = self.psm_joints.setdefault((arm, what), JointBuffer(len(PRIOR_JOINT_NAMES[what]),
                                                                  **self.buffer_kwargs))
        return buf.add(stamp_ns, values)

    def camera_pose(self, image_stamp_ns: int, final: bool = False) -> PoseLookup:
        """T_world_camera at an image stamp, or None and the reason."""
        res = self.ecm.lookup(int(image_stamp_ns) - self.image_offset_ns, final)
        return PoseLookup(res.T @ self.hand_eye, OK, res.age_ns) if res.ok else res

    def tool_poses(self, image_stamp_ns: int, final: bool = False) -> dict[str, PoseLookup]:
        """T_camera_tip of each PSM at an image stamp (each a PoseLookup)."""
        t = int(image_stamp_ns) - self.image_offset_ns
        out = {}
        for arm, buf in self.psms.items():
            res = buf.lookup(t, final)
            out[arm] = PoseLookup(self.ecm_to_camera_inv @ res.T, OK, res.age_ns) if res.ok else res
        return out

    def tool_joints(self, image_stamp_ns: int, final: bool = False) -> dict[str, JointLookup]:
        """(wrist pitch, wrist yaw, jaw) of each PSM with a pose stream at an image stamp: a JointLookup that
        fails (NO_DATA for an arm without joint streams) when either joint stream fails at the stamp."""
        t = int(image_stamp_ns) - self.image_offset_ns
        out = {}
        for arm in self.psms:
            parts = []
            for what in (MEASURED_JS, JAW_MEASURED_JS):
                buf = self.psm_joints.get((arm, what))
                parts.append(buf.lookup(t, final) if buf is not None else JointLookup(None, NO_DATA))
            bad = [r for r in parts if not r.ok]
            out[arm] = bad[0] if bad else JointLookup(np.concatenate([r.values for r in parts]), OK,
                                                      max(r.age_ns for r in parts))
        return out


def calibrate_hand_eye(T_cart_ecm: Sequence[np.ndarray], T_camera_target: Sequence[np.ndarray]) -> np.ndarray:
    """T_ecm_camera from N >= 3 pairs (ECM measured_cp, pose of a fixed target seen by the left camera).

    Procedure: fix a checkerboard in the field of view, move the ECM to N (10-20) poses with rotations about
    different axes, and at each record `/ECM/measured_cp` and the target pose from the left image
    (cv2.findChessboardCorners + cv2.solvePnP with the calibrated left camera). Solves AX = XB over all pose
    pairs: rotation by Park & Martin (least squares on rotation vectors, Kabsch), then translation by
    linear least squares. (The OpenCV 5 wheel has no calibrateHandEye.)
    """
    if len(T_cart_ecm) != len(T_camera_target) or len(T_cart_ecm) < 3:
        raise ValueError("hand-eye calibration needs >= 3 matching pose pairs, got "
                         f"{len(T_cart_ecm)} ECM poses and {len(T_camera_target)} target poses")
    for i, (a, b) in enumerate(zip(T_cart_ecm, T_camera_target, strict=True)):
        if not (is_rigid(a) and is_rigid(b)):
            raise ValueError(f"hand-eye calibration pair {i} is not a pair of rigid 4x4 transforms")
    motions = []
    n = len(T_cart_ecm)
    for i in range(n):
        for j in range(i + 1, n):
            A = np.linalg.inv(T_cart_ecm[j]) @ T_cart_ecm[i]           # ECM motion
            B = T_camera_target[j] @ np.linalg.inv(T_camera_target[i])  # the same motion seen by the camera
            motions.append((A, B))
    alpha = np.array([cv2.Rodrigues(A[:3, :3])[0].ravel() for A, _ in motions])
    beta = np.array([cv2.Rodrigues(B[:3, :3])[0].ravel() for _, B in motions])
    U, _, Vt = np.linalg.svd(alpha.T @ beta)
    R = U @ np.diag([1.0, 1.0, np.linalg.det(U @ Vt)]) @ Vt
    if np.linalg.matrix_rank(alpha, tol=1e-3) < 2:
        raise ValueError("hand-eye calibration needs ECM rotations about at least two different axes")
    lhs = np.concatenate([A[:3, :3] - np.eye(3) for A, _ in motions])
    rhs = np.concatenate([R @ B[:3, 3] - A[:3, 3] for A, B in motions])
    X = np.eye(4)
    X[:3, :3], X[:3, 3] = R, np.linalg.lstsq(lhs, rhs, rcond=None)[0]
    return X


@dataclass(frozen=True)
class FrameKinematics:
    """Kinematics resolved for one image: the camera pose (PoseLookup), each PSM's T_camera_tip and its
    (wrist pitch, wrist yaw, jaw) joints (KinematicCamera.tool_joints)."""

    stamp_ns: int
    camera: PoseLookup
    tools: dict[str, PoseLookup]
    joints: dict[str, JointLookup] = field(default_factory=dict)


class FrameResolver:
    """Image stamps waiting for their kinematics (robot and video streams arrive with different latencies).

    An image is resolved as soon as the ECM stream and every PSM stream seen so far have passed its stamp, or
    by a finalising poll once it had waited `max_wait_ns` at the previous finalising poll and none of the
    streams still behind its stamp delivered anything since then (a stopped stream: STALE, never a held
    pose). Judging quietness over a whole poll interval keeps a starved process, whose queued kinematics are
    delivered after its timer fires, from giving up on frames it can resolve; `max_wait_ns *
    hard_limit_factor` bounds the wait regardless. `poll` returns resolved frames in stamp
    order. `counters` counts frames, frames_with_pose, frames_without_pose, no_pose.<reason> and dropped
    (more than `max_pending` images waiting).
    """

    hard_limit_factor = 5

    def __init__(self, camera: KinematicCamera, max_wait_ns: int = 100 * MS, max_pending: int = 30) -> None:
        if max_wait_ns < 0 or max_pending < 1:
            raise ValueError("FrameResolver needs max_wait_ns >= 0 and max_pending >= 1, got "
                             f"{max_wait_ns}, {max_pending}")
        self.camera = camera
        self.max_wait_ns, self.max_pending = int(max_wait_ns), int(max_pending)
        self._pending: list[tuple[int, int]] = []      # (image stamp, time added)
        self._seen: dict[int, int] = {}                # id(buffer) -> samples received at the last final poll
        self._last_final_poll: int | None = None
        self.counters: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def add_image(self, stamp_ns: int, now_ns: int) -> None:
        """Queue an image stamp seen at time `now_ns` (any monotonic clock, the same for `poll`)."""
        if any(s == stamp_ns for s, _ in self._pending):
            return
        bisect.insort(self._pending, (int(stamp_ns), int(now_ns)))
        while len(self._pending) > self.max_pending:
            self._pending.pop(0)
            self.counters["dropped"] += 1

    def _lagging(self, stamp_ns: int) -> list[PoseBuffer]:
        """The streams that have not reached an image stamp yet."""
        t = stamp_ns - self.camera.image_offset_ns
        return [b for b in self.camera.streams if b.newest_ns is None or b.newest_ns < t]

    def poll(self, now_ns: int, finalize: bool = True) -> list[FrameKinematics]:
        """Resolve every waiting image whose kinematics are complete, and with `finalize` (call it from a
        periodic timer) those whose wait is over. Returns them in stamp order."""
        bufs = self.camera.streams
        prev = self._last_final_poll
        if finalize:
            moved = {id(b) for b in bufs if b.counters["received"] != self._seen.get(id(b))}
            self._seen = {id(b): b.counters["received"] for b in bufs}
            self._last_final_poll = now_ns
        out = []
        keep = []
        for stamp, added in self._pending:
            lagging = self._lagging(stamp)
            final = False
            if finalize and lagging:
                quiet = prev is not None and prev - added >= self.max_wait_ns \
                    and not any(id(b) in moved for b in lagging)
                final = quiet or now_ns - added >= self.max_wait_ns * self.hard_limit_factor
            if lagging and not final:
                keep.append((stamp, added))
                continue
            cam = self.camera.camera_pose(stamp, final=True)
            tools = self.camera.tool_poses(stamp, final=True)
            joints = self.camera.tool_joints(stamp, final=True)
            self.counters["frames"] += 1
            if cam.ok:
                self.counters["frames_with_pose"] += 1
            else:
                self.counters["frames_without_pose"] += 1
                self.counters[f"no_pose.{cam.reason}"] += 1
            out.append(FrameKinematics(stamp, cam, tools, joints))
        self._pending = keep
        return out
