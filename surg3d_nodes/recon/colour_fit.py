"""Least-squares fit of a frame's appearance into the colour track at its time.

Adam moves a colour by about its learning rate per step, so the few steps a live frame gets (10 on a GPU at
30 Hz) cannot follow what changes from frame to frame in endoscopy: the specular highlights move with the
tissue and the light, the tissue blanches where it is pulled. With the geometry held, the rendered image is
linear in the Gaussians' colours, R = W c (W: the compositing weights T alpha of each Gaussian at each pixel),
so the colour change that best explains a frame solves the damped least squares

    min_x ||M (I - R - W x)||^2 + damping ||x||^2        (M: the tissue pixels)

This runs it by conjugate gradients on the normal equations, preconditioned by each Gaussian's total weight
sum_p w_jp (one CG iteration: a render with the direction as colours for W p, and a vector-Jacobian product of
the renderer for W^T r, reusing one recorded forward pass; every backend provides both). Gaussians whose centres
the frame does not see get no change (as in the training steps): one reaching in from outside the image would get
whatever colour fits its sliver of pixels, and show it wherever the rest of it appears.
Measured on the pulling clip at 1/4 scale (a frame after 10 live steps,
40.5 dB): 42.9 dB after one iteration, 44.4 after three, 45.6 after ten; the same CG without the preconditioner
42.2 after three, the preconditioned residual spread alone (no CG) 44.4 after eight. The change goes into the
colour knot at or after the frame's time only (`GaussianModel.fit_track`): the fitted past keeps its appearance.
"""

from __future__ import annotations

import torch

# torch imports this (and sympy with it) on the first autograd.grad with grad_outputs: half a second inside a live
# trainer's first frame, which every frame behind it waited for (frame-to-cloud latency; README, issue 18).
# Imported with this module, the cost falls at the node's start.
import torch.fx.experimental.symbolic_shapes

from surg3d_nodes.recon.gaussians import GaussianModel
from surg3d_nodes.recon.keyframes import Keyframe
from surg3d_nodes.recon.render import render_evaluated


def fit_colours(model: GaussianModel, kf: Keyframe, backend: str, iterations: int, damping: float = 0.01) -> int:
    """Fit the colour track of every Gaussian at `kf.t` to the frame's tissue pixels with `iterations` of
    preconditioned conjugate gradients (module docstring); returns its cost in training steps (a step is one
    render and one backward pass; the fit takes iterations + 1 of each)."""
    if model.num_gaussians == 0 or iterations <= 0:
        return 0
    mask = kf.tissue[..., None]
    with torch.no_grad():
        g = model.evaluate(kf.t, kf.camera.center())
    offset = torch.zeros_like(g["colors"], requires_grad=True)
    rgb, _, _, _ = render_evaluated({**g, "colors": g["colors"] + offset}, kf.camera, backend)

    def w_t(image: torch.Tensor) -> torch.Tensor:          # W^T image (the renderer's VJP)
        return torch.autograd.grad(rgb, offset, grad_outputs=image, retain_graph=True)[0]

    def w(colours: torch.Tensor) -> torch.Tensor:          # W colours on the tissue pixels
        with torch.no_grad():
            return render_evaluated({**g, "colors": colours}, kf.camera, backend)[0] * mask

    seen = kf.camera.sees(g["means"])[:, None].to(rgb.dtype)
    precond = seen / (w_t(mask.expand_as(rgb).contiguous()) + damping)
    residual = (kf.rgb - rgb.detach()) * mask
    x = torch.zeros_like(offset)
    s = w_t(residual)
    z = precond * s
    p, gamma = z, (s * z).sum()
    for i in range(iterations):
        q = w(p)
        step = gamma / ((q * q).sum() + damping * (p * p).sum()).clamp(min=1e-20)
        x = x + step * p
        if i + 1 == iterations:
            break
        residual = residual - step * q
        s = w_t(residual) - damping * x
        z = precond * s
        gamma_next = (s * z).sum()
        p, gamma = z + gamma_next / gamma.clamp(min=1e-20) * p, gamma_next
    rows = torch.arange(model.num_gaussians, device=model.device)
    model.fit_track("col_knots", kf.t, rows, model.track_at(kf.t, "col_knots") + x.detach())
    return iterations + 1
