"""recorder: write a list of topics to a rosbag2 (MCAP by default) without ever blocking a callback.

Subscriptions take raw CDR bytes (raw=True) and only enqueue them (bounded queue; a full queue counts a drop);
a background thread writes them with rosbags. Topic types come from the graph (topics are subscribed as
soon as a publisher appears). The bag is written under a hidden name and appears at its path when the node
shuts down and closes it; what was written goes to disk every `flush_period`. A recorder that died (the launcher
respawns it) leaves its bag unclosed: the next one started in the same folder closes it, with every message that
reached the disk. Parameters: system/node_options.py RecorderOptions.
"""

from __future__ import annotations

import queue
import threading
import time
from pathlib import Path
from typing import Any

from surg3d_nodes.data.bags import BagWriter, bag_path_taken, recover_unclosed
from surg3d_nodes.ros import qos
from surg3d_nodes.ros.nodes.bag_replay import message_class
from surg3d_nodes.ros.runtime import ERROR, SurgNode, run_node
from surg3d_nodes.system.node_options import RecorderOptions


class Recorder(SurgNode):
    """Records topics through a bounded queue into a background bag writer."""

    def __init__(self, **kwargs) -> None:
        super().__init__("recorder", **kwargs)
        p = self.params.declare(RecorderOptions)
        # Resolved (namespace, remappings) as the graph lists topics and as the bag names them.
        self.topics = [self.resolve_topic_name(t) for t in p.topics if t]
        self.storage = p.storage
        self.queue_size = p.queue_size
        self.qos_depth = p.qos_depth
        self.flush_period = p.flush_period
        if not self.topics:
            raise ValueError("parameter 'topics' lists no topic to record")
        self.output = Path(p.output) if p.output else _new_recording(Path(p.output_dir))
        self.writer = BagWriter(self.output, storage=self.storage)   # fails early on an existing output
        # Bags of recorders that died here, closed in the background (a long one takes a while to rewrite).
        self._recovery = threading.Thread(target=self._recover, name="recorder_recovery", daemon=True)
        self._recovery.start()
        self.queue: queue.Queue[tuple[str, str, int, bytes] | None] = queue.Queue(maxsize=self.queue_size)
        self.subs: dict[str, Any] = {}
        self.received = self.written = self.dropped = 0
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._write_loop, name="recorder_writer", daemon=True)
        self._thread.start()
        self._discovery = self.create_timer(p.discovery_period, self._discover)
        self._discover()
        self.get_logger().info(f"recording {self.topics} to {self.output} ({self.storage})")

    def _recover(self) -> None:
        try:
            for r in recover_unclosed(self.output.parent, self.storage):
                self.get_logger().warning(
                    f"closed {r.path}, left unclosed by a recorder that ended without closing it: {r.count} messages"
                    + (f"; reading it stopped: {r.stopped}" if r.stopped else ""))
        except Exception as e:
            self.report_problem("recover", f"could not close a bag left unclosed in {self.output.parent}: "
                                           f"{type(e).__name__}: {e}", ERROR)

    def _discover(self) -> None:
        """Subscribe to every listed topic whose type is now known from the graph."""
        missing = [t for t in self.topics if t not in self.subs]
        if not missing:
            self._discovery.cancel()
            return
        types = dict(self.get_topic_names_and_types())
        for topic in missing:
            if topic not in types:
                continue
            msgtype = types[topic][0]
            try:
                cls = message_class(msgtype)
            except (ImportError, AttributeError, ValueError) as e:
                self.report_problem("type", f"cannot record {topic} ({msgtype}): {e}", ERROR)
                continue
            offered = [i.qos_profile for i in self.get_publishers_info_by_topic(topic)]
            self.subs[topic] = self.create_subscription(
                cls, topic, lambda data, t=topic, m=msgtype: self._on_message(t, m, data),
                qos.recording(offered, self.qos_depth), raw=True)
            self.get_logger().info(f"subscribed to {topic} ({msgtype})")

    def _on_message(self, topic: str, msgtype: str, data: bytes) -> None:
        stamp = self.get_clock().now().nanoseconds
        try:
            self.queue.put_nowait((topic, msgtype, stamp, data))
            with self._lock:
                self.received += 1
        except queue.Full:
            with self._lock:
                self.dropped += 1
            self.report_problem("queue_full", f"writer behind, dropped a message on {topic}")

    def _write_loop(self) -> None:
        flushed = time.monotonic()
        while True:
            try:
                item = self.queue.get(timeout=self.flush_period)
            except queue.Empty:
                item = ()
            if item is None:
                return
            try:
                if item:
                    self.writer.write_raw(*item)
                    self.written += 1
                if time.monotonic() - flushed >= self.flush_period:
                    self.writer.flush()
                    flushed = time.monotonic()
            except Exception as e:
                self.report_problem("write", f"{type(e).__name__}: {e}", ERROR)

    def status_values(self) -> dict[str, object]:
        """Recorder counters for the heartbeat."""
        return {"received": self.received, "written": self.written, "dropped": self.dropped,
                "queued": self.queue.qsize(), "subscribed": len(self.subs), "output": str(self.output)}

    def close(self) -> None:
        """Drain the queue, finish the bag and log what was recorded."""
        for sub in list(self.subs.values()):
            self.destroy_subscription(sub)
        self.subs.clear()
        self.queue.put(None)
        self._thread.join(timeout=60.0)
        self._recovery.join(timeout=60.0)
        try:
            path = self.writer.close()
            self.get_logger().info(f"closed {path}: {self.written} messages written, {self.dropped} dropped")
        except Exception as e:
            self.get_logger().error(f"could not close the bag {self.output}: {e}")
        super().close()


def _new_recording(folder: Path) -> Path:
    """`<folder>/recording_<UTC time>`, with a suffix (`_2`) where that name is taken, also by a bag still staged
    or left unclosed (a recorder respawned within the second of its predecessor's start)."""
    stamp = time.strftime("recording_%Y%m%d_%H%M%S", time.gmtime())
    name, n = stamp, 1
    while bag_path_taken(folder / name):
        n += 1
        name = f"{stamp}_{n}"
    return folder / name


def main() -> None:
    """Process entry point."""
    run_node(Recorder)


if __name__ == "__main__":
    main()
