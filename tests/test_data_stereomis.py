"""StereoMIS reader on a generated sequence (mp4 + StereoCalibration.ini + TUM poses) and its input checks."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from surg3d_nodes.common.geometry import matrix_to_pose
from surg3d_nodes.data.datasets import DatasetError, open_dataset
from surg3d_nodes.data.datasets.stereomis import StereoMISReader
from surg3d_nodes.data.synthetic import SynthConfig, generate

W, H, N, FPS = 96, 64, 6, 25.0
K1 = np.array([[80.0, 0, 47.2], [0, 80.5, 31.8], [0, 0, 1]])
K2 = np.array([[81.0, 0, 48.9], [0, 81.2, 32.4], [0, 0, 1]])
D1 = np.array([0.02, -0.03, 0.001, -0.0005, 0.004, 0.001, -0.002, 0.003])
D2 = np.array([-0.01, 0.02, -0.001, 0.0007, -0.003, 0.0, 0.001, -0.001])
R = cv2.Rodrigues(np.array([0.004, -0.006, 0.002]))[0]
T_MM = np.array([-4.5, 0.06, -0.03])


def write_ini(path: Path, drop: str | None = None) -> None:
    """StereoCalibration.ini of the rig above, as StereoMIS ships it (T in mm); `drop` leaves a key out."""
    lines = []
    for side, K, D in (("StereoLeft", K1, D1), ("StereoRight", K2, D2)):
        lines.append(f"[{side}]")
        vals = {"res_x": W, "res_y": H, "fc_x": K[0, 0], "fc_y": K[1, 1], "cc_x": K[0, 2], "cc_y": K[1, 2]}
        vals.update({f"kc_{i}": D[i] for i in range(8)})
        if side == "StereoRight":
            vals.update({f"R_{i}": R.ravel()[i] for i in range(9)})
            vals.update({f"T_{i}": T_MM[i] for i in range(3)})
        lines += [f"{k}={float(v)!r}" for k, v in vals.items() if k != drop]
    path.write_text("\n".join(lines) + "\n")


def write_sequence(root: Path) -> object:
    """A StereoMIS-like sequence made from a synthetic clip: video, ini, TUM poses, two masks."""
    scene = generate(SynthConfig(width=W, height=H, frames=N, fps=FPS, camera_motion="moving", seed=5))
    root.mkdir(parents=True)
    vw = cv2.VideoWriter(str(root / "IFBS_ENDOSCOPE-part0001.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), FPS,
                         (W, 2 * H))
    assert vw.isOpened()
    for f in scene.frames:
        vw.write(cv2.cvtColor(np.vstack([f.left, f.right]), cv2.COLOR_RGB2BGR))
    vw.release()
    write_ini(root / "StereoCalibration.ini")
    rows = ["# timestamp tx ty tz qx qy qz qw"]
    for i, f in enumerate(scene.frames):
        t, q = matrix_to_pose(f.pose)
        rows.append(" ".join(f"{v:.12f}" for v in [i / FPS, *t, *q]))
    (root / "groundtruth.txt").write_text("\n".join(rows) + "\n")
    (root / "masks").mkdir()
    for i in (0, 3):
        cv2.imwrite(str(root / "masks" / f"{i:06d}l.png"), scene.frames[i].mask)
    return scene


@pytest.fixture(scope="module")
def seq(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    root = tmp_path_factory.mktemp("stereomis") / "P1"
    return root, write_sequence(root)


def test_camera_info_reproduces_ini_and_rectifies(seq) -> None:
    root, _ = seq
    r = open_dataset("stereomis", root)
    cl, cr = r.cam_left, r.cam_right
    assert np.allclose(cl.K, K1) and np.allclose(cr.K, K2)
    assert np.allclose(cl.D, D1) and np.allclose(cr.D, D2)
    assert cl.distortion_model == "rational_polynomial" and (cl.width, cl.height) == (W, H)
    assert cr.baseline == pytest.approx(np.linalg.norm(T_MM) * 1e-3, rel=1e-9)
    # 3D points seen by both raw cameras land on the same rectified row, at disparity fx * b / z_rect
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.uniform(-0.02, 0.02, 50), rng.uniform(-0.015, 0.015, 50),
                         rng.uniform(0.05, 0.1, 50)])
    pl = cv2.projectPoints(X, np.zeros(3), np.zeros(3), K1, D1)[0]
    pr = cv2.projectPoints(X, cv2.Rodrigues(R)[0], T_MM * 1e-3, K2, D2)[0]
    rl = cv2.undistortPoints(pl, cl.K, cl.D, R=cl.R, P=cl.P).reshape(-1, 2)
    rr = cv2.undistortPoints(pr, cr.K, cr.D, R=cr.R, P=cr.P).reshape(-1, 2)
    assert np.max(np.abs(rl[:, 1] - rr[:, 1])) < 1e-3
    z_rect = (X @ cl.R.T)[:, 2]
    assert np.allclose(rl[:, 0] - rr[:, 0], cl.fx * cr.baseline / z_rect, atol=1e-3)


def test_frames_poses_masks(seq) -> None:
    root, scene = seq
    r = StereoMISReader(root)
    assert len(r) == N and r.fps == pytest.approx(FPS)
    frames = list(r)
    assert [f.index for f in frames] == list(range(N))
    for f, s in zip(frames, scene.frames, strict=True):
        assert f.left.shape == (H, W, 3) and f.right.shape == (H, W, 3)
        assert np.abs(f.left.astype(float) - s.left).mean() < 8      # lossy mp4
        assert np.abs(f.right.astype(float) - s.right).mean() < 8
        assert np.allclose(f.pose, s.pose, atol=1e-9)
    assert frames[3].stamp_ns - frames[0].stamp_ns == round(3e9 / FPS)
    assert np.array_equal(frames[3].mask, scene.frames[3].mask) and frames[1].mask is None
    assert np.array_equal(r.frame(4).left, frames[4].left)    # random access (seek) matches sequential


def _fresh(tmp_path: Path) -> Path:
    root = tmp_path / "seq"
    write_sequence(root)
    return root


def test_bad_video(tmp_path: Path) -> None:
    root = _fresh(tmp_path)
    video = next(root.glob("*.mp4"))
    (root / "second.mp4").write_bytes(video.read_bytes())
    with pytest.raises(DatasetError, match=r"exactly one \.mp4 video, found 2"):
        StereoMISReader(root)
    (root / "second.mp4").unlink()
    video.write_bytes(b"\x00" * 1000)
    with pytest.raises(DatasetError, match="unreadable video"):
        StereoMISReader(root)
    video.unlink()
    with pytest.raises(DatasetError, match=r"found 0 \(none\)"):
        StereoMISReader(root)


def test_video_size_mismatch(tmp_path: Path) -> None:
    root = _fresh(tmp_path)
    text = (root / "StereoCalibration.ini").read_text().replace(f"res_y={H}", f"res_y={H + 8}")
    (root / "StereoCalibration.ini").write_text(text)
    with pytest.raises(DatasetError, match=rf"frames are {W}x{2 * H}, expected {W}x{2 * H + 16}"):
        StereoMISReader(root)


def test_bad_ini(tmp_path: Path) -> None:
    root = _fresh(tmp_path)
    ini = root / "StereoCalibration.ini"
    write_ini(ini, drop="T_1")
    with pytest.raises(DatasetError, match=r"missing key T_1 in \[StereoRight\]"):
        StereoMISReader(root)
    ini.write_text(ini.read_text().replace("fc_x=80.0", "fc_x=eighty"))
    with pytest.raises(DatasetError, match="fc_x = 'eighty' is not a number"):
        StereoMISReader(root)
    ini.write_text("res_x=3\n[StereoLeft\n")
    with pytest.raises(DatasetError, match="malformed ini"):
        StereoMISReader(root)
    ini.unlink()
    with pytest.raises(DatasetError, match=r"expected a file at .*StereoCalibration\.ini"):
        StereoMISReader(root)


def test_bad_poses(tmp_path: Path) -> None:
    root = _fresh(tmp_path)
    gt = root / "groundtruth.txt"
    lines = gt.read_text().splitlines()
    gt.write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(DatasetError, match=f"{N - 1} poses but the video .* has {N} frames"):
        StereoMISReader(root)
    lines[2] = " ".join(lines[2].split()[:7])
    gt.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=r"groundtruth\.txt:3: expected 8 columns .* got 7"):
        StereoMISReader(root)
