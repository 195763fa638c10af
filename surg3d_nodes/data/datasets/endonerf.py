"""EndoNeRF layout (rectified stereo clips): reader, writer and the LLFF pose convention.

Layout: images/frame-NNNNNN.color.png (left), optional images_right/NNNNNN.png, depth/frame-NNNNNN.depth.png
(uint8 millimetres, 0 = invalid), masks/ and gt_masks/ frame-NNNNNN.mask.png (255 = tool), poses_bounds.npy
(LLFF, N x 17). Files are matched by sorted order. Our writer adds, for synthetic clips, gt_depth/ (uint16 PNG
in 0.01 mm, 0 = invalid, exact to 5 um), tissue/ (left view without instruments), tissue_depth/ (depth of the
tissue alone, as gt_depth/) and surg3d_calib.yaml (fps,
first stamp, baseline, so a written clip reads back exactly).

poses_bounds.npy rows: a 3x5 matrix [c0 c1 c2 t hwf] flattened row-major, then near, far. LLFF camera axes are
[down, right, backwards], i.e. c0 = y_opt, c1 = x_opt, c2 = -z_opt of our optical frame (camera-to-world);
translation and near/far are in millimetres (the unit of EndoNeRF depth); hwf = (height, width, focal px).
The intrinsics have the principal point at the image centre, (W - 1) / 2 in ROS pixel convention
(renderers that use +0.5 pixel centres, like 3DGS, put it at W / 2).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import yaml

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.common.files import read_yaml_mapping
from surg3d_nodes.data.datasets.base import (
    DEFAULT_START_NS,
    DatasetError,
    DatasetFrame,
    DatasetReader,
    check_folder,
    image_size,
    list_images,
    read_gray,
    read_mask,
    read_rgb,
    require_file,
    staged_dir,
    stamp_of,
    write_gray,
    write_rgb,
)

DEFAULT_BASELINE_M = 0.00428     # da Vinci endoscope used for EndoNeRF, ~4.3 mm
DEFAULT_FPS = 30.0               # EndoNeRF publishes no rate; its loaders use time = i / N
CALIB_FILE = "surg3d_calib.yaml"
GT_DEPTH_SCALE = 1e-5            # metres per unit of gt_depth/ (0.01 mm)
MM = 1e-3


def pose_to_llff(T_world_cam: np.ndarray, height: int, width: int, focal: float) -> np.ndarray:
    """3x5 LLFF matrix [down, right, back, t_mm, hwf] of an optical-frame camera-to-world pose (metres)."""
    R, t = T_world_cam[:3, :3], T_world_cam[:3, 3]
    out = np.zeros((3, 5))
    out[:, 0], out[:, 1], out[:, 2] = R[:, 1], R[:, 0], -R[:, 2]
    out[:, 3] = t / MM
    out[:, 4] = (height, width, focal)
    return out


def llff_to_pose(m: np.ndarray) -> np.ndarray:
    """4x4 optical-frame T_world_cam in metres from a 3x5 LLFF matrix (inverse of pose_to_llff)."""
    T = np.eye(4)
    T[:3, 0], T[:3, 1], T[:3, 2] = m[:, 1], m[:, 0], -m[:, 2]
    T[:3, 3] = m[:, 3] * MM
    return T


class EndoNeRFReader(DatasetReader):
    """Reads an EndoNeRF clip; construction checks every folder's count and image size first.

    baseline (m) and fps default to surg3d_calib.yaml when the clip has one, else 4.28 mm and 30 Hz.
    exact_depth: use gt_depth/ (0.01 mm) instead of depth/ (1 mm) when both exist.
    """

    kind = "endonerf"

    def __init__(self, root: str | os.PathLike, baseline: float | None = None, fps: float | None = None,
                 start_ns: int | None = None, exact_depth: bool = True) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise DatasetError(f"EndoNeRF clip: expected a directory at {self.root}, found "
                               f"{'a file' if self.root.exists() else 'nothing'}")
        calib = self._read_calib()
        self.fps = float(fps if fps is not None else calib.get("fps", DEFAULT_FPS))
        self.start_ns = int(start_ns if start_ns is not None else calib.get("start_ns", DEFAULT_START_NS))
        baseline = float(baseline if baseline is not None else calib.get("baseline_m", DEFAULT_BASELINE_M))
        if not self.fps > 0 or not baseline > 0:
            raise DatasetError(f"EndoNeRF clip {self.root}: fps and baseline must be > 0, got {self.fps}, "
                               f"{baseline}")
        self.left_files = list_images(self.root / "images", "EndoNeRF left images (images/)")
        n = len(self.left_files)
        w, h = image_size(self.left_files[0])
        ref = str(self.root / "images")
        check_folder(self.left_files, n, (w, h), "EndoNeRF left images", ref)
        self.poses = self._read_poses(n, w, h)
        self.folders: dict[str, list[Path]] = {}
        for name in ("images_right", "depth", "gt_depth", "masks", "gt_masks", "tissue", "tissue_depth"):
            if (self.root / name).exists():
                files = list_images(self.root / name, f"EndoNeRF {name}/")
                check_folder(files, n, (w, h), f"EndoNeRF {name}/", ref)
                self.folders[name] = files
        self.depth_key = "gt_depth" if exact_depth and "gt_depth" in self.folders else "depth"
        focal = float(self._hwf[2])
        cx = calib.get("cx", (w - 1) / 2.0)
        cy = calib.get("cy", (h - 1) / 2.0)
        self.cam_left = CameraModel.pinhole(w, h, focal, cx=cx, cy=cy, frame_id="stereo_left_optical")
        self.cam_right = (CameraModel.pinhole(w, h, focal, cx=cx, cy=cy, baseline=baseline,
                                              frame_id="stereo_right_optical")
                          if "images_right" in self.folders else None)

    def _read_calib(self) -> dict:
        path = self.root / CALIB_FILE
        if not path.exists():
            return {}
        return read_yaml_mapping(path, DatasetError, "a mapping (fps, start_ns, baseline_m, cx, cy)")

    def _read_poses(self, n: int, w: int, h: int) -> np.ndarray:
        path = require_file(self.root / "poses_bounds.npy", "EndoNeRF poses")
        try:
            arr = np.load(path, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise DatasetError(f"cannot read {path} as a .npy array: {e}") from e
        if arr.ndim != 2 or arr.shape[1] != 17:
            raise DatasetError(f"{path}: expected an N x 17 LLFF array ([R|t|hwf] + near, far), got shape "
                               f"{arr.shape}")
        if arr.shape[0] != n:
            raise DatasetError(f"{path}: {arr.shape[0]} poses but {n} images in {self.root / 'images'}")
        if not np.all(np.isfinite(arr)):
            raise DatasetError(f"{path}: non-finite values")
        mats = arr[:, :15].reshape(-1, 3, 5)
        self._hwf = mats[0, :, 4]
        if round(self._hwf[0]) != h or round(self._hwf[1]) != w or self._hwf[2] <= 0:
            raise DatasetError(f"{path}: hwf {self._hwf.tolist()} does not match the {w}x{h} images "
                               f"(expected height {h}, width {w}, focal > 0)")
        self.bounds_m = arr[:, 15:17] * MM
        return np.stack([llff_to_pose(m) for m in mats])

    def __len__(self) -> int:
        return len(self.left_files)

    def frame(self, i: int) -> DatasetFrame:
        """Frame i with right image, depth (m, NaN invalid), mask and extras (gt_mask, tissue) if present."""
        f = self.folders
        depth = None
        if self.depth_key in f:
            raw = read_gray(f[self.depth_key][i])
            scale = GT_DEPTH_SCALE if self.depth_key == "gt_depth" else MM
            depth = raw.astype(np.float32) * np.float32(scale)
            depth[raw == 0] = np.nan
        extras: dict[str, np.ndarray] = {}
        if "gt_masks" in f:
            extras["gt_mask"] = read_mask(f["gt_masks"][i])
        if "tissue" in f:
            extras["tissue"] = read_rgb(f["tissue"][i])
        if "tissue_depth" in f:
            raw = read_gray(f["tissue_depth"][i])
            extras["tissue_depth"] = np.where(raw > 0, raw.astype(np.float32) * np.float32(GT_DEPTH_SCALE), np.nan)
        return DatasetFrame(
            index=i, stamp_ns=stamp_of(i, self.fps, self.start_ns),
            left=read_rgb(self.left_files[i]),
            right=read_rgb(f["images_right"][i]) if "images_right" in f else None,
            cam_left=self.cam_left, cam_right=self.cam_right, pose=self.poses[i].copy(),
            depth=depth, mask=read_mask(f["masks"][i]) if "masks" in f else None, extras=extras)


def write_endonerf_layout(out_dir: str | os.PathLike, frames: Iterable[DatasetFrame], n_frames: int,
                          fps: float, progress: Callable[[int, int], None] | None = None,
                          overwrite: bool = False) -> Path:
    """Write frames (rectified pair, pose required) as an EndoNeRF clip; staged so failures leave nothing.

    depth/ gets uint8 millimetres (EndoNeRF-compatible, clipped to 1..255 mm), gt_depth/ uint16 0.01 mm;
    extras "tissue" and "gt_mask" go to tissue/ and gt_masks/.
    """
    out = Path(out_dir)
    with staged_dir(out, overwrite=overwrite) as stage:
        rows = []
        start_ns = None
        cam_l = cam_r = None
        for k, fr in enumerate(frames):
            if fr.pose is None or fr.right is None or fr.cam_right is None:
                raise ValueError(f"frame {k}: the EndoNeRF writer needs a right image, its camera and a pose")
            if not (fr.cam_left.is_rectified and fr.cam_right.is_rectified):
                raise ValueError("the EndoNeRF layout holds rectified pairs only; rectify first")
            cam_l, cam_r = fr.cam_left, fr.cam_right
            start_ns = fr.stamp_ns if start_ns is None else start_ns
            for name in ("images", "images_right", "depth", "gt_depth", "masks", "gt_masks", "tissue",
                         "tissue_depth"):
                (stage / name).mkdir(exist_ok=True)
            write_rgb(stage / "images" / f"frame-{k:06d}.color.png", fr.left)
            write_rgb(stage / "images_right" / f"{k:06d}.png", fr.right)
            near = far = None
            if fr.depth is not None:
                valid = np.isfinite(fr.depth) & (fr.depth > 0)
                mm = np.where(valid, np.clip(np.rint(fr.depth / MM), 1, 255), 0).astype(np.uint8)
                write_gray(stage / "depth" / f"frame-{k:06d}.depth.png", mm)
                cmm = np.where(valid, np.clip(np.rint(fr.depth / GT_DEPTH_SCALE), 1, 65535), 0)
                write_gray(stage / "gt_depth" / f"frame-{k:06d}.depth.png", cmm.astype(np.uint16))
                if valid.any():
                    near, far = float(fr.depth[valid].min()) / MM, float(fr.depth[valid].max()) / MM
            if fr.mask is not None:
                write_gray(stage / "masks" / f"frame-{k:06d}.mask.png", fr.mask)
            if "gt_mask" in fr.extras:
                write_gray(stage / "gt_masks" / f"frame-{k:06d}.mask.png", fr.extras["gt_mask"])
            if "tissue" in fr.extras:
                write_rgb(stage / "tissue" / f"frame-{k:06d}.color.png", fr.extras["tissue"])
            if "tissue_depth" in fr.extras:
                td = fr.extras["tissue_depth"]
                cmm = np.where(np.isfinite(td) & (td > 0), np.clip(np.rint(np.nan_to_num(td) / GT_DEPTH_SCALE), 1,
                                                                    65535), 0)
                write_gray(stage / "tissue_depth" / f"frame-{k:06d}.depth.png", cmm.astype(np.uint16))
            m = pose_to_llff(fr.pose, fr.left.shape[0], fr.left.shape[1], cam_l.fx)
            rows.append(np.concatenate([m.ravel(), [near or 0.0, far or 0.0]]))
            if progress is not None:
                progress(k + 1, n_frames)
        if not rows:
            raise ValueError("no frames to write")
        for sub in list(stage.iterdir()):       # drop folders no frame filled (e.g. no tissue images)
            if sub.is_dir() and not any(sub.iterdir()):
                sub.rmdir()
        np.save(stage / "poses_bounds.npy", np.asarray(rows, dtype=np.float64))
        calib = {"fps": float(fps), "start_ns": int(start_ns), "baseline_m": float(cam_r.baseline),
                 "cx": float(cam_l.cx), "cy": float(cam_l.cy)}
        (stage / CALIB_FILE).write_text(yaml.safe_dump(calib, sort_keys=False))
    return out
