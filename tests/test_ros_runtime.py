"""The node runtime's shutdown as a real process receives it: SIGINT, then (ros2 launch's escalation) SIGTERM; and
its executor's spin loop under a stream of messages."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from rosproc import wait_until

pytestmark = pytest.mark.ros

NODE = textwrap.dedent("""
    import ctypes, sys, threading, time
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
                if sys.argv[1] == "gil_hang":   # a C call that holds the GIL: no Python runs, signal handlers included
                    ctypes.PyDLL(None).sleep(600)

        def close(self):
            print("closing", flush=True)
            if sys.argv[1] == "hang":
                threading.Event().wait()        # a close that never returns (a thread that does not stop)
            super().close()

        def destroy_node(self):
            if sys.argv[1] == "native_hang":    # Fast DDS's hang: a C call that holds the GIL and never returns
                print("destroying", flush=True)
                ctypes.PyDLL(None).sleep(600)
            super().destroy_node()

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


def test_the_stacks_signal_prints_every_thread_also_with_the_gil_held_in_native_code(ros_env, tmp_path):
    """What a launcher sends a node that did not stop, before terminating it (`STACKS_SIGNAL`): every thread's
    stack, printed from C while a thread holds the GIL in a C call, where no Python signal handler can run. (The
    dump reads the threads' frames without the GIL: sent while other threads run Python, it can crash the node,
    as it once did in CI; the launcher sends it only to a node it is about to terminate.)"""
    from surg3d_nodes.system.supervisor import STACKS_SIGNAL

    proc = _start(tmp_path, "gil_hang", ros_env)
    try:
        time.sleep(0.5)
        proc.send_signal(STACKS_SIGNAL)
        time.sleep(1.0)
        assert proc.poll() is None, "the stacks signal ended the node"
    finally:
        proc.kill()
    out, _ = proc.communicate(timeout=20)
    assert "most recent call first" in out and 'thread 0x' in out.lower(), out
    assert re.search(r'stuck_node\.py", line \d+ in up', out), out   # the thread that holds the GIL, where


def test_a_middleware_teardown_hanging_with_the_gil_held_ends_with_the_stacks_and_exit_0(ros_env, tmp_path):
    """After the nodes closed (everything saved), a hang in native code that holds the GIL (rclpy's destroy_node
    inside Fast DDS, met in CI) stops every Python thread: the process still prints where it hung and leaves with
    its own result (0) before a launcher's escalation (ros2 launch: SIGTERM after 5 s)."""
    proc = _start(tmp_path, "native_hang", ros_env)
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    took = time.monotonic() - t0
    assert proc.returncode == 0, out
    assert "destroying" in out and "in destroy_node" in out and "most recent call first" in out, out
    assert took < 5.0, f"left after {took:.1f} s"


@pytest.mark.parametrize("executor_class", [
    "NodeExecutor",
    # Strict: once the rclpy wheels carry the upstream fix this passes, and NodeExecutor's loop can go.
    pytest.param("MultiThreadedExecutor", marks=pytest.mark.xfail(strict=True, reason="ros2/rclpy#1452 in rclpy 9"))])
def test_the_executor_hands_each_callback_to_its_threads_once(ros_env, executor_class):
    """rclpy 9's MultiThreadedExecutor hands a callback that waits in its thread pool's queue to the pool again
    and again, in a loop that holds the GIL (ros2/rclpy#1452): the runtime's NodeExecutor hands each one over
    once. The stock executor is run beside it to show that this test sees the defect."""
    import threading

    import rclpy
    from geometry_msgs.msg import PoseStamped
    from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
    from rclpy.executors import MultiThreadedExecutor

    from surg3d_nodes.ros.runtime import NodeExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("executor_probe", context=context)
    executor = {"NodeExecutor": NodeExecutor, "MultiThreadedExecutor": MultiThreadedExecutor}[executor_class](
        context=context)
    submitted, taken = [0], [0]
    pool_submit = executor._executor.submit

    def count_submit(*args, **kwargs):
        submitted[0] += 1
        return pool_submit(*args, **kwargs)

    executor._executor.submit = count_submit
    group = MutuallyExclusiveCallbackGroup()   # as the nodes' inputs: one callback at a time
    streams, per_stream = 4, 100
    for i in range(streams):
        node.create_subscription(PoseStamped, f"probe_{i}", lambda _m: taken.__setitem__(0, taken[0] + 1), 1000,
                                 callback_group=group)
    pubs = [node.create_publisher(PoseStamped, f"probe_{i}", 1000) for i in range(streams)]
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        assert all(wait_until(lambda p=p: p.get_subscription_count() > 0, 10) for p in pubs), "no subscription matched"
        for _ in range(per_stream):   # 400 messages at about 1 kHz, as a robot's arm streams
            for p in pubs:
                p.publish(PoseStamped())
            time.sleep(0.004)
        assert wait_until(lambda: taken[0] == streams * per_stream, 20), f"{taken[0]} of {streams * per_stream} taken"
        handed = submitted[0]
    finally:
        executor.shutdown(timeout_sec=5.0)
        thread.join(timeout=5.0)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    assert handed == taken[0], f"{handed} callbacks handed over for {taken[0]} messages"
