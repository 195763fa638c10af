"""`surg3d launch PRESET [name:=value ...]`: run a preset of config/graph.yaml without the `launch` package."""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

from surg3d_nodes.system.graph import HOST_ROLES, GraphError, NodeSpec, load_preset
from surg3d_nodes.system.links import split_host_warnings
from surg3d_nodes.system.runs import start_run
from surg3d_nodes.system.supervisor import Supervisor, graph_env


def node_class(spec: NodeSpec) -> type:
    """The SurgNode subclass defined by a node module (for the single-process mode)."""
    from surg3d_nodes.ros.runtime import SurgNode

    module = importlib.import_module(spec.module)
    classes = [c for c in vars(module).values()
               if isinstance(c, type) and issubclass(c, SurgNode) and c.__module__ == module.__name__]
    if len(classes) != 1:
        raise GraphError(f"{spec.module} must define exactly one SurgNode subclass, found {len(classes)}")
    return classes[0]


def parse_overrides(items: list[str]) -> dict[str, str]:
    """`name:=value` pairs as a dict; anything else raises GraphError."""
    out = {}
    for item in items:
        name, sep, value = item.partition(":=")
        if not sep or not name:
            raise GraphError(f"launch arguments are name:=value, got {item!r}")
        out[name] = value
    return out


def main(argv: list[str] | None = None) -> int:
    """Load and validate the preset, then run it (one process per node, or all in this process)."""
    ap = argparse.ArgumentParser(prog="surg3d launch", description=__doc__)
    ap.add_argument("preset", help="preset of config/graph.yaml: live, replay, dvrk")
    ap.add_argument("arguments", nargs="*", help="launch arguments name:=value (see --show)")
    ap.add_argument("--config-dir", type=Path, help="config directory (default: the package's config/)")
    ap.add_argument("--single-process", action="store_true",
                    help="run all nodes in this process on one executor (lowest latency)")
    ap.add_argument("--show", action="store_true", help="print the resolved graph and exit")
    ap.add_argument("--host", choices=("all", *HOST_ROLES),
                    help="start one machine's part of the graph (the same as the launch argument host:=ROLE)")
    args = ap.parse_intermixed_args(argv)   # options may come after the arguments name:=value
    try:
        overrides = parse_overrides(args.arguments)
        if args.host:
            overrides["host"] = args.host
        preset = load_preset(args.preset, overrides, args.config_dir)
        classes = [node_class(s) for s in preset.nodes] if args.single_process else []
    except GraphError as e:
        print(f"surg3d launch: {e}", file=sys.stderr)
        return 2
    if args.show:
        for a in preset.arguments.values():
            print(f"argument {a.name} (default {a.default!r}): {a.description}")
        for s in preset.nodes:
            print(f"node {s.name}: python -m {s.module} {' '.join(s.ros_args())}" + (" [respawn]" if s.respawn else ""))
        return 0
    # This launch's own output folder (respawned nodes keep it): never another run's checkpoints, unless
    # continue_from names one.
    try:
        folder = start_run(preset, log=lambda line: print(f"[launcher] {line}", flush=True))
    except GraphError as e:
        print(f"surg3d launch: {e}", file=sys.stderr)
        return 2
    if folder is not None:
        print(f"[launcher] run folder {folder}", flush=True)
    if preset.values.get("host", "all") != "all":
        for warning in split_host_warnings():
            print(f"[launcher] warning: {warning}", flush=True)
    if args.single_process:
        import os

        from surg3d_nodes.ros.runtime import run_nodes

        os.environ.update(graph_env())
        return run_nodes([(cls, s.ros_args()) for cls, s in zip(classes, preset.nodes, strict=True)])
    return Supervisor(preset.nodes).run()
