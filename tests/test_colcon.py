"""`colcon build` of ros2_ws installs what `ros2 launch surg3d ...` needs (colcon from pip, against the wheels).

The installed package is checked on its own: its graph resolves from the install's share/surg3d/config with the
install's Python package (not the repository's editable install, which would hide a folder the build left out).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from colcon_support import ColconInstall

from surg3d_nodes.system.graph import load_preset

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("live", "replay", "dvrk", "dvrk_sim")

# Run with the install's environment: where surg3d_nodes comes from, and each preset's nodes with the file of
# their module, as the installed graph resolves them.
_RESOLVE_INSTALLED = """
import importlib.util, json, sys
from pathlib import Path
import surg3d_nodes
from surg3d_nodes.system.graph import load_preset
config = Path(sys.argv[1])
nodes = {p: load_preset(p, config_dir=config).nodes for p in sys.argv[2:]}
origin = lambda n: importlib.util.find_spec(n.module).origin
print(json.dumps({"package": surg3d_nodes.__file__,
                  "presets": {p: [(n.name, n.executable, origin(n)) for n in specs] for p, specs in nodes.items()}}))
"""


def _source_modules(package: Path) -> set[str]:
    return {str(p.relative_to(package)) for p in package.rglob("*.py") if "__pycache__" not in p.parts}


@pytest.mark.parametrize("kind", ["plain", "symlink"])
def test_colcon_installs_the_ros_package(colcon_build: Callable[[str], ColconInstall], kind: str,
                                         ros_env: dict[str, str]) -> None:
    colcon_install = colcon_build(kind)
    prefix, share = colcon_install.prefix, colcon_install.share
    assert (prefix / "share" / "ament_index" / "resource_index" / "packages" / "surg3d").is_file()
    assert (share / "package.xml").is_file()
    for preset in PRESETS:
        assert (share / "launch" / f"{preset}.launch.py").is_file()

    env = colcon_install.env(ros_env)
    # cwd outside the repository: `python -c` puts the cwd first on sys.path.
    proc = subprocess.run([sys.executable, "-c", _RESOLVE_INSTALLED, str(share / "config"), *PRESETS], env=env,
                          cwd=colcon_install.root, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    installed = json.loads(proc.stdout)
    # The package and every node module come from the colcon build, never from the repository's source tree.
    for origin in [installed["package"], *(o for nodes in installed["presets"].values() for *_, o in nodes)]:
        assert Path(origin).is_relative_to(colcon_install.root), f"{origin} is not from the colcon build"
    for preset in PRESETS:
        # The installed graph is the source tree's graph.
        assert [(n, e) for n, e, _ in installed["presets"][preset]] == \
               [(n.name, n.executable) for n in load_preset(preset).nodes]
        for _, executable, _ in installed["presets"][preset]:
            exe = prefix / "lib" / "surg3d" / executable
            assert exe.is_file() and os.access(exe, os.X_OK), f"{exe} missing"
    surg3d = prefix / "lib" / "surg3d" / "surg3d"
    assert surg3d.is_file() and os.access(surg3d, os.X_OK)

    package = Path(installed["package"]).parent
    assert (package / "viewer" / "web" / "index.html").is_file()
    assert (package / "recon" / "render" / "csrc" / "cpu_raster.cpp").is_file(), "the CPU rasterizer's source"
    spark = package / "viewer" / "web" / "node_modules" / "@sparkjsdev" / "spark" / "dist" / "spark.module.js"
    assert spark.is_file(), "the page's splat renderer"
    if colcon_install.kind == "plain":  # copied files: every module of the source tree is there
        assert _source_modules(package) == _source_modules(ROOT / "surg3d_nodes")
