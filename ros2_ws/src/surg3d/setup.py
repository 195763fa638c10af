"""colcon (ament_python) build of the `surg3d` ROS package: node executables in lib/surg3d/, launch and
config files in share/surg3d/. The sources are symlinks to the repository's top-level folders.

Every folder of surg3d_nodes is installed (find_namespace_packages: a plain `colcon build` copies only the
packages listed here, and a folder that `find_packages` skips, one without `__init__.py`, would be missing from
the install while the repository's editable install hides it)."""

from glob import glob
from pathlib import Path

from setuptools import find_namespace_packages, setup

here = Path(__file__).resolve().parent
nodes = sorted(p.stem for p in (here / "surg3d_nodes" / "ros" / "nodes").glob("*.py") if not p.stem.startswith("_"))

setup(
    name="surg3d",
    version="0.1.0",
    # Not Python, package data below: viewer/web, the browser page, with the files of its npm libraries that it
    # loads (three, Spark: present after tools/setup.sh or `npm ci` there); recon/render/csrc, the CPU
    # rasterizer's C++ source, compiled on first use (without it the trainer falls back to the torch backend).
    packages=find_namespace_packages(include=["surg3d_nodes", "surg3d_nodes.*"],
                                     exclude=["*.__pycache__", "surg3d_nodes.viewer.web*",
                                              "surg3d_nodes.recon.render.csrc"]),
    package_data={"surg3d_nodes": ["viewer/web/*", "recon/render/csrc/*",
                                   "viewer/web/node_modules/three/LICENSE",
                                   "viewer/web/node_modules/three/build/three.module.js",
                                   "viewer/web/node_modules/three/build/three.core.js",
                                   "viewer/web/node_modules/three/examples/jsm/postprocessing/Pass.js",
                                   "viewer/web/node_modules/@sparkjsdev/spark/LICENSE",
                                   "viewer/web/node_modules/@sparkjsdev/spark/dist/spark.module.js"]},
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/surg3d"]),
        ("share/surg3d", ["package.xml"]),
        ("share/surg3d/launch", glob("launch/*.launch.py")),
        ("share/surg3d/config", [p for p in glob("config/*") if Path(p).is_file()]),
    ],
    install_requires=["setuptools"],
    zip_safe=False,
    entry_points={"console_scripts": [f"{n} = surg3d_nodes.ros.nodes.{n}:main" for n in nodes]
                  + ["surg3d = surg3d_nodes.cli:main"]},
)
