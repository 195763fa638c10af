"""EndoNeRF reader on the real clip, and its input checks."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from surg3d_nodes.data.datasets import DatasetError, open_dataset
from surg3d_nodes.data.datasets.endonerf import EndoNeRFReader
from surg3d_nodes.data.synthetic import SynthConfig, generate, write_endonerf


def test_real_clip(shared_data: Path) -> None:
    root = shared_data / "endonerf" / "pulling_soft_tissues"
    r = open_dataset("endonerf", root)
    assert len(r) == 63
    assert r.cam_left.fx == pytest.approx(569.4682, abs=1e-3)
    assert (r.cam_left.cx, r.cam_left.cy) == (319.5, 255.5)
    assert r.cam_right.baseline == pytest.approx(0.00428)
    assert r.cam_left.is_rectified and r.cam_right.is_rectified
    f = r.frame(10)
    raw_depth = cv2.imread(str(root / "depth" / "frame-000010.depth.png"), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(np.isnan(f.depth), raw_depth == 0)
    assert np.allclose(f.depth[raw_depth > 0], raw_depth[raw_depth > 0] * 1e-3)
    left = cv2.imread(str(root / "images" / "frame-000010.color.png"))[..., ::-1]
    assert np.array_equal(f.left, left)
    right = cv2.imread(str(root / "images_right" / "000010.png"))[..., ::-1]
    assert np.array_equal(f.right, right)
    assert set(np.unique(f.mask)) == {0, 255}
    # the clip's LLFF identity rotation is the camera [down, right, back] = world axes
    assert np.allclose(f.pose, [[0, 1, 0, 0], [1, 0, 0, 0], [0, 0, -1, 0], [0, 0, 0, 1]])
    assert f.stamp_ns - r.frame(0).stamp_ns == round(10 * 1e9 / 30)
    assert open_dataset("endonerf", root, fps=15.0, baseline=0.004).cam_right.baseline == pytest.approx(0.004)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    scene = generate(SynthConfig(width=48, height=32, frames=3, instruments=1))
    return write_endonerf(scene, tmp_path_factory.mktemp("endo") / "clip")


def _copy(clip: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "bad"
    shutil.copytree(clip, dst)
    return dst


def test_missing_folder_and_files(clip: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"expected a directory at .*nowhere"):
        EndoNeRFReader(tmp_path / "nowhere")
    bad = _copy(clip, tmp_path)
    shutil.rmtree(bad / "images")
    with pytest.raises(DatasetError, match=r"images/.*expected a directory"):
        EndoNeRFReader(bad)
    bad2 = _copy(clip, tmp_path / "b")
    (bad2 / "poses_bounds.npy").unlink()
    with pytest.raises(DatasetError, match=r"poses_bounds\.npy"):
        EndoNeRFReader(bad2)


def test_count_mismatch(clip: Path, tmp_path: Path) -> None:
    bad = _copy(clip, tmp_path)
    (bad / "depth" / "frame-000001.depth.png").unlink()
    with pytest.raises(DatasetError, match=r"2 images in .*depth but 3 in"):
        EndoNeRFReader(bad)


def test_wrong_size(clip: Path, tmp_path: Path) -> None:
    bad = _copy(clip, tmp_path)
    cv2.imwrite(str(bad / "images_right" / "000002.png"), np.zeros((30, 48, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"000002.png is 48x30, expected 48x32"):
        EndoNeRFReader(bad)


def test_bad_poses(clip: Path, tmp_path: Path) -> None:
    bad = _copy(clip, tmp_path)
    arr = np.load(bad / "poses_bounds.npy")
    np.save(bad / "poses_bounds.npy", arr[:, :15])
    with pytest.raises(DatasetError, match=r"N x 17 .*got shape \(3, 15\)"):
        EndoNeRFReader(bad)
    np.save(bad / "poses_bounds.npy", arr[:2])
    with pytest.raises(DatasetError, match="2 poses but 3 images"):
        EndoNeRFReader(bad)
    wrong = arr.copy()
    wrong[:, 9] = 100    # hwf width
    np.save(bad / "poses_bounds.npy", wrong)
    with pytest.raises(DatasetError, match="does not match the 48x32 images"):
        EndoNeRFReader(bad)
    (bad / "poses_bounds.npy").write_bytes(b"not numpy")
    with pytest.raises(DatasetError, match=r"cannot read .*poses_bounds\.npy"):
        EndoNeRFReader(bad)


def test_malformed_calib_yaml(clip: Path, tmp_path: Path) -> None:
    bad = _copy(clip, tmp_path)
    (bad / "surg3d_calib.yaml").write_text("fps: [30\n")
    with pytest.raises(DatasetError, match=r"surg3d_calib\.yaml: malformed YAML"):
        EndoNeRFReader(bad)
