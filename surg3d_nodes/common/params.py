"""Node parameters declared once, as dataclass field metadata (ROS-free).

A config dataclass marks each field that is a node parameter with `param(default, description, ...)`: its
default, range or choices, description and whether it may change while the node runs. `ros/params.py` turns
these into ROS parameter descriptors; `system/graph.py` checks parameter files and graph.yaml against them
before anything starts. Fields without the metadata are internal settings, not parameters.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

_KEY = "surg3d_param"
Value = bool | int | float | str | list


@dataclass(frozen=True)
class ParamSpec:
    """One parameter: name, default, description, optional closed range [low, high] or choices, live-tunable."""

    name: str
    default: Value
    description: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    live: bool = False

    @property
    def kind(self) -> type:
        """The value type: bool, int, float, str or list (an array parameter)."""
        return type(self.default)

    @property
    def item_kind(self) -> type:
        """Element type of an array parameter (its default is never empty: ROS infers the type from it)."""
        return type(self.default[0]) if isinstance(self.default, list) else self.kind

    def _range(self) -> str:
        low = "-inf" if self.low is None else f"{self.low:g}"
        high = "inf" if self.high is None else f"{self.high:g}"
        return f"[{low}, {high}]"

    def limits(self) -> str:
        """The allowed values as text: "a | b", "[0, 30]", or "" when the type alone limits them."""
        if self.choices:
            return " | ".join(self.choices)
        return self._range() if (self.low, self.high) != (None, None) else ""

    def check(self, value: Any) -> str | None:
        """Why `value` is not acceptable (type, range, choices), or None when it is."""
        kind = self.item_kind
        values = value if isinstance(value, list | tuple) else [value]
        if isinstance(self.default, list) != isinstance(value, list | tuple):
            return f"expects {'a list' if isinstance(self.default, list) else 'a single value'}, got {value!r}"
        for v in values:
            # bool is an int in Python but a distinct ROS type; an int is a fine double (`-p rate:=2`).
            if type(v) is not kind and not (kind is float and type(v) is int):
                return f"expects {kind.__name__}, got {type(v).__name__} {v!r}"
            if kind in (int, float) and not math.isfinite(v) and (self.low, self.high) != (None, None):
                return f"must be a finite number in {self._range()}, got {v!r}"
            if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
                return f"must be in {self._range()}, got {v!r}"
            if self.choices and v not in self.choices:
                return f"must be one of {', '.join(self.choices)}, got {v!r}"
        return None




def param(default: bool | int | float | str | tuple, description: str, *, low: float | None = None,
          high: float | None = None, choices: tuple[str, ...] = (), live: bool = False) -> Any:
    """A dataclass field that is a node parameter. `low`/`high` bound a number (or every element of a list),
    `choices` lists a string's allowed values, `live` lets it change while the node runs (else read-only).

    An array parameter has a tuple default (immutable: shared safely by every instance); an empty one is
    refused (ROS infers an array's type from it: the convention here is ("",) for "none")."""
    if isinstance(default, list):
        raise TypeError("an array parameter's default is a tuple")
    if isinstance(default, tuple) and not default:
        raise ValueError("an array parameter needs a non-empty default (use ('',) for none)")
    return dataclasses.field(default=default, metadata={_KEY: (description, low, high, tuple(choices), live)})


def param_specs(*classes: type) -> dict[str, ParamSpec]:
    """The parameters of config dataclasses `classes`, by name; a name declared twice is an error."""
    out: dict[str, ParamSpec] = {}
    for cls in classes:
        for f in dataclasses.fields(cls):
            if _KEY not in f.metadata:
                continue
            if f.name in out:
                raise ValueError(f"parameter {f.name!r} is declared by two config classes of one node")
            description, low, high, choices, live = f.metadata[_KEY]
            default = list(f.default) if isinstance(f.default, tuple) else f.default
            spec = ParamSpec(f.name, default, description, low, high, choices, live)
            if (problem := spec.check(default)) is not None:
                raise ValueError(f"{cls.__name__}.{f.name}: default {problem}")
            out[f.name] = spec
    return out


def from_params(cls: type, values: dict[str, Any]):
    """An instance of `cls` with the parameter values in `values` (array parameters as tuples)."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values and _KEY in f.metadata:
            v = values[f.name]
            kwargs[f.name] = tuple(v) if isinstance(f.default, tuple) else v
    return cls(**kwargs)
