"""Camera calibration files in the ROS camera_calibration / camera_info_manager YAML format.

That is what `ros2 run camera_calibration cameracalibrator` writes (left.yaml, right.yaml) and what
dvrk_video's `camera_info_url` points to; a file overrides an uncalibrated CameraInfo on the wire.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import yaml

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.files import read_yaml_mapping

_MATRICES = {"camera_matrix": (3, 3), "distortion_coefficients": None, "rectification_matrix": (3, 3),
             "projection_matrix": (3, 4)}


def load_camera_yaml(path: str | os.PathLike, frame_id: str = "camera") -> CameraModel:
    """CameraModel of a camera_calibration YAML file; raises ValueError naming the file and the bad field."""
    p = Path(path)
    data = read_yaml_mapping(p, expected="a camera_calibration mapping (image_width, camera_matrix, ...)")
    mats = {}
    for key, shape in _MATRICES.items():
        entry = data.get(key)
        if key == "rectification_matrix" and entry is None:
            mats[key] = np.eye(3)
            continue
        if key == "projection_matrix" and entry is None:
            mats[key] = None
            continue
        if not isinstance(entry, dict) or "data" not in entry:
            raise ValueError(f"{p}: missing '{key}: {{rows, cols, data}}'")
        arr = np.asarray(entry["data"], dtype=np.float64)
        if shape is not None and arr.size != shape[0] * shape[1]:
            raise ValueError(f"{p}: {key} has {arr.size} values, expected {shape[0] * shape[1]}")
        mats[key] = arr.reshape(shape) if shape is not None else arr.ravel()
    try:
        width, height = int(data["image_width"]), int(data["image_height"])
    except (KeyError, TypeError, ValueError):
        raise ValueError(f"{p}: image_width and image_height must be integers") from None
    try:
        return CameraModel(width, height, mats["camera_matrix"], mats["distortion_coefficients"],
                           mats["rectification_matrix"], mats["projection_matrix"],
                           str(data.get("distortion_model", "plumb_bob")), frame_id)
    except ValueError as e:
        raise ValueError(f"{p}: {e}") from None


def save_camera_yaml(cam: CameraModel, path: str | os.PathLike, name: str = "camera") -> Path:
    """Write a CameraModel as a camera_calibration YAML file (the inverse of load_camera_yaml)."""
    def mat(a: np.ndarray) -> dict:
        a = np.atleast_2d(a)
        return {"rows": int(a.shape[0]), "cols": int(a.shape[1]), "data": [float(x) for x in a.ravel()]}

    data = {"image_width": cam.width, "image_height": cam.height, "camera_name": name,
            "camera_matrix": mat(cam.K), "distortion_model": cam.distortion_model,
            "distortion_coefficients": mat(cam.D.reshape(1, -1)), "rectification_matrix": mat(cam.R),
            "projection_matrix": mat(cam.P)}
    p = Path(path)
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p
