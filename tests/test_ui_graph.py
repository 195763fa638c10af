"""The operator's view on the real replay graph (`surg3d launch replay`, with foxglove_bridge and monitor):
the browser test against the running graph, and a trainer killed mid-run: the monitor reports it, the launcher
restarts it, and it resumes from the last checkpoint with the same Gaussians.

A copy of config/ is used so that the bridge takes a free port and the monitor a short period; the bridge
and the monitor are added to the replay preset of the copy when graph.yaml does not list them yet.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from rosproc import Launch
from ui_support import UI_TESTS, browser_requirements

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path) -> Path:
    """config/ copy with a monitor period of 0.5 s and a trainer that neither densifies nor completes hidden
    tissue within the test.

    Without densification the Gaussians a respawned trainer resumed with stay in their order while it trains
    on, so the killed-trainer test can compare them with the checkpointed ones (the compiled CPU renderer
    reaches refine_start within the seconds a pause takes to reach the restarted node; completion adds inferred
    Gaussians for each frame that arrives around the pauses: 1335 before the kill, 1425 after in CI)."""
    cdir = tmp_path / "config"
    shutil.copytree(ROOT / "config", cdir)
    for name, values in {"monitor.yaml": {"period": 0.5, "stall_periods": 2},
                         "trainer.yaml": {"refine_start": 1_000_000, "complete_hidden": False}}.items():
        doc = yaml.safe_load((cdir / name).read_text())
        doc["/**"]["ros__parameters"].update(values)
        (cdir / name).write_text(yaml.safe_dump(doc))
    return cdir


@pytest.fixture
def graph(ros_env, ros_node, tmp_path):
    # Set up after the test's node, so torn down before it: deleting the node's participant waits on each TCP
    # connection's read lock (Fast DDS 3.2, LARGE_DATA; eProsima/Fast-DDS#6066, fixed in later releases), which a
    # read blocked on a graph node that sends nothing more holds until that node exits (ci42 hung there, 8 min).
    clip = tmp_path / "clip"
    subprocess.run([sys.executable, "-m", "surg3d_nodes.cli", "synth", str(clip), "--width", "160",
                    "--height", "128", "--frames", "20"], check=True, capture_output=True, timeout=300,
                   env=ros_env)
    launch = Launch(["--config-dir", str(_config(tmp_path)), "replay", f"bag:={clip / 'bag'}", "loop:=true",
                     f"output_dir:={tmp_path / 'out'}", "device:=cpu", "bridge_port:=0",
                     "checkpoint_period:=0.0"], ros_env)
    launch.run = Path(launch.wait_for(r"\[launcher\] run folder (\S+)", 60).group(1))  # this launch's output
    launch.port = int(launch.wait_for(r"\[foxglove_bridge\].*ws://[\d.]+:(\d+)", 60).group(1))
    yield launch
    assert launch.stop() == 0, "\n".join(launch.lines[-60:])


def _wait(pred, timeout: float, what: str, lines: list[str] | None = None):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if value := pred():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}" + ("\n" + "\n".join(lines[-60:]) if lines else ""))


def _read_ply(path: Path) -> np.ndarray:
    """The vertex records of a binary little-endian PLY (3DGS layout or any float/uchar properties)."""
    data = path.read_bytes()
    head, _, body = data.partition(b"end_header\n")
    n, props = 0, []
    types = {"float": "<f4", "double": "<f8", "uchar": "u1", "int": "<i4", "uint": "<u4"}
    for line in head.decode().splitlines():
        parts = line.split()
        if parts[:2] == ["element", "vertex"]:
            n = int(parts[2])
        elif parts[:1] == ["property"] and len(parts) == 3:
            props.append((parts[2], types[parts[1]]))
    return np.frombuffer(body, dtype=np.dtype(props), count=n)


@pytest.mark.skipif(browser_requirements() is not None, reason=str(browser_requirements()))
def test_browser_on_the_replay_graph(graph, tmp_path) -> None:
    """The browser end-to-end test of tests/ui/e2e.mjs against the real graph: the live model as splats
    (matching the trainer's own render of the endoscope's view), pause and resume, the time slider, a marked
    region that the trainer trains with and reports, the measured cloud."""
    from surg3d_nodes.cli.ui import make_server

    artifacts = Path(os.environ.get("SURG3D_ARTIFACTS", tmp_path / "artifacts")) / "ui_e2e_replay"
    server = make_server("127.0.0.1", 0, f"ws://127.0.0.1:{graph.port}")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        run = subprocess.run(["node", str(UI_TESTS / "e2e.mjs"), f"http://127.0.0.1:{server.server_address[1]}/",
                              str(artifacts)], cwd=UI_TESTS, capture_output=True, text=True,
                             timeout=480, env={**os.environ, "SURG3D_E2E_TIMEOUT_MS": "120000"})
    finally:
        server.shutdown()
    result = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else {}
    tail = "\n".join(graph.lines[-60:])
    print("\n".join(result.get("steps", [])))   # what the browser saw, in the test's output
    assert run.returncode == 0, f"{result.get('error')}\n{run.stderr[-3000:]}\n{tail}"
    assert {"/ui/splats", "/recon/status", "/ui/live", "/diagnostics"} <= set(result["topics"])
    assert result["splats"] > 0 and result["litPixels"] >= 100 and result["rois"]
    assert result["scopeView"]["psnr"] >= 25 and result["scopeView"]["tissue"] > 0.3, result["scopeView"]
    assert result["sliderChange"] > 0.2 and "dB" in result["regionPsnr"] and result["cloudLit"] > 100
    assert json.loads((graph.run / "rois.json").read_text())["rois"], "the region persisted"


def test_trainer_killed_mid_run_is_reported_restarted_and_resumes(graph, ros_node, tmp_path) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from std_srvs.srv import Trigger

    from surg3d_msgs.msg import NodeStatus, TrainerStatus
    from surg3d_msgs.srv import SaveModel
    from surg3d_nodes.ros import topics

    status: list[TrainerStatus] = []
    diags: list[DiagnosticArray] = []
    beats: list[NodeStatus] = []
    ros_node.create_subscription(TrainerStatus, topics.RECON_STATUS, status.append, 10)
    ros_node.create_subscription(NodeStatus, topics.NODE_STATUS, beats.append, 50)
    ros_node.create_subscription(DiagnosticArray, topics.DIAGNOSTICS, diags.append, 10)
    pause = ros_node.create_client(Trigger, topics.SRV_PAUSE)
    save = ros_node.create_client(SaveModel, topics.SRV_SAVE)

    def call(client, request, what: str):
        assert client.wait_for_service(timeout_sec=60), f"{what} not available"
        future = client.call_async(request)
        _wait(future.done, 60, what, graph.lines)
        return future.result()

    _wait(lambda: status and status[-1].num_gaussians > 0 and status[-1].iterations > 0, 180,
          "a trained model", graph.lines)
    assert call(pause, Trigger.Request(), "pause").success
    _wait(lambda: status[-1].state == "paused", 30, "paused status", graph.lines)
    res = call(save, SaveModel.Request(kind="checkpoint", path=""), "checkpoint")
    assert res.success and Path(res.path).exists(), res.message
    ours = Path(res.path)
    res = call(save, SaveModel.Request(kind="ply", path=str(tmp_path / "before.ply")), "ply before")
    assert res.success, res.message
    before = _read_ply(Path(res.path))

    pid = int(graph.wait_for(r"started trainer \(pid (\d+)\)", 5).group(1))
    mark = len(graph.lines)
    n_diag = len(diags)
    os.kill(pid, signal.SIGKILL)

    def trainer_error():
        for arr in diags[n_diag:]:
            for s in arr.status:
                if s.name.endswith("/trainer") and s.level == b"\x02":
                    return s
        return None

    flagged = _wait(trainer_error, 30, "/diagnostics flagging the killed trainer", graph.lines)
    assert "no heartbeat" in flagged.message
    graph.wait_for(r"started trainer \(pid \d+\) again", 60, after=mark)
    resumed = graph.wait_for(r"resumed from (\S+): (\d+) Gaussians", 120, after=mark)
    from surg3d_nodes.recon.io.checkpoint import read_checkpoint
    path = Path(resumed.group(1))     # ours, or one the monitor's periodic request wrote after it
    assert path == ours or path.stat().st_mtime >= ours.stat().st_mtime, f"resumed from an older {path}"
    assert int(resumed.group(2)) == read_checkpoint(path)["params"]["means"].shape[0]
    n_status = len(status)
    _wait(lambda: len(status) > n_status, 120, "status of the restarted trainer", graph.lines)
    # freeze the restarted model at once and compare it with the one saved before the kill
    assert call(pause, Trigger.Request(), "pause after restart").success
    res = call(save, SaveModel.Request(kind="ply", path=str(tmp_path / "after.ply")), "ply after")
    assert res.success, res.message
    after = _read_ply(Path(res.path))
    # Pause stops training, not ingestion: frames of the looping bag that arrive around the pauses may append
    # Gaussians for tissue the model does not explain yet (a few; measured 867 -> 878 once), so the resumed
    # model starts with the checkpointed Gaussians, in their order.
    n = min(len(before), len(after))
    assert abs(len(after) - len(before)) < 0.05 * len(before), f"{len(before)} Gaussians before the kill, " \
                                                                 f"{len(after)} after"
    xyz = lambda r: np.stack([r["x"], r["y"], r["z"]], 1)  # noqa: E731
    assert np.median(np.abs(xyz(after)[:n] - xyz(before)[:n])) < 1e-3, "the resumed Gaussians are those checkpointed"
    # Fast DDS can hold a publisher to a SIGKILLed reader for seconds (seen once: the replay's heartbeat stopped
    # 7 s and it was still stuck at teardown): the graph must be healthy again before it is stopped.
    n_beats = len(beats)
    _wait(lambda: sum(b.node.endswith("bag_replay") for b in beats[n_beats:]) >= 3, 60,
          "the replay's heartbeat (3 in a row)", graph.lines)
