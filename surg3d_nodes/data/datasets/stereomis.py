"""StereoMIS sequences: stacked stereo video + StereoCalibration.ini + TUM ground-truth poses.

Per sequence folder: one .mp4 whose frames hold the left image on top of the right image,
StereoCalibration.ini ([StereoLeft] / [StereoRight]: res_x, res_y, fc_x, fc_y, cc_x, cc_y, kc_0..kc_7 (OpenCV
rational model k1 k2 p1 p2 k3 k4 k5 k6); [StereoRight] also R_0..R_8 (row-major) and T_0..T_2 in mm, mapping
left-camera points into the right camera), optional groundtruth.txt (TUM: `t tx ty tz qx qy qz qw`, one row
per video frame, translation in metres: the dataset authors' loader multiplies it by 1000 to get mm) and
optional masks/NNNNNNl.png (left tool masks, 255 = tool). The cameras are the raw pair with R, P from
cv2.stereoRectify, like a CameraInfo straight from a calibrated driver.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.geometry import pose_matrix
from surg3d_nodes.data.datasets.base import (
    DEFAULT_START_NS,
    DatasetError,
    DatasetFrame,
    DatasetReader,
    image_size,
    read_mask,
    require_dir,
    require_file,
    stamp_of,
)
from surg3d_nodes.data.datasets.calib import raw_stereo_cameras

MM = 1e-3


def read_stereomis_ini(path: Path) -> dict:
    """Calibration of StereoCalibration.ini: size, K1, D1, K2, D2, R, T (metres)."""
    require_file(path, "StereoMIS calibration")
    cp = configparser.ConfigParser()
    try:
        cp.read(path)
    except configparser.Error as e:
        raise DatasetError(f"malformed ini {path}: {e}") from e

    def num(section: str, key: str) -> float:
        if section not in cp:
            raise DatasetError(f"{path}: missing section [{section}]")
        if key not in cp[section]:
            raise DatasetError(f"{path}: missing key {key} in [{section}]")
        try:
            return float(cp[section][key])
        except ValueError as e:
            raise DatasetError(f"{path}: [{section}] {key} = {cp[section][key]!r} is not a number") from e

    cams = {}
    for side in ("StereoLeft", "StereoRight"):
        K = np.array([[num(side, "fc_x"), 0, num(side, "cc_x")], [0, num(side, "fc_y"), num(side, "cc_y")],
                      [0, 0, 1]])
        D = np.array([num(side, f"kc_{i}") for i in range(8)])
        cams[side] = (K, D, (int(num(side, "res_x")), int(num(side, "res_y"))))
    if cams["StereoLeft"][2] != cams["StereoRight"][2]:
        raise DatasetError(f"{path}: left and right resolutions differ: {cams['StereoLeft'][2]} vs "
                           f"{cams['StereoRight'][2]}")
    R = np.array([num("StereoRight", f"R_{i}") for i in range(9)]).reshape(3, 3)
    T = np.array([num("StereoRight", f"T_{i}") for i in range(3)]) * MM
    return {"size": cams["StereoLeft"][2], "K1": cams["StereoLeft"][0], "D1": cams["StereoLeft"][1],
            "K2": cams["StereoRight"][0], "D2": cams["StereoRight"][1], "R": R, "T": T}


def read_tum(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(times, N x 4 x 4 poses in metres) of a TUM trajectory file (`t tx ty tz qx qy qz qw`)."""
    require_file(path, "TUM poses")
    times, poses = [], []
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        cols = line.replace(",", " ").split()
        if len(cols) != 8:
            raise DatasetError(f"{path}:{lineno}: expected 8 columns (t tx ty tz qx qy qz qw), "
                               f"got {len(cols)}")
        try:
            v = [float(c) for c in cols]
            poses.append(pose_matrix(v[1:4], v[4:8]))
        except ValueError as e:
            raise DatasetError(f"{path}:{lineno}: {e}") from e
        times.append(v[0])
    if not poses:
        raise DatasetError(f"{path}: no poses")
    return np.asarray(times), np.stack(poses)


class StereoMISReader(DatasetReader):
    """One StereoMIS sequence; stamps follow the video's frame rate unless `fps` is given."""

    kind = "stereomis"

    def __init__(self, root: str | os.PathLike, video: str | None = None, fps: float | None = None,
                 start_ns: int = DEFAULT_START_NS, alpha: float = 0.0) -> None:
        self.root = require_dir(Path(root), "StereoMIS sequence")
        if video is None:
            vids = sorted(self.root.glob("*.mp4"))
            if len(vids) != 1:
                raise DatasetError(f"StereoMIS sequence {self.root}: expected exactly one .mp4 video, found "
                                   f"{len(vids)} ({', '.join(v.name for v in vids) or 'none'}); pass video=")
            self.video = vids[0]
        else:
            self.video = require_file(self.root / video, "StereoMIS video")
        self.calib = read_stereomis_ini(self.root / "StereoCalibration.ini")
        w, h = self.calib["size"]
        cap = cv2.VideoCapture(str(self.video))
        ok, first = cap.read() if cap.isOpened() else (False, None)
        if not ok:
            raise DatasetError(f"unreadable video {self.video} (cannot decode its first frame)")
        n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        vid_fps = cap.get(cv2.CAP_PROP_FPS)
        cap.release()
        if first.shape[:2] != (2 * h, w):
            raise DatasetError(f"{self.video}: frames are {first.shape[1]}x{first.shape[0]}, expected "
                               f"{w}x{2 * h} (left {w}x{h} on top of right) from StereoCalibration.ini")
        if n <= 0:
            raise DatasetError(f"{self.video}: the video reports no frames")
        self.n = n
        self.fps = float(fps if fps is not None else (vid_fps if vid_fps > 0 else 25.0))
        if not self.fps > 0:
            raise DatasetError(f"fps must be > 0, got {self.fps}")
        self.start_ns = int(start_ns)
        self.tum_times = self.poses = None
        gt = self.root / "groundtruth.txt"
        if gt.exists():
            self.tum_times, self.poses = read_tum(gt)
            if len(self.poses) != n:
                raise DatasetError(f"{gt}: {len(self.poses)} poses but the video {self.video.name} has {n} "
                                   "frames (expected one pose per frame)")
        self.masks_dir = self.root / "masks" if (self.root / "masks").is_dir() else None
        if self.masks_dir is not None:
            for p in sorted(self.masks_dir.glob("*l.png")):
                if image_size(p) != (w, h):
                    raise DatasetError(f"StereoMIS mask {p} is {image_size(p)}, expected {(w, h)}")
        c = self.calib
        try:
            self.cam_left, self.cam_right = raw_stereo_cameras(c["K1"], c["D1"], c["K2"], c["D2"], c["R"],
                                                               c["T"], (w, h), alpha=alpha)
        except ValueError as e:
            raise DatasetError(f"{self.root / 'StereoCalibration.ini'}: {e}") from e
        self._cap: cv2.VideoCapture | None = None
        self._next = 0

    def __len__(self) -> int:
        return self.n

    def _read_video(self, i: int) -> np.ndarray:
        if self._cap is None or i != self._next:
            if self._cap is not None:
                self._cap.release()
            self._cap = cv2.VideoCapture(str(self.video))
            if i > 0:
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, i)
        ok, img = self._cap.read()
        if not ok:
            raise DatasetError(f"{self.video}: cannot decode frame {i} of {self.n} (truncated video?)")
        self._next = i + 1
        return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)

    def frame(self, i: int) -> DatasetFrame:
        """Raw pair i (left = top half), its pose and mask when the sequence has them."""
        img = self._read_video(i)
        h = self.calib["size"][1]
        mask = None
        if self.masks_dir is not None and (self.masks_dir / f"{i:06d}l.png").exists():
            mask = read_mask(self.masks_dir / f"{i:06d}l.png")
        return DatasetFrame(index=i, stamp_ns=stamp_of(i, self.fps, self.start_ns),
                            left=np.ascontiguousarray(img[:h]), right=np.ascontiguousarray(img[h:]),
                            cam_left=self.cam_left, cam_right=self.cam_right,
                            pose=None if self.poses is None else self.poses[i].copy(), mask=mask)

    def __iter__(self) -> Iterator[DatasetFrame]:
        try:
            yield from super().__iter__()
        finally:
            if self._cap is not None:
                self._cap.release()
                self._cap = None
