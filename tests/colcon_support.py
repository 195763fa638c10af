"""colcon builds of ros2_ws for the tests, and the environment of an install without sourcing a shell script."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)


@dataclass(frozen=True)
class ColconInstall:
    """A colcon build of ros2_ws in `root` (build/, install/, log/); `kind` is "plain" or "symlink"."""

    kind: str
    root: Path

    @property
    def prefix(self) -> Path:
        """The install prefix of the `surg3d` package."""
        return self.root / "install" / "surg3d"

    @property
    def share(self) -> Path:
        """share/surg3d of the install: launch files, config, package.xml."""
        return self.prefix / "share" / "surg3d"

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` plus what `source install/setup.bash` sets (AMENT_PREFIX_PATH, PYTHONPATH, and PATH or
        LD_LIBRARY_PATH where a package has bin/ or libraries), read from the packages' colcon hook files."""
        env = dict(base)
        for dsv in sorted((self.root / "install").glob("*/share/*/package.dsv")):
            _apply_dsv(dsv, dsv.parents[2], env)
        return env


def colcon(root: Path, symlink: bool) -> ColconInstall:
    """`colcon build` of ros2_ws into `root`, plain (files copied, as a ROS user builds) or `--symlink-install`.

    surg3d_msgs is left out: tools/setup.sh builds it from the same CMakeLists into the venv, where the install
    finds it (AMENT_PREFIX_PATH); the ROS package `surg3d` is what the tests check.
    """
    exe = shutil.which("colcon", path=str(VENV / "bin"))
    if exe is None:
        raise FileNotFoundError(f"colcon is not installed in {VENV} (tools/setup.sh installs it)")
    env = {**os.environ, "AMENT_PREFIX_PATH": str(VENV), "CMAKE_PREFIX_PATH": str(VENV),
           "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ['PATH']}"}
    cmd = [exe, "--log-base", str(root / "log"), "build", "--packages-ignore", "surg3d_msgs",
           "--build-base", str(root / "build"), "--install-base", str(root / "install"),
           *(["--symlink-install"] if symlink else [])]
    proc = subprocess.run(cmd, cwd=ROOT / "ros2_ws", env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
    return ColconInstall("symlink" if symlink else "plain", root)


def _apply_dsv(path: Path, prefix: Path, env: dict[str, str]) -> None:
    """Apply one colcon hook file (.dsv: what the generated setup scripts do, one `type;name;value` a line)."""
    for line in path.read_text().splitlines():
        kind, _, rest = line.partition(";")
        if kind == "source":
            if rest.endswith(".dsv"):  # the .sh/.bash/.ps1 hooks beside it do the same for their shells
                _apply_dsv((prefix / rest).resolve(), prefix, env)
        elif kind in ("prepend-non-duplicate", "prepend-non-duplicate-if-exists"):
            name, _, values = rest.partition(";")
            for value in reversed(values.split(";")):
                entry = prefix / value if value else prefix  # an absolute value replaces the prefix
                if kind.endswith("-if-exists") and not entry.exists():
                    continue
                kept = [p for p in env.get(name, "").split(os.pathsep) if p and p != str(entry)]
                env[name] = os.pathsep.join([str(entry), *kept])
        elif line.strip():
            raise ValueError(f"{path}: hook type {kind!r} is not handled here: {line!r}")
