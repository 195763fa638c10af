"""Trainer node as a real process over DDS: synthetic frames in, points/status/renders out, services."""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from geometry_msgs.msg import PoseStamped
from rosproc import Collector, call_service, stop_node, wait_until
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_srvs.srv import Trigger

from surg3d_msgs.msg import NodeStatus, TrainerStatus
from surg3d_msgs.srv import LoadCheckpoint, RenderView, SaveModel
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import TrainerConfig
from surg3d_nodes.ros import topics
from surg3d_nodes.ros.convert import (
    camera_to_msg,
    image_to_msg,
    msg_to_image,
    msg_to_pointcloud,
    pose_to_msg,
    stamp_to_ns,
)
from surg3d_nodes.system.monitoring import ERROR
from surg3d_nodes.system.node_options import node_parameters

CONFIG = Path(__file__).resolve().parents[1] / "config"


@pytest.fixture(scope="module")
def scene():
    return generate(SynthConfig(width=64, height=48, frames=8, instruments=1, noise_std=1.0))


def _start(out_dir: Path, env: dict[str, str], rates: str = "4.0", resume: str | None = "auto",
           params: tuple[str, ...] = ()) -> subprocess.Popen:
    """The trainer node on CPU; `rates` (Hz) of its render, de-occlusion and status timers; `resume` its
    resume_from_checkpoint ("auto": the newest loadable checkpoint in out_dir, as a respawned trainer does;
    None: the node's own default); `params` more name:=value."""
    return subprocess.Popen(
        [sys.executable, "-m", "surg3d_nodes.ros.nodes.trainer", "--ros-args", "--params-file",
         str(CONFIG / "trainer.yaml"), "-p", "device:=cpu", "-p", "num_threads:=1", "-p", "image_scale:=1.0",
         "-p", "heartbeat_period:=0.5", "-p", "points_rate:=0.0", "-p", "checkpoints_kept:=2",
         "-p", f"render_rate:={rates}",
         "-p", f"deoccluded_rate:={rates}", "-p", f"status_rate:={rates}", "-p", f"output_dir:={out_dir}",
         *(["-p", f"resume_from_checkpoint:={resume}"] if resume is not None else []),
         *(a for kv in params for a in ("-p", kv))],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _frame_publishers(ros_node) -> dict:
    """Publishers of the trainer's inputs, by input name; waits until the node subscribed to all of them."""
    pubs = {name: ros_node.create_publisher(cls, topic, 10) for name, (cls, topic) in {
        "info": (CameraInfo, topics.LEFT_RECT_INFO), "image": (Image, topics.LEFT_RECT),
        "depth": (Image, topics.DEPTH), "mask": (Image, topics.INSTRUMENT_MASK),
        "pose": (PoseStamped, topics.CAMERA_POSE)}.items()}
    assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs.values()), 20)
    return pubs


def _send_frames(pubs: dict, scene, frames: list, pose_offset_ns: int = 0) -> None:
    """Publish each synthetic frame's CameraInfo, image, depth, mask and pose (those `pubs` has; the pose stamped
    `pose_offset_ns` late), paced for the trainer."""
    frame_id = topics.LEFT_OPTICAL_FRAME
    for f in frames:
        s = f.stamp_ns
        pubs["info"].publish(camera_to_msg(scene.cam_left, s))
        time.sleep(0.05)
        for name, msg in (("image", image_to_msg(f.left, "rgb8", s, frame_id)),
                          ("depth", image_to_msg(f.depth.astype(np.float32), "32FC1", s, frame_id)),
                          ("mask", image_to_msg(f.mask, "mono8", s, frame_id)),
                          ("pose", pose_to_msg(f.pose, s + pose_offset_ns, topics.WORLD_FRAME))):
            if name in pubs:
                pubs[name].publish(msg)
        time.sleep(0.15)


def _trainer_error(got: Collector, prefix: str) -> bool:
    """Whether a trainer heartbeat so far was an ERROR whose message starts with `prefix`."""
    return any(m.level == bytes([ERROR]) and m.message.startswith(prefix)
               for m in got.get(topics.NODE_STATUS) if m.node.endswith("trainer"))


def _send_until(pubs: dict, scene, frames: list, done: Callable[[], bool], seconds: float = 20.0,
                **kwargs) -> None:
    """Send `frames` again and again (`_send_frames` with `kwargs`) until `done()` or `seconds` have passed."""
    end = time.monotonic() + seconds
    while time.monotonic() < end and not done():
        _send_frames(pubs, scene, frames, **kwargs)


def test_trainer_node(ros_env, ros_node, scene, tmp_path):
    out_dir = tmp_path / "recon"
    out_dir.mkdir()
    # An unreadable checkpoint left by an earlier run: auto-resume reports it and starts empty.
    (out_dir / "checkpoint_20260101_000000_1.pt").write_bytes(b"not a checkpoint")
    proc = _start(out_dir, ros_env)
    got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.RECON_POINTS: PointCloud2,
                             topics.RECON_RENDER: Image, topics.RECON_DEOCCLUDED: Image,
                             topics.RECON_RENDER_DEPTH: Image, topics.NODE_STATUS: NodeStatus})
    try:
        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 30), "no status from the node"
        _send_frames(_frame_publishers(ros_node), scene, scene.frames[:6])
        ok = wait_until(lambda: got.last(topics.RECON_STATUS).frames_used >= 4
                   and got.last(topics.RECON_STATUS).iterations > 5, 60)
        if not ok:
            proc.terminate()
            pytest.fail(f"{got.last(topics.RECON_STATUS)}\n{got.last(topics.NODE_STATUS)}\n"
                        f"{proc.communicate(timeout=15)[0]}")
        st = got.last(topics.RECON_STATUS)
        # auto on CPU: the compiled cpu renderer where it builds, else torch (recon/render resolve_backend)
        assert st.state == "running" and st.backend in ("cpu", "torch") and st.device == "cpu"
        assert "problems.checkpoint_unusable" in got.heartbeat("trainer")

        def heartbeat_value(key: str) -> str:
            return got.heartbeat("trainer").get(key, "0")

        # The pairing's own count in the heartbeat: the frames used were paired sets.
        assert wait_until(lambda: int(heartbeat_value("sets_matched")) >= 4, 10), heartbeat_value("sets_matched")
        assert st.num_gaussians > 500
        # No periodic cloud (points_rate 0): clouds go out as frames enter the model, stamped with them.
        assert wait_until(lambda: got.last(topics.RECON_POINTS) is not None, 20)
        sent = {f.stamp_ns for f in scene.frames[:6]}
        assert {stamp_to_ns(m.header.stamp) for m in got.get(topics.RECON_POINTS)} <= sent
        pts = msg_to_pointcloud(got.last(topics.RECON_POINTS))
        assert set(pts.dtype.names) == {"x", "y", "z", "rgb", "opacity", "scale", "inferred"} and len(pts) > 100
        # Tissue under the instrument is completed and flagged: in the cloud and as a share in the status.
        assert set(np.unique(pts["inferred"])) == {0.0, 1.0}
        assert 0.0 < got.last(topics.RECON_STATUS).inferred_share < 0.5
        assert np.nanmedian(pts["z"]) == pytest.approx(np.nanmedian(scene.frames[0].depth), rel=0.2)
        assert wait_until(lambda: got.last(topics.RECON_RENDER) is not None
                     and got.last(topics.RECON_DEOCCLUDED) is not None, 20)
        assert msg_to_image(got.last(topics.RECON_RENDER), "rgb8").shape == (48, 64, 3)
        assert msg_to_image(got.last(topics.RECON_RENDER_DEPTH), "32FC1").shape == (48, 64)

        assert call_service(ros_node, Trigger, topics.SRV_PAUSE, Trigger.Request()).success
        assert wait_until(lambda: got.last(topics.RECON_STATUS).state == "paused", 30)
        time.sleep(0.6)
        it = got.last(topics.RECON_STATUS).iterations
        time.sleep(0.8)
        assert got.last(topics.RECON_STATUS).iterations == it
        assert call_service(ros_node, Trigger, topics.SRV_RESUME, Trigger.Request()).success
        assert wait_until(lambda: got.last(topics.RECON_STATUS).iterations > it, 20)

        res = call_service(ros_node, SaveModel, topics.SRV_SAVE, SaveModel.Request(path="", kind="checkpoint"))
        assert res.success and Path(res.path).is_file() and Path(res.path).parent == out_dir, res.message
        # Periodic checkpoints (no path given) keep the newest checkpoints_kept (2 here) in output_dir.
        for _ in range(2):
            time.sleep(1.1)               # another second: another file name
            res = call_service(ros_node, SaveModel, topics.SRV_SAVE, SaveModel.Request(path="", kind="checkpoint"))
            assert res.success, res.message
        kept = sorted(out_dir.glob("checkpoint_*.pt"))
        assert len(kept) == 2 and Path(res.path) in kept, kept
        res = call_service(ros_node, SaveModel, topics.SRV_SAVE, SaveModel.Request(path=str(tmp_path / "m.ply"),
                                                                            kind="ply"))
        assert res.success and (tmp_path / "m.ply").read_bytes().startswith(b"ply\n")
        bad = call_service(ros_node, SaveModel, topics.SRV_SAVE, SaveModel.Request(path="", kind="obj"))
        assert not bad.success and "unknown kind" in bad.message

        req = RenderView.Request()
        req.pose = pose_to_msg(scene.frames[5].pose, 0, topics.WORLD_FRAME).pose
        req.width, req.height = 32, 24
        view = call_service(ros_node, RenderView, topics.SRV_RENDER_VIEW, req)
        assert view.success and (view.color.width, view.color.height) == (32, 24)
        assert msg_to_image(view.color, "rgb8").mean() > 10

        from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
        from rcl_interfaces.srv import DescribeParameters, SetParameters

        def param(name, **value):
            return Parameter(name=name, value=ParameterValue(**value))
        live = call_service(ros_node, SetParameters, "/trainer/set_parameters", SetParameters.Request(parameters=[
            param("max_gaussians", type=ParameterType.PARAMETER_INTEGER, integer_value=123456),
            param("points_rate", type=ParameterType.PARAMETER_DOUBLE, double_value=0.0),
            param("deoccluded_tint_inferred", type=ParameterType.PARAMETER_BOOL, bool_value=False),
            param("deoccluded_detail", type=ParameterType.PARAMETER_BOOL, bool_value=False)]))
        assert all(r.successful for r in live.results), live
        fixed = call_service(ros_node, SetParameters, "/trainer/set_parameters", SetParameters.Request(parameters=[
            param("device", type=ParameterType.PARAMETER_STRING, string_value="cuda")]))
        assert not fixed.results[0].successful and "read-only" in fixed.results[0].reason
        beyond = call_service(ros_node, SetParameters, "/trainer/set_parameters", SetParameters.Request(parameters=[
            param("max_gaussians", type=ParameterType.PARAMETER_INTEGER, integer_value=10)]))
        assert not beyond.results[0].successful and "out of range" in beyond.results[0].reason
        # Every TrainerConfig field is a parameter, described by its declaration (range, read-only unless live).
        names = [f.name for f in dataclasses.fields(TrainerConfig)]
        described = call_service(ros_node, DescribeParameters, "/trainer/describe_parameters",
                                 DescribeParameters.Request(names=names)).descriptors
        specs = node_parameters("trainer")
        assert [d.name for d in described] == names
        for d in described:
            assert d.description == specs[d.name].description and d.read_only == (not specs[d.name].live)
        by_name = {d.name: d for d in described}
        assert by_name["max_gaussians"].integer_range[0].to_value == specs["max_gaussians"].high
        assert by_name["lr_means"].floating_point_range[0].from_value == 0.0

        assert call_service(ros_node, Trigger, topics.SRV_RESET, Trigger.Request()).success
        assert wait_until(lambda: got.last(topics.RECON_STATUS).num_gaussians == 0, 30), [
            (m.header.stamp.sec, m.state, m.num_gaussians, m.frames_used, m.iterations)
            for m in got.get(topics.RECON_STATUS)[-5:]]
        res = call_service(ros_node, LoadCheckpoint, topics.SRV_LOAD, LoadCheckpoint.Request(path=""))
        assert res.success, res.message
        assert wait_until(lambda: got.last(topics.RECON_STATUS).num_gaussians > 500, 30)
        missing = call_service(ros_node, LoadCheckpoint, topics.SRV_LOAD,
                        LoadCheckpoint.Request(path=str(tmp_path / "none.pt")))
        assert not missing.success and "does not exist" in missing.message
        assert proc.poll() is None, "node died"
    finally:
        out = stop_node(proc)
    assert proc.returncode == 0, out

    # A restarted (respawned) trainer resumes from the newest checkpoint in output_dir by itself.
    n_before = len(got.msgs[topics.RECON_STATUS])
    proc = _start(out_dir, ros_env)
    try:
        assert wait_until(lambda: len(got.msgs[topics.RECON_STATUS]) > n_before
                     and got.last(topics.RECON_STATUS).num_gaussians > 500, 60)
    finally:
        out = stop_node(proc)
    assert "resumed from" in out and proc.returncode == 0, out

    # The node's own default (""): a trainer started alone never continues the model it finds in output_dir.
    n_before = len(got.msgs[topics.RECON_STATUS])
    proc = _start(out_dir, ros_env, resume=None)
    try:
        assert wait_until(lambda: len(got.msgs[topics.RECON_STATUS]) > n_before, 30), "no status"
        assert got.last(topics.RECON_STATUS).num_gaussians == 0
    finally:
        out = stop_node(proc)
    assert "resumed from" not in out and proc.returncode == 0, out


def test_trainer_reports_an_input_whose_publisher_delivers_nothing(ros_env, ros_node, scene, tmp_path):
    """A mask publisher that delivers nothing while image, depth and pose arrive (what a broken Fast DDS TCP link
    between two hosts looks like): after input_link_timeout_s the trainer's heartbeat is an ERROR naming the input,
    and the node runs on."""
    proc = _start(tmp_path, ros_env, params=("input_link_timeout_s:=3.0",))
    got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.NODE_STATUS: NodeStatus})

    def reported() -> bool:
        return _trainer_error(got, "input_link: mask: 1 publisher(s) but nothing received in 3 s while depth, "
                              "image, pose arrive")
    try:
        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 30), "no status from the node"
        pubs = _frame_publishers(ros_node)
        del pubs["mask"]                  # matched (the node keeps its publisher), but it never delivers a mask
        _send_until(pubs, scene, scene.frames[:2], reported)
        alive = proc.poll() is None
    finally:
        out = stop_node(proc)
    assert reported() and alive and proc.returncode == 0, out


def test_trainer_with_an_inpainting_model_that_does_not_load_runs_on(ros_env, ros_node, scene, tmp_path):
    """`inpaint_model` naming a file that is no ONNX model: the trainer logs the error naming the file, counts the
    fallback in its heartbeat, and trains with the harmonic fill."""
    bad = tmp_path / "lama.onnx"
    bad.write_bytes(b"not an onnx model")
    proc = _start(tmp_path / "out", ros_env, params=(f"inpaint_model:={bad}",))
    got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.NODE_STATUS: NodeStatus})
    try:
        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 30), "no status from the node"
        _send_until(_frame_publishers(ros_node), scene, scene.frames[:3],
                    lambda: got.last(topics.RECON_STATUS).frames_used >= 2)
        used = got.last(topics.RECON_STATUS).frames_used
        counted = got.heartbeat("trainer").get("inpaint_model_fallback")
    finally:
        out = stop_node(proc)
    assert used >= 2 and counted == "1" and proc.returncode == 0, out
    assert f"cannot load ONNX inpainting model {bad}" in out and "filled harmonically instead" in out


def test_trainer_reports_inputs_that_all_arrive_but_never_pair(ros_env, ros_node, scene, tmp_path):
    """Poses stamped 50 ms after their images (between two frames at 30 Hz, beyond sync_tolerance_ms): every
    input arrives, no set pairs, and after input_link_timeout_s the heartbeat is an ERROR saying so with each
    input's sync counts."""
    proc = _start(tmp_path, ros_env, params=("input_link_timeout_s:=3.0",))
    got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.NODE_STATUS: NodeStatus})

    def reported() -> bool:
        return _trainer_error(got, "inputs_unpaired: every input arrives but no set was paired in 3 s (image ")
    try:
        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 30), "no status from the node"
        _send_until(_frame_publishers(ros_node), scene, scene.frames, reported, pose_offset_ns=50_000_000)
        alive = proc.poll() is None
        used = got.last(topics.RECON_STATUS).frames_used
    finally:
        out = stop_node(proc)
    assert reported() and alive and used == 0 and proc.returncode == 0, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_trainer_node_stops_cleanly_while_callbacks_run(ros_env, ros_node, scene, tmp_path, sig):
    # Renders and status at 50 Hz keep the executor's threads busy when the signal arrives: a shutdown that
    # does not wait for them printed "The following exception was never retrieved" (InvalidHandle) for each.
    proc = _start(tmp_path, ros_env, rates="50.0")
    got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.RECON_RENDER: Image})
    rendering = False
    try:
        # A status first: the node is up and matched, so the first frames are not lost to discovery.
        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 30), "no status from the node"
        pubs = _frame_publishers(ros_node)
        # A publisher can see the node's subscription before the node sees the publisher (and drops what came
        # first): new frames until it renders.
        for batch in (scene.frames[:4], scene.frames[4:]):
            _send_frames(pubs, scene, batch)
            rendering = wait_until(lambda: len(got.get(topics.RECON_RENDER)) >= 20, 30)
            if rendering:
                break
    finally:
        out = stop_node(proc, sig=sig)
    assert rendering, f"no renders from the trainer; last status {got.last(topics.RECON_STATUS)}\n{out}"
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "never retrieved" not in out, out
