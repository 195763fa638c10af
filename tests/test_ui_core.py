"""ROS-free logic of the operator's view: input validation, ROI store, display conversion, monitoring."""

from __future__ import annotations

import base64
import json
import math
import re

import numpy as np
import pytest

from surg3d_nodes.system import monitoring
from surg3d_nodes.system.node_options import node_parameters
from surg3d_nodes.viewer import display
from surg3d_nodes.viewer.input import (
    InputError,
    RoiStore,
    parse_empty,
    parse_roi,
    parse_save,
    parse_view_request,
    tunables,
)

POSE = {"position": {"x": 0.01, "y": 0.0, "z": -0.05}, "orientation": {"x": 0, "y": 0, "z": 0, "w": 1}}


def test_roi_accepts_center_or_point_and_refuses_bad_values() -> None:
    r = parse_roi({"center": [0.01, 0.02, 0.08], "radius": 0.004, "label": "vessel"})
    assert r.center == (0.01, 0.02, 0.08) and r.radius == 0.004 and r.label == "vessel"
    assert parse_roi({"point": {"x": 0, "y": 0, "z": 0.1}}).center == (0.0, 0.0, 0.1)
    for bad, reason in [({"center": [0, float("nan"), 0]}, "finite"), ({"center": [0, 0]}, "center"),
                        ({"center": [0, 0, 99]}, "outside"), ({"center": [0, 0, 0], "radius": -1}, "radius"),
                        ({"center": [0, True, 0]}, "number"), ({"radius": 0.1}, "center"),
                        ([1, 2, 3], "object"),
                        ({"center": [0, 0, 0], "label": "x" * 100}, "label")]:
        with pytest.raises(InputError, match=reason):
            parse_roi(bad)


def test_view_request_validation() -> None:
    v = parse_view_request({"pose": POSE, "width": 320, "height": 256, "deoccluded": True})
    assert v.width == 320 and v.deoccluded and np.allclose(v.T_world_camera[:3, 3], [0.01, 0, -0.05])
    nan_pose = json.loads(json.dumps(POSE))
    nan_pose["orientation"]["w"] = math.nan
    zero = {"position": POSE["position"], "orientation": {"x": 0, "y": 0, "z": 0, "w": 0}}
    for bad, reason in [({"pose": nan_pose}, "finite"), ({"pose": zero}, "zero quaternion"),
                        ({"pose": POSE, "width": 320}, "both"), ({"pose": POSE, "width": 1.5, "height": 2},
                                                                "integer"),
                        ({"pose": POSE, "deoccluded": "yes"}, "deoccluded"), ({}, "pose"),
                        ({"pose": POSE, "width": 100000, "height": 10}, "outside")]:
        with pytest.raises(InputError, match=reason):
            parse_view_request(bad)


def test_save_and_empty_requests() -> None:
    assert parse_save({"kind": "checkpoint"}) == ("checkpoint", "")
    assert parse_save(None) == ("ply", "")
    with pytest.raises(InputError, match="kind"):
        parse_save({"kind": "obj"})
    with pytest.raises(InputError, match="unknown"):
        parse_save({"kind": "ply", "rm": "-rf"})
    parse_empty({}, "pause")
    with pytest.raises(InputError, match="no arguments"):
        parse_empty({"now": 1}, "pause")


def test_tunables_take_type_and_range_from_the_owning_node() -> None:
    t = tunables(["trainer.iterations_per_frame", "trainer.points_rate"], node_parameters)
    it, rate = t["trainer.iterations_per_frame"], t["trainer.points_rate"]
    spec = node_parameters("trainer")["points_rate"]
    assert (rate.kind, rate.lo, rate.hi, rate.description) == (float, spec.low, spec.high, spec.description)
    assert it.kind is int and it.hi == node_parameters("trainer")["iterations_per_frame"].high
    assert it.check(10) == 10 and it.check(12.0) == 12 and isinstance(rate.check(2), float)
    for tun, bad, reason in [(it, it.hi + 1, "outside"), (it, 2.5, "integer"), (it, "5", "number"),
                             (it, True, "number"),
                             (rate, math.inf, "finite"), (rate, rate.hi + 1, "outside")]:
        with pytest.raises(InputError, match=reason):
            tun.check(bad)
    for bad, reason in [("trainer.x", "no such"), ("nobody.rate", "no such"), ("trainer", "no such"),
                        ("trainer.image_scale", "not a live")]:
        with pytest.raises(InputError, match=reason):
            tunables([bad], node_parameters)


def test_roi_store_persists_atomically(tmp_path) -> None:
    path = tmp_path / "out" / "rois.json"
    store = RoiStore(path)
    a = store.add(parse_roi({"center": [0, 0, 0.1], "label": "a"}), 5)
    b = store.add(parse_roi({"center": [0.01, 0, 0.1]}), 6)
    assert (a.id, b.id) == (1, 2)
    again = RoiStore(path)
    assert [r.center for r in again.all()] == [(0.0, 0.0, 0.1), (0.01, 0.0, 0.1)]
    again.remove(1)
    assert [r.id for r in RoiStore(path).all()] == [2]
    with pytest.raises(InputError, match="no region"):
        again.remove(7)
    assert not list(path.parent.glob(".rois.*"))  # no temporary file left behind
    path.write_text("{broken")
    with pytest.raises(InputError, match=r"rois\.json"):
        RoiStore(path)


def test_depth_mm_and_mask_overlay() -> None:
    d = np.array([[0.05, np.nan], [-1.0, 70.0]], np.float32)
    assert display.depth_to_mm16(d).tolist() == [[50, 0], [0, 65535]]
    rgb = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((2, 3), np.uint8)
    mask[0, 0] = 255
    out = display.overlay_mask(rgb, mask)
    assert out.shape == rgb.shape and (out[:2, :2] != 100).any() and (out[2:, 2:] == 100).all()
    with pytest.raises(ValueError, match="HxWx3"):
        display.overlay_mask(rgb[..., 0], mask)


def test_point_cloud_json_round_trip() -> None:
    xyz = np.array([[0.0, 0.1, 0.2], [1.0, -1.0, 0.5]], np.float32)
    rgb = np.array([[255, 0, 0], [0, 128, 255]], np.uint8)
    m = display.point_cloud_json(xyz, rgb, np.array([1.0, 0.5]), 1_500_000_000, "world")
    raw = np.frombuffer(base64.b64decode(m["data"]), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                                            ("c", "u1", 4)])
    assert m["point_stride"] == 16 and m["timestamp"] == {"sec": 1, "nsec": 500_000_000}
    assert np.allclose(np.stack([raw["x"], raw["y"], raw["z"]], 1), xyz)
    assert raw["c"].tolist() == [[255, 0, 0, 255], [0, 128, 255, 127]]
    assert len(display.subsample(10, 4)) == 4 and display.subsample(3, 4).tolist() == [0, 1, 2]


def test_monitor_rates_latency_and_stalls() -> None:
    mon = monitoring.Monitor(period=1.0, stall_periods=3, latency_warn_ms=100.0)
    mon.watch("/recon/points")
    mon.watch("/depth/image")
    for i in range(11):  # 10 Hz with 20 ms latency
        t = i * 0.1
        mon.message("/depth/image", t, recv_ns=int(t * 1e9) + 20_000_000, stamp_ns=int(t * 1e9))
        mon.heartbeat("/trainer", 0, "ok", {"dropped": str(i // 5)}, t)
    health = {h.name: h for h in mon.evaluate(1.0)}
    depth = health["/depth/image"]
    assert depth.level == monitoring.OK and abs(depth.values["rate_hz"] - 10.0) < 0.5
    assert abs(depth.values["latency_p50_ms"] - 20.0) < 1e-3
    assert health["/recon/points"].message == "no data yet"
    assert health["/trainer"].level == monitoring.WARN  # the drop counter went up during the last period
    mon.heartbeat("/trainer", 0, "ok", {"dropped": "2"}, 1.0)
    assert {h.name: h for h in mon.evaluate(1.0)}["/trainer"].level == monitoring.OK  # no new drops
    later = {h.name: h for h in mon.evaluate(5.0)}
    assert later["/trainer"].level == monitoring.ERROR and "heartbeat" in later["/trainer"].message
    assert later["/depth/image"].level == monitoring.ERROR
    mon.message("/recon/points", 5.0)
    mon.trainer_status({"state": "paused", "num_gaussians": 1000, "gpu_memory_mb": 0.0})
    paused = {h.name: h for h in mon.evaluate(9.0)}
    assert paused["/recon/points"].level == monitoring.OK and "paused" in paused["/recon/points"].message
    s = monitoring.summary(list(paused.values()))
    assert s["level_name"] == "ERROR" and "/trainer" in s["message"]


def test_monitor_reports_a_node_restarted_within_the_stall_time() -> None:
    """A node killed and respawned before it counts as stalled (ci62: a trainer back in 3.4 s) is reported all the
    same, by its heartbeat's process id: ERROR for stall_periods evaluations, then as its heartbeats say."""
    mon = monitoring.Monitor(period=1.0, stall_periods=3)
    mon.heartbeat("/trainer", 0, "ok", {"pid": "100"}, 0.0)
    assert {h.name: h for h in mon.evaluate(1.0)}["/trainer"].level == monitoring.OK
    mon.heartbeat("/trainer", 0, "ok", {"pid": "100"}, 1.0)
    mon.heartbeat("/trainer", 0, "ok", {"pid": "205"}, 3.5)          # 2.5 s silent: under the 3 s stall time
    for t in (4.0, 5.0, 6.0):
        mon.heartbeat("/trainer", 0, "ok", {"pid": "205"}, t)
        h = {h.name: h for h in mon.evaluate(t)}["/trainer"]
        assert h.level == monitoring.ERROR and h.message == \
            "restarted: no heartbeat for 2.5 s, process 100 ended, 205 now", h.message
    mon.heartbeat("/trainer", 0, "ok", {"pid": "205"}, 7.0)
    assert {h.name: h for h in mon.evaluate(7.0)}["/trainer"].level == monitoring.OK


def test_monitor_reports_a_stream_that_drops_below_its_usual_rate() -> None:
    """A lossy link between hosts thins a stream (the split test's 5 % loss: depth at about half its rate): WARN
    while it arrives at less than 60 % of its usual rate; a stream that stops is a stall, not a drop; the usual
    rate follows a lasting change; the trainer's outputs, whose rates follow training, are not judged so."""
    mon = monitoring.Monitor(period=1.0, stall_periods=3)
    t, verdicts = 0.0, []

    def run(topic: str, hz: float, seconds: float) -> None:
        nonlocal t
        end = t + seconds
        while t < end - 1e-9:
            nxt = min(end, math.floor(t + 1.0 + 1e-9))        # evaluate once a second
            while t < nxt - 1e-9:
                mon.message(topic, t)
                t += 1.0 / hz
            t = nxt
            verdicts.append({h.name: h for h in mon.evaluate(t)}[topic])

    run("/depth/image", 20.0, 20.0)
    assert all(v.level == monitoring.OK for v in verdicts), verdicts
    verdicts.clear()
    run("/depth/image", 8.0, 6.0)                             # a lossy link: 40 % of the usual rate
    drop = [v for v in verdicts if v.level == monitoring.WARN]
    usual = re.search(r"below its usual ([\d.]+) Hz: messages lost", drop[-1].message) if drop else None
    assert usual and abs(float(usual.group(1)) - 20.0) < 0.5, verdicts
    verdicts.clear()
    run("/depth/image", 8.0, 30.0)                            # lasting: the new usual rate
    assert verdicts[-1].level == monitoring.OK, verdicts[-1]
    stopped = {h.name: h for h in mon.evaluate(t + 5.0)}["/depth/image"]
    assert stopped.level == monitoring.ERROR and "stalled" in stopped.message
    verdicts.clear()
    run("/recon/points", 10.0, 20.0)
    run("/recon/points", 2.0, 6.0)                            # training slowed: not a transport problem
    assert all(v.level == monitoring.OK for v in verdicts), verdicts


def test_monitor_reports_lost_tcp_segments() -> None:
    """Across hosts the streams ride on TCP, which hides a lossy link from DDS: the monitor reads the host's TCP
    counters and warns when more than 1 % of the segments it sent in the last 5 s went again, or of those it received
    came after a gap."""
    counters = monitoring.tcp_counters(*(open(f).read() for f in monitoring.SNMP_PATHS))   # this machine's parse
    assert set(counters) == set(monitoring.TCP_COUNTERS) and min(counters.values()) >= 0
    with pytest.raises(ValueError, match="no Tcp counter OutSegs"):
        monitoring.tcp_counters("Ip: Forwarding\nIp: 1\n")
    mon = monitoring.Monitor(period=1.0)
    assert "network: TCP" not in {h.name for h in mon.evaluate(0.0)}   # one sample: nothing to say yet
    c = {"OutSegs": 1000, "RetransSegs": 10, "InSegs": 5000, "TCPOFOQueue": 0}

    def run(t0: int, t1: int, sent: int, again: int, received: int, late: int) -> monitoring.Health:
        for t in range(t0, t1):
            c.update(OutSegs=c["OutSegs"] + sent, RetransSegs=c["RetransSegs"] + again,
                     InSegs=c["InSegs"] + received, TCPOFOQueue=c["TCPOFOQueue"] + late)
            mon.tcp.sample(float(t), dict(c))
        return {h.name: h for h in mon.evaluate(float(t1 - 1))}["network: TCP"]

    clean = run(0, 8, 2000, 2, 4000, 0)                       # a clean link: 0.1 % again, nothing late
    assert clean.level == monitoring.OK and clean.values["sent_again"] == 10
    sent = run(8, 14, 2000, 100, 4000, 0)                     # 5 % of what this host sends lost
    assert sent.level == monitoring.WARN and "5.0 % of the TCP segments this host sent went again" in sent.message
    run(14, 20, 2000, 0, 4000, 0)
    received = run(20, 26, 2000, 0, 4000, 120)                # what it receives: 3 % came after a gap
    assert received.level == monitoring.WARN and "3.0 % of those it received came after a gap" in received.message
    mon.tcp.sample(26.0, {k: 0 for k in c})                   # counters began again: no verdict from one sample
    assert "network: TCP" not in {h.name for h in mon.evaluate(26.0)}


def test_monitor_latency_warning_and_restart_counters() -> None:
    mon = monitoring.Monitor(period=1.0, latency_warn_ms=50.0)
    for i in range(5):
        mon.message("/recon/status", i * 0.1, recv_ns=10**9 + 200_000_000, stamp_ns=10**9)
    assert {h.name: h for h in mon.evaluate(0.5)}["/recon/status"].level == monitoring.WARN
    mon.message("/stereo/left/image_raw", 0.1, recv_ns=2 * 10**18, stamp_ns=10**9)  # bag time vs wall time
    replay = {h.name: h for h in mon.evaluate(0.5)}["/stereo/left/image_raw"]
    assert replay.level == monitoring.OK and "another clock" in replay.values["latency"]
    mon.heartbeat("/n", 0, "ok", {"dropped": "7"}, 0.0)
    mon.heartbeat("/n", 0, "ok", {"dropped": "0"}, 0.5)  # restarted: counters start again, no negative drops
    assert {h.name: h for h in mon.evaluate(0.6)}["/n"].level == monitoring.OK


def test_monitor_end_of_a_replayed_bag_is_not_a_stall() -> None:
    key, ended = monitoring.INPUT_ENDED
    mon = monitoring.Monitor(period=1.0, stall_periods=3)
    playing = {"state": "playing", key: "false"}
    for i in range(101):  # 10 Hz until t = 10 s; the instrument mask stopped at t = 2 s (a real stall)
        t = i * 0.1
        for topic in ("/stereo/left/image_raw", "/depth/image", "/recon/points"):
            mon.message(topic, t)
        if t <= 2.0:
            mon.message("/instrument/mask", t)
        if i % 10 == 0:
            assert not mon.heartbeat("/bag_replay", 0, "ok", playing, t)
    mid_bag = {h.name: h for h in mon.evaluate(10.0)}
    assert mid_bag["/instrument/mask"].level == monitoring.ERROR
    # The bag played to its end: said once, and the input topics stop without being stalled.
    assert mon.heartbeat("/bag_replay", 0, "ok", {"state": "ended", key: ended}, 10.5)
    assert not mon.heartbeat("/bag_replay", 0, "ok", {"state": "ended", key: ended}, 11.5)
    mon.message("/recon/points", 30.0)
    mon.message("/camera/pose", 25.0)      # a live source going on long after the end, then stopping
    after = {h.name: h for h in mon.evaluate(30.0)}
    for topic in ("/stereo/left/image_raw", "/depth/image"):
        assert after[topic].level == monitoring.OK and "input ended" in after[topic].message, after[topic]
    assert after["/instrument/mask"].level == monitoring.ERROR   # stalled before the end: still a stall
    assert after["/camera/pose"].level == monitoring.ERROR
    assert after["/bag_replay"].level == monitoring.OK           # its silence (exit_on_end) is expected too
    assert after["/recon/points"].level == monitoring.OK
    # The trainer's outputs go on after the input ends: their silence is a stall.
    assert {h.name: h for h in mon.evaluate(40.0)}["/recon/points"].level == monitoring.ERROR
    # A replay that plays again (restarted) is a source like any other.
    mon.heartbeat("/bag_replay", 0, "ok", playing, 41.0)
    assert {h.name: h for h in mon.evaluate(41.0)}["/depth/image"].level == monitoring.ERROR


def test_monitor_replay_stopped_mid_bag_is_a_stall() -> None:
    key, _ = monitoring.INPUT_ENDED
    for values in ({"state": "playing", key: "false"},       # hung mid-bag
                   {"state": "ended", key: "false"}):        # a truncated bag stopped early
        mon = monitoring.Monitor(period=1.0, stall_periods=3)
        for i in range(51):
            mon.message("/depth/image", i * 0.1)
        for t in (5.0, 6.0, 7.0, 8.0, 9.0):
            assert not mon.heartbeat("/bag_replay", 0, "ok", values, t)
        depth = {h.name: h for h in mon.evaluate(9.0)}["/depth/image"]
        assert depth.level == monitoring.ERROR and "stalled" in depth.message


def test_ui_server_serves_the_page_and_the_bridge_url() -> None:
    import threading
    import urllib.error
    import urllib.request

    from surg3d_nodes.cli.ui import main, make_server

    server = make_server("127.0.0.1", 0, "ws://127.0.0.1:9999")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        assert "app.js" in urllib.request.urlopen(f"{base}/").read().decode()
        assert json.loads(urllib.request.urlopen(f"{base}/config.json").read()) == {"ws": "ws://127.0.0.1:9999"}
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(f"{base}/../../cli/ui.py")
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(SystemExit):
        main(["--bridge", "http://not-a-websocket"])
