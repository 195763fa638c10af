"""Runs a graph as one OS process per node: prefixed output, respawn, clean shutdown, clear failure reports."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from surg3d_nodes.system.graph import NodeSpec, default_config_dir

# Sent to a node that did not stop within the grace period, before SIGTERM: a node prints every thread's stack on it
# (ros/runtime.py, faulthandler: from C, so also when a thread blocked in native code holds the GIL and no Python
# signal handler can run, as in the nodes CI saw killed without a word after a link cut). It reads the frames
# without the GIL, which can crash a node whose other threads run Python: sent only to a node about to end.
STACKS_SIGNAL = signal.SIGUSR1


def graph_env(config_dir: Path | None = None) -> dict[str, str]:
    """The environment every process of the graph runs with: Fast DDS's participant profile (fastdds.xml in
    `config_dir`, default `default_config_dir()`: LARGE_DATA transports, on which best-effort images are not lost
    to UDP fragmentation, with shared-memory segments that hold a burst of large images) and unbuffered output."""
    profile = (config_dir or default_config_dir()) / "fastdds.xml"
    return {"FASTDDS_DEFAULT_PROFILES_FILE": str(profile), "PYTHONUNBUFFERED": "1"}


# The file a node's heartbeat touches (ros/runtime.py), for a node the supervisor restarts when it goes silent.
ALIVE_FILE_ENV = "SURG3D_ALIVE_FILE"
# Before its first heartbeat a node may take this long to start (imports, DDS discovery, a checkpoint to load).
FIRST_HEARTBEAT_S = 60.0


@dataclass
class _Proc:
    spec: NodeSpec
    popen: subprocess.Popen
    started: float
    restarts: int = 0
    alive_file: Path | None = None

    def silent_for(self, now: float) -> float:
        """Seconds since the node's last heartbeat (its start, plus the first heartbeat's allowance, before
        one came); 0 for a node that is not watched."""
        if self.alive_file is None:
            return 0.0
        try:
            last = self.alive_file.stat().st_mtime - time.time() + now     # wall clock -> monotonic
        except FileNotFoundError:
            last = self.started + FIRST_HEARTBEAT_S - self.spec.restart_when_silent_s
        return now - last


class Supervisor:
    """Start the nodes of a preset, relay their output as `[name] line`, and watch them.

    A node that exits while the graph runs is respawned when its spec asks for it; otherwise the supervisor
    reports it, stops the others and `run()` returns 1. A node alive but silent (no heartbeat for its
    `restart_when_silent_s`: a deadlock, a stuck callback, a stopped process) is killed, counted and respawned.
    SIGINT/SIGTERM (or `stop()`) stop every node with SIGINT, sources first, then SIGTERM/SIGKILL after `grace`
    seconds; `run()` returns 0 when all exited cleanly.
    """

    def __init__(self, specs: list[NodeSpec], env: dict[str, str] | None = None, grace: float = 10.0,
                 write: Callable[[str], None] | None = None) -> None:
        self.specs = specs
        self.env = {**os.environ, **graph_env(), **(env or {})}
        self.grace = grace
        self._write = write or (lambda line: print(line, flush=True))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.procs: dict[str, _Proc] = {}
        self.silent_restarts: dict[str, int] = {}
        self._alive_dir = Path(tempfile.mkdtemp(prefix="surg3d_alive_"))

    def log(self, text: str) -> None:
        """Print a line of the launcher's own."""
        with self._lock:
            self._write(f"[launcher] {text}")

    def _relay(self, name: str, stream) -> None:
        for raw in iter(stream.readline, b""):
            with self._lock:
                self._write(f"[{name}] {raw.decode(errors='replace').rstrip()}")
        stream.close()

    def _start(self, spec: NodeSpec, restarts: int = 0) -> None:
        cmd = [sys.executable, "-m", spec.module, *spec.ros_args()]
        env, alive = self.env, None
        if spec.restart_when_silent_s > 0:
            alive = self._alive_dir / spec.name
            alive.unlink(missing_ok=True)
            env = {**env, ALIVE_FILE_ENV: str(alive)}
        popen = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 start_new_session=True)  # our own signals only, not the terminal's
        threading.Thread(target=self._relay, args=(spec.name, popen.stdout), daemon=True).start()
        self.procs[spec.name] = _Proc(spec, popen, time.monotonic(), restarts, alive)
        self.log(f"started {spec.name} (pid {popen.pid}){' again' if restarts else ''}")

    def stop(self) -> None:
        """Ask the graph to shut down (thread- and signal-safe)."""
        self._stop.set()

    def run(self) -> int:
        """Start everything and supervise until stopped or a node fails; returns the exit code."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop())
        for spec in self.specs:
            self._start(spec)
        failed: str | None = None
        while not self._stop.wait(0.2):
            for name, p in list(self.procs.items()):
                code = p.popen.poll()
                if code is None and p.silent_for(time.monotonic()) > p.spec.restart_when_silent_s > 0:
                    code = self._kill_silent(p)
                if code is None:
                    continue
                if p.spec.respawn:
                    self.log(f"node {name} exited with code {code}; respawning in {p.spec.respawn_delay:.1f} s "
                             f"(restart {p.restarts + 1})")
                    if self._stop.wait(p.spec.respawn_delay):
                        break
                    self._start(p.spec, p.restarts + 1)
                else:
                    failed = f"node {name} died with exit code {code}"
                    self.log(failed + "; stopping the graph")
                    self._stop.set()
                    break
        unclean = self._shutdown()
        shutil.rmtree(self._alive_dir, ignore_errors=True)
        if failed:
            return 1
        if unclean:
            self.log("not all nodes exited cleanly: " + ", ".join(unclean))
            return 1
        self.log("all nodes exited cleanly")
        return 0

    def _kill_silent(self, p: _Proc) -> int:
        """Kill a node that is alive but silent (SIGTERM, SIGKILL after 3 s: a stopped or deadlocked process
        may not act on SIGTERM); returns its exit code."""
        name = p.spec.name
        self.silent_restarts[name] = self.silent_restarts.get(name, 0) + 1
        self.log(f"node {name} alive but silent for {p.silent_for(time.monotonic()):.1f} s (no heartbeat): "
                 f"killing it to restart it (silent restart {self.silent_restarts[name]}); its threads' stacks first")
        p.popen.send_signal(STACKS_SIGNAL)     # where it hung, written from C (no GIL needed)
        time.sleep(0.5)
        p.popen.terminate()
        try:
            return p.popen.wait(timeout=3)
        except subprocess.TimeoutExpired:
            p.popen.kill()
            return p.popen.wait()

    def _shutdown(self) -> list[str]:
        """SIGINT every running node, escalate after the grace period; returns the nodes that exited badly."""
        running = {n: p for n, p in self.procs.items() if p.popen.poll() is None}
        deadline = time.monotonic() + self.grace
        # In the preset's order, sources first, each given up to 3 s before the next: a node then stops
        # before the readers of what it publishes, never writing to readers that have just vanished (the
        # likely cause of nodes whose shutdown hung until SIGKILL when every node was signalled at once).
        for p in running.values():
            p.popen.send_signal(signal.SIGINT)
            try:
                p.popen.wait(timeout=max(0.1, min(3.0, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                pass
        unclean = []
        for name, p in running.items():
            try:
                code = p.popen.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.log(f"node {name} did not stop within {self.grace:.0f} s: its threads' stacks, then terminating")
                p.popen.send_signal(STACKS_SIGNAL)
                time.sleep(0.5)             # the node writes them from its signal handler; the reader takes them
                p.popen.terminate()
                try:
                    code = p.popen.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    p.popen.kill()
                    code = p.popen.wait()
            if code != 0:
                unclean.append(f"{name} (exit code {code})")
        return unclean
