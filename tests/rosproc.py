"""Helpers of the tests that start nodes as real processes and talk to them over DDS."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import time


def start_node(module: str, ros_args: list[str], env: dict[str, str]) -> subprocess.Popen:
    """`python -m MODULE --ros-args ...` with its output (stdout and stderr) captured as text."""
    return subprocess.Popen([sys.executable, "-m", module, "--ros-args", *ros_args], env=env,
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
        for topic, cls in specs.items():
            node.create_subscription(cls, topic, lambda m, t=topic: self._add(t, m), depth)

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


def call_service(node, cls, name: str, request, timeout: float = 20.0):
    """Call service `name` from `node` (spun by a background executor) and return the response."""
    client = node.create_client(cls, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
    future = client.call_async(request)
    assert wait_until(future.done, timeout), f"service {name} did not answer within {timeout} s"
    return future.result()


class Launch:
    """`surg3d launch ARGS...` as a subprocess whose output lines are collected."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "surg3d_nodes.cli", "launch", *args], env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
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

    def stop(self, timeout: float = 60.0) -> int:
        """SIGINT the launcher (it stops every node) and return its exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()
