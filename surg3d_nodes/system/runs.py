"""Run folders: each launch of a graph writes into a folder of its own, `<output_dir>/run_<UTC time>`.

The trainer's `resume_from_checkpoint: auto` resumes from the newest checkpoint in its output_dir. With one folder
per launch, a trainer respawned within the launch (same spec, same folder) continues its own model, and a new
launch never starts from an earlier case's model. A checkpoint named by the user (`resume_from_checkpoint:=PATH`)
still loads from wherever it is. Both launchers call `start_run`: `surg3d launch` (cli/launch.py) and the
launch_ros description (ros/launch_description.py).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

from surg3d_nodes.system.graph import Preset

OUTPUT_ARGUMENT = "output_dir"  # the launch argument whose node parameters receive the run folder


def new_run_folder(base: Path, now: datetime | None = None) -> Path:
    """Create and return the absolute folder `<base>/run_<UTC time>`; a launch in the same second gets a suffix
    (`..._2`), so two launches never share a folder."""
    base = Path(base).expanduser().resolve()  # nodes and logs see one absolute path, whatever their cwd
    base.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(timezone.utc)).strftime("run_%Y%m%d_%H%M%S")
    folder, n = base / stamp, 1
    while True:
        try:
            folder.mkdir()  # not exist_ok: the folder that this call creates is this launch's alone
            return folder
        except FileExistsError:
            n += 1
            folder = base / f"{stamp}_{n}"


def start_run(preset: Preset, now: datetime | None = None) -> Path | None:
    """Give this launch of `preset` its own run folder under the `output_dir` argument's value: every node
    parameter that argument sets (trainer, recorder, viewer bridge) now names the new folder. Respawned nodes
    reuse their spec and so keep it. Returns the folder, or None when no node of the preset writes output."""
    argument = preset.arguments.get(OUTPUT_ARGUMENT)
    if argument is None:
        return None
    targets = [(spec, param) for spec in preset.nodes for node, param in argument.sets if spec.name == node]
    if not targets:
        return None
    spec, param = targets[0]
    folder = new_run_folder(Path(str(spec.parameters[param])), now)
    for spec, param in targets:
        spec.parameters[param] = str(folder)
    return folder
