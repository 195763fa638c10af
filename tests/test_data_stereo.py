"""Raw stereo folders + OpenCV calibration (SurgT clip): CameraInfo, rectification quality, input checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from surg3d_nodes.data.datasets import DatasetError, open_dataset
from surg3d_nodes.data.datasets.calib import rectify_maps
from surg3d_nodes.data.datasets.stereo import StereoFolderReader


def _vertical_disparity(left: np.ndarray, right: np.ndarray) -> tuple[float, int]:
    """Median |dy| of cross-checked SIFT matches passing Lowe's ratio test, and the match count."""
    sift = cv2.SIFT_create(nfeatures=3000)
    kl, dl = sift.detectAndCompute(cv2.cvtColor(left, cv2.COLOR_RGB2GRAY), None)
    kr, dr = sift.detectAndCompute(cv2.cvtColor(right, cv2.COLOR_RGB2GRAY), None)
    pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(dl, dr, k=2)
    good = [m for m, n in (p for p in pairs if len(p) == 2) if m.distance < 0.7 * n.distance]
    dy = [kl[m.queryIdx].pt[1] - kr[m.trainIdx].pt[1] for m in good]
    return float(np.median(np.abs(dy))), len(good)


def test_surgt_camera_info(shared_data: Path) -> None:
    root = shared_data / "surgt_clip"
    r = open_dataset("stereo", root)
    assert len(r) == 4
    fs = cv2.FileStorage(str(root / "calibration.yaml"), cv2.FILE_STORAGE_READ)
    assert np.allclose(r.cam_left.K, fs.getNode("M1").mat())
    assert np.allclose(r.cam_right.K, fs.getNode("M2").mat())
    assert np.allclose(r.cam_left.D, fs.getNode("D1").mat().ravel())
    assert np.allclose(r.cam_right.D, fs.getNode("D2").mat().ravel())
    assert not r.cam_left.is_rectified
    ref = yaml.safe_load((root / "rectify.yaml").read_text())   # the challenge's own rectification
    assert r.cam_right.baseline == pytest.approx(ref["baseline_mm"] * 1e-3, rel=1e-6)
    assert r.cam_left.fx == pytest.approx(ref["f_pixels"], rel=1e-3)
    assert np.allclose(r.cam_left.R, ref["R1"], atol=1e-3)
    assert np.allclose(r.cam_right.R, ref["R2"], atol=1e-3)


def test_surgt_rectification_aligns_rows(shared_data: Path) -> None:
    r = open_dataset("stereo", shared_data / "surgt_clip")
    f = r.frame(0)
    lmap, rmap = rectify_maps(f.cam_left), rectify_maps(f.cam_right)
    left = cv2.remap(f.left, *lmap, cv2.INTER_LINEAR)
    right = cv2.remap(f.right, *rmap, cv2.INTER_LINEAR)
    dy, n = _vertical_disparity(left, right)
    assert n > 100
    assert dy < 1.0, f"median vertical disparity {dy:.2f} px over {n} matches"


@pytest.fixture
def small(tmp_path: Path, shared_data: Path) -> Path:
    """A two-frame copy of the SurgT clip to break."""
    root = tmp_path / "clip"
    for side in ("left", "right"):
        (root / side).mkdir(parents=True)
        for i in range(2):
            shutil.copy(shared_data / "surgt_clip" / side / f"000{i}.png", root / side / f"000{i}.png")
    shutil.copy(shared_data / "surgt_clip" / "calibration.yaml", root / "calibration.yaml")
    return root


def test_bad_inputs(small: Path) -> None:
    StereoFolderReader(small)
    (small / "right" / "0001.png").unlink()
    with pytest.raises(DatasetError, match=r"1 images in .*right but 2 in .*left"):
        StereoFolderReader(small)
    cv2.imwrite(str(small / "right" / "0001.png"), np.zeros((100, 80, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"0001\.png is 80x100, expected 1280x1024"):
        StereoFolderReader(small)
    shutil.rmtree(small / "right")
    with pytest.raises(DatasetError, match=r"right/.*expected a directory"):
        StereoFolderReader(small)


def test_bad_calibration(small: Path) -> None:
    calib = small / "calibration.yaml"
    text = calib.read_text()
    calib.write_text(text.replace("M2:", "M9:"))
    with pytest.raises(DatasetError, match="missing matrix M2"):
        StereoFolderReader(small)
    calib.write_text("%YAML:1.0\n---\nM1: [1, 2\n")
    with pytest.raises(DatasetError, match=r"calibration\.yaml"):
        StereoFolderReader(small)
    calib.unlink()
    with pytest.raises(DatasetError, match=r"expected a file at .*calibration\.yaml"):
        StereoFolderReader(small)
