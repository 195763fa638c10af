"""The graph config, its validation, and the equivalence of `surg3d launch` with the launch_ros files."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from surg3d_nodes.ros import topics
from surg3d_nodes.system.graph import GraphError, format_value, load_preset

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("live", "replay", "dvrk", "dvrk_sim")


def test_presets_resolve_and_arguments_set_parameters() -> None:
    replay = load_preset("replay", {"bag": "/data/run1", "rate": "2", "loop": "true"})
    nodes = {n.name: n for n in replay.nodes}
    assert {"bag_replay", "stereo_depth", "instrument_seg", "trainer"} <= set(nodes)
    assert nodes["bag_replay"].parameters["bag"] == "/data/run1"
    assert nodes["bag_replay"].parameters["rate"] == 2.0 and isinstance(nodes["bag_replay"].parameters["rate"], float)
    assert nodes["bag_replay"].parameters["loop"] is True
    assert nodes["trainer"].respawn
    for preset in PRESETS:
        for spec in load_preset(preset).nodes:
            assert (ROOT / "surg3d_nodes" / "ros" / "nodes" / f"{spec.executable}.py").is_file()
            assert all(f.is_file() for f in spec.parameter_files)


def test_dvrk_preset_remaps_the_rig_topics() -> None:
    """One remapping block for the preset reaches every node (the bridge's live view and the monitor too)."""
    preset = load_preset("dvrk", {"rig": "rigA"})
    stereo = next(n for n in preset.nodes if n.name == "stereo_depth")
    assert stereo.remappings[topics.LEFT_IMAGE] == "/rigA/left/image_raw"
    assert "-r" in stereo.ros_args() and f"{topics.RIGHT_INFO}:=/rigA/right/camera_info" in stereo.ros_args()
    assert all(n.remappings[topics.LEFT_INFO] == "/rigA/left/camera_info" for n in preset.nodes)
    assert not any(n.remappings for n in load_preset("replay").nodes)


def test_format_value_keeps_types() -> None:
    assert format_value(2.0) == "2.0" and format_value(1e-9) == "1e-09" and format_value(True) == "true"
    assert format_value(3) == "3" and format_value("x") == "x" and format_value("") == '""'
    assert format_value(["/a", "/b"]) == "[/a,/b]" and format_value([1.0, 2]) == "[1.0,2]"


def _edit_graph(cdir: Path, edit) -> None:
    graph = yaml.safe_load((cdir / "graph.yaml").read_text())
    edit(graph)
    (cdir / "graph.yaml").write_text(yaml.safe_dump(graph))


def _config_copy(tmp_path: Path) -> Path:
    cdir = tmp_path / "config"
    shutil.copytree(ROOT / "config", cdir)
    return cdir


@pytest.mark.parametrize("mutate, message", [
    (lambda c: _edit_graph(c, lambda g: g["presets"]["replay"]["nodes"].insert(0, "no_such_node")),
     "unknown node 'no_such_node'"),
    (lambda c: _edit_graph(c, lambda g: g["nodes"]["trainer"].update(executable="nope")),
     "node 'trainer' has unknown executable 'nope'"),
    (lambda c: (c / "trainer.yaml").unlink(), "trainer.yaml: file not found"),
    (lambda c: (c / "stereo_depth.yaml").write_text("a: [1, 2\n"), "stereo_depth.yaml: malformed YAML"),
    (lambda c: (c / "graph.yaml").write_text("nodes: [\n"), "graph.yaml: malformed YAML"),
    # Unknown keys and bad values, wherever they are, name the file and the key.
    (lambda c: (c / "trainer.yaml").write_text("/**:\n  ros__parameters:\n    max_gausians: 5000\n"),
     "trainer.yaml: node 'trainer' has no parameter 'max_gausians' (did you mean 'max_gaussians'?)"),
    (lambda c: (c / "trainer.yaml").write_text("/**:\n  ros__parameters:\n    max_gaussians: 5\n"),
     "trainer.yaml: trainer.max_gaussians must be in [1000, 5e+06], got 5"),
    (lambda c: (c / "stereo_depth.yaml").write_text("/**:\n  ros__parameters:\n    backend: sgm\n"),
     "stereo_depth.yaml: stereo_depth.backend must be one of sgbm, onnx, got 'sgm'"),
    (lambda c: (c / "trainer.yaml").write_text("trainr:\n  ros__parameters: {}\n"),
     "trainer.yaml: section 'trainr' names no node of the graph"),
    (lambda c: _edit_graph(c, lambda g: g["presets"]["replay"]["nodes"][0]["parameters"].update(wait_topicz=[""])),
     "graph.yaml: node 'bag_replay' has no parameter 'wait_topicz'"),
    (lambda c: _edit_graph(c, lambda g: g["arguments"]["device"].update(sets=["trainer.devise"])),
     "graph.yaml: argument 'device': node 'trainer' has no parameter 'devise'"),
    (lambda c: _edit_graph(c, lambda g: g["nodes"]["trainer"].update(respwn=True)),
     "graph.yaml: node 'trainer': unknown key(s) respwn"),
    (lambda c: _edit_graph(c, lambda g: g["nodes"]["bag_replay"].update(restart_when_silent_s=10.0)),
     "graph.yaml: node 'bag_replay': restart_when_silent_s must be >= 0 and needs respawn: true"),
])
def test_bad_config_is_named(tmp_path: Path, mutate, message: str) -> None:
    cdir = _config_copy(tmp_path)
    mutate(cdir)
    with pytest.raises(GraphError, match=re.escape(message)):
        load_preset("replay", config_dir=cdir)
    # The launcher stops before starting any node, naming the file and the problem.
    proc = subprocess.run([sys.executable, "-m", "surg3d_nodes.cli", "launch", "replay", "--config-dir", str(cdir)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr and "started" not in proc.stdout


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(GraphError, match="unknown launch argument 'nope'"):
        load_preset("replay", {"nope": "1"})
    with pytest.raises(GraphError, match="rate:='fast' is not a float"):
        load_preset("replay", {"rate": "fast"})
    with pytest.raises(GraphError, match=r"argument rate:=-1: bag_replay.rate must be in \[0, 1000\], got -1.0"):
        load_preset("replay", {"rate": "-1"})


def test_preset_parameter_files_are_checked_per_node_section(tmp_path: Path) -> None:
    """dvrk.yaml holds one section per node; each node's section is checked against that node's declaration."""
    cdir = _config_copy(tmp_path)
    dvrk = yaml.safe_load((cdir / "dvrk.yaml").read_text())
    dvrk["kinematics"]["ros__parameters"]["shaft_radiuss"] = 0.004
    (cdir / "dvrk.yaml").write_text(yaml.safe_dump(dvrk))
    with pytest.raises(GraphError, match=r"dvrk\.yaml: node 'kinematics' has no parameter 'shaft_radiuss'"):
        load_preset("dvrk", config_dir=cdir)
    load_preset("replay", config_dir=cdir)  # the replay preset does not read dvrk.yaml


def test_every_node_declares_its_parameters() -> None:
    from surg3d_nodes.system.node_options import NODE_PARAMETERS

    modules = {p.stem for p in (ROOT / "surg3d_nodes" / "ros" / "nodes").glob("*.py")} - {"__init__"}
    assert set(NODE_PARAMETERS) == modules


def test_node_yaml_files_hold_only_overrides() -> None:
    """Defaults live in the dataclasses: a YAML value equal to the declared default is a second copy of it."""
    from surg3d_nodes.system.node_options import node_parameters

    graph = yaml.safe_load((ROOT / "config" / "graph.yaml").read_text())
    for name, node in graph["nodes"].items():
        specs = node_parameters(node.get("executable", name))
        for f in node.get("parameter_files", []):
            for section, body in yaml.safe_load((ROOT / "config" / f).read_text()).items():
                for key, value in (body["ros__parameters"] or {}).items():
                    assert value != specs[key].default, f"{f}: {section}.{key} repeats the default {value!r}"


def test_params_command_lists_every_declared_parameter(capsys: pytest.CaptureFixture[str]) -> None:
    from surg3d_nodes.cli import params
    from surg3d_nodes.system.node_options import node_parameters

    assert params.main(["trainer"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split(":")[0].strip() for ln in lines[1:]] == list(node_parameters("trainer"))
    assert any(ln.startswith("  max_gaussians:") and "[1000, 5e+06]  live" in ln for ln in lines)
    with pytest.raises(SystemExit):
        params.main(["no_such_node"])


def test_host_roles_split_every_preset_without_overlap() -> None:
    for name in ("replay", "live", "dvrk", "dvrk_sim"):
        every = {s.name for s in load_preset(name).nodes}
        robot = {s.name for s in load_preset(name, {"host": "robot"}).nodes}
        gpu = {s.name for s in load_preset(name, {"host": "gpu"}).nodes}
        assert robot | gpu == every and not robot & gpu, name
        assert "trainer" in gpu and "stereo_depth" in robot, name
    with pytest.raises(GraphError, match="host:=cloud: must be all or one of robot, gpu"):
        load_preset("replay", {"host": "cloud"})
