"""End-to-end test of the served web UI in a real browser (Debian's chromium, headless, driven by
playwright-core from tests/ui/e2e.mjs): it sees the topics and a non-empty 3D cloud, pauses and resumes the
trainer, marks a region of interest and sees its marker. Screenshots go to $SURG3D_ARTIFACTS/ui_e2e
(default: the test's tmp dir).

The graph under the page: bag_replay of a small synthetic bag (live images, camera pose and calibration),
the Foxglove bridge, the monitor, and a stand-in for the trainer's ROS interface (cloud, status, services).
Needs /usr/bin/chromium and tests/ui/node_modules (apt-get install -y chromium; cd tests/ui && npm ci).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from ui_support import FakeTrainer, start_bridge, start_node, stop

pytestmark = pytest.mark.ros

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
UI_TESTS = ROOT / "tests" / "ui"


def _requirements() -> str | None:
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if not (UI_TESTS / "node_modules" / "playwright-core").is_dir():
        return "tests/ui/node_modules is missing (cd tests/ui && npm ci)"
    if shutil.which("node") is None:
        return "node is not on PATH (Node 20)"
    return None


@pytest.mark.skipif(_requirements() is not None, reason=str(_requirements()))
def test_browser_operator_view(ros_env, ros_node, tmp_path) -> None:
    from surg3d_nodes.cli.ui import make_server

    artifacts = Path(os.environ.get("SURG3D_ARTIFACTS", tmp_path / "artifacts")) / "ui_e2e"
    clip = tmp_path / "clip"
    subprocess.run([sys.executable, "-m", "surg3d_nodes.cli.synth", str(clip), "--width", "160", "--height",
                    "128", "--frames", "10", "--fps", "10"], check=True, env=ros_env, capture_output=True,
                   timeout=120)
    trainer = FakeTrainer(ros_node.context)
    procs = []
    server = None
    try:
        bridge, port, _ = start_bridge(ros_env, tmp_path / "out")
        procs.append(bridge)
        procs.append(start_node("monitor", ros_env, ["-p", "checkpoint_period:=2.0"])[0])
        procs.append(start_node("bag_replay", ros_env, ["-p", f"bag:={clip / 'bag'}", "-p", "loop:=true"])[0])
        server = make_server("127.0.0.1", 0, f"ws://127.0.0.1:{port}")
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        run = subprocess.run(["node", str(UI_TESTS / "e2e.mjs"), url, str(artifacts)], cwd=UI_TESTS,
                             capture_output=True, text=True, timeout=150)
        result = json.loads(run.stdout.strip().splitlines()[-1]) if run.stdout.strip() else {}
        assert run.returncode == 0, f"browser test failed: {result.get('error')}\n{run.stderr[-3000:]}"
    finally:
        if server is not None:
            server.shutdown()
        for p in procs:
            stop(p)
        trainer.close()
    assert {"/recon/points", "/recon/status", "/ui/live", "/tf", "/diagnostics"} <= set(result["topics"])
    assert result["points"] == 500 and result["drawn"] > 0 and result["litPixels"] > 100
    assert result["rois"] and trainer.rois, "the marked region reached the trainer's topic"
    assert trainer.state == "running"  # paused, then resumed by the buttons
    views = [v for v in trainer.views if v.deoccluded and v.width == 0]
    assert views, "the 'Render this view' button sent a ViewRequest"
    o = views[-1].pose.orientation
    assert abs(o.x**2 + o.y**2 + o.z**2 + o.w**2 - 1) < 1e-6 and views[-1].pose.position.z < 0.1
    assert trainer.saves, "the monitor asked for a periodic checkpoint"
    for name in ("01_cloud.png", "02_paused.png", "03_region.png"):
        assert (artifacts / name).stat().st_size > 10_000
    assert not result["pageErrors"]
