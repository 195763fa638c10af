"""Run folders: every launch writes into its own `<output_dir>/run_<UTC time>` (system/runs.py). The launches
themselves are in test_launch_graph.py (respawn resumes within the run, a new launch does not) and
test_ros2_launch.py."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest
from bag_support import die_writing
from rosbags.rosbag2 import Reader

from surg3d_nodes.system.graph import GraphError, load_preset
from surg3d_nodes.system.runs import start_run

NOW = datetime(2026, 12, 3, 8, 30, 5, tzinfo=timezone.utc)


def test_each_launch_gets_a_run_folder_for_every_node_that_writes(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    preset = load_preset("replay", {"output_dir": str(tmp_path / "case42")})
    run = start_run(preset, NOW)
    assert run == tmp_path.resolve() / "case42" / "run_20261203_083005" and run.is_dir()
    writers = {n.name: n.parameters["output_dir"] for n in preset.nodes if "output_dir" in n.parameters}
    assert writers == dict.fromkeys(("trainer", "recorder", "foxglove_bridge"), str(run))
    # Two launches in the same second never share a folder.
    again = start_run(load_preset("replay", {"output_dir": str(tmp_path / "case42")}), NOW)
    assert again == run.with_name("run_20261203_083005_2") and again.is_dir()
    # The relative default `out` becomes absolute at launch: every node sees the same folder, whatever its cwd.
    monkeypatch.chdir(tmp_path)
    assert start_run(load_preset("live"), NOW) == tmp_path.resolve() / "out" / "run_20261203_083005"


def test_continue_from_puts_the_newest_checkpoint_into_the_new_run(tmp_path: Path) -> None:
    """A launch with continue_from (the GPU host restarted after a crash) starts its trainer from the old run's
    newest checkpoint: the file is in the new run folder, where `resume_from_checkpoint: auto` looks."""
    import os

    old = tmp_path / "case" / "run_20261203_070000"
    old.mkdir(parents=True)
    (old / "checkpoint_000100.pt").write_bytes(b"older")
    (old / "checkpoint_000200.pt").write_bytes(b"newer")
    (old / ".checkpoint_000300.pt.tmp").write_bytes(b"half written")
    os.utime(old / "checkpoint_000100.pt", (1e9, 1e9))
    # the recording the crash left unclosed: closed in the old run folder, said in the log
    assert die_writing(old / "recording_20261203_070001") == -6
    preset = load_preset("replay", {"output_dir": str(tmp_path / "case"), "continue_from": str(old)})
    said: list[str] = []
    run = start_run(preset, NOW, log=said.append)
    assert [p.name for p in run.iterdir()] == ["checkpoint_000200.pt"]
    assert len(said) == 1 and said[0].startswith(f"closed {old / 'recording_20261203_070001'}, left unclosed by the "
                                                 f"continued run: "), said
    with Reader(old / "recording_20261203_070001") as r:
        assert r.message_count == int(said[0].split(": ")[1].split()[0]) > 0
    assert sorted(p.name for p in old.iterdir() if p.name.startswith(".rec")) == []
    assert (run / "checkpoint_000200.pt").read_bytes() == b"newer"
    # a checkpoint file named directly
    run2 = start_run(load_preset("replay", {"output_dir": str(tmp_path / "case"),
                                            "continue_from": str(old / "checkpoint_000100.pt")}), NOW)
    assert (run2 / "checkpoint_000100.pt").read_bytes() == b"older"
    # nothing to continue from: a clear error, and no run folder made
    empty = tmp_path / "empty"
    empty.mkdir()
    before = sorted((tmp_path / "case").iterdir())
    with pytest.raises(GraphError, match=r"continue_from.*no checkpoint"):
        start_run(load_preset("replay", {"output_dir": str(tmp_path / "case"), "continue_from": str(empty)}), NOW)
    assert sorted((tmp_path / "case").iterdir()) == before


def test_prune_checkpoints_keeps_the_newest(tmp_path: Path) -> None:
    """After a periodic checkpoint, older checkpoints beyond the newest `keep` go; temporary files, other files
    and `keep` 0 are left alone."""
    import os

    from surg3d_nodes.system.runs import checkpoints, prune_checkpoints

    for i in range(5):
        (tmp_path / f"checkpoint_{i:06d}.pt").write_bytes(b"x")
        os.utime(tmp_path / f"checkpoint_{i:06d}.pt", (1e9 + i, 1e9 + i))
    (tmp_path / ".checkpoint_000009.pt.tmp-1").write_bytes(b"half written")
    (tmp_path / "recon_1.ply").write_bytes(b"ply\n")
    assert prune_checkpoints(tmp_path, 0) == [] and len(checkpoints(tmp_path)) == 5
    deleted = prune_checkpoints(tmp_path, 2)
    assert [p.name for p in deleted] == [f"checkpoint_{i:06d}.pt" for i in range(3)]
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint_000003.pt", "checkpoint_000004.pt"]
    assert (tmp_path / ".checkpoint_000009.pt.tmp-1").exists() and (tmp_path / "recon_1.ply").exists()
    assert prune_checkpoints(tmp_path, 2) == []
