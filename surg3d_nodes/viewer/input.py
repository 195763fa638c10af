"""Validation of everything a viewer (web UI, Foxglove app) sends; the persistent region-of-interest store.

Viewer input arrives as decoded JSON (dicts, lists, numbers). Each parser either returns a clean value or
raises `InputError` with a reason fit to show the operator; nothing is changed before validation passed.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from surg3d_nodes.common.geometry import pose_matrix
from surg3d_nodes.common.params import ParamSpec

MAX_COORD_M = 10.0      # a clicked point or viewpoint farther than this from the origin is a mistake
MAX_IMAGE_SIDE = 4096
MAX_LABEL = 64


class InputError(ValueError):
    """A viewer input that is refused; the message says why."""


def finite(value: Any, name: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    """`value` as a float if it is a finite real number in [lo, hi] (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"{name} must be a number, got {type(value).__name__} {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise InputError(f"{name} must be finite, got {value!r}")
    if not lo <= v <= hi:
        raise InputError(f"{name} = {v:g} is outside [{lo:g}, {hi:g}]")
    return v


def integer(value: Any, name: str, lo: int, hi: int) -> int:
    """`value` as an int in [lo, hi]; a float is accepted only when it is whole (JSON has one number type)."""
    v = finite(value, name, lo, hi)
    if v != int(v):
        raise InputError(f"{name} must be an integer, got {value!r}")
    return int(v)


def _mapping(obj: Any, what: str) -> dict:
    if not isinstance(obj, dict):
        raise InputError(f"{what} must be a JSON object, got {type(obj).__name__}")
    return obj


def vector3(obj: Any, name: str, bound: float = MAX_COORD_M) -> tuple[float, float, float]:
    """A point given as {"x","y","z"} or [x, y, z], each finite and within +-bound."""
    if isinstance(obj, dict):
        missing = [k for k in "xyz" if k not in obj]
        if missing:
            raise InputError(f"{name} lacks {', '.join(missing)}")
        vals = [obj[k] for k in "xyz"]
    elif isinstance(obj, (list, tuple)) and len(obj) == 3:
        vals = list(obj)
    else:
        raise InputError(f"{name} must be {{x, y, z}} or [x, y, z], got {obj!r}")
    x, y, z = (finite(v, f"{name}.{k}", -bound, bound) for v, k in zip(vals, "xyz", strict=True))
    return x, y, z


def pose(obj: Any, name: str = "pose") -> np.ndarray:
    """4x4 camera-to-world transform of {"position": {x,y,z}, "orientation": {x,y,z,w}} (finite, non-zero
    quaternion, position within MAX_COORD_M)."""
    p = _mapping(obj, name)
    if "position" not in p or "orientation" not in p:
        raise InputError(f"{name} needs 'position' and 'orientation'")
    t = vector3(p["position"], f"{name}.position")
    o = p["orientation"]
    if not isinstance(o, dict) or any(k not in o for k in "xyzw"):
        raise InputError(f"{name}.orientation must be {{x, y, z, w}}, got {o!r}")
    q = [finite(o[k], f"{name}.orientation.{k}", -1e3, 1e3) for k in "xyzw"]
    if math.sqrt(sum(v * v for v in q)) < 1e-6:
        raise InputError(f"{name}.orientation is a zero quaternion")
    return pose_matrix(t, q)


@dataclass(frozen=True)
class RoiRequest:
    """A validated request to mark a region of interest."""

    center: tuple[float, float, float]
    radius: float
    label: str


def parse_roi(obj: Any, default_radius: float = 0.005) -> RoiRequest:
    """A region of interest from {"center": point, "radius": m, "label": str} or a geometry_msgs/PointStamped
    as JSON ({"point": {x, y, z}}, what Foxglove's publish-point tool sends)."""
    d = _mapping(obj, "region of interest")
    if "center" in d:
        center = vector3(d["center"], "center")
    elif "point" in d:
        center = vector3(d["point"], "point")
    else:
        raise InputError("region of interest needs 'center' (or 'point')")
    radius = finite(d.get("radius", default_radius), "radius", 1e-4, 0.5)
    label = d.get("label", "")
    if not isinstance(label, str) or len(label) > MAX_LABEL or any(ord(c) < 32 for c in label):
        raise InputError(f"label must be printable text of at most {MAX_LABEL} characters")
    return RoiRequest(center, radius, label)


@dataclass(frozen=True)
class ViewSpec:
    """A validated virtual-viewpoint request."""

    T_world_camera: np.ndarray
    width: int
    height: int
    deoccluded: bool


def parse_view_request(obj: Any) -> ViewSpec:
    """A virtual viewpoint from {"pose": {...}, "width": px, "height": px, "deoccluded": bool} (also a
    geometry_msgs/PoseStamped as JSON: width/height default to 0 = live camera size)."""
    d = _mapping(obj, "view request")
    if "pose" not in d:
        raise InputError("view request needs 'pose'")
    T = pose(d["pose"])
    w = integer(d.get("width", 0), "width", 0, MAX_IMAGE_SIDE)
    h = integer(d.get("height", 0), "height", 0, MAX_IMAGE_SIDE)
    if (w == 0) != (h == 0):
        raise InputError(f"width and height must both be 0 (live size) or both positive, got {w}x{h}")
    deocc = d.get("deoccluded", False)
    if not isinstance(deocc, bool):
        raise InputError(f"deoccluded must be true or false, got {deocc!r}")
    return ViewSpec(T, w, h, deocc)


def parse_splat_time(obj: Any) -> int:
    """The moment the splat view shows, {"stamp_ns": n} (0: the newest; JSON numbers round it to ~0.3 us)."""
    d = _mapping(obj, "splat time")
    if set(d) != {"stamp_ns"}:
        raise InputError(f'expected {{"stamp_ns": <ns, 0 = newest>}}, got keys {sorted(d)}')
    return integer(d["stamp_ns"], "stamp_ns", 0, 2**63 - 1)


SAVE_KINDS = ("ply", "checkpoint")


def parse_save(obj: Any) -> tuple[str, str]:
    """(kind, path) of a save request {"kind": "ply"|"checkpoint", "path": ""}; an empty path lets the
    trainer choose. Paths are plain text without NUL or newlines."""
    d = _mapping(obj if obj is not None else {}, "save request")
    unknown = set(d) - {"kind", "path"}
    if unknown:
        raise InputError(f"save request has unknown fields {sorted(unknown)}")
    kind = d.get("kind", "ply")
    if kind not in SAVE_KINDS:
        raise InputError(f"save kind must be one of {', '.join(SAVE_KINDS)}, got {kind!r}")
    path = d.get("path", "")
    if not isinstance(path, str) or len(path) > 1024 or any(c in path for c in "\0\n\r"):
        raise InputError("save path must be text of at most 1024 characters without NUL or newlines")
    return kind, path


def parse_empty(obj: Any, what: str) -> None:
    """Requests of services without arguments (pause, resume, reset) must be empty objects."""
    if obj not in (None, {}):
        raise InputError(f"{what} takes no arguments, got {obj!r}")


@dataclass(frozen=True)
class Tunable:
    """A live-tunable parameter of another node: its type and allowed range."""

    node: str
    name: str
    kind: type          # int or float
    lo: float
    hi: float
    description: str

    @property
    def key(self) -> str:
        """The name the viewer sees: node.parameter."""
        return f"{self.node}.{self.name}"

    def check(self, value: Any) -> int | float:
        """The value converted to this parameter's type, or InputError naming the parameter and range."""
        if self.kind is int:
            return integer(value, self.key, int(self.lo), int(self.hi))
        return finite(value, self.key, self.lo, self.hi)


def tunables(names: Sequence[str], schema: Callable[[str], dict[str, ParamSpec]]) -> dict[str, Tunable]:
    """The tunables `node.parameter` (the bridge's `tunables` parameter) with type, range and description from
    the owning node's own declaration, `schema(node)` (nodes are named after their executables). Only a live
    number with a range can be offered; anything else is an InputError naming it."""
    out: dict[str, Tunable] = {}
    for key in names:
        node, _, name = key.partition(".")
        try:
            spec = schema(node)[name]
        except KeyError:
            raise InputError(f"tunable {key!r}: no such node parameter (expected node.parameter)") from None
        if not spec.live or spec.kind not in (int, float) or spec.low is None or spec.high is None:
            raise InputError(f"tunable {key!r}: not a live number with a range in {node}'s declaration")
        out[key] = Tunable(node, name, spec.kind, spec.low, spec.high, spec.description)
    return out


@dataclass(frozen=True)
class Roi:
    """A stored region of interest (world frame, metres)."""

    id: int
    center: tuple[float, float, float]
    radius: float
    label: str
    stamp_ns: int


class RoiStore:
    """Regions of interest kept in a JSON file (written to a temporary name, then renamed, so a crash never
    leaves a half-written file). Thread-safe."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self.rois: dict[int, Roi] = {}
        if self.path.exists():
            self.rois = {r.id: r for r in self._read()}

    def _read(self) -> list[Roi]:
        try:
            data = json.loads(self.path.read_text())
            items = data["rois"]
            return [Roi(int(d["id"]), tuple(float(v) for v in d["center"]), float(d["radius"]),
                        str(d["label"]), int(d["stamp_ns"])) for d in items]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise InputError(f"{self.path}: not a region-of-interest file ({e!r}); expected "
                             '{"rois": [{"id", "center", "radius", "label", "stamp_ns"}]}') from None

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps({"rois": [asdict(r) for r in sorted(self.rois.values(), key=lambda r: r.id)]},
                          indent=1)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".rois.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def add(self, req: RoiRequest, stamp_ns: int) -> Roi:
        """Store a new region (next free id) and persist the file; returns it."""
        with self._lock:
            roi = Roi(max(self.rois, default=0) + 1, req.center, req.radius, req.label, int(stamp_ns))
            self.rois[roi.id] = roi
            try:
                self._write()
            except OSError:
                del self.rois[roi.id]
                raise
            return roi

    def remove(self, roi_id: int) -> Roi:
        """Delete region `roi_id` (InputError when unknown) and persist the file."""
        with self._lock:
            if roi_id not in self.rois:
                raise InputError(f"no region of interest with id {roi_id} (known: {sorted(self.rois)})")
            roi = self.rois.pop(roi_id)
            self._write()
            return roi

    def clear(self) -> int:
        """Delete every region; returns how many there were."""
        with self._lock:
            n = len(self.rois)
            self.rois.clear()
            self._write()
            return n

    def all(self) -> list[Roi]:
        """The stored regions by id."""
        with self._lock:
            return sorted(self.rois.values(), key=lambda r: r.id)
