"""The `surg3d` command: one subcommand per module in this package."""

from __future__ import annotations

import importlib
import sys

# subcommand -> (module, one-line help); each module exposes main(argv) -> int.
COMMANDS: dict[str, tuple[str, str]] = {
    "launch": ("surg3d_nodes.cli.launch", "run the node graph (live, replay, dvrk) from config/graph.yaml"),
    "demo": ("surg3d_nodes.cli.demo", "synthesise (or take) a stereo sequence and replay it through the graph"),
    "convert": ("surg3d_nodes.cli.convert", "convert a dataset (endonerf, stereomis, stereo, synthetic) to rosbag2"),
    "synth": ("surg3d_nodes.cli.synth", "generate a synthetic surgical scene with exact ground truth"),
    "eval": ("surg3d_nodes.cli.eval", "evaluate the reconstruction on an EndoNeRF-layout clip"),
    "falloff": ("surg3d_nodes.cli.falloff", "measure a stereo endoscope's brightness fall-off on a recorded clip"),
    "ui": ("surg3d_nodes.cli.ui", "serve the operator's web page (connects to the foxglove_bridge node)"),
    "params": ("surg3d_nodes.cli.params", "list every node parameter: default, range or choices, live, description"),
}


def main(argv: list[str] | None = None) -> int:
    """Dispatch `surg3d COMMAND ...` to the command's module."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {text}" for name, (_, text) in COMMANDS.items()]
        print("usage: surg3d COMMAND [ARGS...]\n\ncommands:\n" + "\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nsurg3d: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return int(module.main(argv[1:]) or 0)


if __name__ == "__main__":
    sys.exit(main())
