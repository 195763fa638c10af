"""A user's learned inpainter (ONNX, LaMa's interface) for the tissue never seen: only the hole is taken from it,
fixed and dynamic input sizes, both output ranges, errors that name the file, the trainer's guesses seeded with its
colours (and still marked inferred), and checkpoints that name no model to load. The models are built here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper
from onnx_support import save_onnx

from surg3d_nodes.data.synthetic import SynthConfig, generate
from surg3d_nodes.recon.config import Frame, TrainerConfig
from surg3d_nodes.recon.inpaint_model import InpaintModelError, OnnxInpainter
from surg3d_nodes.recon.io.checkpoint import load_reconstructor, save_checkpoint
from surg3d_nodes.recon.runner import Reconstructor

COLOUR = (0.25, 0.5, 0.75)


def _flat_fill_model(path: Path, colour: tuple[float, float, float] = COLOUR, size: tuple[int, int] | None = None,
                     byte: bool = False) -> Path:
    """An 'inpainter' that fills the hole with one colour: image * (1 - mask) + mask * colour (x 255 with
    `byte`); `size` (h, w) fixes its input size."""
    h, w = size if size is not None else ("H", "W")
    nodes = [helper.make_node("Sub", ["one", "mask"], ["keep"]),
             helper.make_node("Mul", ["image", "keep"], ["kept"]),
             helper.make_node("Mul", ["mask", "colour"], ["filled"]),
             helper.make_node("Add", ["kept", "filled"], ["unit"]),
             helper.make_node("Mul", ["unit", "range"], ["output"])]
    inits = [helper.make_tensor("one", TensorProto.FLOAT, [], [1.0]),
             helper.make_tensor("colour", TensorProto.FLOAT, [1, 3, 1, 1], list(colour)),
             helper.make_tensor("range", TensorProto.FLOAT, [], [255.0 if byte else 1.0])]
    graph = helper.make_graph(
        nodes, "flat_fill",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, h, w]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, h, w])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, h, w])], inits)
    return save_onnx(helper.make_model(graph), path)


def _image_and_hole(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    hole = np.zeros((h, w), bool)
    hole[h // 4:h // 2, w // 3:w - 4] = True
    return rgb, hole


@pytest.mark.parametrize("size, byte", [(None, False), ((64, 64), True)])
def test_the_model_fills_the_hole_only(tmp_path: Path, size, byte) -> None:
    rgb, hole = _image_and_hole(37, 53)         # not a multiple of the padding, nor the fixed size
    fill = OnnxInpainter(_flat_fill_model(tmp_path / "fill.onnx", size=size, byte=byte),
                         output_range="byte" if byte else "unit")
    out = fill(rgb, hole)
    assert out.dtype == np.uint8 and out.shape == rgb.shape
    assert np.array_equal(out[~hole], rgb[~hole])
    # the hole's colour: exact inside, within the resize's blend of the model's edge for a fixed-size model
    inner = np.zeros_like(hole)
    inner[hole.nonzero()[0].min() + 2:hole.nonzero()[0].max() - 1, hole.nonzero()[1].min() + 2:
          hole.nonzero()[1].max() - 1] = True
    assert np.abs(out[inner].astype(float) - np.array(COLOUR) * 255).max() <= 1.0


def test_models_that_cannot_serve_are_named(tmp_path: Path) -> None:
    with pytest.raises(InpaintModelError, match="not found"):
        OnnxInpainter(tmp_path / "none.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    with pytest.raises(InpaintModelError, match=f"cannot load ONNX inpainting model {bad}"):
        OnnxInpainter(bad)
    one_input = helper.make_graph(
        [helper.make_node("Identity", ["image"], ["output"])], "one",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 3, "H", "W"])])
    with pytest.raises(InpaintModelError, match="expected an image"):
        OnnxInpainter(save_onnx(helper.make_model(one_input), tmp_path / "one.onnx"))
    grey_out = helper.make_graph(
        [helper.make_node("Add", ["mask", "zero"], ["output"])], "grey",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, "H", "W"]),
         helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 1, "H", "W"])],
        [helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])])
    with pytest.raises(InpaintModelError, match=r"output shape \(1, 1, 32, 32\)"):   # found at load, not later
        OnnxInpainter(save_onnx(helper.make_model(grey_out), tmp_path / "grey.onnx"))
    with pytest.raises(InpaintModelError, match="output range"):
        OnnxInpainter(_flat_fill_model(tmp_path / "fill.onnx"), output_range="percent")
    with pytest.raises(InpaintModelError, match="not found"):              # the trainer refuses at its start
        Reconstructor(TrainerConfig(device="cpu", inpaint_model=str(tmp_path / "none.onnx")))


def test_the_trainer_seeds_its_guesses_with_the_models_colours(tmp_path: Path) -> None:
    scene = generate(SynthConfig(width=64, height=48, frames=2, instruments=1, seed=3))

    def guesses(inpaint_model: str) -> tuple[Reconstructor, float]:
        """The trainer after the clip, and the share of its guesses in the model's colour."""
        # no colour fit after the completion: the guesses as seeded
        recon = Reconstructor(TrainerConfig(device="cpu", backend="torch", image_scale=1.0, colour_fit_iterations=0,
                                            inpaint_model=inpaint_model))
        for f in scene.frames:
            assert recon.add_frame(Frame(f.stamp_ns, f.left, f.depth, f.mask, f.pose, scene.cam_left))
        m = recon.model
        assert int(m.inferred.sum()) >= 20                    # guesses, and marked as such
        colours = m.evaluate(recon.latest_time())["colors"][m.inferred].detach().numpy()
        return recon, float((np.abs(colours - np.array(COLOUR)).max(-1) < 0.02).mean())

    recon, share = guesses(str(_flat_fill_model(tmp_path / "fill.onnx")))
    # those under the instrument (the rest sit in its margin, on the live tissue's colours)
    assert share > 0.5 and guesses("")[1] < 0.05
    # a checkpoint names no model to load: the host's inpainter is its own setting
    path = save_checkpoint(recon, tmp_path / "ck.pt")
    assert load_reconstructor(path, device="cpu").cfg.inpaint_model == ""
