"""The node runtime's shutdown as a real process receives it: SIGINT, then (ros2 launch's escalation) SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros

NODE = textwrap.dedent("""
    import sys, threading, time
    from surg3d_nodes.ros.runtime import SurgNode, run_node

    class Stuck(SurgNode):
        def __init__(self, **kwargs):
            super().__init__("stuck", **kwargs)
            self.said = False
            self.create_timer(0.1, self.up)

        def up(self):   # from the spin loop: the runtime's signal handlers are installed by then
            if not self.said:
                self.said = True
                print("up", flush=True)

        def close(self):
            print("closing", flush=True)
            if sys.argv[1] == "hang":
                threading.Event().wait()        # a close that never returns (a thread that does not stop)
            super().close()

    run_node(Stuck, [sys.argv[0]])
""")


def _start(tmp_path: Path, mode: str, env: dict[str, str]) -> subprocess.Popen:
    script = tmp_path / "stuck_node.py"
    script.write_text(NODE)
    proc = subprocess.Popen([sys.executable, str(script), mode], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "up", "node did not start"
    return proc


def test_second_signal_ends_a_stuck_shutdown_naming_the_step(ros_env, tmp_path):
    proc = _start(tmp_path, "hang", ros_env)
    try:
        proc.send_signal(signal.SIGINT)
        proc.send_signal(signal.SIGINT)      # the same Ctrl-C twice (terminal group and launcher): not a second ask
        time.sleep(3.0)
        assert proc.poll() is None, "the shutdown was cut short by a duplicate of the first signal"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=10)
        assert time.monotonic() - t0 < 3.0, "the second signal did not end the stuck shutdown at once"
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert "closing" in out and "shutdown stuck closing the nodes; leaving on a second signal" in out, out


def test_a_clean_shutdown_exits_0(ros_env, tmp_path):
    proc = _start(tmp_path, "ok", ros_env)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and "closing" in out and "stuck" not in out, out


def test_the_stacks_signal_prints_every_thread_and_the_node_runs_on(ros_env, tmp_path):
    """What a launcher sends a node that did not stop, before terminating it (`STACKS_SIGNAL`): every thread's
    stack, printed from C (also when a thread holds the GIL in native code); the node itself is not disturbed."""
    from surg3d_nodes.system.supervisor import STACKS_SIGNAL

    proc = _start(tmp_path, "ok", ros_env)
    proc.send_signal(STACKS_SIGNAL)
    time.sleep(1.0)
    assert proc.poll() is None, "the stacks signal ended the node"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0, out
    assert "most recent call first" in out and 'thread 0x' in out.lower() and "stuck_node.py" in out, out


def test_the_executor_hands_a_queued_callback_to_its_threads_once(ros_env):
    """While a slow callback holds the only pool thread, a ready timer's callback waits in the pool's queue: the
    spin loop must not hand it over again and again (rclpy 9 re-yields it at once, a busy loop that held the GIL
    against the trainer's training thread), and every callback still runs."""
    import threading

    import rclpy
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup

    from surg3d_nodes.ros.runtime import _DrainingExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("queued_callbacks", context=context)
    executor = _DrainingExecutor(num_threads=1, context=context)
    executor.add_node(node)
    handed: list[object] = []
    submit = executor._executor.submit

    def counting_submit(fn, *args):
        handed.append(args[0] if args else fn)
        return submit(fn, *args)

    executor._executor.submit = counting_submit
    slow_done, fast = threading.Event(), []

    def slow() -> None:
        slow_timer.cancel()
        time.sleep(0.4)
        slow_done.set()

    slow_timer = node.create_timer(0.01, slow, callback_group=MutuallyExclusiveCallbackGroup())
    node.create_timer(0.02, lambda: fast.append(time.monotonic()), callback_group=MutuallyExclusiveCallbackGroup())
    try:
        end = time.monotonic() + 0.8
        while time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
    finally:
        executor.drain()
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert slow_done.is_set() and len(fast) >= 5          # both ran, the fast one again after the slow one
    distinct = len(set(map(id, handed)))
    assert len(handed) == distinct, f"{len(handed)} hand-overs of {distinct} callbacks"
