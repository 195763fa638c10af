"""The node graph as configured in config/graph.yaml: the one source of truth for `surg3d launch` and the
launch_ros files in launch/. Loading validates everything before any node starts."""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path

from surg3d_nodes.common.files import read_yaml_mapping
from surg3d_nodes.system.node_options import BUILTIN_PARAMETERS, NODE_PARAMETERS, node_parameters

PACKAGE_DIR = Path(__file__).resolve().parents[1]
NODES_PACKAGE = "surg3d_nodes.ros.nodes"  # executable X is the module NODES_PACKAGE.X


class GraphError(ValueError):
    """A configuration problem; the message names the file and what is wrong."""


@dataclass
class Argument:
    """A launch argument `name:=value` and the node parameters it sets."""

    name: str
    default: str | int | float | bool
    description: str = ""
    sets: list[tuple[str, str]] = field(default_factory=list)  # (node name, parameter name)

    def default_text(self) -> str:
        """The default as `name:=value` text (what `convert` parses back to the default)."""
        return self.default if isinstance(self.default, str) else format_value(self.default)

    def convert(self, text: str) -> str | int | float | bool:
        """Parse a command-line value with the type of the default (a double stays a double: 2 -> 2.0)."""
        kind = type(self.default)
        try:
            if kind is bool:
                if text.lower() not in ("true", "false"):
                    raise ValueError
                return text.lower() == "true"
            return kind(text)
        except ValueError:
            raise GraphError(f"argument {self.name}:={text!r} is not a {kind.__name__}") from None


# What a node entry of graph.yaml may hold (a preset's entry adds `parameters` on top); anything else stops
# the launcher, naming the key.
NODE_KEYS = {"executable", "parameter_files", "parameters", "remappings", "respawn", "respawn_delay",
             "restart_when_silent_s", "host"}
# Where a node runs when the graph is split across machines (`host:=ROLE` starts one role's nodes; `all`, the
# default, every node on this machine): beside the robot (sensors, perception, kinematics) or on the GPU host.
HOST_ROLES = ("robot", "gpu")


@dataclass
class NodeSpec:
    """One node of a preset: what to run and how to configure it."""

    name: str
    executable: str
    parameter_files: list[Path]
    parameters: dict[str, str | int | float | bool]
    remappings: dict[str, str]
    respawn: bool = False
    respawn_delay: float = 1.0
    restart_when_silent_s: float = 0.0   # > 0: `surg3d launch` restarts the node when its heartbeat stops this long
    host: str = "gpu"                    # HOST_ROLES: the machine's part of a split graph it belongs to

    @property
    def module(self) -> str:
        return f"{NODES_PACKAGE}.{self.executable}"

    def ros_args(self) -> list[str]:
        """The `--ros-args ...` tail that configures this node (name, parameter files, overrides, remaps)."""
        args = ["--ros-args", "-r", f"__node:={self.name}"]
        for f in self.parameter_files:
            args += ["--params-file", str(f)]
        for k, v in self.parameters.items():
            args += ["-p", f"{k}:={format_value(v)}"]
        for a, b in self.remappings.items():
            args += ["-r", f"{a}:={b}"]
        return args


@dataclass
class Preset:
    """A named graph (live, replay, dvrk) with its arguments already applied."""

    name: str
    nodes: list[NodeSpec]
    arguments: dict[str, Argument]
    values: dict[str, str | int | float | bool] = field(default_factory=dict)   # each argument's value


def format_value(v: str | int | float | bool | list) -> str:
    """A parameter value as ROS `-p` and YAML parse it back to the same type."""
    if isinstance(v, list):
        return "[" + ",".join(format_value(x) for x in v) + "]"
    if isinstance(v, bool):
        return "true" if v else "false"
    if v == "":
        return '""'  # rcl refuses an empty override (`-p name:=`)
    if isinstance(v, float):
        return repr(v) if ("." in repr(v) or "e" in repr(v) or "n" in repr(v)) else f"{v}.0"
    return str(v)


def default_config_dir() -> Path:
    """$SURG3D_CONFIG_DIR, else the installed share/surg3d/config (colcon), else the source tree's config/."""
    if os.environ.get("SURG3D_CONFIG_DIR"):
        return Path(os.environ["SURG3D_CONFIG_DIR"])
    source = PACKAGE_DIR.parent / "config"
    if source.is_dir():
        return source
    for prefix in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep):
        share = Path(prefix) / "share" / "surg3d" / "config"
        if prefix and share.is_dir():
            return share
    raise GraphError("cannot find the surg3d config directory (set SURG3D_CONFIG_DIR)")


def node_module_exists(executable: str) -> bool:
    """Whether the node module of `executable` can be imported, wherever the package lives (source tree, editable
    or colcon install). Only the module is located, not run: no rclpy import."""
    if not executable.isidentifier():
        return False
    try:
        return importlib.util.find_spec(f"{NODES_PACKAGE}.{executable}") is not None
    except ModuleNotFoundError:  # the nodes package itself is missing (a broken install)
        return False


def _load_yaml(path: Path) -> dict:
    return read_yaml_mapping(path, GraphError, "a mapping at the top level")


def _executable(nodes_cfg: dict, node: str) -> str:
    return str((nodes_cfg[node] or {}).get("executable", node))


def check_parameter(where: str, node: str, executable: str, key: str, value: object) -> None:
    """GraphError naming `where` (a file, an argument) unless `key` is a parameter that node `executable`
    declares (system/node_options.py) and `value` fits its type, range and choices. An unknown executable is
    left to the executable check, which names it."""
    if key in BUILTIN_PARAMETERS or executable not in NODE_PARAMETERS:
        return
    specs = node_parameters(executable)
    spec = specs.get(key)
    if spec is None:
        close = difflib.get_close_matches(key, specs, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {', '.join(sorted(specs))})"
        raise GraphError(f"{where}: node {node!r} has no parameter {key!r}{hint}")
    problem = spec.check(value)
    if problem is not None:
        raise GraphError(f"{where}: {node}.{key} {problem}")


def _flatten(params: dict, prefix: str = "") -> dict[str, object]:
    """Nested parameter mappings as ROS reads them: {"a": {"b": 1}} is the parameter a.b."""
    out: dict[str, object] = {}
    for k, v in params.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def check_parameter_file(path: Path, node: str, executable: str, graph_nodes: dict) -> None:
    """Check the section of parameter file `path` that node `node` reads (`/**` and its own name) against its
    declaration; a section for a node graph.yaml does not define is an error too (a misspelt node name would
    otherwise be silently ignored)."""
    for section, body in _load_yaml(path).items():
        target = str(section).rstrip("/").rsplit("/", 1)[-1]
        if section != "/**" and target not in graph_nodes:
            raise GraphError(f"{path}: section {section!r} names no node of the graph "
                             f"(nodes: {', '.join(graph_nodes)}; '/**' = every node reading the file)")
        if section != "/**" and target != node:
            continue
        params = body.get("ros__parameters") if isinstance(body, dict) else None
        if not isinstance(params, dict) or set(body) != {"ros__parameters"}:
            raise GraphError(f"{path}: section {section!r} must hold exactly one mapping 'ros__parameters'")
        for key, value in _flatten(params).items():
            check_parameter(str(path), node, executable, key, value)


def load_preset(preset: str, overrides: dict[str, str] | None = None,
                config_dir: Path | None = None) -> Preset:
    """Load `preset` from graph.yaml, check every node, file and argument, and apply `overrides`
    (launch arguments as text, e.g. {"bag": "/data/run1"}). Raises GraphError naming the problem."""
    cdir = Path(config_dir) if config_dir else default_config_dir()
    gpath = cdir / "graph.yaml"
    data = _load_yaml(gpath)
    nodes_cfg = data.get("nodes") or {}
    presets_cfg = data.get("presets") or {}
    if preset not in presets_cfg:
        raise GraphError(f"{gpath}: unknown preset {preset!r} (known: {', '.join(presets_cfg)})")
    pcfg = presets_cfg[preset] or {}

    arguments: dict[str, Argument] = {}
    for name, acfg in {**(data.get("arguments") or {}), **(pcfg.get("arguments") or {})}.items():
        if not isinstance(acfg, dict) or "default" not in acfg:
            raise GraphError(f"{gpath}: argument {name!r} needs a 'default'")
        sets = []
        for target in acfg.get("sets", []):
            node, _, param = str(target).partition(".")
            if not param:
                raise GraphError(f"{gpath}: argument {name!r}: 'sets' entries are 'node.parameter', got {target!r}")
            if node not in nodes_cfg:
                raise GraphError(f"{gpath}: argument {name!r} sets a parameter of unknown node {node!r}")
            check_parameter(f"{gpath}: argument {name!r}", node, _executable(nodes_cfg, node), param,
                            acfg["default"])
            sets.append((node, param))
        arguments[name] = Argument(name, acfg["default"], acfg.get("description", ""), sets)
    values = {name: a.default for name, a in arguments.items()}
    for name, text in (overrides or {}).items():
        if name not in arguments:
            raise GraphError(f"unknown launch argument {name!r} for preset {preset!r} "
                             f"(known: {', '.join(sorted(arguments)) or 'none'})")
        values[name] = arguments[name].convert(str(text))
        for node, param in arguments[name].sets:
            check_parameter(f"argument {name}:={text}", node, _executable(nodes_cfg, node), param, values[name])

    specs = []
    for entry in pcfg.get("nodes") or []:
        name = entry if isinstance(entry, str) else entry.get("name")
        if name not in nodes_cfg:
            raise GraphError(f"{gpath}: preset {preset!r} names unknown node {name!r} "
                             f"(defined nodes: {', '.join(nodes_cfg)})")
        ncfg = dict(nodes_cfg[name] or {})
        if isinstance(entry, dict):  # per-preset additions
            ncfg["parameter_files"] = list(ncfg.get("parameter_files", [])) + list(entry.get("parameter_files", []))
            ncfg["remappings"] = {**(ncfg.get("remappings") or {}), **(entry.get("remappings") or {})}
            ncfg["parameters"] = {**(ncfg.get("parameters") or {}), **(entry.get("parameters") or {})}
        exe = ncfg.get("executable", name)
        if not node_module_exists(str(exe)):
            raise GraphError(f"{gpath}: node {name!r} has unknown executable {exe!r} "
                             f"(no module {NODES_PACKAGE}.{exe})")
        files = []
        for f in ncfg.get("parameter_files", []):
            p = cdir / f
            check_parameter_file(p, name, exe, nodes_cfg)  # missing, malformed or unknown keys stop the launch
            files.append(p)
        for key, value in (ncfg.get("parameters") or {}).items():
            check_parameter(str(gpath), name, exe, str(key), value)
        fmt = {k: format_value(v) for k, v in values.items()}
        try:
            # The preset's remappings apply to every node of it (e.g. the rig's camera topics), a node's own on top.
            rules = {**(pcfg.get("remappings") or {}), **(ncfg.get("remappings") or {})}
            remaps = {str(a).format(**fmt): str(b).format(**fmt) for a, b in rules.items()}
        except KeyError as e:
            raise GraphError(f"{gpath}: node {name!r}: remapping uses unknown argument {e}") from None
        unknown = set(ncfg) - NODE_KEYS
        if unknown:
            raise GraphError(f"{gpath}: node {name!r}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                             f"(known: {', '.join(sorted(NODE_KEYS))})")
        silent = float(ncfg.get("restart_when_silent_s", 0.0))
        if silent < 0 or (silent > 0 and not ncfg.get("respawn", False)):
            raise GraphError(f"{gpath}: node {name!r}: restart_when_silent_s must be >= 0 and needs respawn: true "
                             f"(got {silent}, respawn {ncfg.get('respawn', False)})")
        host = ncfg.get("host")
        if host not in HOST_ROLES:
            raise GraphError(f"{gpath}: node {name!r}: host must be one of {', '.join(HOST_ROLES)}, got {host!r}")
        specs.append(NodeSpec(name, exe, files, dict(ncfg.get("parameters") or {}), remaps,
                              bool(ncfg.get("respawn", False)), float(ncfg.get("respawn_delay", 1.0)), silent,
                              host))
    by_name = {s.name: s for s in specs}
    for arg in arguments.values():
        for node, param in arg.sets:
            if node in by_name:
                by_name[node].parameters[param] = values[arg.name]
    role = str(values.get("host", "all"))
    if role not in ("all", *HOST_ROLES):
        raise GraphError(f"host:={role}: must be all or one of {', '.join(HOST_ROLES)}")
    if role != "all":
        specs = [s for s in specs if s.host == role]
    return Preset(preset, specs, arguments, values)
