"""A bag writer process that dies in the middle of a bag, as a recorder aborted from native code does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# abort(): no Python cleanup, no close: the bag stays staged under its hidden name with what reached the file.
_DYING_WRITER = """
import os, sys
from std_msgs.msg import String
from surg3d_nodes.data.bags import BagWriter
w = BagWriter(sys.argv[1], storage=sys.argv[3])
for i in range(int(sys.argv[2])):
    w.write("/x", String(data=f"{i:06d}" + "." * 1000), 1_000_000_000 + i)
if sys.argv[4] == "flush":
    w.flush()
os.abort()
"""


def die_writing(out: Path, count: int = 3000, storage: str = "mcap", flush: bool = False) -> int:
    """Write `count` 1 kB String messages (data starting with their 6-digit index) to the bag `out` in a process
    that then aborts, after flushing the bag (`BagWriter.flush`) where asked; returns its exit code (-6)."""
    cmd = [sys.executable, "-c", _DYING_WRITER, str(out), str(count), storage, "flush" if flush else "-"]
    return subprocess.run(cmd, capture_output=True).returncode
