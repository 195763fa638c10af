"""Shared fixtures: where the real data is, and an environment that keeps DDS on loopback."""

from __future__ import annotations

import itertools
import os
import random
import signal
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from colcon_support import ColconInstall, colcon

from surg3d_nodes.system.supervisor import graph_env

ROOT = Path(__file__).resolve().parents[1]
# A random base so that parallel runs on one machine do not share domains; each test gets its own.
_BASE = random.SystemRandom().randrange(100)
_DOMAINS = itertools.cycle([(_BASE + i) % 100 + 1 for i in range(100)])


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only shared data folder ($SURG3D_DATA or ../shared/data); skips when absent."""
    path = Path(os.environ.get("SURG3D_DATA", ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent (set SURG3D_DATA)")
    return path


@pytest.fixture(scope="session")
def synth_bag(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short synthetic stereo bag (`surg3d synth`, 160x128, 24 frames), made once per session."""
    out = tmp_path_factory.mktemp("synth")
    subprocess.run([sys.executable, "-m", "surg3d_nodes.cli", "synth", str(out), "--width", "160", "--height", "128",
                    "--frames", "24"], check=True, capture_output=True, timeout=300)
    return out / "bag"


@pytest.fixture(scope="session")
def colcon_build(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], ColconInstall]:
    """`colcon_build(kind)`: ros2_ws built by colcon on first use, once per session and kind: "plain" (`colcon
    build`, files copied: what a ROS user gets) or "symlink" (`--symlink-install`). Skips without colcon."""
    builds: dict[str, ColconInstall] = {}

    def build(kind: str) -> ColconInstall:
        if kind not in builds:
            try:
                builds[kind] = colcon(tmp_path_factory.mktemp(f"colcon_{kind}"), symlink=kind == "symlink")
            except FileNotFoundError as e:
                pytest.skip(str(e))
        return builds[kind]

    return build


def _descendants(pid: int) -> dict[int, str]:
    """Command lines of the live (not zombie) processes below `pid`, from /proc."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:               # ended while listed
            continue
        if fields[0] != "Z":
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = {}, list(parents.get(pid, []))
    while todo:
        child = todo.pop()
        try:
            found[child] = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
        except OSError:
            continue
        todo += parents.get(child, [])
    return found


@pytest.fixture(autouse=True)
def no_process_left(request: pytest.FixtureRequest):
    """Every process a test starts ends with it. One left running (ci61: a test that failed before it stopped its
    trainer left the trainer training through the rest of the suite, on the suite's two cores) is killed, and the
    test warns with its command line."""
    yield
    left = _descendants(os.getpid())
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if left:
        warnings.warn(f"{request.node.nodeid} left {len(left)} processes running, killed: {list(left.values())}",
                      stacklevel=1)


@pytest.fixture
def ros_env(tmp_path: Path) -> dict[str, str]:
    """Environment for ROS 2 processes started by a test: loopback-only discovery, a domain of its own,
    large-data transport, unbuffered output, logs in the test's tmp dir."""
    env = dict(os.environ)
    env.update({
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_DOMAIN_ID": str(next(_DOMAINS)),
        **graph_env(ROOT / "config"),
        "PYTHONUNBUFFERED": "1",
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
        "AMENT_PREFIX_PATH": sys.prefix,
    })
    env.pop("ROS_LOCALHOST_ONLY", None)
    return env


# DDS of the test process itself (ros_node) stays on loopback too.
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.update(graph_env(ROOT / "config"))
os.environ.pop("ROS_LOCALHOST_ONLY", None)


@pytest.fixture
def ros_node(ros_env: dict[str, str]):
    """An rclpy node in the test process, on the test's domain, spun by a background executor.

    Yields the node; create publishers, subscriptions and clients on it. Shut down cleanly afterwards.
    """
    import threading

    import rclpy

    from surg3d_nodes.ros.runtime import NodeExecutor

    context = rclpy.Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("surg3d_test", context=context)
    executor = NodeExecutor(context=context)
    executor.add_node(node)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    yield node
    executor.shutdown(timeout_sec=5.0)
    thread.join(timeout=5.0)
    node.destroy_node()
    rclpy.try_shutdown(context=context)
