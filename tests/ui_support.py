"""Shared helpers of the operator-view tests: start/stop node processes, what the real-browser test needs."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path(os.environ.get("CHROMIUM", "/usr/bin/chromium"))
UI_TESTS = ROOT / "tests" / "ui"
WEB = ROOT / "surg3d_nodes" / "viewer" / "web"


def browser_requirements() -> str | None:
    """Why the real-browser test cannot run here, or None when it can."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    if not (UI_TESTS / "node_modules" / "playwright-core").is_dir():
        return "tests/ui/node_modules is missing (cd tests/ui && npm ci)"
    if not (WEB / "node_modules" / "@sparkjsdev" / "spark").is_dir():
        return "the page's 3D libraries are missing (tools/setup.sh, or npm ci in surg3d_nodes/viewer/web)"
    if shutil.which("node") is None:
        return "node is not on PATH (Node 20)"
    return None


def start_node(module: str, ros_env: dict, args: list[str], ready: str = "",
               timeout: float = 30.0) -> tuple[subprocess.Popen, list[str], re.Match | None]:
    """Start `python -m surg3d_nodes.ros.nodes.<module> --ros-args <args>`; with `ready`, wait for an output line
    matching that regex. Returns (process, its output lines (kept up to date), the match)."""
    proc = subprocess.Popen([sys.executable, "-m", f"surg3d_nodes.ros.nodes.{module}", "--ros-args", *args],
                            env=ros_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []
    found: list[re.Match] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line.rstrip())
            m = re.search(ready, line) if ready else None
            if m:
                found.append(m)

    threading.Thread(target=read, daemon=True).start()
    end = time.monotonic() + timeout
    while ready and not found:
        if proc.poll() is not None or time.monotonic() > end:
            proc.kill()
            raise AssertionError(f"{module} did not start:\n" + "\n".join(lines))
        time.sleep(0.05)
    return proc, lines, found[0] if found else None


def start_bridge(ros_env: dict, out: Path, *extra: str) -> tuple[subprocess.Popen, int, list[str]]:
    """Start the bridge on a free port; returns (process, port, its output lines)."""
    args = ["-p", "port:=0", "-p", f"output_dir:={out}", *extra]
    proc, lines, m = start_node("foxglove_bridge", ros_env, args, ready=r"ws://[\d.]+:(\d+)")
    return proc, int(m.group(1)), lines


def stop(proc: subprocess.Popen) -> int:
    """SIGINT, then kill after 10 s; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(2)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()
