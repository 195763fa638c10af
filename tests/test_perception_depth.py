"""Tests of rectification and stereo depth (SGBM and ONNX backends) in surg3d_nodes.core."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_support import save_onnx

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.perception.rectify import Rectifier, rectified_camera
from surg3d_nodes.perception.stereo_depth import (
    DepthModelError,
    OnnxDepth,
    SGBMParams,
    StereoDepth,
    disparity_search_range,
    right_tissue_mask,
)

FX = 400.0
BASELINE = 0.005


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = rng.integers(0, 256, (h, w), dtype=np.uint8)
    return cv2.GaussianBlur(t, (3, 3), 0)


def _row_plane_pair(h: int = 128, w: int = 192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Exact stereo pair of a plane whose depth changes with the image row: 60 mm (top) .. 120 mm (bottom).

    Each row has one disparity, so the right view is the left row shifted (sub-pixel, linear interp).
    The blue channel encodes depth (a cue only the monocular test model reads).
    """
    depth = np.linspace(0.06, 0.12, h, dtype=np.float32)
    disp = FX * BASELINE / depth
    tex = _texture(h, w + 64).astype(np.float32)
    xs = np.arange(w, dtype=np.float32)
    left = np.zeros((h, w, 3), np.uint8)
    right = np.zeros_like(left)
    for y in range(h):
        row = tex[y]
        left[y, :, 0] = np.interp(xs + 32, np.arange(w + 64), row).astype(np.uint8)
        right[y, :, 0] = np.interp(xs + 32 + disp[y], np.arange(w + 64), row).astype(np.uint8)
    left[..., 1] = left[..., 0]
    right[..., 1] = right[..., 0]
    blue = np.clip(depth * 2000.0, 0, 255).astype(np.uint8)[:, None]
    left[..., 2] = blue
    right[..., 2] = blue
    return left, right, np.repeat(depth[:, None], w, axis=1)


def _cams(h: int, w: int) -> tuple[CameraModel, CameraModel]:
    return (CameraModel.pinhole(w, h, FX), CameraModel.pinhole(w, h, FX, baseline=BASELINE))


def test_right_tissue_mask_leaves_out_an_instrument_beyond_the_left_border():
    """A shaft 5 cm away over tissue at 10 cm, leaving the left image through its right border at 30 degrees: in
    the right image it goes on into the band the left image does not see. The right view's tissue pixels hold none
    of its pixels (the part the left image shows, warped, and the part only the right image shows), and keep most of
    the tissue the left image sees."""
    h, w, fx, b = 64, 96, 100.0, 0.01
    z_tissue, z_tool = 0.10, 0.05
    d_tissue, d_tool = fx * b / z_tissue, fx * b / z_tool               # 10 and 20 px
    ys, xl = np.mgrid[0:h, 0:w]
    def shaft(x: np.ndarray, y: np.ndarray) -> np.ndarray:              # left-image pixels of the shaft
        return (x >= 50) & (np.abs(y - (20 + np.tan(np.radians(30)) * (x - 50))) <= 3)
    mask = shaft(xl, ys)
    depth = np.where(mask, z_tool, z_tissue).astype(np.float32)
    right_tool = np.zeros((h, w), bool)                                  # the truth: every shaft pixel, warped
    yy, xx = np.mgrid[0:h, 0:w + 60]
    on = shaft(xx, yy)
    xr = xx[on] - int(d_tool)
    keep = (xr >= 0) & (xr < w)
    right_tool[yy[on][keep], xr[keep]] = True
    assert right_tool[:, w - int(d_tool):].any() and not mask[:, w - 1].all()   # it shows beyond the left's view
    tissue = right_tissue_mask(depth, mask.astype(np.uint8) * 255, fx, b)
    assert not (tissue & right_tool).any(), np.argwhere(tissue & right_tool)[:5]
    right_tissue = ~right_tool
    right_tissue[:, w - int(d_tissue):] = False                         # beyond the left's view: not scored here
    # 77 % (83 % before the band, with 96 shaft pixels counted as tissue): the rest is the dilation's margin
    assert (tissue & right_tissue).sum() > 0.75 * right_tissue.sum()


def test_disparity_range_from_working_distance():
    d0, n = disparity_search_range(569.47, 0.0043, 0.03, 0.20)
    assert d0 == 12 and n % 16 == 0 and d0 + n >= 569.47 * 0.0043 / 0.03
    with pytest.raises(ValueError, match="baseline"):
        disparity_search_range(500.0, 0.0, 0.03, 0.2)


def test_sgbm_depth_on_exact_pair():
    left, right, gt = _row_plane_pair()
    cl, cr = _cams(*left.shape[:2])
    res = StereoDepth(cl, cr, SGBMParams(min_depth_m=0.04, max_depth_m=0.2)).compute(left, right)
    assert res.depth.dtype == np.float32 and res.confidence.dtype == np.uint8
    valid = np.isfinite(res.depth)
    assert valid.mean() > 0.8
    rel = np.abs(res.depth[valid] - gt[valid]) / gt[valid]
    assert np.median(rel) < 0.01
    assert np.all(res.confidence[~valid] == 0) and np.all(res.confidence[valid] > 0)


def test_lr_check_rejects_unmatchable_region():
    left, right, _ = _row_plane_pair()
    right = right.copy()
    right[:, 100:140] = _texture(right.shape[0], 40, seed=5)[..., None]  # independent noise: no true match
    cl, cr = _cams(*left.shape[:2])
    with_lr = StereoDepth(cl, cr, SGBMParams(min_depth_m=0.04, max_depth_m=0.2)).compute(left, right)
    no_lr = StereoDepth(cl, cr, SGBMParams(min_depth_m=0.04, max_depth_m=0.2, lr_max_diff=0)).compute(
        left, right)
    band = (slice(None), slice(115, 150))  # left pixels whose matches land in the noise band
    assert np.isfinite(with_lr.depth[band]).mean() < np.isfinite(no_lr.depth[band]).mean()


def test_sgbm_rejects_bad_pairs():
    cl, cr = _cams(64, 96)
    sd = StereoDepth(cl, cr)
    with pytest.raises(ValueError, match="differ in size"):
        sd.compute(np.zeros((64, 96, 3), np.uint8), np.zeros((64, 90, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        sd.compute(np.zeros((64, 96), np.float32), np.zeros((64, 96), np.float32))
    with pytest.raises(ValueError, match="baseline"):
        StereoDepth(cl, cl)


def test_scared_disparity_accuracy(shared_data: Path):
    root = shared_data / "scared_sttr"
    name = "dataset_1_keyframe_2_frame_data000000"
    left = cv2.cvtColor(cv2.imread(str(root / "left" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    right = cv2.cvtColor(cv2.imread(str(root / "right" / f"{name}.png")), cv2.COLOR_BGR2RGB)
    gt = cv2.imread(str(root / "disparity" / f"{name}.tiff"), cv2.IMREAD_UNCHANGED)
    occ = cv2.imread(str(root / "occlusion" / f"{name}.png"), cv2.IMREAD_GRAYSCALE)
    h, w = gt.shape
    cl = CameraModel.pinhole(w, h, 1000.0)
    cr = CameraModel.pinhole(w, h, 1000.0, baseline=0.004)  # SCARED sample has no calibration: disparity only
    disp, _ = StereoDepth(cl, cr, SGBMParams(disparity_range=(8, 100))).disparity(left, right)
    evaluable = (gt > 0) & (occ == 255)
    valid = evaluable & np.isfinite(disp)
    err = np.abs(disp[valid] - gt[valid])
    assert valid.sum() / evaluable.sum() > 0.85
    assert err.mean() < 0.6  # measured 0.35 px
    assert (err > 3).mean() < 0.01  # measured 0.2 %


def test_rectifier_matches_projection_model():
    w, h = 160, 120
    K = np.array([[150.0, 0, 82.0], [0, 151.0, 58.0], [0, 0, 1]])
    D = np.array([-0.2, 0.05, 0.001, -0.001, 0.0])
    ang = 0.03
    R = cv2.Rodrigues(np.array([0.0, ang, 0.01]))[0]
    P = np.array([[140.0, 0, 80.0, 0], [0, 140.0, 60.0, 0], [0, 0, 1, 0]])
    cam = CameraModel(w, h, K, D, R, P)
    assert not cam.is_rectified
    rect = Rectifier()
    m1, m2 = rect.maps(cam)
    assert rect.maps(cam)[0] is m1  # cached per calibration
    xy = cv2.convertMaps(m1, m2, cv2.CV_32FC1)
    for u, v in [(10, 10), (80, 60), (150, 100)]:
        ray = R.T @ np.linalg.solve(P[:, :3], np.array([u, v, 1.0]))
        raw, _ = cv2.projectPoints(ray[None], np.zeros(3), np.zeros(3), K, D)
        assert np.allclose([xy[0][v, u], xy[1][v, u]], raw.ravel(), atol=0.1)
    img = _texture(h, w)
    out = rect.rectify(img, cam)
    assert out.shape == img.shape and not np.array_equal(out, img)
    rc = rectified_camera(cam)
    assert rc.is_rectified and rect.rectify(img, rc) is img
    with pytest.raises(ValueError, match="CameraInfo says"):
        rect.rectify(np.zeros((10, 10), np.uint8), cam)


def test_rectified_surgt_rows_align(shared_data: Path):
    """Raw SurgT frames rectified with their calibration: matched features lie on the same row."""
    root = shared_data / "surgt_clip"
    fs = cv2.FileStorage(str(root / "calibration.yaml"), cv2.FILE_STORAGE_READ)
    import yaml

    rect_cfg = yaml.safe_load((root / "rectify.yaml").read_text())
    left = cv2.imread(str(root / "left" / "0000.png"), cv2.IMREAD_GRAYSCALE)
    right = cv2.imread(str(root / "right" / "0000.png"), cv2.IMREAD_GRAYSCALE)
    h, w = left.shape
    p1 = np.array(rect_cfg["P1"], float)
    p2 = np.array(rect_cfg["P2"], float)
    p2[0, 3] /= 1000.0  # mm -> m
    cam_l = CameraModel(w, h, fs.getNode("M1").mat(), fs.getNode("D1").mat(), np.array(rect_cfg["R1"]), p1)
    cam_r = CameraModel(w, h, fs.getNode("M2").mat(), fs.getNode("D2").mat(), np.array(rect_cfg["R2"]), p2)
    assert cam_r.baseline == pytest.approx(0.00414, abs=1e-4)
    rect = Rectifier()
    rl, rr = rect.rectify(left, cam_l), rect.rectify(right, cam_r)
    orb = cv2.ORB.create(1500)
    kl, dl = orb.detectAndCompute(rl, None)
    kr, dr = orb.detectAndCompute(rr, None)
    matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(dl, dr)
    dy = np.array([kl[m.queryIdx].pt[1] - kr[m.trainIdx].pt[1] for m in matches])
    good = np.abs(dy) < 20  # drop gross mismatches before measuring the row error
    assert good.sum() > 50
    assert np.median(np.abs(dy[good])) < 1.0


# ---------------------------------------------------------------- ONNX backend (tiny models built here)

def _const_disparity_stereo_model(path: Path, disp: float, h: int | None = None,
                                  w: int | None = None) -> Path:
    """Stereo model (left, right) -> constant disparity map at the model input size."""
    dims = [1, 3, h or "H", w or "W"]
    # disparity = 0 * (mean(left) + mean(right)) + d: uses both inputs, output at the input size.
    nodes = [
        helper.make_node("ReduceMean", ["left", "axes"], ["left_m"], keepdims=1),
        helper.make_node("ReduceMean", ["right", "axes"], ["right_m"], keepdims=1),
        helper.make_node("Add", ["left_m", "right_m"], ["s"]),
        helper.make_node("Mul", ["s", "zero"], ["z"]),
        helper.make_node("Add", ["z", "dval"], ["disparity"]),
    ]
    inits = [helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
             helper.make_tensor("dval", TensorProto.FLOAT, [], [disp])]
    graph = helper.make_graph(
        nodes, "const_disp",
        [helper.make_tensor_value_info("left", TensorProto.FLOAT, dims),
         helper.make_tensor_value_info("right", TensorProto.FLOAT, dims)],
        [helper.make_tensor_value_info("disparity", TensorProto.FLOAT, [1, 1, h or "H", w or "W"])], inits)
    return save_onnx(helper.make_model(graph), path)


def _inverse_blue_mono_model(path: Path) -> Path:
    """Monocular model: relative inverse depth = 1 / (blue channel + eps) (blue encodes depth in the test)."""
    nodes = [
        helper.make_node("Slice", ["image", "starts", "ends", "axes"], ["blue"]),
        helper.make_node("Add", ["blue", "eps"], ["b1"]),
        helper.make_node("Reciprocal", ["b1"], ["inv_depth"]),
    ]
    inits = [helper.make_tensor("starts", TensorProto.INT64, [1], [2]),
             helper.make_tensor("ends", TensorProto.INT64, [1], [3]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
             helper.make_tensor("eps", TensorProto.FLOAT, [], [1e-3])]
    graph = helper.make_graph(
        nodes, "inv_blue", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("inv_depth", TensorProto.FLOAT, [1, 1, "H", "W"])], inits)
    return save_onnx(helper.make_model(graph), path)


def test_onnx_stereo_constant_disparity(tmp_path: Path):
    h, w = 96, 128
    cl, cr = _cams(h, w)
    img = np.dstack([_texture(h, w)] * 3)
    model = OnnxDepth(_const_disparity_stereo_model(tmp_path / "s.onnx", 20.0), cl, cr, size_multiple=32)
    assert model.kind == "stereo" and model.device == "cpu"
    res = model.compute(img, img)
    assert np.allclose(res.depth, FX * BASELINE / 20.0, rtol=1e-5)
    # A fixed 48x64 model input: disparities are rescaled to the full image width (x2).
    fixed = OnnxDepth(_const_disparity_stereo_model(tmp_path / "f.onnx", 10.0, 48, 64), cl, cr)
    res = fixed.compute(img, img)
    assert res.depth.shape == (h, w)
    assert np.allclose(res.disparity, 20.0, rtol=1e-5) and np.all(res.confidence == 255)


def test_onnx_mono_scaled_to_metric_by_sgbm(tmp_path: Path):
    left, right, gt = _row_plane_pair()
    cl, cr = _cams(*left.shape[:2])
    sgbm = StereoDepth(cl, cr, SGBMParams(min_depth_m=0.04, max_depth_m=0.2))
    model = OnnxDepth(_inverse_blue_mono_model(tmp_path / "m.onnx"), cl, cr, sgbm=sgbm)
    assert model.kind == "mono"
    res = model.compute(left, right)
    valid = np.isfinite(res.depth)
    assert valid.mean() > 0.99  # monocular depth is dense, unlike SGBM
    rel = np.abs(res.depth[valid] - gt[valid]) / gt[valid]
    assert np.median(rel) < 0.02


def test_onnx_missing_or_corrupt_model(tmp_path: Path):
    cl, cr = _cams(32, 32)
    with pytest.raises(DepthModelError, match="not found"):
        OnnxDepth(tmp_path / "nope.onnx", cl, cr)
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(DepthModelError, match="cannot load"):
        OnnxDepth(bad, cl, cr)


def test_sgbm_on_synthetic_scene_640x512():
    """Exact-ground-truth synthetic stereo (core/synthetic.py): median relative error on tissue < 2 %."""
    from surg3d_nodes.data.synthetic import SynthConfig, generate

    scene = generate(SynthConfig(width=640, height=512, frames=2, instruments=2))
    sd = StereoDepth(scene.cam_left, scene.cam_right)
    for frame in scene.frames:
        res = sd.compute(frame.left, frame.right)
        tissue = (frame.mask == 0) & np.isfinite(frame.depth)
        valid = tissue & np.isfinite(res.depth)
        assert valid.sum() / tissue.sum() > 0.85  # measured 0.93
        rel = np.abs(res.depth[valid] - frame.depth[valid]) / frame.depth[valid]
        assert np.median(rel) < 0.02  # measured 0.65 %
