"""Run folders: each launch of a graph writes into a folder of its own, `<output_dir>/run_<UTC time>`.

The trainer's `resume_from_checkpoint: auto` resumes from the newest checkpoint in its output_dir. With one folder
per launch, a trainer respawned within the launch (same spec, same folder) continues its own model, and a new
launch never starts from an earlier case's model, unless asked to with `continue_from:=<run folder or checkpoint>`
(the GPU host restarted after a crash): that checkpoint is put into the new run folder before the nodes start.
Both launchers call `start_run`: `surg3d launch` (cli/launch.py) and the launch_ros description
(ros/launch_description.py).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from surg3d_nodes.data.bags import recover_unclosed
from surg3d_nodes.system.graph import GraphError, Preset

OUTPUT_ARGUMENT = "output_dir"  # the launch argument whose node parameters receive the run folder
CONTINUE_ARGUMENT = "continue_from"  # a run folder or checkpoint whose model this launch's trainer starts from
CHECKPOINT_GLOB = "checkpoint_*.pt"  # the trainer's complete checkpoints (temporary files never match)


def checkpoints(folder: Path) -> list[Path]:
    """The complete checkpoints in `folder`, oldest first."""
    return sorted(Path(folder).glob(CHECKPOINT_GLOB), key=lambda q: q.stat().st_mtime)


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete the complete checkpoints in `folder` older than its newest `keep` (0: keep all); returns the deleted.
    Periodic checkpoints exist to resume from (the newest that loads); kept all, a surgery's 30 s checkpoints of a
    large model fill the disk (25 MB each for a 320x256 synthetic clip after two minutes)."""
    if keep <= 0:
        return []
    old = checkpoints(folder)[:-keep]
    for path in old:
        path.unlink(missing_ok=True)
    return old


def continued_checkpoint(source: str) -> Path:
    """The checkpoint `continue_from:=source` names: the file itself, or a run folder's newest. Raises GraphError
    when there is none."""
    src = Path(source).expanduser()
    found = [src] if src.is_file() else checkpoints(src) if src.is_dir() else []
    if not found:
        raise GraphError(f"{CONTINUE_ARGUMENT}:={source}: no checkpoint there (a {CHECKPOINT_GLOB} file, or a run "
                         f"folder holding one)")
    return found[-1].resolve()


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


def start_run(preset: Preset, now: datetime | None = None, log: Callable[[str], None] = print) -> Path | None:
    """Give this launch of `preset` its own run folder under the `output_dir` argument's value: every node
    parameter that argument sets (trainer, recorder, viewer bridge) now names the new folder. Respawned nodes
    reuse their spec and so keep it. With `continue_from`, the checkpoint it names goes into the new folder, and
    the recordings that the continued run's crash left unclosed are closed where they are (`log` says so).
    Returns the folder, or None when no node of the preset writes output; GraphError for a `continue_from`
    without a checkpoint."""
    argument = preset.arguments.get(OUTPUT_ARGUMENT)
    if argument is None:
        return None
    targets = [(spec, param) for spec in preset.nodes for node, param in argument.sets if spec.name == node]
    if not targets:
        return None
    source = preset.values.get(CONTINUE_ARGUMENT)
    seed = continued_checkpoint(str(source)) if source else None   # checked before any folder is made
    spec, param = targets[0]
    folder = new_run_folder(Path(str(spec.parameters[param])), now)
    for spec, param in targets:
        spec.parameters[param] = str(folder)
    if seed is not None:
        for r in recover_unclosed(seed.parent):
            log(f"closed {r.path}, left unclosed by the continued run: {r.count} messages"
                + (f"; reading it stopped: {r.stopped}" if r.stopped else ""))
        # where the trainer's `resume_from_checkpoint: auto` finds it; a respawn within this run then resumes
        # from its own newer checkpoints
        try:
            os.link(seed, folder / seed.name)     # no copy of a large model where the file system allows
        except OSError:
            shutil.copy2(seed, folder / seed.name)
    return folder
