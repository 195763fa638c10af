"""Conversion between ROS 2 messages and the core's numpy / CameraModel types: the only place it happens.

Images are filled with `arr.tobytes()` (assigning a numpy array to `msg.data` costs ~0.5 s per 4 MB) and read
with `np.frombuffer` (no copy). Every reader validates the message and raises `MessageError` naming the problem.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import KeyValue
from geometry_msgs.msg import Point, Pose, PoseStamped, TransformStamped
from sensor_msgs.msg import CameraInfo, Image, JointState, PointCloud2, PointField
from std_msgs.msg import Header

from surg3d_msgs.msg import RegionOfInterest
from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.geometry import matrix_to_pose, pose_matrix
from surg3d_nodes.recon.regions import Region


class MessageError(ValueError):
    """A message that cannot be used: wrong encoding, size, non-finite values, ..."""


# encoding -> (numpy dtype, channels)
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "rgba8": (np.dtype(np.uint8), 4),
    "bgra8": (np.dtype(np.uint8), 4),
    "mono8": (np.dtype(np.uint8), 1),
    "8UC1": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}


def ns_to_stamp(ns: int) -> Time:
    """builtin_interfaces/Time from integer nanoseconds."""
    ns = int(ns)
    return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def stamp_to_ns(stamp: Time) -> int:
    """Integer nanoseconds of a builtin_interfaces/Time."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def header(stamp_ns: int, frame_id: str) -> Header:
    """std_msgs/Header with a stamp in nanoseconds."""
    return Header(stamp=ns_to_stamp(stamp_ns), frame_id=frame_id)


def image_to_msg(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> Image:
    """sensor_msgs/Image from an HxW or HxWxC array whose dtype and channels match `encoding`."""
    if encoding not in ENCODINGS:
        raise MessageError(f"unsupported image encoding {encoding!r}")
    dtype, ch = ENCODINGS[encoding]
    arr = np.ascontiguousarray(arr)
    if arr.dtype != dtype or (arr.shape[2] if arr.ndim == 3 else 1) != ch or arr.ndim not in (2, 3):
        raise MessageError(f"array {arr.dtype}{list(arr.shape)} does not match encoding {encoding}")
    h, w = arr.shape[:2]
    return Image(header=header(stamp_ns, frame_id), height=h, width=w, encoding=encoding,
                 is_bigendian=0, step=w * ch * dtype.itemsize, data=arr.tobytes())


def msg_to_image(msg: Image, expect: str | tuple[str, ...] | None = None) -> np.ndarray:
    """A read-only numpy view of an Image (HxW or HxWxC); bgr(a)8 is returned as rgb(a)8 (copied).

    `expect`: the encodings the caller accepts (after the bgr -> rgb conversion); others raise MessageError.
    """
    enc = msg.encoding
    if enc not in ENCODINGS:
        raise MessageError(f"unsupported image encoding {enc!r} (supported: {', '.join(ENCODINGS)})")
    dtype, ch = ENCODINGS[enc]
    out_enc = {"bgr8": "rgb8", "bgra8": "rgba8", "8UC1": "mono8", "mono16": "16UC1"}.get(enc, enc)
    allowed = (expect,) if isinstance(expect, str) else expect
    if allowed is not None and out_enc not in allowed:
        raise MessageError(f"image encoding {enc!r} where {' or '.join(allowed)} was expected")
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    row = w * ch * dtype.itemsize
    if h <= 0 or w <= 0:
        raise MessageError(f"empty image {w}x{h}")
    if step < row:
        raise MessageError(f"image step {step} is smaller than a row ({w} px x {ch * dtype.itemsize} B)")
    if len(msg.data) != step * h:
        raise MessageError(f"image data has {len(msg.data)} bytes, expected {step * h} for {w}x{h} {enc}")
    buf = np.frombuffer(msg.data, dtype=np.uint8).reshape(h, step)[:, :row]
    bo = ">" if msg.is_bigendian else "<"
    arr = buf.view(dtype.newbyteorder(bo) if dtype.itemsize > 1 else dtype)
    arr = arr.reshape((h, w, ch) if ch > 1 else (h, w))
    if arr.dtype.byteorder == ">":
        arr = arr.astype(dtype)
    if enc in ("bgr8", "bgra8"):
        arr = arr[..., [2, 1, 0] + ([3] if ch == 4 else [])]
    return arr


def camera_to_msg(cam: CameraModel, stamp_ns: int) -> CameraInfo:
    """sensor_msgs/CameraInfo of a CameraModel (REP-104 fields)."""
    return CameraInfo(header=header(stamp_ns, cam.frame_id), height=cam.height, width=cam.width,
                      distortion_model=cam.distortion_model, d=[float(x) for x in cam.D],
                      k=[float(x) for x in cam.K.ravel()], r=[float(x) for x in cam.R.ravel()],
                      p=[float(x) for x in cam.P.ravel()])


def msg_to_camera(msg: CameraInfo) -> CameraModel:
    """CameraModel of a CameraInfo; an uncalibrated (all-zero K) or non-finite one raises MessageError."""
    K = np.array(msg.k, dtype=np.float64).reshape(3, 3)
    if not np.any(K):
        raise MessageError(f"camera_info of frame {msg.header.frame_id!r} is uncalibrated (K is all zeros)")
    P = np.array(msg.p, dtype=np.float64).reshape(3, 4)
    R = np.array(msg.r, dtype=np.float64).reshape(3, 3)
    if not np.any(P):  # some drivers leave P empty for an unrectified camera
        P = np.hstack([K, np.zeros((3, 1))])
    if not np.any(R):
        R = np.eye(3)
    try:
        return CameraModel(msg.width, msg.height, K, np.array(msg.d, dtype=np.float64), R, P,
                           msg.distortion_model or "plumb_bob", msg.header.frame_id)
    except ValueError as e:
        raise MessageError(f"camera_info of frame {msg.header.frame_id!r}: {e}") from e


def pose_to_msg(T: np.ndarray, stamp_ns: int, frame_id: str) -> PoseStamped:
    """geometry_msgs/PoseStamped of a 4x4 transform."""
    msg = PoseStamped(header=header(stamp_ns, frame_id))
    t, q = matrix_to_pose(T)
    msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in t)
    o = msg.pose.orientation
    o.x, o.y, o.z, o.w = (float(v) for v in q)
    return msg


def msg_to_pose(msg: PoseStamped | Pose) -> np.ndarray:
    """4x4 transform of a Pose or PoseStamped; NaN or a zero quaternion raises MessageError."""
    p = msg.pose if isinstance(msg, PoseStamped) else msg
    t = [p.position.x, p.position.y, p.position.z]
    q = [p.orientation.x, p.orientation.y, p.orientation.z, p.orientation.w]
    try:
        return pose_matrix(t, q)
    except ValueError as e:
        raise MessageError(f"pose: {e}") from e


def joint_state_to_msg(names: Sequence[str], positions: Sequence[float], stamp_ns: int) -> JointState:
    """sensor_msgs/JointState with joint positions only (velocity and effort empty), as dVRK measured_js."""
    if len(names) != len(positions):
        raise MessageError(f"{len(names)} joint names for {len(positions)} positions")
    return JointState(header=header(stamp_ns, ""), name=list(names), position=[float(v) for v in positions])


def msg_to_joint_state(msg: JointState) -> tuple[list[str], np.ndarray]:
    """(joint names, positions) of a JointState; a name/position count mismatch raises MessageError."""
    if len(msg.name) != len(msg.position):
        raise MessageError(f"joint state with {len(msg.name)} names but {len(msg.position)} positions")
    return list(msg.name), np.asarray(msg.position, dtype=np.float64)


def transform_msg(T: np.ndarray, stamp_ns: int, parent: str, child: str) -> TransformStamped:
    """geometry_msgs/TransformStamped (for /tf) of a 4x4 transform parent <- child."""
    msg = TransformStamped(header=header(stamp_ns, parent), child_frame_id=child)
    t, q = matrix_to_pose(T)
    tr, ro = msg.transform.translation, msg.transform.rotation
    tr.x, tr.y, tr.z = (float(v) for v in t)
    ro.x, ro.y, ro.z, ro.w = (float(v) for v in q)
    return msg


def pack_rgb(rgb: np.ndarray) -> np.ndarray:
    """Nx3 uint8 colours packed into the float32 `rgb` field RViz and Foxglove read (0x00RRGGBB bits)."""
    rgb = np.asarray(rgb, dtype=np.uint32)
    return ((rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]).view(np.float32)


def unpack_rgb(packed: np.ndarray) -> np.ndarray:
    """Inverse of pack_rgb: Nx3 uint8."""
    u = np.ascontiguousarray(packed, dtype=np.float32).view(np.uint32)
    return np.stack([(u >> 16) & 255, (u >> 8) & 255, u & 255], axis=1).astype(np.uint8)


def pointcloud_to_msg(fields: dict[str, np.ndarray], stamp_ns: int, frame_id: str) -> PointCloud2:
    """Unorganised PointCloud2 of float32 fields, each an array of N values (e.g. x, y, z, rgb, opacity)."""
    names = list(fields)
    n = len(fields[names[0]]) if names else 0
    rec = np.empty(n, dtype=[(k, np.float32) for k in names])
    for k in names:
        v = np.asarray(fields[k])
        if v.shape != (n,):
            raise MessageError(f"point field {k!r} has shape {v.shape}, expected ({n},)")
        rec[k] = v.view(np.float32) if v.dtype == np.float32 else v.astype(np.float32)
    return PointCloud2(header=header(stamp_ns, frame_id), height=1, width=n,
                       fields=[PointField(name=k, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                               for i, k in enumerate(names)],
                       is_bigendian=False, point_step=4 * len(names), row_step=4 * len(names) * n,
                       data=rec.tobytes(), is_dense=True)


_PF_DTYPES = {PointField.INT8: "i1", PointField.UINT8: "u1", PointField.INT16: "i2", PointField.UINT16: "u2",
              PointField.INT32: "i4", PointField.UINT32: "u4", PointField.FLOAT32: "f4", PointField.FLOAT64: "f8"}


def msg_to_pointcloud(msg: PointCloud2) -> np.ndarray:
    """Structured numpy array (one record per point) of a PointCloud2 with scalar fields."""
    bo = ">" if msg.is_bigendian else "<"
    try:
        dtype = np.dtype({"names": [f.name for f in msg.fields],
                          "formats": [bo + _PF_DTYPES[f.datatype] for f in msg.fields],
                          "offsets": [f.offset for f in msg.fields], "itemsize": msg.point_step})
    except KeyError as e:
        raise MessageError(f"point cloud field with unknown datatype {e}") from e
    n = int(msg.width) * int(msg.height)
    if len(msg.data) < n * msg.point_step:
        raise MessageError(f"point cloud data has {len(msg.data)} bytes, expected {n * msg.point_step}")
    return np.frombuffer(msg.data, dtype=dtype, count=n)


def key_values(values: dict[str, object]) -> list[KeyValue]:
    """diagnostic_msgs/KeyValue list of a dict (values formatted with str)."""
    return [KeyValue(key=str(k), value=f"{v:.4g}" if isinstance(v, float) else str(v)) for k, v in values.items()]


def region_to_msg(region: Region, stamp_ns: int, frame_id: str, label: str = "") -> RegionOfInterest:
    """A region of interest on the regions topic (radius <= 0: delete region `id`, or all with id 0)."""
    c = region.center
    return RegionOfInterest(header=header(stamp_ns, frame_id), id=int(region.id),
                            center=Point(x=float(c[0]), y=float(c[1]), z=float(c[2])), radius=float(region.radius),
                            label=label)


def msg_to_region(msg: RegionOfInterest, world_frame: str) -> Region:
    """The core's Region of a RegionOfInterest (in `world_frame`, finite)."""
    if msg.header.frame_id not in ("", world_frame):
        raise MessageError(f"region in frame {msg.header.frame_id!r}, expected {world_frame!r}")
    c = (msg.center.x, msg.center.y, msg.center.z)
    if not all(np.isfinite(c)) or not np.isfinite(msg.radius):
        raise MessageError(f"region #{msg.id} has a non-finite centre or radius")
    return Region(int(msg.id), c, float(msg.radius))
