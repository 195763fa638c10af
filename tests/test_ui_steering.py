"""Steering that reaches the real trainer: a region of interest marked by a viewer on the bridge (client publish
/recon/roi over the WebSocket) travels over DDS to the real trainer node, which weighs it in training and
reports the region's own PSNR in its heartbeat; clearing the regions restores the default training."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from foxglove_ws import FoxgloveWsClient
from rosproc import Collector, stop_node, wait_until
from test_recon_node import _frame_publishers, _send_frames, _start
from ui_support import start_bridge, stop

from surg3d_msgs.msg import NodeStatus, TrainerStatus
from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.ros import topics

pytestmark = pytest.mark.ros


def _values(got: Collector) -> dict[str, str]:
    """The newest trainer heartbeat's key-values."""
    beats = [m for m in got.get(topics.NODE_STATUS) if m.node.endswith("trainer")]
    return {kv.key: kv.value for kv in beats[-1].values} if beats else {}


def test_marked_region_reaches_the_trainer_and_changes_its_training(ros_env, ros_node, tmp_path) -> None:
    scene = generate(SynthConfig(width=64, height=48, frames=6, instruments=1, noise_std=1.0))
    f0 = scene.frames[0]
    # the tissue seen at the image centre of the first frame, in the world frame
    z = float(f0.tissue_depth[24, 32])
    K = scene.cam_left.intrinsics()
    c = f0.pose @ np.array([(32 - K[0, 2]) / K[0, 0] * z, (24 - K[1, 2]) / K[1, 1] * z, z, 1.0])
    trainer = _start(tmp_path / "recon", ros_env)
    bridge, port, bridge_lines = start_bridge(ros_env, tmp_path / "out")
    got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.NODE_STATUS: NodeStatus})
    try:
        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 60), "no status from the trainer"
        _send_frames(_frame_publishers(ros_node), scene, scene.frames)
        assert wait_until(lambda: got.last(topics.RECON_STATUS).frames_used >= 3, 60)
        assert _values(got).get("regions") == "0"

        ws = FoxgloveWsClient("127.0.0.1", port)
        ws.advertise(1, "/recon/roi")
        ws.poll(0.3)
        ws.publish(1, {"center": {"x": c[0], "y": c[1], "z": c[2]}, "radius": 0.004, "label": "vessel"})
        # the trainer has the region and trains with it: the region's PSNR comes from its weighted loss
        assert wait_until(lambda: _values(got).get("regions") == "1" and "psnr_regions" in _values(got), 60), \
            _values(got)
        assert float(_values(got)["psnr_regions"]) > 10.0
        ok, res = ws.call("/recon/roi/clear", {}, 1)
        assert ok, res
        assert wait_until(lambda: _values(got).get("regions") == "0" and "psnr_regions" not in _values(got), 30)
        ws.close()
    finally:
        stop(bridge)
        out = stop_node(trainer)
    assert trainer.returncode == 0, out
    assert any("region of interest #1" in line for line in bridge_lines)
