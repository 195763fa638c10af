"""A user-supplied learned inpainter (ONNX) for the colour of tissue no camera has shown (`inpaint_model`), in
place of the harmonic fill (recon.completion.inpaint), which is the default: no weights ship with surg3d.

A fill from the hole's border alone cannot hold texture the border does not show (synthetic seed 11: the membrane
fill of the *true* border scores 21.46 dB on the never-seen pixels, under Telea + 1; README, Occluded tissue); a
learned inpainter trained on surgical images brings such a prior. Its guesses are seeded and marked `inferred` as the
harmonic fill's are: nothing about a learned fill makes it an observation.

The interface is that of LaMa's ONNX exports: two inputs, an RGB image [1,3,H,W] float32 in 0..1 with the hole's
pixels set to 0, and a mask [1,1,H,W] float32 (1 = to fill), told apart by their channel count; the first output is
the RGB image [1,3,H,W], in 0..1 (`output_range` "unit") or 0..255 ("byte"). A model with a fixed input size gets
the image resized to it and its fill resized back; a dynamic one gets the image padded (its edge pixels repeated) to
a multiple of `size_multiple`. Only the hole's pixels are taken from the model.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from surg3d_nodes.common.files import onnx_session
from surg3d_nodes.recon.config import INPAINT_OUTPUT_RANGES


class InpaintModelError(ValueError):
    """The inpainting model could not be loaded or run (missing file, unreadable ONNX, inputs or output of
    another layout)."""


class OnnxInpainter:
    """`fill(rgb, hole)` with a user's ONNX inpainting model (see the module docstring)."""

    def __init__(self, model_path: str | Path, output_range: str = "unit", size_multiple: int = 8,
                 providers: list[str] | None = None) -> None:
        path = Path(model_path)
        if not path.is_file():
            raise InpaintModelError(f"ONNX inpainting model not found: {path}")
        if output_range not in INPAINT_OUTPUT_RANGES:
            raise InpaintModelError(f"inpainting model output range must be one of {INPAINT_OUTPUT_RANGES}, "
                                    f"got {output_range!r}")
        self.path = path
        self.session = onnx_session(path, providers, InpaintModelError, "ONNX inpainting model")
        inputs = self.session.get_inputs()
        channels = {i.name: (i.shape[1] if len(i.shape) == 4 else None) for i in inputs}
        image = [n for n, c in channels.items() if c == 3]
        mask = [n for n, c in channels.items() if c == 1]
        if len(inputs) != 2 or len(image) != 1 or len(mask) != 1:
            raise InpaintModelError(f"ONNX inpainting model {path} has inputs "
                                    f"{[(i.name, i.shape) for i in inputs]}; expected an image [1,3,H,W] and a "
                                    "mask [1,1,H,W]")
        self.image_input, self.mask_input = image[0], mask[0]
        shape = next(i.shape for i in inputs if i.name == self.image_input)
        self.fixed = (shape[2], shape[3]) if isinstance(shape[2], int) and isinstance(shape[3], int) else None
        self.scale = 255.0 if output_range == "byte" else 1.0
        self.size_multiple = max(1, int(size_multiple))
        # A model of another layout fails here, named, not at the first frame an instrument hides.
        probe = np.full((32, 32, 3), 128, np.uint8)
        hole = np.zeros((32, 32), bool)
        hole[8:24, 8:24] = True
        self(probe, hole)

    def __call__(self, rgb: np.ndarray, hole: np.ndarray) -> np.ndarray:
        """`rgb` (uint8 HxWx3) with its `hole` pixels (bool HxW) filled by the model."""
        if not hole.any():
            return rgb.copy()
        h, w = hole.shape
        img = np.where(hole[..., None], 0.0, rgb.astype(np.float32) / 255.0).astype(np.float32)
        mask = hole.astype(np.float32)
        if self.fixed is not None:
            size = (self.fixed[1], self.fixed[0])
            img = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
            mask = (cv2.resize(mask, size, interpolation=cv2.INTER_AREA) > 0).astype(np.float32)  # any hole pixel
        else:
            m = self.size_multiple
            pad = ((0, -h % m), (0, -w % m))
            img = np.pad(img, (*pad, (0, 0)), mode="edge")
            mask = np.pad(mask, pad, mode="edge")
        out = self._run(np.ascontiguousarray(img.transpose(2, 0, 1)[None]), mask[None, None])
        if out.shape[:2] != img.shape[:2]:
            raise InpaintModelError(f"ONNX inpainting model {self.path} returned {out.shape[1]}x{out.shape[0]} "
                                    f"for a {img.shape[1]}x{img.shape[0]} input")
        out = cv2.resize(out, (w, h), interpolation=cv2.INTER_LINEAR) if self.fixed is not None else out[:h, :w]
        filled = np.clip(out * (255.0 / self.scale) + 0.5, 0, 255).astype(np.uint8)
        return np.where(hole[..., None], filled, rgb)

    def _run(self, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The model's first output as HxWx3 float32 (its own range)."""
        try:
            out = self.session.run(None, {self.image_input: image, self.mask_input: mask})[0]
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise InpaintModelError(f"ONNX inpainting model {self.path} failed to run: {exc}") from exc
        out = np.asarray(out, dtype=np.float32)
        if out.ndim != 4 or out.shape[:2] != (1, 3):
            raise InpaintModelError(f"ONNX inpainting model {self.path} output shape {out.shape}; expected "
                                    "[1, 3, H, W]")
        return out[0].transpose(1, 2, 0)
