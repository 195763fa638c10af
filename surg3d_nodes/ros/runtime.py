"""Node runtime: the base class of every surg3d node and the process entry points.

Every node subclasses `SurgNode` with the signature `__init__(self, **kwargs)` and passes `**kwargs` on to
`SurgNode.__init__(self, "<default_name>", **kwargs)`, so the same class runs in its own process
(`run_node`) or beside the others on one executor (`run_nodes`, the launcher's single-process mode,
which passes per-node `cli_args`). A node module ends with `def main() -> None: run_node(MyNode)`.
"""

from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence

import rclpy
from rclpy.event_handler import QoSMessageLostInfo, SubscriptionEventCallbacks
from rclpy.executors import (
    ConditionReachedException,
    ExternalShutdownException,
    MultiThreadedExecutor,
    ShutdownException,
    TimeoutException,
    TimeoutObject,
)
from rclpy.node import Node
from rclpy.publisher import Publisher
from rclpy.signals import SignalHandlerOptions
from rclpy.subscription import Subscription
from rclpy.task import Future

from surg3d_msgs.msg import NodeStatus
from surg3d_nodes.ros import qos, topics
from surg3d_nodes.ros.convert import header, key_values
from surg3d_nodes.ros.params import NodeParameters
from surg3d_nodes.system.native_exit import ExitTimer
from surg3d_nodes.system.node_options import NodeOptions
from surg3d_nodes.system.supervisor import ALIVE_FILE_ENV, STACKS_SIGNAL

OK, WARN, ERROR, STALE = 0, 1, 2, 3
_LEVEL_BYTES = {lvl: bytes([lvl]) for lvl in (OK, WARN, ERROR, STALE)}


class SurgNode(Node):
    """Node with a NodeStatus heartbeat, problem counters and rate-limited problem logs.

    `count(key)` bumps a counter shown in the heartbeat; `report_problem(kind, text)` counts a bad input or
    failure, logs it at most once per `problem_log_period` s per kind, and raises the heartbeat level;
    `close()` is called once before the node is destroyed (stop threads, flush files there). Parameters are
    declared from config dataclasses with `self.params.declare(cls)` (system/node_options.py lists each
    node's).
    """

    def __init__(self, name: str, **kwargs) -> None:
        super().__init__(name, **kwargs)
        self.counters: Counter[str] = Counter()
        self._level = OK
        self._message = "ok"
        self._last_problem_log: dict[str, float] = {}
        self._status_lock = threading.Lock()
        self.params = NodeParameters(self)
        period = self.params.declare(NodeOptions).heartbeat_period
        self.problem_log_period = 5.0
        self._status_pub = self.publisher(NodeStatus, topics.NODE_STATUS)
        # Set by the launcher's supervisor for a node it restarts when silent: the heartbeat also touches it.
        self._alive_file = os.environ.get(ALIVE_FILE_ENV) or None
        self.create_timer(float(period), self._heartbeat)

    def publisher(self, msg_type: type, topic: str, depth: int | None = None) -> Publisher:
        """A publisher of `topic` (topics.py) with its stream's QoS (qos.py); `depth` overrides the history."""
        return self.create_publisher(msg_type, topic, qos.publisher(topic, depth))

    def subscription(self, msg_type: type, topic: str, callback: Callable, depth: int | None = None,
                     **kwargs) -> Subscription:
        """A subscription to `topic` (topics.py) with its stream's QoS (qos.py): images, camera_info and clouds
        best-effort, so reliable and best-effort publishers both connect. Messages that DDS finds lost on the way
        are counted and reported (`messages_lost`)."""
        kwargs.setdefault("event_callbacks",
                          SubscriptionEventCallbacks(message_lost=lambda info: self._messages_lost(topic, info)))
        return self.create_subscription(msg_type, topic, callback, qos.subscription(topic, depth), **kwargs)

    def _messages_lost(self, topic: str, info: QoSMessageLostInfo) -> None:
        # DDS saw a gap in a writer's sequence numbers: messages dropped on the way (a lossy link, a full transport
        # buffer), never a message this node chose to skip.
        self.count(f"messages_lost {topic}", info.total_count_change)
        self.report_problem("messages_lost", f"{topic}: {info.total_count_change} message(s) lost on the way "
                            f"({info.total_count} since the start)")

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to the counter `key` (shown in the heartbeat)."""
        with self._status_lock:
            self.counters[key] += n

    def report_problem(self, kind: str, text: str, level: int = WARN) -> None:
        """Count and (rate-limited) log a problem of type `kind`; the node keeps running."""
        now = time.monotonic()
        with self._status_lock:
            self.counters[f"problems.{kind}"] += 1
            self._level = max(self._level, level)
            self._message = f"{kind}: {text}"
            last = self._last_problem_log.get(kind)
            if last is not None and now - last < self.problem_log_period:
                return
            self._last_problem_log[kind] = now
            n = self.counters[f"problems.{kind}"]
        log = self.get_logger().error if level >= ERROR else self.get_logger().warning
        log(f"{kind}: {text} (seen {n}x)")

    def status_values(self) -> dict[str, object]:
        """Extra key/values for the heartbeat; nodes override to add their own."""
        return {}

    def _heartbeat(self) -> None:
        with self._status_lock:
            values = dict(self.counters)
            level, message = self._level, self._message
            self._level, self._message = OK, "ok"  # a problem shows for one period unless it recurs
        values.update(self.status_values())
        values["pid"] = os.getpid()        # the monitor tells a restarted node by it
        msg = NodeStatus(header=header(self.get_clock().now().nanoseconds, ""),
                         node=self.get_fully_qualified_name(), level=_LEVEL_BYTES[level],
                         message=message, values=key_values(values))
        self._status_pub.publish(msg)
        if self._alive_file:
            try:
                os.utime(self._alive_file)
            except FileNotFoundError:
                open(self._alive_file, "w").close()

    def close(self) -> None:
        """Release resources before destruction; override (and call super) when a node has any."""


class NodeExecutor(MultiThreadedExecutor):
    """MultiThreadedExecutor that hands each callback to its threads once, and can let the callbacks already
    handed to them finish.

    rclpy 9's spin loop yields a callback again while it waits in the thread pool's queue (not started, so not
    yet "executing") and does not wait for new work while it holds one: it resubmits the same callback in a
    tight loop that holds the GIL, so the pool's threads hardly get to run it (ros2/rclpy#1452, fixed upstream
    after Kilted). `bench/executor_throughput.py` (7 pose streams at 100 Hz): 66 of 700 messages/s taken at 102 %
    CPU, against all 700 at 23 % with this class; the kinematics node lost most of the dVRK's samples on a busy
    2-core machine. `_spin_once_impl` therefore returns only once a pool thread has started the callback.

    rclpy's `shutdown` destroys the executor's wake-up guard condition at once (its wait for running work tests
    the flag it has just set) while callbacks may still be queued or running on the thread pool; each of them
    then fails on that guard with InvalidHandle, and at exit rclpy prints "The following exception was never
    retrieved" for every one. `drain` first, then `shutdown`.
    """

    def _spin_once_impl(self, timeout_sec: float | TimeoutObject | None = None,
                        wait_condition: Callable[[], bool] = lambda: False) -> None:
        try:
            handler, _, _ = self.wait_for_ready_callbacks(timeout_sec, None, wait_condition)
        except (ExternalShutdownException, ShutdownException, TimeoutException, ConditionReachedException):
            return
        started = threading.Event()

        def run() -> None:
            started.set()
            handler()

        self._executor.submit(run)
        self._futures.append(handler)
        started.wait()
        for future in self._futures[:]:
            if future.done():
                self._futures.remove(future)
                future.result()  # a callback's exception stops the spin (as in rclpy)

    def drain(self) -> list[BaseException]:
        """Wait for every callback handed to the thread pool; call only once spinning has stopped (no new
        ones come). Returns the exceptions they raised (retrieved, so rclpy does not report them again)."""
        self._executor.shutdown(wait=True)
        return [e for task in self._futures if task.done() and (e := task.exception()) is not None]


# Teardown steps after which every node's own resources are released (close() ran): a middleware teardown
# stuck there loses nothing, so the process may leave with its own result instead of waiting for SIGKILL.
_RELEASED = ("destroying the nodes", "shutting down the ROS context")
_STUCK_AFTER_RELEASE_S = 3.0
_LEAVE_AFTER_DUMP_S = 0.5
_SHUTDOWN_DUMP_S = 8.0


def _spin_until_signal(nodes: Sequence[SurgNode]) -> int:
    """Spin `nodes` on one executor until SIGINT/SIGTERM or a callback raises; shut down in the order
    rclpy needs (spin loop, running callbacks, executor, nodes, context). Returns the process exit code.

    The shutdown runs on its own thread so that this one stays responsive: a second signal (ros2 launch
    escalates SIGINT to SIGTERM after 5 s) ends a stuck shutdown at once, naming the step it was stuck in
    (exit 1, or 0 where the nodes had already released everything). A middleware teardown that hangs longer
    than 3 s after the nodes closed prints every thread's stack and the process leaves with the nodes' own
    result, also when the hang holds the GIL (rclpy's `destroy_node` inside Fast DDS does)."""
    faulthandler.register(STACKS_SIGNAL, all_threads=True)   # a launcher's "where are you stuck?"
    stop = threading.Event()
    first_signal: list[float] = []
    escalated = threading.Event()

    def on_signal(*_: object) -> None:
        # The same Ctrl-C often arrives twice (from the terminal's process group and from the launcher):
        # only a signal 2 s after the first asks to cut a shutdown short.
        if first_signal and time.monotonic() - first_signal[0] > 2.0:
            escalated.set()
        first_signal.append(time.monotonic())
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    executor = NodeExecutor()
    for node in nodes:
        executor.add_node(node)
    stopped: Future[None] = Future()   # done: the spin loop hands out no more callbacks (it wakes the executor)
    failure: list[BaseException] = []

    def spin() -> None:
        try:
            executor.spin_until_future_complete(stopped)
        except BaseException as e:  # a callback raised: report it and stop the process
            failure.append(e)
        stop.set()

    names = ", ".join(n.get_name() for n in nodes)   # now: a destroyed node has no name to give
    thread = threading.Thread(target=spin, name="executor", daemon=True)
    thread.start()
    while not stop.wait(0.5):   # a timed wait: signal handlers run on this thread between the waits
        pass
    # A thread blocked in C code while holding the GIL stops every Python thread, signal handlers included;
    # faulthandler's watchdog needs no GIL: past 8 s it prints every thread's stack (where it hung) and exits 1,
    # before a launcher's SIGKILL would end it without a word.
    faulthandler.dump_traceback_later(_SHUTDOWN_DUMP_S, exit=True)
    step = ["stopping the spin loop"]

    def at(name: str) -> None:
        step[0] = name

    def teardown() -> None:
        # Stop handing out callbacks, let the running ones finish while the executor and the nodes are intact,
        # and only then shut down: a callback must neither meet a destroyed guard condition nor run on a
        # closed node.
        stopped.set_result(None)
        thread.join(timeout=5.0)
        at("waiting for running callbacks")
        failure.extend(executor.drain())
        at("shutting down the executor")
        executor.shutdown(timeout_sec=5.0)
        at("closing the nodes")
        for node in nodes:
            try:
                node.close()
            except Exception as e:
                node.get_logger().error(f"close failed: {e!r}")
        # Everything is saved; what is left only takes leave of the DDS peers. That can hang in native code with
        # the GIL held, where no Python thread runs (README, "Across machines"): the stacks at 3 s say where,
        # and libc ends the process with the nodes' result half a second later.
        sys.stdout.flush()
        sys.stderr.flush()
        faulthandler.dump_traceback_later(_STUCK_AFTER_RELEASE_S, exit=False)
        leave = ExitTimer(_STUCK_AFTER_RELEASE_S + _LEAVE_AFTER_DUMP_S, 1 if failure else 0)
        at("destroying the nodes")
        for node in nodes:
            node.destroy_node()
        at("shutting down the ROS context")
        rclpy.try_shutdown()
        leave.cancel()
        faulthandler.cancel_dump_traceback_later()
        at("done")

    closing = threading.Thread(target=teardown, name="shutdown", daemon=True)
    closing.start()
    while closing.is_alive():
        closing.join(0.2)
        if closing.is_alive() and escalated.is_set():
            print(f"[{names}] shutdown stuck {step[0]}; leaving on a second signal", file=sys.stderr, flush=True)
            os._exit(0 if step[0] in _RELEASED and not failure else 1)
    faulthandler.cancel_dump_traceback_later()
    if failure:
        import traceback

        traceback.print_exception(failure[0], file=sys.stderr)
        return 1
    return 0


def run_node(node_cls: Callable[..., SurgNode], args: list[str] | None = None) -> None:
    """Entry point of a node process: init, build the node, spin until SIGINT/SIGTERM, exit cleanly."""
    rclpy.init(args=sys.argv if args is None else args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = node_cls()
    except Exception as e:
        print(f"[{getattr(node_cls, '__name__', node_cls)}] failed to start: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        sys.exit(1)
    code = _spin_until_signal([node])
    # The node is closed and ROS shut down: leave without the interpreter's finalisation. Past it (Python's
    # signal handlers already reset to the defaults) native libraries' exit-time destructors (DDS, torch's and
    # the CPU rasterizer's threads) have held a trainer for over 5 s, and ros2 launch then killed it with
    # SIGTERM (exit -15, in CI) although everything had been saved and closed.
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)


def run_nodes(specs: Sequence[tuple[Callable[..., SurgNode], list[str]]]) -> int:
    """Run several nodes in this process on one NodeExecutor; each spec is (class, cli_args)."""
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    nodes: list[SurgNode] = []
    try:
        for cls, cli_args in specs:
            nodes.append(cls(cli_args=cli_args, use_global_arguments=False))
    except Exception as e:
        print(f"failed to start {getattr(cls, '__name__', cls)}: {e}", file=sys.stderr)
        for node in nodes:
            node.close()
            node.destroy_node()
        rclpy.try_shutdown()
        return 1
    return _spin_until_signal(nodes)
