"""Parameters declared once: the dataclass metadata (ROS-free) and its one path into ROS (ros/params.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import pytest

from surg3d_nodes.common.params import from_params, param, param_specs
from surg3d_nodes.recon.config import TrainerConfig
from surg3d_nodes.system.graph import load_preset
from surg3d_nodes.system.node_options import NODE_PARAMETERS, node_parameters


@dataclass
class _Options:
    rate: float = param(2.0, "Hz", low=0.0, high=30.0, live=True)
    mode: str = param("a", "mode", choices=("a", "b"), live=True)
    size: int = param(3, "size", low=1, high=10)
    names: tuple[str, ...] = param(("x",), "names")
    internal: int = 7                      # not a parameter: no metadata


def test_specs_check_type_range_and_choices() -> None:
    specs = param_specs(_Options)
    assert list(specs) == ["rate", "mode", "size", "names"]
    rate, mode, size, names = specs.values()
    assert rate.check(2) is None and rate.check(2.5) is None        # an integer is a fine double (-p rate:=2)
    assert "must be in [0, 30]" in rate.check(31.0) and "expects float" in rate.check("fast")
    assert "expects int" in size.check(True) and "expects int" in size.check(2.0)
    assert "one of a, b" in mode.check("c") and names.check(["y", "z"]) is None
    assert "expects a list" in names.check("y") and names.default == ["x"]
    opts = from_params(_Options, {"rate": 4.0, "names": ["p", "q"], "internal": 0})
    assert opts.rate == 4.0 and opts.names == ("p", "q") and opts.internal == 7


def test_declarations_are_refused_when_inconsistent() -> None:
    with pytest.raises(TypeError, match="tuple"):
        param(["x"], "a list default")
    with pytest.raises(ValueError, match="non-empty"):
        param((), "no type to infer")

    @dataclass
    class Bad:
        x: int = param(50, "outside its own range", low=0, high=10)

    with pytest.raises(ValueError, match=r"Bad.x: default must be in \[0, 10\]"):
        param_specs(Bad)


def test_every_trainer_config_field_is_a_trainer_parameter() -> None:
    trainer = node_parameters("trainer")
    assert {f.name for f in dataclasses.fields(TrainerConfig)} <= set(trainer)
    assert all(spec.description for executable in NODE_PARAMETERS
               for spec in node_parameters(executable).values())
    # The values the running graph used are the declared defaults (config/trainer.yaml used to set them).
    cfg = TrainerConfig()
    assert cfg.image_scale == 0.0
    # A trainer started on its own starts empty; the graph resumes only within a launch's run folder.
    assert trainer["resume_from_checkpoint"].default == ""
    spec = next(n for n in load_preset("replay").nodes if n.name == "trainer")
    assert spec.parameters["resume_from_checkpoint"] == "auto"


@pytest.mark.ros
def test_one_on_set_path_checks_and_applies_live_changes() -> None:
    import rclpy
    from rclpy.exceptions import InvalidParameterValueException
    from rclpy.parameter import Parameter

    from surg3d_nodes.ros.params import NodeParameters

    context = rclpy.Context()   # a context of its own: the test process may hold others
    rclpy.init(args=["test", "--ros-args", "-p", "size:=5", "-p", "rate:=3"], context=context)
    try:
        node = rclpy.create_node("params_test", context=context)
        changes: list[tuple[str, object]] = []
        params = NodeParameters(node)
        opts = params.declare(_Options, lambda name, value: changes.append((name, value)))
        assert (opts.size, opts.rate) == (5, 3.0) and isinstance(opts.rate, float)   # overrides applied
        described = node.describe_parameter("rate")
        assert described.floating_point_range[0].to_value == 30.0 and not described.read_only
        assert node.describe_parameter("size").read_only

        ok, choice, fixed = (node.set_parameters([Parameter(n, value=v)])[0]
                             for n, v in [("rate", 4.5), ("mode", "c"), ("size", 6)])
        assert ok.successful and opts.rate == 4.5 and changes == [("rate", 4.5)]
        assert not choice.successful and "one of a, b" in choice.reason and opts.mode == "a"
        assert not fixed.successful and "read-only" in fixed.reason and opts.size == 5
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)
    # A value out of its choices stops the node at start, naming the parameter.
    context = rclpy.Context()
    rclpy.init(args=["test", "--ros-args", "-p", "mode:=z"], context=context)
    try:
        node = rclpy.create_node("params_test", context=context)
        with pytest.raises(InvalidParameterValueException, match="must be one of a, b"):
            NodeParameters(node).declare(_Options)
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


def test_the_schema_and_the_launcher_checks_import_no_rclpy() -> None:
    """The launcher validates against the declarations before any ROS process exists: no rclpy (nor torch)."""
    import subprocess
    import sys

    code = ("import sys, surg3d_nodes.system.graph, surg3d_nodes.cli.params\n"
            "assert not {'rclpy', 'torch'} & set(sys.modules), sorted({'rclpy', 'torch'} & set(sys.modules))")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
