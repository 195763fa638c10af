"""ROS parameters from the config dataclasses (common/params.py): the one place they become descriptors.

`NodeParameters.declare(cls)` declares every `param` field of `cls` on the node with a ParameterDescriptor
(description, choices, integer / floating-point range, read-only unless live) and returns the instance built
from the values the node started with (defaults, parameter files, `-p` overrides). Every later change goes
through one on-set check (range, choices, live) and, once accepted, is written into that instance and handed
to the node's `on_change` hook.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, SetParametersResult
from rclpy.node import Node
from rclpy.parameter import Parameter

from surg3d_nodes.common.params import ParamSpec, from_params, param_specs


def descriptor(spec: ParamSpec) -> ParameterDescriptor:
    """The ROS descriptor of a parameter: description, choices, numeric range, read-only unless live.

    A double is dynamically typed so that `-p rate:=2` works as well as `rate:=2.0` (a statically typed one
    refuses the integer); the on-set check still refuses anything but a number."""
    d = ParameterDescriptor(description=spec.description, read_only=not spec.live,
                            dynamic_typing=spec.kind is float)
    if spec.choices:
        d.additional_constraints = "one of: " + ", ".join(spec.choices)
    kind = spec.item_kind
    if spec.low is not None and spec.high is not None:
        if kind is int:
            d.integer_range = [IntegerRange(from_value=int(spec.low), to_value=int(spec.high), step=0)]
        elif kind is float:
            d.floating_point_range = [FloatingPointRange(from_value=float(spec.low), to_value=float(spec.high),
                                                         step=0.0)]
    return d


def _plain(value: Any, spec: ParamSpec) -> Any:
    """A parameter value as the config dataclasses hold it: arrays as lists (rclpy gives array.array), a
    double given as an integer as a float."""
    if not isinstance(value, bool | int | float | str):
        return list(value)
    return float(value) if spec.kind is float and type(value) is int else value


class NodeParameters:
    """The parameters a node declared from config dataclasses, and the one path that changes them live."""

    def __init__(self, node: Node) -> None:
        self._node = node
        self._specs: dict[str, ParamSpec] = {}
        self._owner: dict[str, tuple[object, Callable[[str, Any], None] | None]] = {}
        self._declaring = False
        node.add_on_set_parameters_callback(self._check)
        node.add_post_set_parameters_callback(self._apply)

    def declare(self, cls: type, on_change: Callable[[str, Any], None] | None = None):
        """Declare the parameters of config dataclass `cls`; return its instance with the start values.

        A live parameter that changes later is set on that instance, then `on_change(name, value)` is called
        (for what the node derived from it: timers, the trainer's own config)."""
        specs = param_specs(cls)
        self._specs.update(specs)
        self._declaring = True
        try:
            values = {name: _plain(self._node.declare_parameter(name, spec.default, descriptor(spec)).value, spec)
                      for name, spec in specs.items()}
        finally:
            self._declaring = False
        instance = from_params(cls, values)
        for name in specs:
            self._owner[name] = (instance, on_change)
        return instance

    def _check(self, params: list[Parameter]) -> SetParametersResult:
        """Refuse a value outside its range or choices (also at declaration: a parameter file or `-p` value)
        and, after start, any change of a parameter that is not live."""
        for prm in params:
            spec = self._specs.get(prm.name)
            if spec is None:
                continue  # rclpy's own (use_sim_time) or declared by hand
            if not self._declaring and not spec.live:
                return SetParametersResult(successful=False,
                                           reason=f"{prm.name} is fixed at start (restart the node)")
            problem = spec.check(_plain(prm.value, spec))
            if problem is not None:
                return SetParametersResult(successful=False, reason=f"{prm.name} {problem}")
        return SetParametersResult(successful=True)

    def _apply(self, params: list[Parameter]) -> None:
        """Write accepted live changes into their config instance and tell the node."""
        for prm in params:
            owner = self._owner.get(prm.name)
            if owner is None:
                continue  # being declared: the instance is built from the start values
            instance, on_change = owner
            value = _plain(prm.value, self._specs[prm.name])
            setattr(instance, prm.name, value)
            if on_change is not None:
                on_change(prm.name, value)
