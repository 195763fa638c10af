"""Images and point clouds prepared for display, and the Foxglove message types as JSON.

The bridge sends every channel as JSON with a Foxglove schema name (foxglove.PointCloud, foxglove.RawImage,
...): the Foxglove app decodes these natively (bytes fields are base64, as its JSON schemas declare) and the
served web page decodes them with JSON.parse and atob, so one set of channels serves both viewers. The one
exception is the Gaussian model for the page's splat view: too large for JSON, it goes out binary
(`encode_splats`).
"""

from __future__ import annotations

import base64
import json
import struct

import cv2
import numpy as np

from surg3d_nodes.common.geometry import matrix_to_pose

MASK_TINT = (0, 220, 255)   # instrument pixels tinted cyan: far from tissue reds


def depth_to_mm16(depth_m: np.ndarray) -> np.ndarray:
    """float32 metres (NaN invalid) -> uint16 millimetres (0 invalid), saturating at 65.535 m.

    Foxglove renders 32FC1 black; 16UC1 millimetres displays with its colour maps."""
    d = np.asarray(depth_m, dtype=np.float32)
    valid = np.isfinite(d) & (d > 0)
    mm = np.where(valid, np.rint(d * 1000.0), 0.0)
    return np.clip(mm, 0, 65535).astype(np.uint16)


def overlay_mask(rgb: np.ndarray, mask: np.ndarray, alpha: float = 0.5,
                 tint: tuple[int, int, int] = MASK_TINT) -> np.ndarray:
    """RGB image with instrument pixels (mask > 127) blended towards `tint`; a mask of another size is
    resized (nearest) to the image."""
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"overlay_mask expects an HxWx3 uint8 image, got {rgb.dtype}{list(rgb.shape)}")
    if mask.ndim != 2:
        raise ValueError(f"overlay_mask expects an HxW mask, got shape {list(mask.shape)}")
    if mask.shape != rgb.shape[:2]:
        mask = cv2.resize(mask, (rgb.shape[1], rgb.shape[0]), interpolation=cv2.INTER_NEAREST)
    out = rgb.copy()
    sel = mask > 127
    out[sel] = (out[sel] * (1 - alpha) + np.asarray(tint, np.float32) * alpha).astype(np.uint8)
    return out


def subsample(n: int, max_points: int) -> np.ndarray:
    """Indices of at most `max_points` of `n` points, evenly strided (deterministic, keeps coverage)."""
    if n <= max_points:
        return np.arange(n)
    return np.linspace(0, n - 1, max_points).astype(np.int64)


SPLAT_MAGIC = b"SPL1"
SPLAT_HEADER = struct.Struct("<4sIIIIIq3f3f2f")   # 64 bytes, see encode_splats
SPLAT_BYTES = 17                                   # per splat: position 6, log-scales 3, rotation 4, RGBA 4


def encode_splats(means: np.ndarray, scales: np.ndarray, quats: np.ndarray, colors: np.ndarray,
                  opacities: np.ndarray, stamp_ns: int, update_id: int, chunk: int = 65536) -> list[bytes]:
    """The Gaussians of one model update as binary chunks of at most `chunk` splats (a viewer fills its
    buffer chunk by chunk and shows the update when all have arrived), 17 bytes a splat.

    Chunk layout (little-endian): header `SPLAT_HEADER` = magic "SPL1", update id, splats in the update,
    offset and count of this chunk, 0, the stamp shown (ns), bounding box min xyz and max xyz (float32 m),
    log-scale min and max; then planar arrays padded to 4 bytes: positions uint16[3n] quantised in the box
    (a 10 cm scene: 1.5 um steps), log-scales uint8[3n] between the two bounds, rotations int8[4n] (w x y z,
    normalised x 127), colours and opacity uint8[4n]."""
    n = len(means)
    lo = means.min(0) if n else np.zeros(3, np.float32)
    hi = means.max(0) if n else np.zeros(3, np.float32)
    pos = np.rint((means - lo) / np.maximum(hi - lo, 1e-9) * 65535).astype(np.uint16)
    ln = np.log(np.maximum(scales, 1e-9))
    ln_lo, ln_hi = (float(ln.min()), float(ln.max())) if n else (0.0, 0.0)
    lsc = np.rint((ln - ln_lo) / max(ln_hi - ln_lo, 1e-9) * 255).astype(np.uint8)
    q = quats / np.maximum(np.linalg.norm(quats, axis=1, keepdims=True), 1e-12)
    rot = np.rint(q * 127).astype(np.int8)
    rgba = np.rint(np.concatenate([colors, opacities[:, None]], 1).clip(0, 1) * 255).astype(np.uint8)

    def pad(b: bytes) -> bytes:
        return b + bytes(-len(b) % 4)

    out = []
    for start in range(0, max(n, 1), chunk):
        sl = slice(start, min(n, start + chunk))
        head = SPLAT_HEADER.pack(SPLAT_MAGIC, update_id, n, start, sl.stop - start, 0, int(stamp_ns), *lo, *hi,
                                 ln_lo, ln_hi)
        out.append(head + b"".join(pad(a[sl].tobytes()) for a in (pos, lsc, rot, rgba)))
    return out


def time_json(ns: int) -> dict:
    """Foxglove Time of integer nanoseconds."""
    return {"sec": int(ns) // 1_000_000_000, "nsec": int(ns) % 1_000_000_000}


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def pose_json(T: np.ndarray) -> dict:
    """Foxglove Pose of a 4x4 transform."""
    t, q = matrix_to_pose(T)
    return {"position": dict(zip("xyz", map(float, t), strict=True)),
            "orientation": dict(zip("xyzw", map(float, q), strict=True))}


def point_cloud_json(xyz: np.ndarray, rgb: np.ndarray | None, alpha: np.ndarray | None, stamp_ns: int,
                     frame_id: str) -> dict:
    """foxglove.PointCloud: float32 x, y, z and uint8 red, green, blue, alpha (16 bytes per point)."""
    n = len(xyz)
    rec = np.zeros(n, dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"),
                             ("blue", "u1"), ("alpha", "u1")])
    for i, k in enumerate("xyz"):
        rec[k] = xyz[:, i]
    if rgb is not None:
        rec["red"], rec["green"], rec["blue"] = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    else:
        rec["red"] = rec["green"] = rec["blue"] = 200
    rec["alpha"] = 255 if alpha is None else np.clip(np.asarray(alpha) * 255.0, 0, 255).astype(np.uint8)
    fields = [{"name": k, "offset": o, "type": t} for k, o, t in
              [("x", 0, 7), ("y", 4, 7), ("z", 8, 7), ("red", 12, 1), ("green", 13, 1), ("blue", 14, 1),
               ("alpha", 15, 1)]]  # numeric types: 1 UINT8, 7 FLOAT32 (foxglove.NumericType)
    return {"timestamp": time_json(stamp_ns), "frame_id": frame_id, "pose": pose_json(np.eye(4)),
            "point_stride": 16, "fields": fields, "data": _b64(rec.tobytes())}


def raw_image_json(arr: np.ndarray, encoding: str, stamp_ns: int, frame_id: str) -> dict:
    """foxglove.RawImage (rgb8, mono8 or 16UC1, little-endian)."""
    arr = np.ascontiguousarray(arr)
    h, w = arr.shape[:2]
    step = arr.strides[0]
    return {"timestamp": time_json(stamp_ns), "frame_id": frame_id, "width": int(w), "height": int(h),
            "encoding": encoding, "step": int(step),
            "data": _b64(arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes())}


def jpeg_json(rgb: np.ndarray, stamp_ns: int, frame_id: str, quality: int = 85) -> dict:
    """foxglove.CompressedImage (JPEG) of an RGB image: a tenth of the bytes of raw and decoded natively by
    browsers."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError(f"JPEG encoding failed for an image of shape {list(rgb.shape)}")
    return {"timestamp": time_json(stamp_ns), "frame_id": frame_id, "format": "jpeg",
            "data": _b64(buf.tobytes())}


def camera_calibration_json(K: np.ndarray, width: int, height: int, stamp_ns: int, frame_id: str) -> dict:
    """foxglove.CameraCalibration of a pinhole camera (no distortion: display only)."""
    K = np.asarray(K, dtype=np.float64)
    P = np.hstack([K, np.zeros((3, 1))])
    return {"timestamp": time_json(stamp_ns), "frame_id": frame_id, "width": int(width),
            "height": int(height), "distortion_model": "", "D": [], "K": [float(v) for v in K.ravel()],
            "R": [1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0], "P": [float(v) for v in P.ravel()]}


def frame_transform_json(T: np.ndarray, stamp_ns: int, parent: str, child: str) -> dict:
    """One foxglove.FrameTransform (parent <- child)."""
    p = pose_json(T)
    return {"timestamp": time_json(stamp_ns), "parent_frame_id": parent, "child_frame_id": child,
            "translation": p["position"], "rotation": p["orientation"]}


def roi_scene_json(rois: list, stamp_ns: int, frame_id: str) -> dict:
    """foxglove.SceneUpdate with one entity per region of interest (a translucent sphere and its label);
    `rois` are objects with id, center, radius, label. Entities not listed are deleted first."""
    ident = {"orientation": {"x": 0, "y": 0, "z": 0, "w": 1}}
    entities = []
    for r in rois:
        pos = dict(zip("xyz", map(float, r.center), strict=True))
        entities.append({
            "timestamp": time_json(stamp_ns), "frame_id": frame_id, "id": f"roi{r.id}",
            "lifetime": time_json(0), "frame_locked": False, "metadata": [{"key": "label", "value": r.label}],
            "spheres": [{"pose": {"position": pos, **ident}, "size": {k: 2 * float(r.radius) for k in "xyz"},
                         "color": {"r": 1.0, "g": 0.85, "b": 0.0, "a": 0.6}}],
            "texts": [{"pose": {"position": pos, **ident}, "billboard": True, "font_size": 14,
                       "scale_invariant": True, "color": {"r": 1, "g": 1, "b": 1, "a": 1},
                       "text": f"#{r.id} {r.label}".strip()}]})
    return {"deletions": [{"timestamp": time_json(stamp_ns), "type": 1, "id": ""}], "entities": entities}


def json_schema(name: str) -> dict:
    """A JSON schema for the Foxglove type `name`: enough for the Foxglove app to find the base64 fields."""
    b64 = {"type": "string", "contentEncoding": "base64"}
    props = {"foxglove.PointCloud": {"data": b64}, "foxglove.RawImage": {"data": b64},
             "foxglove.CompressedImage": {"data": b64}}.get(name, {})
    return {"title": name, "type": "object", "properties": props}


def encode(msg: dict) -> bytes:
    """A JSON message as the bytes a channel logs."""
    return json.dumps(msg, separators=(",", ":")).encode()
