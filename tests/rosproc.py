"""Helpers of the tests that start nodes as real processes and talk to them over DDS."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from surg3d_nodes.ros import topics


def start_node(module: str, ros_args: list[str], env: dict[str, str],
               prefix: Sequence[str] = ()) -> subprocess.Popen:
    """`python -m MODULE --ros-args ...` with its output (stdout and stderr) captured as text; `prefix` goes
    before it (e.g. `ip netns exec NS`)."""
    return subprocess.Popen([*prefix, sys.executable, "-m", module, "--ros-args", *ros_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def stop_node(proc: subprocess.Popen, timeout: float = 15.0, sig: int = signal.SIGTERM) -> str:
    """Send `sig` (SIGTERM or SIGINT: the node runtime shuts down cleanly on both), kill the process after
    `timeout`; its output."""
    proc.send_signal(sig)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    return out


def wait_until(cond, timeout: float) -> bool:
    """Poll `cond()` every 50 ms until it is true or `timeout` s passed; its last value."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.05)
    return bool(cond())


class Collector:
    """Thread-safe lists of the messages received per topic by subscriptions on a test node."""

    def __init__(self, node, specs: dict[str, type], depth: int = 50) -> None:
        self.lock = threading.Lock()
        self.msgs: dict[str, list] = {t: [] for t in specs}
        self.subs = {topic: node.create_subscription(cls, topic, lambda m, t=topic: self._add(t, m), depth)
                     for topic, cls in specs.items()}

    def wait_matched(self, topic: str, timeout: float = 20.0) -> None:
        """Wait until a publisher has matched this subscription to `topic`: a node's first message, sent
        before the match, would be lost (seeing the publisher in the graph is not enough)."""
        assert wait_until(lambda: self.subs[topic].get_publisher_count() > 0, timeout), f"no publisher matched {topic}"

    def _add(self, topic: str, msg) -> None:
        with self.lock:
            self.msgs[topic].append(msg)

    def get(self, topic: str) -> list:
        """Every message received on `topic` so far."""
        with self.lock:
            return list(self.msgs[topic])

    def last(self, topic: str):
        """The newest message on `topic`, or None."""
        with self.lock:
            return self.msgs[topic][-1] if self.msgs[topic] else None

    def heartbeat(self, node: str) -> dict[str, str]:
        """The key-values of the newest heartbeat (NodeStatus) collected from the node whose name ends with `node`;
        {} before its first."""
        beats = [m for m in self.get(topics.NODE_STATUS) if m.node.endswith(node)]
        return {kv.key: kv.value for kv in beats[-1].values} if beats else {}


def call_service(node, cls, name: str, request, timeout: float = 20.0):
    """Call service `name` from `node` (spun by a background executor) and return the response."""
    client = node.create_client(cls, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
    future = client.call_async(request)
    assert wait_until(future.done, timeout), f"service {name} did not answer within {timeout} s"
    return future.result()


def free_port() -> int:
    """A TCP port nobody listens on right now (for the viewer bridge of a test graph)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launch:
    """A launcher as a subprocess whose output lines are collected: `surg3d launch ARGS...` by default, or
    `command + ARGS`. With `process_group`, it leads a process group of its own and `stop()` signals the whole
    group, as Ctrl-C in a terminal does (what `ros2 launch` expects)."""

    def __init__(self, args: list[str], env: dict[str, str], command: list[str] | None = None,
                 process_group: bool = False, cwd: Path | None = None) -> None:
        command = command or [sys.executable, "-m", "surg3d_nodes.cli", "launch"]
        self.process_group = process_group
        self.proc = subprocess.Popen([*command, *args], env=env, cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=process_group)
        self.lines: list[str] = []
        threading.Thread(target=lambda: [self.lines.append(x.rstrip()) for x in self.proc.stdout],
                         daemon=True).start()

    def wait_for(self, pattern: str, timeout: float, after: int = 0) -> re.Match:
        """The first output line (from index `after`) matching the regex `pattern`, waiting up to `timeout` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            for line in self.lines[after:]:
                if m := re.search(pattern, line):
                    return m
            if self.proc.poll() is not None:
                time.sleep(0.5)  # let the reader thread drain the pipe, then look once more
                if m := next((re.search(pattern, x) for x in self.lines[after:] if re.search(pattern, x)), None):
                    return m
                break
            time.sleep(0.1)
        raise AssertionError(f"no line ~ {pattern!r}; output:\n" + "\n".join(self.lines[-80:]))

    def _signal(self, sig: int) -> None:
        if self.process_group:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:  # the whole group has exited
                pass
        elif self.proc.poll() is None:
            self.proc.send_signal(sig)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGINT the launcher (it stops every node), or its process group, and return its exit code; whatever
        still runs after `timeout` s is killed."""
        if self.proc.poll() is None:
            self._signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._signal(signal.SIGKILL)
            return self.proc.wait()
        finally:
            if self.process_group:  # no node outlives its test, whatever the launcher did
                self._signal(signal.SIGKILL)
