"""Tests of instrument segmentation (surg3d_nodes.perception.segmentation)."""

from pathlib import Path

import cv2
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_support import save_onnx

from surg3d_nodes.common.camera import CameraModel
from surg3d_nodes.perception.segmentation import (
    CueParams,
    CueSegmenter,
    SegmentationModelError,
    YoloSegmenter,
    dataset_mask,
    fuse_masks,
)
from surg3d_nodes.perception.stereo_depth import StereoDepth


def _tissue_scene(h: int = 256, w: int = 320, tool_x: int = 200,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Pink/red textured tissue with a grey metallic shaft entering from the right border (+ specular)."""
    rng = np.random.default_rng(seed)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (h, w)).astype(np.float32), (0, 0), 4)
    noise /= noise.std()
    img = np.zeros((h, w, 3), np.float32)
    img[..., 0] = 190 + 20 * noise  # R
    img[..., 1] = 110 + 15 * noise  # G
    img[..., 2] = 100 + 12 * noise  # B
    tool = np.zeros((h, w), np.uint8)
    cv2.fillConvexPoly(tool, np.array([[tool_x, 100], [w, 80], [w, 150], [tool_x, 140]], np.int32), 1)
    grey = 150 + 25 * np.sin(np.arange(h) / 6.0)[:, None]
    for c in range(3):
        img[..., c] = np.where(tool > 0, grey + (8 if c == 2 else 0), img[..., c])
    cv2.circle(img, (tool_x + 40, 115), 4, (255, 255, 255), -1)  # specular highlight on the metal
    cv2.circle(img, (60, 200), 5, (255, 255, 255), -1)  # specular highlight on tissue
    return np.clip(img, 0, 255).astype(np.uint8), tool.astype(bool)


def test_cue_segmenter_finds_grey_tool_on_tissue():
    img, tool = _tissue_scene()
    seg = CueSegmenter(CueParams(margin_px=0))
    mask = seg.segment(img)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 255}
    m = mask > 0
    iou = (m & tool).sum() / (m | tool).sum()
    assert iou > 0.8
    assert not m[190:210, 50:70].any()  # the tissue highlight is not an instrument


def test_margin_dilates_and_blobs_off_border_are_dropped():
    img, tool = _tissue_scene()
    # A grey blob in the middle, not reaching the border: not an instrument entering the view.
    cv2.circle(img, (80, 60), 12, (150, 150, 158), -1)
    tight = CueSegmenter(CueParams(margin_px=0)).segment(img) > 0
    wide = CueSegmenter(CueParams(margin_px=16)).segment(img) > 0
    assert not tight[55:65, 75:85].any()
    assert wide.sum() > tight.sum() and (wide | tight).sum() == wide.sum()
    assert (wide & tool).sum() / tool.sum() > 0.99


def test_temporal_prior_and_depth_and_residual_cues():
    img, tool = _tissue_scene()
    seg = CueSegmenter(CueParams(margin_px=0))
    first = seg.segment(img) > 0
    second = seg.segment(img) > 0
    assert (first == second).mean() > 0.99
    seg.reset()
    h, w = tool.shape
    depth = np.full((h, w), 0.08, np.float32)
    depth[tool] = np.nan  # SGBM finds no depth on the smooth shaft
    residual = np.zeros((h, w), np.float32)
    with_cues = seg.segment(img, depth=depth, residual=residual) > 0
    assert (with_cues & tool).sum() / tool.sum() > 0.9
    with pytest.raises(ValueError, match="depth"):
        seg.segment(img, depth=depth[:10])
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        seg.segment(img[..., 0])


def test_endonerf_masks_against_ground_truth(shared_data: Path):
    """Cue segmenter with SGBM depth on 16 consecutive EndoNeRF frames vs gt_masks (255 = tool)."""
    root = shared_data / "endonerf" / "pulling_soft_tissues"
    lefts = sorted((root / "images").glob("*.png"))
    rights = sorted((root / "images_right").glob("*.png"))
    f = 569.46820041
    sd = StereoDepth(CameraModel.pinhole(640, 512, f), CameraModel.pinhole(640, 512, f, baseline=0.00428))
    seg = CueSegmenter()
    ious, recalls = [], []
    for i in range(16):
        left = cv2.cvtColor(cv2.imread(str(lefts[i])), cv2.COLOR_BGR2RGB)
        right = cv2.cvtColor(cv2.imread(str(rights[i])), cv2.COLOR_BGR2RGB)
        gt_path = root / "gt_masks" / lefts[i].name.replace("color", "mask")
        gt = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE) > 0
        m = seg.segment(left, depth=sd.compute(left, right).depth) > 0
        ious.append((m & gt).sum() / (m | gt).sum())
        recalls.append((m & gt).sum() / gt.sum())
    assert np.mean(ious) > 0.7  # measured 0.87 over the whole clip (bench)
    assert np.mean(recalls) > 0.92  # measured 0.96


# ------------------------------------------------------------------ YOLO-seg ONNX (tiny model built here)

def _yolo_like_model(path: Path, nc: int = 2, size: int = 64) -> Path:
    """A 'YOLO-seg' with constant outputs in the real layout: [1, 4+nc+32, N] and prototypes [1, 32, 16, 16].

    Detections (model-input pixels): A class 0 score 0.9 box (20, 28, 16x16), mask = prototype 0 (all +);
    B overlaps A, class 0, score 0.8 (suppressed by NMS; its mask would cover the whole box grid);
    C class 1 score 0.95 elsewhere; D class 0 score 0.1 (below the threshold).
    """
    nm, n = 32, 4
    det = np.zeros((4 + nc + nm, n), np.float32)
    boxes = [(20, 28, 16, 16), (22, 28, 16, 16), (48, 40, 10, 10), (40, 20, 8, 8)]
    scores = [(0, 0.9), (0, 0.8), (1, 0.95), (0, 0.1)]
    for k, (b, (c, s)) in enumerate(zip(boxes, scores, strict=True)):
        det[:4, k] = b
        det[4 + c, k] = s
    det[4 + nc + 0, 0] = 10.0  # A: prototype 0
    det[4 + nc + 1, 1] = 10.0  # B: prototype 1
    det[4 + nc + 0, 2] = 10.0
    det[4 + nc + 0, 3] = 10.0
    protos = np.full((nm, size // 4, size // 4), -5.0, np.float32)
    protos[0] = 5.0
    protos[1] = 5.0
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["det", "z"], ["output0"]),
        helper.make_node("Add", ["protos", "z"], ["output1"]),
    ]
    inits = [numpy_helper.from_array(det[None], "det"), numpy_helper.from_array(protos[None], "protos"),
             helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])]
    graph = helper.make_graph(
        nodes, "yolo_seg_like",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, size, size])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 4 + nc + nm, n]),
         helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, nm, size // 4, size // 4])], inits)
    return save_onnx(helper.make_model(graph), path, opset=17)


def test_yolo_onnx_postprocessing(tmp_path: Path):
    model = YoloSegmenter(_yolo_like_model(tmp_path / "yolo.onnx"), conf=0.25, classes=[0])
    assert model.device == "cpu"
    img = np.full((96, 128, 3), 100, np.uint8)  # letterboxed: scale 0.5, 8 px padding top and bottom
    mask = model.segment(img) > 0
    # Box A in the original image: x 24..56, y (20 - 8) * 2 .. (36 - 8) * 2 = 24..56.
    expect = np.zeros_like(mask)
    expect[24:56, 24:56] = True
    iou = (mask & expect).sum() / (mask | expect).sum()
    assert iou > 0.85
    assert not mask[:, 70:].any()  # class 1 (C) filtered out, D below threshold, B suppressed by NMS
    both = YoloSegmenter(tmp_path / "yolo.onnx", classes=None).segment(img) > 0
    assert both[(40 - 8) * 2, 48 * 2]  # C (class 1) kept when no class filter is set
    wide = YoloSegmenter(tmp_path / "yolo.onnx", classes=[0], margin_px=4).segment(img) > 0
    assert wide.sum() > mask.sum()


def test_yolo_bad_models(tmp_path: Path):
    with pytest.raises(SegmentationModelError, match="not found"):
        YoloSegmenter(tmp_path / "missing.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    with pytest.raises(SegmentationModelError, match="cannot load"):
        YoloSegmenter(bad)
    pt = tmp_path / "model.pt"
    pt.write_bytes(b"\x00")
    try:
        import ultralytics  # noqa: F401
    except ImportError:
        with pytest.raises(SegmentationModelError, match="ultralytics"):
            YoloSegmenter(pt)
    with pytest.raises(SegmentationModelError, match="unsupported"):
        YoloSegmenter(bad.rename(tmp_path / "model.tflite"))


def test_fuse_and_dataset_masks():
    img_mask = np.zeros((20, 20), np.uint8)
    img_mask[2:8, 2:8] = 255
    prior = np.zeros((20, 20), np.uint8)
    prior[5:12, 5:12] = 255
    union = fuse_masks(img_mask, prior)
    assert union[3, 3] == 255 and union[10, 10] == 255
    inter = fuse_masks(img_mask, prior, mode="intersection")
    assert inter.sum() // 255 == 9
    grown = fuse_masks(None, prior, prior_margin_px=2) > 0
    assert grown[prior > 0].all() and grown.sum() > (prior > 0).sum() and not grown[0, 0]
    assert np.array_equal(fuse_masks(img_mask, None), img_mask)
    gated = fuse_masks(np.zeros_like(img_mask), prior, mode="prior_gated")
    assert np.array_equal(gated, prior)
    with pytest.raises(ValueError, match="differ in size"):
        fuse_masks(img_mask, prior[:10])
    with pytest.raises(ValueError, match="unknown fuse mode"):
        fuse_masks(img_mask, prior, mode="xor")
    raw = np.array([[0, 1], [255, 0]], np.uint8)
    assert dataset_mask(raw).tolist() == [[0, 255], [255, 0]]
    assert dataset_mask(raw, tool_value_is_255=False).tolist() == [[255, 0], [0, 255]]
