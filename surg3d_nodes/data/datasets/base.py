"""Common frame type, input checks and staged output shared by the dataset readers and writers."""

from __future__ import annotations

import os
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.camera import CameraModel

# Stamps of datasets without their own clock start here: a plausible wall-clock time, because sim time 0
# means "no clock yet" to ROS nodes with use_sim_time.
DEFAULT_START_NS = 1_700_000_000 * 10**9
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


class DatasetError(ValueError):
    """A dataset on disk is missing something or does not have the expected form; the message says what."""


@dataclass
class DatasetFrame:
    """One frame of any dataset in the project's conventions (RGB uint8, metres, 255 = tool, T_world_cam)."""

    index: int
    stamp_ns: int
    left: np.ndarray
    right: np.ndarray | None
    cam_left: CameraModel
    cam_right: CameraModel | None
    pose: np.ndarray | None = None
    depth: np.ndarray | None = None
    mask: np.ndarray | None = None
    extras: dict[str, np.ndarray] = field(default_factory=dict)


class DatasetReader:
    """Base of the readers: validates on construction, then yields DatasetFrames lazily in order."""

    kind = "dataset"
    cam_left: CameraModel
    cam_right: CameraModel | None
    fps: float

    def __len__(self) -> int:
        raise NotImplementedError

    def frame(self, i: int) -> DatasetFrame:
        """Frame i (0-based)."""
        raise NotImplementedError

    def __iter__(self) -> Iterator[DatasetFrame]:
        for i in range(len(self)):
            yield self.frame(i)


def stamp_of(index: int, fps: float, start_ns: int) -> int:
    """Stamp in ns of frame `index` of a clip recorded at a constant `fps`."""
    return int(start_ns) + round(index * 1e9 / fps)


def require_dir(path: Path, what: str) -> Path:
    """`path` as a directory, or DatasetError naming it and what it should hold."""
    if not path.is_dir():
        raise DatasetError(f"{what}: expected a directory at {path}, found "
                           f"{'a file' if path.exists() else 'nothing'}")
    return path


def require_file(path: Path, what: str) -> Path:
    """`path` as a regular file, or DatasetError naming it."""
    if not path.is_file():
        raise DatasetError(f"{what}: expected a file at {path}, found "
                           f"{'a directory' if path.exists() else 'nothing'}")
    return path


def list_images(folder: Path, what: str) -> list[Path]:
    """Sorted image files of a folder; DatasetError if there are none."""
    require_dir(folder, what)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    if not files:
        raise DatasetError(f"{what}: no images ({', '.join(IMAGE_EXTS)}) in {folder}")
    return files


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file; PNG sizes come from the header without decoding."""
    with open(path, "rb") as f:
        head = f.read(24)
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        w, h = struct.unpack(">II", head[16:24])
        return int(w), int(h)
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    return img.shape[1], img.shape[0]


def check_folder(files: list[Path], count: int, size: tuple[int, int], what: str, ref: str) -> None:
    """DatasetError unless a folder holds `count` images of `size` (w, h), like the reference folder."""
    if len(files) != count:
        raise DatasetError(f"{what}: {len(files)} images in {files[0].parent} but {count} in {ref}")
    for p in files:
        s = image_size(p)
        if s != size:
            raise DatasetError(f"{what}: {p} is {s[0]}x{s[1]}, expected {size[0]}x{size[1]} like {ref}")


def read_rgb(path: Path) -> np.ndarray:
    """HxWx3 uint8 RGB image; DatasetError if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_gray(path: Path) -> np.ndarray:
    """HxW image as stored (uint8/uint16; colour converted to grey); DatasetError if unreadable."""
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise DatasetError(f"cannot read image {path}")
    if img.ndim == 3:
        img = cv2.cvtColor(img[..., :3], cv2.COLOR_BGR2GRAY)
    return img


def read_mask(path: Path) -> np.ndarray:
    """Tool mask as uint8 with 255 = instrument, 0 = tissue (anything > 127 counts as instrument)."""
    return np.where(read_gray(path) > 127, 255, 0).astype(np.uint8)


def write_rgb(path: Path, img: np.ndarray) -> None:
    """Write an RGB uint8 image (PNG unless the suffix says otherwise)."""
    if not cv2.imwrite(str(path), cv2.cvtColor(np.ascontiguousarray(img), cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def write_gray(path: Path, img: np.ndarray) -> None:
    """Write a single-channel uint8/uint16 image."""
    if not cv2.imwrite(str(path), np.ascontiguousarray(img)):
        raise OSError(f"cannot write {path}")


@contextmanager
def staged_dir(out_dir: str | os.PathLike, overwrite: bool = False) -> Iterator[Path]:
    """Yield a hidden sibling directory to fill; it becomes `out_dir` only when the block succeeds.

    A failed or interrupted conversion therefore never leaves a complete-looking `out_dir` behind.
    """
    out = Path(out_dir)
    if out.exists():
        if not overwrite and (not out.is_dir() or any(out.iterdir())):
            raise FileExistsError(f"output {out} already exists (choose a new path or allow overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    os.replace(stage, out)
