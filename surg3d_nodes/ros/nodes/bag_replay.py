"""bag_replay: publish a rosbag2 (MCAP or sqlite3) on its recorded topics, paced by the recorded stamps.

Messages go out as the recorded CDR bytes (no deserialization); publishers are created from the type names
(importlib), so every type needs compiled rclpy support. Parameters:
- bag: rosbag2 directory, .mcap or .db3; rate: 1.0 = real time, 2.0 = twice as fast, 0.0 = no pacing;
  loop; start_offset: seconds into the bag; topics: only these (empty = all);
- publish_clock: /clock at each stamp, for use_sim_time graphs;
- late_threshold: s behind schedule that counts a stamp group (the messages of one stamp) as late;
  drop_late + drop_threshold: skip stamp groups further behind than that, to catch up;
- wait_for_subscribers: start once every topic (or those in wait_topics) has this many subscribers, then
  publish the first stamp group and start the clock when they acknowledged it (a matched subscriber is not
  necessarily connected yet; earlier messages would be lost), or after ACK_WAIT_S s without; wait_nodes: also
  wait until each of these nodes is up with its subscriptions (a count is met by whichever node comes up
  first, e.g. the recorder, while the slow-starting trainer would miss the start); wait_timeout bounds both
  waits;
- exit_on_end: stop the process when the bag ends (after the subscribers acknowledged the last messages);
  the default keeps it alive so the graph keeps running;
- qos_depth: history of image/cloud topics; qos_depth_small: history of the other topics.
A damaged bag replays what is readable and logs where it stopped. Counters (published, late, dropped, loops)
go to the NodeStatus heartbeat and to the summary logged at the end and at shutdown; once a bag has played to
its end (not looping, not stopped early) the heartbeat also says `input_ended: true`, so the monitor reports
the topics that stop with it as ended, not stalled.
"""

from __future__ import annotations

import importlib
import os
import signal
import threading
import time
from typing import Any

from rclpy.duration import Duration
from rosgraph_msgs.msg import Clock

from surg3d_nodes.data.bags import BagMessage, BagReader
from surg3d_nodes.ros import qos, topics
from surg3d_nodes.ros.convert import ns_to_stamp
from surg3d_nodes.ros.runtime import ERROR, SurgNode, run_node
from surg3d_nodes.system.monitoring import INPUT_ENDED
from surg3d_nodes.system.node_options import BagReplayOptions

# The handshake's acknowledgements come within one heartbeat period of Fast DDS (3 s): a reliable reader that
# matched the writer after the first group went out gets it repaired at the next heartbeat (measured 2.95 s
# across a link). A reader still silent after two periods is gone or stuck: a crashed host's readers stay
# matched, never acknowledging, until its participant's lease expires (20 s). Play on then; reliable readers
# still get the first groups repaired from the publishers' history.
ACK_WAIT_S = 6.0
ACK_POLL_S = 0.05

LARGE_TYPES = {"sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage", "sensor_msgs/msg/PointCloud2",
               "stereo_msgs/msg/DisparityImage"}


def message_class(msgtype: str) -> Any:
    """rclpy message class of a type name `pkg/msg/Name`."""
    pkg, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.{kind}"), name)


class BagReplay(SurgNode):
    """Replays a bag in a background thread (publishing is thread safe; the executor only runs timers)."""

    def __init__(self, **kwargs) -> None:
        super().__init__("bag_replay", **kwargs)
        p = self.params.declare(BagReplayOptions)
        self.bag = p.bag
        self.rate = p.rate
        self.loop = p.loop
        self.start_offset = p.start_offset
        self.publish_clock = p.publish_clock
        # Compared with the bag's (absolute) topic names: a relative name resolves in this node's namespace.
        self.only_topics = [self.resolve_topic_name(t) for t in p.topics if t]
        self.late_threshold = p.late_threshold
        self.drop_late = p.drop_late
        self.drop_threshold = p.drop_threshold
        self.wait_for_subscribers = p.wait_for_subscribers
        # Topics whose subscribers gate the start ([""] = all): evaluation-only topics have none in a graph.
        self.wait_topics = [self.resolve_topic_name(t) for t in p.wait_topics if t]
        self.wait_nodes = [n for n in p.wait_nodes if n]
        self.wait_timeout = p.wait_timeout
        self.exit_on_end = p.exit_on_end
        self.qos_depth = p.qos_depth
        self.qos_depth_small = p.qos_depth_small
        if not self.bag:
            raise ValueError("parameter 'bag' is required (path of a rosbag2 directory, .mcap or .db3)")
        self.reader = BagReader(self.bag)      # raises FileNotFoundError naming the path
        self.publishers_: dict[str, Any] = {}
        clock_qos = qos.for_kind(qos.EVENT, subscription=False, depth=max(self.qos_depth_small, 10))
        self.clock_pub = self.create_publisher(Clock, topics.CLOCK, clock_qos) if self.publish_clock else None
        self.published = self.late = self.dropped = self.loops = 0
        self.max_lag = 0.0
        self.position_s = 0.0
        self.state = "starting"
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bag_replay", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ publishing
    def _publisher(self, topic: str, msgtype: str) -> Any:
        pub = self.publishers_.get(topic)
        if pub is None:
            # Reliable delivery can only resend what the writer still holds (Fast DDS repairs on its
            # heartbeat, every few seconds): small messages keep a deep history, large ones (images,
            # clouds) qos_depth to bound memory (depth x message size per topic).
            depth = self.qos_depth if msgtype in LARGE_TYPES else max(self.qos_depth, self.qos_depth_small)
            profile = qos.for_kind(qos.kind_of_type(msgtype), subscription=False, depth=depth)
            pub = self.create_publisher(message_class(msgtype), topic, profile)
            self.publishers_[topic] = pub
        return pub

    def _prepare(self) -> None:
        """Create the publishers of the topics the bag's metadata lists (damaged bags: created on the fly)."""
        for topic, msgtype in self.reader.topics.items():
            if not self.only_topics or topic in self.only_topics:
                try:
                    self._publisher(topic, msgtype)
                except (ImportError, AttributeError, ValueError) as e:
                    self.report_problem("type", f"cannot publish {topic} ({msgtype}): {e}", ERROR)

    def _wait_subscribers(self, group: list[BagMessage]) -> None:
        """Wait until every gating publisher (`wait_topics`, default all, those of `group` included) has
        `wait_for_subscribers` subscribers and every node of `wait_nodes` is up with its subscriptions."""
        for m in group:
            self._publisher(m.topic, m.msgtype)
        self.state = "waiting for subscribers"
        deadline = time.monotonic() + self.wait_timeout
        need = self.wait_for_subscribers
        gating = {t: p for t, p in self.publishers_.items() if not self.wait_topics or t in self.wait_topics}

        def absent_nodes() -> list[str]:
            up = dict(self.get_node_names_and_namespaces())
            return [n for n in self.wait_nodes
                    if n not in up or not self.get_subscriber_names_and_types_by_node(n, up[n])]

        while not self._stop.is_set() and time.monotonic() < deadline:
            if all(p.get_subscription_count() >= need for p in gating.values()) and not absent_nodes():
                break
            time.sleep(0.05)
        if self._stop.is_set():
            return
        missing = [t for t, p in gating.items() if p.get_subscription_count() < need]
        if missing:
            self.get_logger().warning(f"starting without {need} subscriber(s) on {missing}")
        if absent_nodes():
            self.get_logger().warning(f"starting before node(s) {absent_nodes()} subscribed")
        self.state = "playing"

    def _wait_acked(self, timeout: float) -> bool:
        """Wait until every subscriber acknowledged everything published so far (reliable QoS), at most
        `timeout` s or until the node stops; False if some did not.

        Polls: rclpy's blocking `wait_for_all_acked` holds the GIL, which stops every thread of the process
        (heartbeat, executor, signal handlers) for as long as a reader does not answer."""
        deadline = time.monotonic() + timeout
        pending = [*self.publishers_.values(), *([self.clock_pub] if self.clock_pub else [])]
        while True:
            pending = [pub for pub in pending if not pub.wait_for_all_acked(Duration())]
            if not pending:
                return True
            if time.monotonic() >= deadline or self._stop.wait(ACK_POLL_S):
                return False

    def _publish_group(self, group: list[BagMessage]) -> None:
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=ns_to_stamp(group[0].stamp_ns)))
        for m in group:
            try:
                pub = self._publisher(m.topic, m.msgtype)
            except (ImportError, AttributeError, ValueError) as e:
                self.report_problem("type", f"cannot publish {m.topic} ({m.msgtype}): {e}", ERROR)
                continue
            pub.publish(m.data)
            self.published += 1

    def _groups(self) -> Any:
        """Messages of one pass in stamp groups (all messages of a frame share its stamp)."""
        group: list[BagMessage] = []
        for m in self.reader.messages():
            if self.only_topics and m.topic not in self.only_topics:
                continue
            if group and m.stamp_ns != group[0].stamp_ns:
                yield group
                group = []
            group.append(m)
        if group:
            yield group

    def _play_once(self, first_pass: bool) -> None:
        start_wall = None
        first_ns = None
        handshake = first_pass and (self.wait_for_subscribers > 0 or bool(self.wait_nodes))
        for group in self._groups():
            if self._stop.is_set():
                return
            stamp = group[0].stamp_ns
            first_ns = stamp if first_ns is None else first_ns
            rel = (stamp - first_ns) * 1e-9
            if rel < self.start_offset:
                continue
            self.position_s = rel
            if self.rate > 0:
                now = time.monotonic()
                if start_wall is None:
                    start_wall = now - (rel - self.start_offset) / self.rate
                target = start_wall + (rel - self.start_offset) / self.rate
                if target > now:
                    self._stop.wait(target - now)
                lag = time.monotonic() - target
                self.max_lag = max(self.max_lag, lag)
                if self.drop_late and lag > self.drop_threshold:
                    self.dropped += len(group)
                    continue
                if lag > self.late_threshold:
                    self.late += 1
            if handshake:
                self._wait_subscribers(group)
                if self._stop.is_set():
                    return
            self._publish_group(group)
            if handshake:       # the subscribers are connected once they acknowledged the first group
                handshake = False
                self.state = "waiting for acknowledgements"
                ack_wait = min(self.wait_timeout, ACK_WAIT_S)
                if not self._wait_acked(ack_wait) and not self._stop.is_set():
                    self.get_logger().warning("subscribers did not acknowledge the first messages in "
                                              f"{ack_wait:g} s; playing on")
                self.state = "playing"
                if self.rate > 0:      # the timeline starts now, at this group
                    start_wall = time.monotonic() - (rel - self.start_offset) / self.rate

    def _run(self) -> None:
        try:
            self._prepare()
            while not self._stop.is_set():
                self.state = "playing"
                self._play_once(first_pass=self.loops == 0)
                if self.reader.stopped:
                    self.report_problem("bag", f"replay stopped early: {self.reader.stopped}", ERROR)
                if self._stop.is_set():
                    return
                self.loops += 1
                if not self.loop or self.reader.count == 0:
                    break
            self.state = "ended"
            self.get_logger().info(f"bag ended: {self.summary()}")
            if self.exit_on_end:
                self._wait_acked(5.0)
                os.kill(os.getpid(), signal.SIGTERM)
        except Exception as e:  # keep the process (and its heartbeat) alive, report what broke
            self.state = "failed"
            self.report_problem("replay", f"{type(e).__name__}: {e}", ERROR)

    # ------------------------------------------------------------------ status
    def summary(self) -> str:
        """One line with the counters of this replay."""
        return (f"{self.bag}: published {self.published} messages in {self.loops} pass(es), "
                f"late {self.late} stamp groups (> {self.late_threshold * 1e3:.0f} ms behind, "
                f"max {self.max_lag * 1e3:.0f} ms), "
                f"dropped {self.dropped} messages, rate {self.rate:g}"
                + (f"; stopped early: {self.reader.stopped}" if self.reader.stopped else ""))

    def status_values(self) -> dict[str, object]:
        """Replay counters for the heartbeat, and whether the input ended on purpose (the whole bag played)."""
        key, ended = INPUT_ENDED
        return {"state": self.state, "published": self.published, "late": self.late, "dropped": self.dropped,
                "loops": self.loops, "position_s": float(self.position_s), "max_lag_ms": self.max_lag * 1e3,
                key: ended if self.state == "ended" and not self.reader.stopped else "false"}

    def close(self) -> None:
        """Stop the replay thread and log the summary."""
        self._stop.set()
        self._thread.join(timeout=5.0)
        self.get_logger().info(f"shutdown: {self.summary()}")
        super().close()


def main() -> None:
    """Process entry point."""
    run_node(BagReplay)


if __name__ == "__main__":
    main()
