"""The operator's page against the real trainer, over the bridge's WebSocket: a region of interest marked by a
viewer (client publish /recon/roi) travels over DDS to the trainer, which weighs it in training, trains the next
frames' box about it at the camera's resolution and reports the region's own PSNR in its heartbeat, and clearing
restores the default; the binary splat channel carries the
whole model, at the newest moment or at the one the viewer picks."""

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
from surg3d_nodes.viewer.display import SPLAT_BYTES, SPLAT_HEADER

pytestmark = pytest.mark.ros


def _splat_updates(ws: FoxgloveWsClient, sub: int) -> dict[int, dict]:
    """Complete splat updates received on subscription `sub`, by update id: stamp, splats, bytes."""
    out: dict[int, dict] = {}
    for s, _, payload in ws.messages:
        if s != sub:
            continue
        magic, update, total, _, count, _, stamp, *_ = SPLAT_HEADER.unpack_from(payload)
        assert magic == b"SPL1" and len(payload) >= SPLAT_HEADER.size + SPLAT_BYTES * count
        u = out.setdefault(update, {"stamp": stamp, "total": total, "got": 0, "bytes": 0})
        u["got"] += count
        u["bytes"] += len(payload)
    return {k: v for k, v in out.items() if v["got"] == v["total"]}


def test_regions_and_splats_with_the_real_trainer(ros_env, ros_node, tmp_path) -> None:
    scene = generate(SynthConfig(width=64, height=48, frames=6, instruments=1, noise_std=1.0))
    f0 = scene.frames[0]
    # the tissue seen at the image centre of the first frame, in the world frame
    z = float(f0.tissue_depth[24, 32])
    K = scene.cam_left.intrinsics()
    c = f0.pose @ np.array([(32 - K[0, 2]) / K[0, 0] * z, (24 - K[1, 2]) / K[1, 1] * z, z, 1.0])
    # trained at half the camera's size, so a marked region trains at the camera's own (Reconstructor.step)
    trainer = _start(tmp_path / "recon", ros_env, params=("image_scale:=0.5",))
    bridge, port, bridge_lines = start_bridge(ros_env, tmp_path / "out")
    got = Collector(ros_node, {topics.RECON_STATUS: TrainerStatus, topics.NODE_STATUS: NodeStatus})
    try:
        assert wait_until(lambda: got.last(topics.RECON_STATUS) is not None, 60), "no status from the trainer"
        pubs = _frame_publishers(ros_node)
        _send_frames(pubs, scene, scene.frames[:4])
        assert wait_until(lambda: got.last(topics.RECON_STATUS).frames_used >= 3, 60)
        assert got.heartbeat("trainer").get("regions") == "0"

        ws = FoxgloveWsClient("127.0.0.1", port)
        ws.advertise(1, "/recon/roi")
        ws.poll(0.3)
        ws.publish(1, {"center": {"x": c[0], "y": c[1], "z": c[2]}, "radius": 0.004, "label": "vessel"})
        # the trainer has the region and trains with it: the region's PSNR comes from its weighted loss
        assert wait_until(lambda: got.heartbeat("trainer").get("regions") == "1"
                          and "psnr_regions" in got.heartbeat("trainer"), 60), got.heartbeat("trainer")
        assert float(got.heartbeat("trainer")["psnr_regions"]) > 10.0
        # the frames after the marking keep their box about the region, and steps train on it
        assert got.heartbeat("trainer").get("region_steps") == "0"
        _send_frames(pubs, scene, scene.frames[4:])
        assert wait_until(lambda: int(got.heartbeat("trainer").get("region_steps", 0)) > 0, 60), \
            got.heartbeat("trainer")
        ok, res = ws.call("/recon/roi/clear", {}, 1)
        assert ok, res
        assert wait_until(lambda: got.heartbeat("trainer").get("regions") == "0"
                          and "psnr_regions" not in got.heartbeat("trainer"), 30)

        # splats: the whole model, binary, while subscribed; then at the first frame's moment
        ws.subscribe("/ui/splats", 7)
        first = ws.wait_for(lambda: _splat_updates(ws, 7), 30, "a splat update")
        u = next(iter(first.values()))
        assert u["total"] == got.last(topics.RECON_STATUS).num_gaussians or u["total"] > 500
        assert u["stamp"] in {f.stamp_ns for f in scene.frames}
        ws.advertise(2, "/ui/splats/time")
        ws.poll(0.3)
        ws.publish(2, {"stamp_ns": scene.frames[0].stamp_ns})
        ws.wait_for(lambda: any(v["stamp"] == scene.frames[0].stamp_ns for v in _splat_updates(ws, 7).values()),
                    30, "splats at the first frame's moment")
        ws.close()
    finally:
        stop(bridge)
        out = stop_node(trainer)
    assert trainer.returncode == 0, out
    assert any("region of interest #1" in line for line in bridge_lines)
