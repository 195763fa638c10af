"""`surg3d params [NODE ...]`: every node parameter as declared (default, range or choices, live, description).

The reference for config/*.yaml and graph.yaml overrides: it prints the declarations the nodes and the launcher's
checks use (system/node_options.py), so it cannot drift from them.
"""

from __future__ import annotations

import argparse

from surg3d_nodes.system.graph import format_value
from surg3d_nodes.system.node_options import NODE_PARAMETERS, node_parameters


def describe(executable: str) -> str:
    """The parameters of node `executable`, one a line: `name: default  limits  live  # description` (values as
    a parameter file or `name:=value` writes them)."""
    specs = node_parameters(executable).values()
    width = max(len(s.name) for s in specs)
    lines = [f"{executable} ({', '.join(c.__name__ for c in NODE_PARAMETERS[executable])}):"]
    for s in specs:
        extra = "  ".join(x for x in (s.limits(), "live" if s.live else "") if x)
        lines.append(f"  {s.name + ':':<{width + 1}} {format_value(s.default)}  {extra + '  ' if extra else ''}"
                     f"# {s.description}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    ap = argparse.ArgumentParser(prog="surg3d params", description=__doc__.splitlines()[0])
    ap.add_argument("nodes", nargs="*", metavar="NODE", help=f"nodes to list (default: all): "
                                                              f"{', '.join(NODE_PARAMETERS)}")
    args = ap.parse_args(argv)
    unknown = [n for n in args.nodes if n not in NODE_PARAMETERS]
    if unknown:
        ap.error(f"unknown node {unknown[0]!r} (nodes: {', '.join(NODE_PARAMETERS)})")
    print("\n\n".join(describe(n) for n in args.nodes or NODE_PARAMETERS))
    return 0
