"""The periodic monitoring unit's logic: message rates, frame-stamp-to-output latencies, node heartbeats,
queue drops, trainer resources and stall detection. ROS-free; the monitor node feeds it and publishes
`evaluate()`'s results as diagnostics.

Times: `now` values are monotonic seconds (stall detection); stamps and receive times for latency are
nanoseconds of the graph clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR, STALE = 0, 1, 2, 3
# |receive time - stamp| beyond this means the stamps come from another clock (a replayed bag's time while
# this node runs on wall time: set use_sim_time), not a latency.
FOREIGN_CLOCK_MS = 3_600_000.0
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
# Heartbeat value (key, value) by which a source node says its input ended on purpose: bag_replay once a
# non-looping bag has played to its end. The topics it fed then stop without being stalled.
INPUT_ENDED = ("input_ended", "true")
# A stream (not the trainer's: its rates follow training) arriving at less than this share of its usual rate, the
# median of its rates at the last USUAL_PERIODS evaluations, is reported: a lossy or congested link between
# hosts, or a source that slowed. The usual rate follows a lasting change within about half that many periods.
RATE_DROP = 0.6
USUAL_PERIODS = 30
# Across hosts the graph's streams ride on TCP (LARGE_DATA), which hides a lossy link from DDS: the streams arrive,
# late, and thin only when the loss is heavy (5 % random loss each way thinned them by a fifth to a half once TCP's
# backoff was capped, system/links.py). TCP's own counters show it: segments this host sent again, and segments it
# received after a gap (out of order: one before them was lost). Above this share of either, over TCP_WINDOW_S, lost
# packets are reported; a clean link has next to none.
TCP_LOSS_WARN = 0.01
TCP_MIN_EVENTS = 5      # fewer such segments in the window are not reported (a stray probe)
TCP_WINDOW_S = 5.0
SNMP_PATHS = ("/proc/net/snmp", "/proc/net/netstat")   # this process's network namespace's counters
TCP_COUNTERS = {"OutSegs": "Tcp", "RetransSegs": "Tcp", "InSegs": "Tcp", "TCPOFOQueue": "TcpExt"}


def tcp_counters(*texts: str) -> dict[str, int]:
    """TCP_COUNTERS from the texts of /proc/net/snmp and /proc/net/netstat (header and value lines per protocol)."""
    rows: dict[str, list[list[str]]] = {}
    for text in texts:
        for line in text.splitlines():
            proto, _, rest = line.partition(":")
            rows.setdefault(proto, []).append(rest.split())
    out = {}
    for name, proto in TCP_COUNTERS.items():
        lines = rows.get(proto, [])
        if len(lines) < 2 or name not in lines[0]:
            raise ValueError(f"no {proto} counter {name} in the SNMP counters")
        out[name] = int(lines[1][lines[0].index(name)])
    return out


class TcpLoss:
    """Lost packets on this host's TCP connections, from its counters (`tcp_counters`) sampled once per period."""

    def __init__(self, window_s: float = TCP_WINDOW_S) -> None:
        self.window_s = window_s
        self.samples: deque[tuple[float, dict[str, int]]] = deque()

    def sample(self, now: float, counters: dict[str, int]) -> None:
        """The counters at time `now`."""
        if self.samples and counters["OutSegs"] < self.samples[-1][1]["OutSegs"]:   # begun again: a new namespace
            self.samples.clear()
        self.samples.append((now, counters))
        while len(self.samples) > 2 and now - self.samples[1][0] >= self.window_s:
            self.samples.popleft()

    def health(self) -> Health | None:
        """The verdict over the window (None before two samples)."""
        if len(self.samples) < 2:
            return None
        (t0, a), (t1, b) = self.samples[0], self.samples[-1]
        d = {k: b[k] - a[k] for k in TCP_COUNTERS}
        again, late = d["RetransSegs"] / max(d["OutSegs"], 1), d["TCPOFOQueue"] / max(d["InSegs"], 1)
        vals = {"segments_sent": d["OutSegs"], "sent_again": d["RetransSegs"], "segments_received": d["InSegs"],
                "received_after_a_gap": d["TCPOFOQueue"], "window_s": round(t1 - t0, 1)}
        text = (f"{100 * again:.1f} % of the TCP segments this host sent went again, {100 * late:.1f} % of those it "
                f"received came after a gap, in the last {t1 - t0:.0f} s")
        if ((d["RetransSegs"] >= TCP_MIN_EVENTS and again > TCP_LOSS_WARN)
                or (d["TCPOFOQueue"] >= TCP_MIN_EVENTS and late > TCP_LOSS_WARN)):
            return Health("network: TCP", WARN, f"{text}: packets are lost on the way (the link between the hosts?)",
                          vals)
        return Health("network: TCP", OK, text, vals)


@dataclass
class Health:
    """The verdict on one monitored item (a node or a topic)."""

    name: str
    level: int
    message: str
    values: dict[str, object] = field(default_factory=dict)


class TopicTracker:
    """Arrival times and latencies of one topic over a sliding window."""

    def __init__(self, window_s: float = 5.0, max_samples: int = 2000) -> None:
        self.window_s = window_s
        self.arrivals: deque[float] = deque(maxlen=max_samples)
        self.latencies_ms: deque[float] = deque(maxlen=max_samples)
        self.count = 0
        self.foreign_stamps = 0
        self.first: float | None = None
        self.last: float | None = None
        self.rates: deque[float] = deque(maxlen=USUAL_PERIODS)   # at past evaluations, once a window was full

    def record(self, now: float, latency_ms: float | None = None) -> None:
        """A message arrived at monotonic time `now`; `latency_ms` = receive time minus its frame stamp."""
        self.arrivals.append(now)
        if latency_ms is not None and np.isfinite(latency_ms):
            if abs(latency_ms) > FOREIGN_CLOCK_MS:
                self.foreign_stamps += 1
            else:
                self.latencies_ms.append(latency_ms)
        self.count += 1
        self.first = now if self.first is None else self.first
        self.last = now

    def rate(self, now: float) -> float:
        """Messages per second over the window ending at `now` (0 when fewer than two arrived)."""
        recent = [t for t in self.arrivals if now - t <= self.window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], recent[-1] - recent[0])
        return (len(recent) - 1) / span if span > 0 else 0.0

    def usual_rate(self) -> float | None:
        """The median of the rates noted at past evaluations; None until five were."""
        return float(np.median(self.rates)) if len(self.rates) >= 5 else None

    def note_rate(self, now: float, rate: float) -> None:
        """Keep the rate of this evaluation for `usual_rate`, once the topic has filled a window."""
        if self.first is not None and now - self.first >= self.window_s:
            self.rates.append(rate)

    def latency(self) -> tuple[float, float] | None:
        """(p50, max) of the latencies of the newest window, milliseconds; None when none were measured."""
        if not self.latencies_ms:
            return None
        lat = np.asarray(list(self.latencies_ms)[-200:])
        return float(np.median(lat)), float(lat.max())


@dataclass
class NodeRecord:
    """The newest heartbeat of a node and its drop counter at the previous evaluation."""

    last: float
    level: int
    message: str
    values: dict[str, str]
    drops: int = 0
    drops_at_eval: int = 0


def drop_count(values: dict[str, str]) -> int:
    """Sum of the heartbeat counters that count dropped/skipped messages (keys containing 'drop')."""
    total = 0
    for k, v in values.items():
        if "drop" in k:
            try:
                total += int(float(v))
            except ValueError:
                continue
    return total


class Monitor:
    """Health of the graph from heartbeats, watched topics and the trainer's status.

    A node is flagged ERROR when its heartbeat has been missing for `stall_periods` periods, a watched topic
    when it delivered before and then nothing for `stall_periods` periods (trainer outputs are exempt while
    the trainer says it is paused or idle), WARN on new queue drops, high latency, a stream thinned below its
    usual rate (RATE_DROP), lost TCP segments (`tcp`: fed by the node from `tcp_counters`) or GPU memory.
    Once a source node's heartbeat says its input ended (`INPUT_ENDED`), a topic other than the trainer's that
    stopped with it (its last message within `stall_periods` periods of that heartbeat) is OK, "input ended",
    not stalled; so is that node's own silence afterwards (a replay that exits at the end of its bag). A node whose
    heartbeat comes from another process than before (`pid`) died and was started again, however briefly it was
    silent: ERROR for `stall_periods` evaluations (a trainer respawned from a warm disk was back within the
    stall time, and a crash went unreported: ci62).
    """

    def __init__(self, period: float, stall_periods: int = 3, latency_warn_ms: float = 1000.0,
                 gpu_memory_warn_mb: float = 0.0, trainer_prefix: str = "/recon/") -> None:
        if period <= 0 or stall_periods < 1:
            raise ValueError(f"monitor period must be > 0 and stall_periods >= 1, "
                             f"got {period}, {stall_periods}")
        self.period = period
        self.stall_periods = stall_periods
        self.latency_warn_ms = latency_warn_ms
        self.gpu_memory_warn_mb = gpu_memory_warn_mb
        self.trainer_prefix = trainer_prefix
        self.nodes: dict[str, NodeRecord] = {}
        self.topics: dict[str, TopicTracker] = {}
        self.trainer: dict[str, object] | None = None
        self.input_ended: dict[str, float] = {}   # source node -> when its heartbeat first said its input ended
        self.restarts: dict[str, tuple[str, int]] = {}   # node -> (its restart's report, evaluations left to report it)
        self.tcp = TcpLoss()

    @property
    def stall_after(self) -> float:
        """Seconds of silence after which a node or topic counts as stalled."""
        return self.period * self.stall_periods

    def watch(self, topic: str) -> None:
        """Track `topic` (it is reported as 'no data yet' until its first message)."""
        self.topics.setdefault(topic, TopicTracker(window_s=max(5.0, 2 * self.period)))

    def heartbeat(self, node: str, level: int, message: str, values: dict[str, str], now: float) -> bool:
        """A NodeStatus heartbeat arrived; True when it is the first to say that `node`'s input ended."""
        key, ended = INPUT_ENDED
        newly_ended = False
        if values.get(key) != ended:
            self.input_ended.pop(node, None)   # playing (again: a restarted replay)
        elif node not in self.input_ended:
            self.input_ended[node] = now
            newly_ended = True
        prev = self.nodes.get(node)
        drops = drop_count(values)
        at_eval = prev.drops_at_eval if prev is not None else drops
        if prev is not None and drops < prev.drops:  # the node restarted: its counters began again
            at_eval = 0
        old, new = (prev.values.get("pid") if prev is not None else None), values.get("pid")
        if old and new and old != new:
            self.restarts[node] = (f"restarted: no heartbeat for {now - prev.last:.1f} s, process {old} ended, "
                                   f"{new} now", self.stall_periods)
        self.nodes[node] = NodeRecord(now, int(level), message, dict(values), drops, at_eval)
        return newly_ended

    def message(self, topic: str, now: float, recv_ns: int | None = None,
                stamp_ns: int | None = None) -> None:
        """A message on a watched topic; latency is taken when its frame stamp is known and non-zero."""
        self.watch(topic)
        lat = (recv_ns - stamp_ns) / 1e6 if recv_ns is not None and stamp_ns else None
        self.topics[topic].record(now, lat)

    def trainer_status(self, status: dict[str, object]) -> None:
        """The newest TrainerStatus as a dict (state, num_gaussians, gpu_memory_mb, ...)."""
        self.trainer = dict(status)

    def _trainer_paused(self) -> bool:
        return self.trainer is not None and self.trainer.get("state") in ("paused", "idle")

    def _ended_with_input(self, topic: str, last: float) -> str | None:
        """The source node whose input ended when `topic` went silent (its last message at `last`), or None.

        The trainer's outputs go on after the input ends, so their silence is never excused; a topic silent
        since long before the end was stalled already, one that went on long after it is fed by another source.
        """
        if topic.startswith(self.trainer_prefix):
            return None
        return next((node for node, at in self.input_ended.items() if abs(last - at) <= self.stall_after), None)

    def _dropped_from(self, topic: str, tr: TopicTracker, now: float, rate: float) -> float | None:
        """`topic`'s usual rate when it now arrives (`rate`) at less than RATE_DROP of it while still flowing (its
        last message within three usual intervals: a stream that stops is a stall or an end, not a drop)."""
        usual = tr.usual_rate()
        if usual is None or usual <= 0 or topic.startswith(self.trainer_prefix) or tr.last is None:
            return None
        flowing = now - tr.last <= 3.0 / usual
        return usual if flowing and rate < RATE_DROP * usual else None

    def evaluate(self, now: float) -> list[Health]:
        """Health of every known node and watched topic, and of the trainer's resources, at time `now`
        (call once per period: queue drops are counted since the previous call)."""
        out: list[Health] = []
        for name, rec in sorted(self.nodes.items()):
            age = now - rec.last
            vals: dict[str, object] = {"heartbeat_age_s": round(age, 2), "dropped": rec.drops, **rec.values}
            if age > self.stall_after:
                if name in self.input_ended:
                    out.append(Health(name, OK, f"input ended; no heartbeat for {age:.1f} s", vals))
                else:
                    out.append(Health(name, ERROR, f"stalled: no heartbeat for {age:.1f} s", vals))
                continue
            new_drops = rec.drops - rec.drops_at_eval
            rec.drops_at_eval = rec.drops
            if name in self.restarts:
                report, left = self.restarts.pop(name)
                if left > 1:
                    self.restarts[name] = (report, left - 1)
                out.append(Health(name, ERROR, report, vals))
            elif rec.level > OK:
                out.append(Health(name, rec.level, rec.message, vals))
            elif new_drops > 0:
                out.append(Health(name, WARN, f"{new_drops} messages dropped in the last period", vals))
            else:
                out.append(Health(name, OK, rec.message or "ok", vals))
        for topic, tr in sorted(self.topics.items()):
            vals = {"rate_hz": round(tr.rate(now), 2), "count": tr.count}
            lat = tr.latency()
            if lat is not None:
                vals["latency_p50_ms"], vals["latency_max_ms"] = round(lat[0], 1), round(lat[1], 1)
            elif tr.foreign_stamps:
                vals["latency"] = "n/a: stamps on another clock (use_sim_time?)"
            if tr.last is None:
                out.append(Health(topic, OK, "no data yet", vals))
                continue
            age = now - tr.last
            vals["age_s"] = round(age, 2)
            if age > self.stall_after:
                if topic.startswith(self.trainer_prefix) and self._trainer_paused():
                    out.append(Health(topic, OK, f"trainer {self.trainer.get('state')}", vals))
                elif (source := self._ended_with_input(topic, tr.last)) is not None:
                    out.append(Health(topic, OK, f"input ended ({source} finished)", vals))
                else:
                    out.append(Health(topic, ERROR, f"stalled: no message for {age:.1f} s", vals))
            elif lat is not None and lat[0] > self.latency_warn_ms:
                out.append(Health(topic, WARN, f"latency {lat[0]:.0f} ms above {self.latency_warn_ms:.0f} ms",
                                  vals))
            elif (usual := self._dropped_from(topic, tr, now, vals["rate_hz"])) is not None:
                out.append(Health(topic, WARN, f"{vals['rate_hz']} Hz, below its usual {usual:.1f} Hz: messages "
                                  "lost or held up on the way, or their source slowed", vals))
            else:
                out.append(Health(topic, OK, f"{vals['rate_hz']} Hz", vals))
            tr.note_rate(now, vals["rate_hz"])
        if (tcp := self.tcp.health()) is not None:
            out.append(tcp)
        if self.trainer is not None:
            t = self.trainer
            vals = {k: t[k] for k in ("state", "num_gaussians", "gpu_memory_mb", "iterations_per_second",
                                      "latency_ms", "psnr_recent") if k in t}
            gpu = float(t.get("gpu_memory_mb", 0.0) or 0.0)
            if self.gpu_memory_warn_mb > 0 and gpu > self.gpu_memory_warn_mb:
                out.append(Health("trainer model", WARN, f"GPU memory {gpu:.0f} MB above "
                                  f"{self.gpu_memory_warn_mb:.0f} MB", vals))
            else:
                out.append(Health("trainer model", OK, f"{t.get('num_gaussians', 0)} Gaussians, "
                                  f"{gpu:.0f} MB GPU", vals))
        return out


def summary(health: list[Health]) -> dict[str, object]:
    """A compact status for the UI: the worst level, the problems, and each item's level."""
    worst = max((h.level for h in health), default=OK)
    problems = [f"{h.name}: {h.message}" for h in health if h.level > OK]
    return {"level": worst, "level_name": LEVEL_NAMES[worst],
            "message": "; ".join(problems) if problems else "all ok",
            "items": {h.name: LEVEL_NAMES[h.level] for h in health}}


class InputLinks:
    """Which of a node's paired inputs look cut off at the transport: a topic that has a publisher but has
    delivered nothing for `timeout_s` while another input of the same node has been delivering (its pairs can
    never complete). Seen across two hosts with Fast DDS's TCP transport (LARGE_DATA): the trainer got no message
    from one publishing participant on the other host for minutes (each time another one) while the recorder
    beside it got them all, and a restarted trainer did not fare better (README, "Across machines"). An input whose
    publisher sends nothing on purpose (a tracker that has lost the camera publishes no pose) looks the same."""

    def __init__(self, names: list[str], timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.first: dict[str, float] = {}      # monotonic time of each input's first message
        self.last: dict[str, float] = {}       # ... and of its newest
        self.last_paired: float | None = None  # when the inputs last made a complete set
        self.names = list(names)

    def received(self, name: str, now: float) -> None:
        """An input delivered a message at `now`."""
        self.first.setdefault(name, now)
        self.last[name] = now

    def paired(self, now: float) -> None:
        """The inputs made a complete set at `now`."""
        self.last_paired = now

    def unpaired(self, now: float) -> bool:
        """Every input delivers (each within the last `timeout_s`, all of them for `timeout_s`) and yet no set
        has been paired for `timeout_s`: their stamps do not meet, or one comes later than the others are kept
        (a dVRK pose a second late on a starved machine once paired nothing for minutes while all four arrived).
        False when the check is off."""
        if self.timeout_s <= 0 or len(self.last) < len(self.names):
            return False
        all_since = max(self.first.values())
        return (now - all_since >= self.timeout_s and now - min(self.last.values()) < self.timeout_s
                and (self.last_paired is None or now - self.last_paired >= self.timeout_s))

    def silent(self, publishers: dict[str, int], now: float) -> tuple[list[str], list[str]]:
        """(cut off, unpublished): the inputs that delivered nothing although another input has been delivering
        for `timeout_s`, split by whether they have a publisher (`publishers`: count by input name); both empty
        when none or the check is off. Unpublished is no proof of a broken link (the node that publishes it may
        not run), but the split graph showed that too: the trainer once never discovered one participant's
        publishers at all."""
        if self.timeout_s <= 0 or not self.first or now - min(self.first.values()) < self.timeout_s:
            return [], []
        silent = [n for n in self.names if n not in self.first]
        return [n for n in silent if publishers.get(n, 0) > 0], [n for n in silent if publishers.get(n, 0) == 0]
