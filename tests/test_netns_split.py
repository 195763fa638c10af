"""The graph split across two hosts: the robot part and the GPU part in two network namespaces joined by a veth
pair with link-local addresses, DDS discovery over unicast (ROS_STATIC_PEERS) across that link only; random packet
loss on the link (1 %, then 5 %, 10 s each) through which every stream keeps arriving, then the link is cut for
5 s and the graph must recover by itself.

The namespaces, the pair and the addresses are made by the test (tests/netns_support.py; root, iproute2 and
iptables needed; CI runs as root and tools/test.sh installs iptables) and removed at the end, also when it fails:
nothing touches the machine's own interfaces, and the /30 has no route out.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import netns_support as netns
import pytest
from rosproc import Launch

from surg3d_nodes.system.links import RTO_MAX_PATH, TCP_RTO_MAX_MS

pytestmark = [pytest.mark.ros,
              pytest.mark.skipif(os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("iptables") is None,
                                 reason="network namespaces and packet loss need root, iproute2 and iptables")]


LOSSES = (0.01, 0.05)


@pytest.fixture
def two_hosts() -> Iterator[dict[str, dict[str, str]]]:
    """The robot and GPU namespaces joined by a link, removed after the test."""
    with netns.two_hosts() as hosts:
        yield hosts


INPUT_TOPICS = {"depth": "/depth/image", "mask": "/instrument/mask", "pose": "/camera/pose"}   # recorded ones


class NoFirstCloudError(AssertionError):
    """The trainer of a launch made no first cloud in time; `run` is that launch's run folder."""

    def __init__(self, run: Path, text: str) -> None:
        super().__init__(text)
        self.run = run


def _first_cloud(part: Launch, run: Path, timeout: float) -> None:
    """Wait for the trainer's first cloud in `part`'s output; NoFirstCloudError after `timeout` s."""
    try:
        part.wait_for(r"\[trainer\] .*first cloud", timeout)
    except AssertionError as e:
        raise NoFirstCloudError(run, str(e)) from None


def _recorded(recordings: list[Path]) -> Iterator[tuple[int, str, int, bytes]]:
    """(recording index, topic, receive time in ns, raw) of every message of a run's recordings, oldest first,
    read with rosbags' own reader (independent of ours). A recorder that died (Fast DDS 3.2's TCP transport once
    aborted one after the link cut: asio's "local_endpoint: Bad file descriptor") is respawned into a new
    recording, and closes the one it left."""
    from rosbags.rosbag2 import Reader

    for i, bag in enumerate(recordings):
        with Reader(bag) as r:
            for conn, stamp_ns, raw in r.messages():
                yield i, conn.topic, stamp_ns, raw


def _xfail_if_a_link_was_cut(e: NoFirstCloudError) -> None:
    """An xfail when the run shows the known Fast DDS pair failure (README, "Across machines"): the trainer's
    newest heartbeat in the recording (read once the launch stopped) counts no message of an input whose topic
    the recorder beside it recorded, or the trainer itself reported that input's link broken (a publisher
    discovered, nothing received while its other inputs arrive: also when the recorder got nothing from that
    publisher either, as in one fresh-clone CI run); else `e` again."""
    from rclpy.serialization import deserialize_message

    from surg3d_msgs.msg import NodeStatus

    counts: Counter[str] = Counter()
    beat: dict[str, str] | None = None
    for _, topic, _, raw in _recorded(sorted(e.run.glob("recording_*"))):
        counts[topic] += 1
        if topic == "/surg3d/node_status" and (m := deserialize_message(raw, NodeStatus)).node == "/trainer":
            beat = {kv.key: kv.value for kv in m.values}
    cut = [f"{n} ({counts[t]} recorded beside it)" for n, t in INPUT_TOPICS.items()
           if beat is not None and f"{n}_received" not in beat and counts[t] > 0]
    if cut:
        pytest.xfail(f"no first cloud: the trainer received no {', '.join(cut)}: the known Fast DDS pair failure "
                     f"(README, Across machines); its heartbeat {beat}")
    reported = re.findall(r"\[trainer\] .*input_link: (.+?): [\d+]+ publisher\(s\) but nothing received", str(e))
    if reported:
        pytest.xfail(f"no first cloud: the trainer reported its {reported[-1]} link broken: the known Fast DDS "
                     f"pair failure (README, Across machines); recorded beside it: {dict(counts)}")
    raise e


def _xfail_if_the_trainer_went_unheard(counts: Counter[str], heard: bool, lines: list[str]) -> None:
    """An xfail for the known Fast DDS pair failure between the trainer and the recorder beside it (README, "Across
    machines"): no cloud recorded and no trainer heartbeat (`heard`) while the trainer logged its first cloud."""
    if counts["/recon/points"] == 0 and not heard and any("first cloud" in x for x in lines):
        pytest.xfail("the trainer made clouds but the recorder beside it got nothing from it, not even a heartbeat: "
                     "the known Fast DDS pair failure (README, Across machines)")


def _xfail_if_the_monitor_went_unheard(counts: Counter[str], monitor_beats: int, lines: list[str]) -> None:
    """An xfail for the known Fast DDS pair failure between the monitor and the recorder beside it (README, "Across
    machines"; a fresh-clone CI run, 2026-12-05): no monitor heartbeat and no /diagnostics recorded while the monitor
    logged its reports."""
    if monitor_beats == 0 and counts["/diagnostics"] == 0 and any(x.startswith("[monitor]") for x in lines):
        pytest.xfail("the monitor ran but the recorder beside it got nothing from it, not even a heartbeat: the "
                     "known Fast DDS pair failure (README, Across machines)")


def _xfail_if_the_recorder_missed(counts: Counter[str], trainer: dict[str, str], lines: list[str]) -> None:
    """An xfail for the known Fast DDS pair failure on the recorder's side (README, "Across machines"): an input
    stream the recorder got nothing of while the trainer beside it received it (only that pair failed), or while
    the trainer reported its link broken (its writer's pairs with both failed)."""
    for n, t in INPUT_TOPICS.items():
        if counts[t] > 0:
            continue
        got = int(trainer.get(f"{n}_received", 0))
        broken = [x for x in lines if re.search(rf"\[trainer\] .*input_link: [\w, ]*\b{n}\b[\w, ]*: ", x)]
        if got > 0 or broken:
            pytest.xfail(f"the recorder got nothing of {t} while the trainer beside it "
                         f"{f'received {got}' if got else 'reported its link broken'}: the known Fast DDS pair "
                         "failure (README, Across machines)")


def test_robot_and_gpu_parts_across_a_link_only(two_hosts, synth_bag: Path, ros_env, tmp_path: Path) -> None:
    robot, gpu = two_hosts["robot"], two_hosts["gpu"]
    env = {**ros_env, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    out = tmp_path / "out"

    def launch(h: dict[str, str], peer: dict[str, str], args: list[str]) -> Launch:
        return Launch(args, {**env, "ROS_STATIC_PEERS": peer["addr"]},
                      command=netns.on_host(h, sys.executable, "-m", "surg3d_nodes.cli", "launch"))

    gpu_part = launch(gpu, robot, ["replay", "--host", "gpu", f"output_dir:={out}", "bridge_port:=0",
                                   "checkpoint_period:=0.0"])
    robot_part = launch(robot, gpu, ["replay", "--host", "robot", f"bag:={synth_bag}", "loop:=true"])
    rx0 = netns.rx_bytes(gpu)
    windows: dict[float, tuple[float, float]] = {}
    dropped: dict[float, int] = {}
    try:
        try:
            run = Path(gpu_part.wait_for(r"\[launcher\] run folder (\S+)", 60).group(1))
            # The trainer trains on frames that came across (depth and masks from the robot's namespace) and
            # publishes its model before any fault is injected (a slow machine needs a while for the first one).
            _first_cloud(gpu_part, run, 180)
            deadline = time.monotonic() + 150
            while time.monotonic() < deadline and robot_part.proc.poll() is None and gpu_part.proc.poll() is None:
                if netns.rx_bytes(gpu) - rx0 > 20 * 160 * 128 * 3:      # at least twenty colour frames' worth
                    break
                time.sleep(1.0)
            time.sleep(10.0)                                       # frames, training, clouds for a while
            # Random packet loss on the link, each way (iptables' statistic match: this kernel has no netem), 1 %
            # then 5 %, 10 s each; the graph keeps running through it.
            for loss in LOSSES:
                netns.drop(two_hosts, loss)
                windows[loss] = (time.time(), time.time() + 10.0)
                time.sleep(10.0)
                dropped[loss] = netns.drop(two_hosts, None)
            # A 5 s cut of the link (both ends down), then the graph must recover by itself.
            cut_start, seen = time.time(), (len(robot_part.lines), len(gpu_part.lines))
            netns.ip("link", "set", robot["dev"], "down", ns=robot["ns"])
            time.sleep(5.0)
            netns.ip("link", "set", robot["dev"], "up", ns=robot["ns"])
            cut_end = time.time()
            time.sleep(15.0)
            # A node respawned after the cut (Fast DDS's TCP transport once aborted a recorder there, and froze a
            # perception node inside a publish, restarted when silent) starts afresh (a recorder into a new
            # recording): it gets as long as the first one had after the cut.
            since = robot_part.lines[seen[0]:] + gpu_part.lines[seen[1]:]
            if any(re.search(r"started \w+ \(pid \d+\) again", ln) for ln in since):
                time.sleep(15.0)
        finally:
            codes = robot_part.stop(), gpu_part.stop()
    except NoFirstCloudError as e:
        _xfail_if_a_link_was_cut(e)
    log = "\n".join(robot_part.lines[-25:] + gpu_part.lines[-40:])
    crossed = netns.rx_bytes(gpu) - rx0
    assert crossed > 20 * 160 * 128 * 3, f"only {crossed} bytes crossed the link\n{log}"
    from rclpy.serialization import deserialize_message

    from surg3d_msgs.msg import NodeStatus

    recordings = sorted(run.glob("recording_*"))
    assert recordings, f"no recording in {run}\n{log}"
    counts: Counter[str] = Counter()
    during: dict[float, Counter[str]] = {loss: Counter() for loss in LOSSES}
    after_cut: dict[str, float] = {}
    started: dict[int, float] = {}             # each recording's first message
    trainer_beat = ""
    trainer_values: dict[str, str] = {}        # its newest heartbeat's counters
    monitor_beats = 0
    thinned_at: list[float] = []
    tcp_loss_at: list[float] = []
    # (received, the robot side's depth count, (recording, stereo depth's pid): a respawned node counts from 0)
    depth_made: list[tuple[float, int, tuple[int, str]]] = []
    depth_at: list[float] = []
    for i, topic, stamp_ns, raw in _recorded(recordings):
        counts[topic] += 1
        if topic == "/surg3d/node_status" and b"trainer" in raw:
            trainer_beat = raw.decode("latin-1")   # the newest trainer heartbeat, for the failure message
            trainer_values = {kv.key: kv.value for kv in deserialize_message(raw, NodeStatus).values}
        monitor_beats += topic == "/surg3d/node_status" and b"/monitor" in raw
        if topic == "/diagnostics" and b"below its usual" in raw:
            thinned_at.append(stamp_ns / 1e9)
        if topic == "/diagnostics" and b"packets are lost on the way" in raw:
            tcp_loss_at.append(stamp_ns / 1e9)
        if topic == "/surg3d/node_status" and b"stereo_depth" in raw:
            beat = {kv.key: kv.value for kv in deserialize_message(raw, NodeStatus).values}
            if "pairs_processed" in beat:
                depth_made.append((stamp_ns / 1e9, int(beat["pairs_processed"]), (i, beat.get("pid", ""))))
        if topic == "/depth/image":
            depth_at.append(stamp_ns / 1e9)
        for loss, (t0, t1) in windows.items():
            during[loss][topic] += t0 <= stamp_ns / 1e9 < t1
        started.setdefault(i, stamp_ns / 1e9)
        if stamp_ns / 1e9 > cut_end:
            # from the link's return, or from a recorder's first message where it was respawned after that
            after_cut.setdefault(topic, stamp_ns / 1e9 - max(cut_end, started[i]))
    _xfail_if_the_trainer_went_unheard(counts, bool(trainer_beat), gpu_part.lines)
    _xfail_if_the_recorder_missed(counts, trainer_values, gpu_part.lines)
    # "No recorded message lost outside the cut": the depth maps the robot side published between two of its
    # heartbeats (its own count) against those recorded between them, before the loss and from 5 s after the cut
    # (a map in flight as a heartbeat passes may count on either side of it); in the loss windows, shown only.
    spans = {"before the loss": (0.0, windows[LOSSES[0]][0]), "after the cut": (cut_end + 5.0, float("inf")),
             **{f"{100 * loss:.0f} % loss": w for loss, w in windows.items()}}
    # Two heartbeats of one recording and one stereo depth process: none is expected while a respawned recorder
    # starts.
    for name, (a, b) in spans.items():
        groups = [[(t, n) for t, n, k in depth_made if a <= t <= b and k == key]
                  for key in dict.fromkeys(k for _, _, k in depth_made)]
        checked = "%" not in name
        assert any(len(g) >= 2 for g in groups) or not checked, \
            f"{name}: fewer than two stereo depth heartbeats recorded in one recording of one process; the " \
            f"recordings began " \
            f"{[round(started[i] - cut_end, 1) for i in sorted(started)]} s after the cut ended, stereo depth " \
            f"heartbeats recorded at {[round(t - cut_end, 1) for t, _, _ in depth_made if t > cut_start - 5]} s, " \
            f"first messages after it {after_cut}; restarts: " \
            f"{[ln for ln in robot_part.lines + gpu_part.lines if 'again' in ln or 'silent' in ln]}\n{log}"
        for beats in (g for g in groups if len(g) >= 2):
            (ta, na), (tb, nb) = beats[0], beats[-1]
            recorded = sum(ta < t <= tb for t in depth_at)
            print(f"{name}: {nb - na} depth maps published in {tb - ta:.1f} s, {recorded} recorded")
            assert abs(recorded - (nb - na)) <= 2 or not checked, f"{name}: {nb - na} published, {recorded} recorded"
    streams = ("/depth/image", "/instrument/mask", "/recon/points")
    print(f"after the {cut_end - cut_start:.1f} s cut, the first message (s): "
          f"{ {t: round(after_cut.get(t, float('inf')), 2) for t in streams} }")
    # Depth and masks were made in the robot's namespace; the clouds by the trainer from them.
    for topic in streams:
        assert counts[topic] > 3, f"{topic}: {counts[topic]} recorded ({dict(counts)}); the trainer's last " \
                                  f"heartbeat: {''.join(c for c in trainer_beat if c.isprintable())}\n{log}"
        # After the cut, each flows again within 5 s of the link coming back.
        assert after_cut.get(topic, float("inf")) < 5.0, \
            f"{topic}: first message {after_cut.get(topic)} s after the {cut_end - cut_start:.1f} s cut\n{log}"
    # Under loss, each stream still arrives (fewer of the large images: one lost fragment of a 60 kB datagram
    # loses it); the drops are the rules' own counters.
    # "With 5 % loss the graph keeps running and reports it": over TCP (LARGE_DATA) DDS loses no message. The GPU
    # side's monitor reports the segments its host's TCP sent again (over 5 s), and a stream the link thins below its
    # usual rate (over 5 s; with the hosts' TCP backoff capped, 5 % loss thins the streams by about a fifth only,
    # ci57, so the first is what reports it); while the loss lasts or within 5 s of its end. As recorded.
    t0, t1 = windows[LOSSES[-1]]
    thinned = [t for t in thinned_at if t0 <= t <= t1 + 5.0]
    tcp_loss = [t for t in tcp_loss_at if t0 <= t <= t1 + 5.0]
    print(f"the monitor reported a thinned stream {len(thinned_at)} times, {len(thinned)} during "
          f"{100 * LOSSES[-1]:.0f} % loss or within 5 s of its end; lost TCP segments {len(tcp_loss_at)} times, "
          f"{len(tcp_loss)} then, first {min(tcp_loss_at, default=float('nan')) - windows[LOSSES[0]][0]:.1f} s after "
          f"the first loss began")
    for loss in LOSSES:
        print(f"{100 * loss:.0f} % loss for 10 s: {dropped[loss]} packets dropped; received "
              f"{ {t: during[loss][t] for t in ('/depth/image', '/instrument/mask', '/recon/points')} }")
        assert dropped[loss] > 0, f"no packet dropped at {loss}"
        for topic in ("/depth/image", "/instrument/mask", "/recon/points"):
            assert during[loss][topic] > 0, f"{topic}: nothing recorded during {100 * loss:.0f} % loss\n{log}"
    if not (thinned or tcp_loss):
        _xfail_if_the_monitor_went_unheard(counts, monitor_beats, gpu_part.lines)
    assert thinned or tcp_loss, f"the monitor reported no loss during {100 * LOSSES[-1]:.0f} % loss\n{log}"
    # Checked last, so that the rest is checked in any case: a clean exit of both sides (a node whose DDS
    # teardown hangs after it closed leaves with 0 by itself, naming where it hung).
    assert codes == (0, 0), f"exit codes {codes}\n{log}"


def test_gpu_host_killed_and_restarted_continues_the_model(two_hosts, synth_bag: Path, ros_env,
                                                          tmp_path: Path) -> None:
    """Every process of the GPU side's namespace SIGKILLed at once (a crash of that host) while the robot side
    runs on; the GPU side started again with continue_from:=<its run folder> resumes the trainer from the newest
    checkpoint and publishes clouds, and the robot side's frames cross the link into its new recording within
    8 s of its first recorded message (measured 1.0-4.9 s). The crash usually comes while the replay still
    waits for the acknowledgement of its first frame (the trainer's first cloud and checkpoint come sooner than
    Fast DDS repairs that frame, at its 3 s heartbeat): the dead readers never acknowledge, and the replay must
    play on regardless (it waited, frozen with the GIL held, until their lease expired 17-18 s after the crash;
    its frames then came 13.5 s after the restarted side's first message)."""
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader

    from surg3d_msgs.msg import NodeStatus
    from surg3d_nodes.recon.io.checkpoint import read_checkpoint
    from surg3d_nodes.system.runs import checkpoints

    robot, gpu = two_hosts["robot"], two_hosts["gpu"]
    env = {**ros_env, "ROS_AUTOMATIC_DISCOVERY_RANGE": "SUBNET"}
    out = tmp_path / "out"

    def launch(h: dict[str, str], peer: dict[str, str], args: list[str]) -> Launch:
        return Launch(args, {**env, "ROS_STATIC_PEERS": peer["addr"]},
                      command=netns.on_host(h, sys.executable, "-m", "surg3d_nodes.cli", "launch"))

    gpu_args = ["replay", "--host", "gpu", f"output_dir:={out}", "bridge_port:=0", "checkpoint_period:=3.0"]
    robot_part = launch(robot, gpu, ["replay", "--host", "robot", f"bag:={synth_bag}", "loop:=true"])
    crashed = launch(gpu, robot, gpu_args)
    restarted = None
    try:
        try:
            first_run = Path(crashed.wait_for(r"\[launcher\] run folder (\S+)", 60).group(1))
            _first_cloud(crashed, first_run, 180)
            end = time.monotonic() + 60
            while not checkpoints(first_run) and time.monotonic() < end:   # the monitor asks every 3 s
                time.sleep(0.5)
            assert checkpoints(first_run), "no checkpoint before the crash\n" + "\n".join(crashed.lines[-40:])
            assert netns.kill_all(gpu) >= 5                    # the launcher and its nodes at once, no shutdown
            crashed.proc.wait(30)
            newest = checkpoints(first_run)[-1]
            restarted = launch(gpu, robot, [*gpu_args, f"continue_from:={first_run}"])
            run = Path(restarted.wait_for(r"\[launcher\] run folder (\S+)", 60).group(1))
            resumed = restarted.wait_for(r"\[trainer\] .*resumed from (\S+): (\d+) Gaussians", 120)
            _first_cloud(restarted, run, 60)
            # Frames from the robot side into the new run. Within the GPU side's namespace the recorder hears the
            # trainer 3-4 s after it started recording (discovery); in one run of ten, not within the 8 s waited here.
            time.sleep(12.0)
            alive = robot_part.proc.poll() is None, restarted.proc.poll() is None
        finally:
            # After a peer's crash, rclpy's destroy_node can hang with the GIL held (Fast DDS; seen in the robot
            # side and in the restarted side alike): each node then leaves with 0 by itself, naming where it hung.
            codes = {part: part.stop() for part in (robot_part, restarted, crashed) if part is not None}
    except NoFirstCloudError as e:
        _xfail_if_a_link_was_cut(e)
    log = "\n".join(robot_part.lines[-20:] + (restarted.lines[-40:] if restarted else []))
    assert alive == (True, True), f"the robot side ran on through the crash, the restarted side too\n{log}"
    assert codes[robot_part] == codes[restarted] == 0, f"exit codes {codes[robot_part]}, {codes[restarted]}\n{log}"
    path = Path(resumed.group(1))
    assert path.parent == run and path.name == newest.name, f"resumed from {path}, newest was {newest}"
    # The crashed run's recording, left unclosed by the killed recorder, was closed in place before the restart.
    closed = restarted.wait_for(rf"\[launcher\] closed ({re.escape(str(first_run))}/recording_\S+), left unclosed "
                                rf"by the continued run: (\d+) messages", 1)
    assert [p.name for p in first_run.iterdir() if p.name.startswith(".recording")] == []
    with Reader(closed.group(1)) as r:
        assert r.message_count == int(closed.group(2)) > 0
    # The copy in the new run is gone by now (the trainer keeps its newest checkpoints_kept): its source, the same.
    assert int(resumed.group(2)) == read_checkpoint(newest)["params"]["means"].shape[0] > 0
    counts: Counter[str] = Counter()
    first: dict[str, float] = {}                          # s from the restarted side's first recorded message
    replay: list[tuple[float, str, int]] = []             # the robot side's replay heartbeats: (s, state, published)
    trainer: dict[str, str] = {}                          # the restarted trainer's newest heartbeat
    with Reader(sorted(run.glob("recording_*"))[-1]) as r:
        start = None
        for conn, stamp_ns, raw in r.messages():          # the recorder's receive time
            start = stamp_ns if start is None else start
            counts[conn.topic] += 1
            first.setdefault(conn.topic, (stamp_ns - start) / 1e9)
            if conn.topic == "/surg3d/node_status":
                beat = deserialize_message(raw, NodeStatus)
                values = {kv.key: kv.value for kv in beat.values}
                if beat.node == "/bag_replay":
                    replay.append(((stamp_ns - start) / 1e9, values["state"], int(values["published"])))
                elif beat.node == "/trainer":
                    trainer = values
    _xfail_if_the_trainer_went_unheard(counts, bool(trainer), restarted.lines)
    assert counts["/recon/points"] > 0, f"{dict(counts)}\n{log}"
    unacked = any("did not acknowledge the first messages" in line for line in robot_part.lines)
    nan = float("nan")
    print(f"restarted side: first depth {first.get('/depth/image', nan):.1f} s, mask "
          f"{first.get('/instrument/mask', nan):.1f} s after its first recorded message; {dict(counts)}; crash during "
          f"the replay's handshake: {unacked}")
    _xfail_if_the_recorder_missed(counts, trainer, restarted.lines)
    # Frames made on the robot side by the replay it kept playing through the crash, and its heartbeat (it
    # stopped too while the replay waited with the GIL held).
    for topic in ("/depth/image", "/instrument/mask"):
        assert counts[topic] > 3 and first.get(topic, float("inf")) < 8.0, \
            f"{topic}: {counts[topic]} recorded, the first {first.get(topic)} s after the restarted side's " \
            f"first ({dict(counts)}); the replay's heartbeats (s, state, published): {replay[:3]}...{replay[-3:]}" \
            f"\n{log}"
    assert replay and replay[0][0] < 8.0 and replay[-1][2] > replay[0][2], \
        f"the replay's heartbeats (s, state, published): {replay}\n{log}"


def test_a_host_whose_tcp_backoff_is_uncapped_is_named(two_hosts) -> None:
    """The launcher of a split graph's part warns when the machine lets TCP back off for longer than 3 s
    (system/links.py): the hosts the test made are set up as documented, the kernel's default is not."""
    probe = "from surg3d_nodes.system.links import split_host_warnings as w; print(repr(w()))"
    robot = two_hosts["robot"]
    if not RTO_MAX_PATH.exists():
        assert "this kernel has no net.ipv4.tcp_rto_max_ms" in netns.on_host_output(robot, sys.executable, "-c", probe)
        return
    assert netns.on_host_output(robot, sys.executable, "-c", probe).strip() == "[]"
    netns.on_host_output(robot, "sh", "-c", "echo 120000 > /proc/sys/net/ipv4/tcp_rto_max_ms")
    warned = netns.on_host_output(robot, sys.executable, "-c", probe)
    assert "net.ipv4.tcp_rto_max_ms is 120000" in warned
    assert f"sysctl -w net.ipv4.tcp_rto_max_ms={TCP_RTO_MAX_MS}" in warned
