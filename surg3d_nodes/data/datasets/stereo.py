"""Raw stereo image folders + OpenCV calibration YAML (M1, D1, M2, D2, R, T in mm), e.g. SurgT / SCARED.

Layout: ROOT/left/*.png, ROOT/right/*.png (matched by sorted order, same count and size) and
ROOT/calibration.yaml written by cv2.FileStorage. The cameras carry the raw K, D plus R, P from
cv2.stereoRectify, so consumers rectify with them (ROS image_proc semantics).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.data.datasets.base import (
    DEFAULT_START_NS,
    DatasetError,
    DatasetFrame,
    DatasetReader,
    check_folder,
    image_size,
    list_images,
    read_rgb,
    require_dir,
    require_file,
    stamp_of,
)
from surg3d_nodes.data.datasets.calib import raw_stereo_cameras

MM = 1e-3


def read_opencv_calibration(path: Path) -> dict[str, np.ndarray]:
    """M1, D1, M2, D2, R, T (T converted from mm to metres) of an OpenCV FileStorage YAML."""
    require_file(path, "stereo calibration")
    try:
        fs = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    except (cv2.error, SystemError) as e:    # OpenCV's parser surfaces as SystemError in Python
        raise DatasetError(f"malformed OpenCV calibration YAML {path}: {e}") from e
    if not fs.isOpened():
        raise DatasetError(f"cannot open OpenCV calibration YAML {path}")
    shapes = {"M1": (3, 3), "M2": (3, 3), "R": (3, 3), "T": (3,), "D1": None, "D2": None}
    out = {}
    for key, shape in shapes.items():
        node = fs.getNode(key)
        mat = None if node.empty() else node.mat()
        if mat is None:
            raise DatasetError(f"{path}: missing matrix {key} "
                               "(expected M1, D1, M2, D2, R, T as opencv-matrix)")
        mat = np.asarray(mat, np.float64)
        if shape is not None and mat.size != int(np.prod(shape)):
            raise DatasetError(f"{path}: {key} has {mat.size} values, expected {int(np.prod(shape))}")
        if key in ("D1", "D2") and mat.size not in (4, 5, 8):
            raise DatasetError(f"{path}: {key} has {mat.size} coefficients, expected 4, 5 or 8")
        if not np.all(np.isfinite(mat)):
            raise DatasetError(f"{path}: {key} has non-finite values")
        out[key] = mat.reshape(shape) if shape is not None else mat.ravel()
    fs.release()
    out["T"] = out["T"] * MM
    return out


class StereoFolderReader(DatasetReader):
    """Raw stereo pairs from left/ and right/ folders with an OpenCV calibration; stamps follow `fps`."""

    kind = "stereo"

    def __init__(self, root: str | os.PathLike, calibration: str = "calibration.yaml", fps: float = 30.0,
                 start_ns: int = DEFAULT_START_NS, alpha: float = 0.0) -> None:
        self.root = require_dir(Path(root), "stereo clip")
        if not fps > 0:
            raise DatasetError(f"fps must be > 0, got {fps}")
        self.fps, self.start_ns = float(fps), int(start_ns)
        calib_path = Path(calibration) if Path(calibration).is_absolute() else self.root / calibration
        self.calib = read_opencv_calibration(calib_path)
        self.left_files = list_images(self.root / "left", "stereo left images (left/)")
        self.right_files = list_images(self.root / "right", "stereo right images (right/)")
        size = image_size(self.left_files[0])
        ref = str(self.root / "left")
        check_folder(self.left_files, len(self.left_files), size, "stereo left images", ref)
        check_folder(self.right_files, len(self.left_files), size, "stereo right images", ref)
        c = self.calib
        try:
            self.cam_left, self.cam_right = raw_stereo_cameras(c["M1"], c["D1"], c["M2"], c["D2"], c["R"],
                                                               c["T"], size, alpha=alpha)
        except ValueError as e:
            raise DatasetError(f"{calib_path}: {e}") from e

    def __len__(self) -> int:
        return len(self.left_files)

    def frame(self, i: int) -> DatasetFrame:
        """Raw (unrectified) pair i."""
        return DatasetFrame(index=i, stamp_ns=stamp_of(i, self.fps, self.start_ns),
                            left=read_rgb(self.left_files[i]), right=read_rgb(self.right_files[i]),
                            cam_left=self.cam_left, cam_right=self.cam_right)
