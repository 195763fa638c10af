"""dVRK kinematics core: interpolation exactness; stream faults (dropouts, jitter, reordering, NaN, gaps,
a stopped ECM) are counted and never give a wrong pose; the kinematic instrument prior, straight and
articulated (wrist joints and jaws); hand-eye calibration.
"""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np
import pytest

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.geometry import pose_matrix
from surg3d_nodes.data.synthetic import SynthConfig
from surg3d_nodes.dvrk.emulator import (
    SYNTHETIC_INSTRUMENT,
    SYNTHETIC_WRISTED_INSTRUMENT,
    DvrkEmulation,
    EmulatorConfig,
    emulate,
)
from surg3d_nodes.dvrk.kinematics import (
    GAP,
    JAW_MEASURED_JS,
    LATE,
    MEASURED_CP,
    MEASURED_JS,
    MS,
    NO_DATA,
    OK,
    PENDING,
    PSM_JOINT_NAMES,
    STALE,
    TOO_OLD,
    FrameResolver,
    KinematicCamera,
    PoseBuffer,
    calibrate_hand_eye,
    hand_eye_from_params,
    interpolate_pose,
    pose_error,
    psm_joint_values,
)
from surg3d_nodes.evaluation.dvrk import replay_streams
from surg3d_nodes.perception.instrument_prior import (
    InstrumentGeometry,
    mask_iou,
    pixel_rays,
    project_instruments,
    tip_frame,
    wrist_links,
)
from surg3d_nodes.system.graph import load_preset

# A frame's pose counts as wrong beyond these (interpolating the smooth 100 Hz motion is ~5 um exact).
MAX_TRANS_M, MAX_ROT_DEG = 1e-4, 0.05


def _rot(axis: np.ndarray, deg: float, t=(0.0, 0.0, 0.0)) -> np.ndarray:
    T = np.eye(4)
    rvec = np.asarray(axis, float).reshape(3, 1) / np.linalg.norm(axis) * np.radians(deg)
    T[:3, :3] = cv2.Rodrigues(rvec)[0]
    T[:3, 3] = t
    return T


def test_interpolation_is_exact_for_constant_rate_motion():
    axis = np.array([0.3, -0.5, 0.8])
    T0, T1 = _rot(axis, 10.0, (0.01, 0.02, 0.03)), _rot(axis, 50.0, (0.05, -0.02, 0.07))
    for a in (0.0, 0.25, 0.5, 0.9, 1.0):
        T = interpolate_pose(T0, T1, a)
        ref = _rot(axis, 10.0 + 40.0 * a, (1 - a) * T0[:3, 3] + a * T1[:3, 3])
        np.testing.assert_allclose(T, ref, atol=1e-12)
    # The buffer interpolates at the image stamp between its two neighbours and returns exact samples as is.
    # (geometry.slerp normalises a linear blend for steps under ~3.6 degrees: 1e-7 rad off at 2 degrees.)
    buf = PoseBuffer()
    for k in range(5):
        buf.add(1_000 * MS + k * 10 * MS, _rot(axis, 2.0 * k, (0.001 * k, 0, 0)))
    res = buf.lookup(1_000 * MS + 23 * MS)
    assert res.reason == OK and res.age_ns == 3 * MS
    np.testing.assert_allclose(res.T, _rot(axis, 4.6, (0.0023, 0, 0)), atol=2e-7)
    np.testing.assert_allclose(buf.lookup(1_020 * MS).T, _rot(axis, 4.0, (0.002, 0, 0)), atol=1e-15)


def test_buffer_reports_every_fault_and_never_extrapolates():
    buf = PoseBuffer(max_age_ns=50 * MS, max_gap_ns=30 * MS)
    assert buf.lookup(5 * MS).reason == NO_DATA
    T = np.eye(4)
    assert buf.add(100 * MS, T) == OK
    assert buf.add(110 * MS, T) == OK
    bad = T.copy()
    bad[0, 3] = np.nan
    assert buf.add(120 * MS, bad) == "invalid"
    assert buf.add(125 * MS, None) == "invalid"
    assert buf.add(130 * MS, np.diag([1.0, 1.0, 2.0, 1.0])) == "invalid"     # not a rotation
    assert buf.add(110 * MS, T) == "duplicate"
    assert buf.add(200 * MS, T) == OK                                         # 90 ms gap
    assert buf.add(190 * MS, T) == "out_of_order"                             # late, inserted in order
    assert buf.counters["gaps"] == 1 and buf.counters["out_of_order"] == 1 and buf.counters["invalid"] == 3
    assert buf.lookup(150 * MS).reason == GAP          # 110 .. 190: 80 ms bracket
    assert buf.lookup(195 * MS).reason == OK
    assert buf.lookup(50 * MS).reason == TOO_OLD
    assert buf.lookup(230 * MS).reason == PENDING      # not final: the stream may still deliver
    assert buf.lookup(230 * MS, final=True).reason == LATE
    late = buf.lookup(260 * MS, final=True)
    assert late.reason == STALE and late.T is None and late.age_ns == 60 * MS
    assert buf.counters["lookup.gap"] == 1 and buf.counters["lookup.stale"] == 1
    # A clock that jumps back by more than reset_ns restarts the buffer instead of rejecting everything.
    assert buf.add(5_000 * MS, T) == OK
    assert buf.add(1_000 * MS, T) == OK and len(buf) == 1 and buf.counters["clock_reset"] == 1


def _replay(em: DvrkEmulation, camera: KinematicCamera,
            max_wait_ms: float = 60.0) -> tuple[dict, FrameResolver]:
    """Feed the emulated streams in delivery order as the node does; returns ({frame: FrameKinematics}, resolver)."""
    resolver = FrameResolver(camera, max_wait_ns=round(max_wait_ms * MS))
    return replay_streams(em, camera, resolver), resolver


@pytest.fixture(scope="module")
def faulty() -> DvrkEmulation:
    """A moving endoscope, 2 instruments, 30 frames (1 s): jitter, dropouts, reordering, NaN, an ECM gap
    from 0.30 to 0.42 s, the ECM stream stopped at 0.75 s and a 12 ms video clock offset."""
    synth = SynthConfig(width=96, height=80, frames=30, camera_motion="moving", instruments=2, noise_std=0.0)
    cfg = EmulatorConfig(synth=synth, sample_jitter_ms=1.0, delivery_jitter_ms=6.0, dropout=0.08, reorder=0.1,
                         nan_rate=0.03,
                         ecm_gaps_s=((0.30, 0.12),), ecm_stop_s=0.75, video_offset_ms=12.0, seed=3)
    return emulate(cfg)


def test_faulty_streams_give_correct_poses_or_none(faulty: DvrkEmulation):
    em = faulty
    camera = KinematicCamera(em.hand_eye, image_offset_ns=round(em.config.video_offset_ms * MS))
    frames, resolver = _replay(em, camera)
    assert len(frames) == len(em.scene.frames)
    fps = em.config.synth.fps
    with_pose = 0
    for i, fk in frames.items():
        t = i / fps
        if fk.camera.ok:
            with_pose += 1
            dt, dr = pose_error(fk.camera.T, em.true_camera_pose(i))
            assert dt < MAX_TRANS_M and dr < MAX_ROT_DEG, f"frame {i}: wrong pose {dt * 1e3:.3f} mm {dr:.3f}°"
        if 0.30 + 0.03 <= t < 0.42 - 0.03 or t >= 0.75 + 0.05:
            assert not fk.camera.ok, f"frame {i} at {t:.3f} s got a pose inside the ECM gap / after the stop"
    c = camera.ecm.counters
    assert c["out_of_order"] > 0 and c["invalid"] > 0 and c["gaps"] >= 1
    assert resolver.counters["no_pose.stale"] + resolver.counters["no_pose.gap"] >= 8
    assert with_pose >= 15 and resolver.counters["frames_with_pose"] == with_pose


def test_unconfigured_video_offset_only_shifts_time(faulty: DvrkEmulation):
    """Without the 12 ms offset the poses belong to the wrong instant: the error stays at the motion over
    12 ms, which is why `image_time_offset_ms` must be set (documented); nothing breaks."""
    camera = KinematicCamera(faulty.hand_eye)
    frames, _ = _replay(faulty, camera)
    errs = [pose_error(fk.camera.T, faulty.true_camera_pose(i))[0]
            for i, fk in frames.items() if fk.camera.ok]
    assert errs and 0 < max(errs) < 0.002


def test_kinematic_prior_matches_true_masks():
    em = emulate(EmulatorConfig(synth=SynthConfig(width=160, height=128, frames=8, camera_motion="moving",
                                                  instruments=2, noise_std=0.0), seed=1))
    camera = KinematicCamera(em.hand_eye)
    frames, _ = _replay(em, camera)
    rays = pixel_rays(em.scene.cam_left)
    ious = []
    for i, fk in frames.items():
        tools = [r.T for r in fk.tools.values() if r.ok]
        assert len(tools) == 2
        prior = project_instruments(em.scene.cam_left, tools, SYNTHETIC_INSTRUMENT, rays=rays)
        ious.append(mask_iou(prior, em.scene.frames[i].mask))
    assert min(ious) >= 0.8, f"prior IoU per frame {np.round(ious, 3).tolist()}"


def test_prior_raw_and_rectified_rays_agree_for_an_undistorted_camera(faulty: DvrkEmulation):
    cam = faulty.scene.cam_left
    np.testing.assert_allclose(pixel_rays(cam, rectified=False), pixel_rays(cam, rectified=True), atol=1e-9)
    with pytest.raises(ValueError, match="finite 4x4"):
        project_instruments(cam, [np.full((4, 4), np.nan)])


def test_hand_eye_calibration_recovers_the_transform():
    rng = np.random.default_rng(0)
    X = hand_eye_from_params([0.002, -0.001, 0.004, 0.0, 0.0087, 0.9999, 0.0])
    T_cart_target = pose_matrix([0.05, 0.0, 0.35], [0.0, 0.0, 0.0, 1.0])
    ecm, target = [], []
    for _ in range(12):
        A = _rot(rng.normal(size=3), rng.uniform(5, 25), [*rng.uniform(-0.03, 0.03, 2), 0.2])
        ecm.append(A)
        target.append(np.linalg.inv(A @ X) @ T_cart_target)
    dt, dr = pose_error(calibrate_hand_eye(ecm, target), X)
    assert dt < 1e-6 and dr < 1e-4
    with pytest.raises(ValueError, match="hand_eye needs 7"):
        hand_eye_from_params([0, 0, 0])


def test_hand_eye_error_shifts_the_trajectory_rigidly(faulty: DvrkEmulation):
    """2 mm / 1 degree of hand-eye error: every absolute pose is off by exactly that (a rigid offset of the
    whole trajectory, harmless for a reconstruction), while poses relative to the first frame, which a
    reconstruction sees, are off by the perturbation conjugated with the (small) camera motion only."""
    dX = _rot([0.2, 1.0, -0.4], 1.0, np.array([1.0, -1.0, 0.5]) / np.linalg.norm([1.0, -1.0, 0.5]) * 0.002)
    em = faulty
    offset = round(em.config.video_offset_ms * MS)
    exact, _ = _replay(em, KinematicCamera(em.hand_eye, image_offset_ns=offset))
    wrong, _ = _replay(em, KinematicCamera(em.hand_eye @ dX, image_offset_ns=offset))
    ok = sorted(i for i in exact if exact[i].camera.ok)
    assert ok and ok == sorted(i for i in wrong if wrong[i].camera.ok)
    first = ok[0]
    for i in ok:
        dt, dr = pose_error(wrong[i].camera.T, em.true_camera_pose(i))
        assert abs(dt - 0.002) < 1e-4 and abs(dr - 1.0) < 0.01
        rel = np.linalg.inv(wrong[first].camera.T) @ wrong[i].camera.T
        rel_true = np.linalg.inv(em.true_camera_pose(first)) @ em.true_camera_pose(i)
        motion_m, motion_deg = pose_error(rel_true, np.eye(4))
        dt, dr = pose_error(rel, rel_true)
        # conjugating a motion by a 1 degree rotation moves its translation by <= 2 sin(0.5 deg) of its length
        assert dt <= 0.0175 * motion_m + np.radians(motion_deg) * 0.002 + 1e-5
        assert dr <= 0.02 * motion_deg + 1e-3


def test_camera_yaml_round_trip(tmp_path, faulty: DvrkEmulation):
    from surg3d_nodes.common.camera_yaml import load_camera_yaml, save_camera_yaml

    cam = faulty.scene.cam_right
    back = load_camera_yaml(save_camera_yaml(cam, tmp_path / "right.yaml"), frame_id="r")
    np.testing.assert_allclose(back.P, cam.P)
    assert (back.width, back.height, back.baseline) == (cam.width, cam.height, pytest.approx(cam.baseline))
    (tmp_path / "bad.yaml").write_text("image_width: 10\nimage_height: 8\ncamera_matrix: {data: [1, 2]}\n")
    with pytest.raises(ValueError, match=r"bad\.yaml: camera_matrix has 2 values"):
        load_camera_yaml(tmp_path / "bad.yaml")


def test_prior_image_boxes_lose_no_pixel():
    """The per-part image boxes only skip pixels that cannot be hit: compare with testing every pixel, for
    random tools (some reaching past the lens plane) in a distorted raw camera and a rectified one."""
    from surg3d_nodes.perception.instrument_prior import _segment_hits

    raw = CameraModel(120, 96, [[100.0, 0, 61], [0, 100.0, 47], [0, 0, 1]], D=[-0.3, 0.1, 0.001, 0.0, 0.0])
    rng = np.random.default_rng(4)
    g = InstrumentGeometry()
    seen = 0
    for cam, rectified in ((raw, False), (CameraModel.pinhole(120, 96, 100.0), True)):
        rays = pixel_rays(cam, rectified).astype(np.float32)
        flat = rays.reshape(-1, 3)
        A = np.einsum("ij,ij->i", flat, flat)
        for _ in range(15):
            axis = rng.normal(size=3)
            axis[2] = -abs(axis[2])
            tools = [tip_frame(np.r_[rng.uniform(-0.04, 0.04, 2), rng.uniform(0.01, 0.12)],
                               axis / np.linalg.norm(axis))]
            full = np.zeros(len(flat), dtype=bool)
            tip, back = tools[0][:3, 3], -tools[0][:3, 2]
            full |= _segment_hits(flat, A, tip, back, 0.0, g.wrist_length, g.jaw_radius, True)
            full |= _segment_hits(flat, A, tip, back, g.wrist_length, g.shaft_length, g.shaft_radius, False)
            mask = project_instruments(cam, tools, g, rectified=rectified)
            np.testing.assert_array_equal(mask > 0, full.reshape(cam.height, cam.width))
            seen += bool(mask.any())
    assert seen >= 10, f"only {seen} of 30 random tools were in view: the check proves little"


def test_resolver_waits_while_lagging_kinematics_still_arrive():
    """A frame is given up only after a whole quiet poll interval past max_wait: a starved process whose
    queued kinematics arrive late still resolves it; a stopped stream gives STALE."""
    cam = KinematicCamera(np.eye(4))
    res = FrameResolver(cam, max_wait_ns=100 * MS)
    for k in range(10):                                   # ECM up to 90 ms
        cam.add_ecm(k * 10 * MS + MS, np.eye(4))
    res.add_image(150 * MS, now_ns=0)
    assert res.poll(50 * MS) == [] and res.poll(500 * MS, finalize=False) == []
    assert res.poll(120 * MS) == []                       # waited, but the previous final poll was too early
    for k in range(10, 13):                               # the backlog arrives (up to 121 ms)
        cam.add_ecm(k * 10 * MS + MS, np.eye(4))
    assert res.poll(140 * MS) == []                       # the stream moved: keep waiting
    for k in range(13, 17):
        cam.add_ecm(k * 10 * MS + MS, np.eye(4))
    (fk,) = res.poll(141 * MS, finalize=False)            # bracketed now: resolved without finalising
    assert fk.camera.ok
    res.add_image(400 * MS, now_ns=200 * MS)              # the ECM stream has stopped at 161 ms
    assert res.poll(250 * MS) == [] and res.poll(310 * MS) == []
    (fk,) = res.poll(320 * MS)
    assert fk.camera.reason == STALE and res.counters["no_pose.stale"] == 1


def test_articulated_prior_matches_true_masks_and_the_straight_one_does_not():
    """EndoWrists bent by 40 degrees (the bend turning around the shaft) with opening jaws, 320x256: the
    prior from the tip poses and joint states (replayed streams, interpolated at the image stamps) covers the
    true masks; the straight model, which runs the shaft along the jaws, misses most of them. 10 fps keeps
    the tools' motion at a realistic pace over 8 frames (0.7 s)."""
    synth = SynthConfig(width=320, height=256, frames=8, fps=10.0, camera_motion="moving", instruments=2,
                        noise_std=0.0, articulated=True)
    em = emulate(EmulatorConfig(synth=synth, seed=1))
    streams: dict[tuple[str, str], list] = {}
    for m in em.messages:
        if m.kind.startswith("PSM"):
            streams.setdefault((m.kind, m.what), []).append(m)
    assert set(streams) == {(a, w) for a in ("PSM1", "PSM2") for w in (MEASURED_CP, MEASURED_JS, JAW_MEASURED_JS)}
    n_cp = len(streams[("PSM1", MEASURED_CP)])
    for (arm, what), msgs in streams.items():         # every joint stream at the kinematics rate, true values
        assert len(msgs) == n_cp, (arm, what)
        if what != MEASURED_CP:
            m = msgs[len(msgs) // 2]
            pitch, yaw, jaw = em.kinematics.joints((m.stamp_ns - synth.start_ns) / 1e9)[int(arm[-1]) - 1]
            np.testing.assert_allclose(m.joints, [0, 0, 0, 0, pitch, yaw] if what == MEASURED_JS else [jaw])
    camera = KinematicCamera(em.hand_eye)
    frames, _ = _replay(em, camera)
    rays = pixel_rays(em.scene.cam_left)
    g = SYNTHETIC_WRISTED_INSTRUMENT
    iou_art, iou_straight, bends = [], [], []
    for i, fk in frames.items():
        tips = [r.T for r in fk.tools.values()]
        joints = [r.values for r in fk.joints.values()]
        assert len(tips) == 2 and all(q is not None for q in joints), f"frame {i}: {fk.joints}"
        bends += [np.degrees(np.arccos(np.cos(q[0]) * np.cos(q[1]))) for q in joints]
        truth = em.scene.frames[i].mask
        iou_art.append(mask_iou(project_instruments(em.scene.cam_left, tips, g, rays=rays, joints=joints), truth))
        iou_straight.append(mask_iou(project_instruments(em.scene.cam_left, tips, g, rays=rays), truth))
    print(f"articulated clip 320x256, {len(frames)} frames, bend {min(bends):.0f}-{max(bends):.0f} deg: prior IoU "
          f"articulated mean {np.mean(iou_art):.3f} (min {min(iou_art):.3f}), straight mean "
          f"{np.mean(iou_straight):.3f} (min {min(iou_straight):.3f})")
    assert len(frames) == synth.frames and min(bends) > 30
    assert min(iou_art) >= 0.95, f"articulated prior IoU {np.round(iou_art, 3).tolist()}"
    assert np.mean(iou_straight) <= 0.6, f"straight prior IoU {np.round(iou_straight, 3).tolist()}"


def test_wrist_chain_jaw_opening_and_nan_fallback():
    """The EndoWrist chain has the link lengths and the bend its joints say; opening the jaws widens the mask;
    zero joints draw about the straight model; NaN joints fall back to it exactly and are counted."""
    g = InstrumentGeometry()
    T_pitch_yaw, T_yaw_tip = wrist_links(0.5, -0.3, g.pitch_to_yaw, g.yaw_to_tip)
    assert np.linalg.norm(T_pitch_yaw[:3, 3]) == pytest.approx(g.pitch_to_yaw)
    assert np.linalg.norm(T_yaw_tip[:3, 3]) == pytest.approx(g.yaw_to_tip)
    assert (T_pitch_yaw @ T_yaw_tip)[2, 2] == pytest.approx(np.cos(0.5) * np.cos(-0.3))   # shaft z . jaw z
    np.testing.assert_allclose(T_yaw_tip[:3, 0], [1, 0, 0])                              # yaw axis = tip x
    cam = CameraModel.pinhole(320, 256, 288.0)
    # Tip 6 cm in front of the camera, the jaws pointing away from it and downwards: they open in view.
    T = tip_frame(np.array([0.0, 0.005, 0.06]), np.array([0.0, -0.6, -1.0]) / np.linalg.norm([0.0, 0.6, 1.0]))
    area = {deg: np.count_nonzero(project_instruments(cam, [T], g, joints=[(0.3, 0.2, np.radians(deg))]))
            for deg in (0, 30, 60)}
    assert area[60] > area[30] > 1.03 * area[0], area
    straight = project_instruments(cam, [T], g)
    assert mask_iou(project_instruments(cam, [T], g, joints=[(0.0, 0.0, 0.0)]), straight) > 0.9
    counters: Counter[str] = Counter()
    nan = project_instruments(cam, [T, T], g, joints=[(np.nan, 0.2, 0.5), None], counters=counters)
    np.testing.assert_array_equal(nan, straight)
    assert counters == {"straight.not_finite": 1}
    with pytest.raises(ValueError, match="joint values for 1 instruments, tip poses for 2"):
        project_instruments(cam, [T, T], g, joints=[None])


def test_joint_streams_buffered_and_faults_counted():
    """Joint states are interpolated at the image stamp like poses; NaN / unreadable samples are invalid
    (counted), a stopped jaw stream makes the arm's joints stale, an arm without joint streams has none."""
    cam = KinematicCamera(np.eye(4), max_age_ns=20 * MS)
    for k in range(6):
        stamp = 1_000 * MS + k * 10 * MS
        for arm in ("PSM1", "PSM2"):
            cam.add_psm(arm, stamp, np.eye(4))
        cam.add_psm_joints("PSM1", MEASURED_JS, stamp, [0.1 * k, -0.05 * k])
        if k < 3:                                                     # the jaw stream stops at 1020 ms
            cam.add_psm_joints("PSM1", JAW_MEASURED_JS, stamp, [0.2 * k])
    assert cam.add_psm_joints("PSM1", MEASURED_JS, 1_055 * MS, [np.nan, 0.0]) == "invalid"
    assert cam.add_psm_joints("PSM1", MEASURED_JS, 1_056 * MS, None) == "invalid"
    assert cam.add_psm_joints("PSM1", MEASURED_JS, 1_057 * MS, [0.1, 0.2, 0.3]) == "invalid"   # wrong count
    assert cam.psm_joints[("PSM1", MEASURED_JS)].counters["invalid"] == 3
    early = cam.tool_joints(1_015 * MS, final=True)
    np.testing.assert_allclose(early["PSM1"].values, [0.15, -0.075, 0.3])
    assert early["PSM2"].reason == NO_DATA
    late = cam.tool_joints(1_045 * MS, final=True)
    assert late["PSM1"].reason == STALE and late["PSM1"].values is None
    with pytest.raises(ValueError, match="no joint outer_wrist_yaw"):
        psm_joint_values(MEASURED_JS, PSM_JOINT_NAMES[:5], [0.0] * 5)
    with pytest.raises(ValueError, match="2 joint names but 1 positions"):
        psm_joint_values(JAW_MEASURED_JS, ["jaw", "x"], [0.0])
    np.testing.assert_array_equal(psm_joint_values(MEASURED_JS, PSM_JOINT_NAMES[::-1], range(6)), [1, 0])


def test_dvrk_sim_preset_uses_the_synthetic_instrument_geometry():
    """`surg3d launch dvrk_sim` runs the (articulated) emulator: its kinematics node must model those tools."""
    nodes = {n.name: n for n in load_preset("dvrk_sim").nodes}
    for name in ("shaft_radius", "jaw_radius", "wrist_length", "pitch_to_yaw", "yaw_to_tip"):
        assert nodes["kinematics"].parameters[name] == pytest.approx(getattr(SYNTHETIC_WRISTED_INSTRUMENT, name))
