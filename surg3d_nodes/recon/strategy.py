"""Densification strategies (adaptive density control), pluggable as in gsplat's `strategy/`.

A strategy owns its statistics and is called after every backward pass with the renderer's `info`; it
decides when and how the model's Gaussians are pruned, cloned or split, and keeps the optimizer's state in
step with the model. The reconstruction grows the model itself where tissue is new (`Reconstructor`) and
tells the strategy about those rows with `grow`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch

from surg3d_nodes.recon.config import TrainerConfig
from surg3d_nodes.recon.gaussians import GaussianModel
from surg3d_nodes.recon.render import RenderCamera
from surg3d_nodes.recon.render.torch_backend import quat_to_rotmat
from surg3d_nodes.recon.sparse_adam import DictAdam


class Strategy(Protocol):
    """What the reconstruction needs of a densification strategy."""

    def reset(self, n: int, device: torch.device) -> None:
        """Start over with statistics for `n` Gaussians."""

    def grow(self, n: int) -> None:
        """`n` Gaussians were appended to the model."""

    def step_post_backward(self, model: GaussianModel, optimizer: DictAdam, info: dict, cam: RenderCamera,
                           step: int, densify: bool, scene_depth: float, since: float = float("-inf")) -> None:
        """Collect statistics from the step's gradients; with `densify`, refine the model when due, changing how
        it shows the times after `since` only."""


@dataclass
class DefaultStrategy:
    """3DGS adaptive density control: every `refine_every` steps from `refine_start`, prune transparent or
    huge Gaussians, then clone small / split large ones whose mean screen-space gradient exceeds
    `grad_threshold`, within the `max_gaussians` budget (highest gradients first)."""

    refine_start: int = 200
    refine_every: int = 100
    grad_threshold: float = 2e-4      # mean screen-space gradient (NDC units scaled to pixels / 2)
    split_radius_px: float = 4.0      # larger on screen: split, else clone
    prune_opacity: float = 0.005
    prune_scale_rel: float = 0.1      # x scene depth
    max_gaussians: int = 300_000
    revised_opacity: bool = True      # clones and split children share their parent's opacity

    def __post_init__(self) -> None:
        self.grad_acc = torch.zeros(0)
        self.grad_cnt = torch.zeros(0)
        self.max_rad = torch.zeros(0)

    @classmethod
    def from_config(cls, c: TrainerConfig) -> DefaultStrategy:
        """The strategy with the trainer configuration's densification fields."""
        return cls(c.refine_start, c.refine_every, c.grad_threshold, c.split_radius_px, c.prune_opacity,
                   c.prune_scale_rel, c.max_gaussians, c.densify_revised_opacity)

    def reset(self, n: int, device: torch.device) -> None:
        """Zero statistics for `n` Gaussians on `device`."""
        self.grad_acc = torch.zeros(n, device=device)
        self.grad_cnt = torch.zeros(n, device=device)
        self.max_rad = torch.zeros(n, device=device)

    def grow(self, n: int) -> None:
        """Zero statistics for `n` appended Gaussians."""
        z = self.grad_acc.new_zeros(n)
        self.grad_acc = torch.cat([self.grad_acc, z])
        self.grad_cnt = torch.cat([self.grad_cnt, z])
        self.max_rad = torch.cat([self.max_rad, z])

    @torch.no_grad()
    def step_post_backward(self, model: GaussianModel, optimizer: DictAdam, info: dict, cam: RenderCamera,
                           step: int, densify: bool, scene_depth: float, since: float = float("-inf")) -> None:
        """Accumulate the screen-space gradients of this step; refine when due (`refine`)."""
        self._accumulate(info, cam)
        if densify and step >= self.refine_start and step % self.refine_every == 0:
            self.refine(model, optimizer, scene_depth, since)

    def _accumulate(self, info: dict, cam: RenderCamera) -> None:
        m2d = info.get("means2d")
        if m2d is None or m2d.grad is None:
            return
        g = m2d.grad.reshape(-1, 2).clone()      # torch backend [N,2]; gsplat [1,N,2]
        g[:, 0] *= cam.width / 2.0
        g[:, 1] *= cam.height / 2.0
        radii = info["radii"]
        vis = (radii > 0).all(-1)
        n = min(g.shape[0], self.grad_acc.shape[0])
        self.grad_acc[:n] += g[:n].norm(dim=-1) * vis[:n]
        self.grad_cnt[:n] += vis[:n].float()
        self.max_rad[:n] = torch.maximum(self.max_rad[:n], radii[:n].max(-1).values.float())

    @torch.no_grad()
    def refine(self, model: GaussianModel, optimizer: DictAdam, scene_depth: float,
               since: float = float("-inf")) -> None:
        """Prune, then clone / split the high-gradient Gaussians; statistics start over.

        With `since` (live training: where the newest frame's changes start, `GaussianModel.birth_time`), a
        refinement changes the model from then on only, as growth does: a Gaussian that lived before `since` stays
        as it was for the frames already fitted, retired at `since`, and its clones or split children are born
        there (a clone's parent is replaced by a copy). Refining the past as well took 1.1 dB of the fit of the
        frames already trained by the end of the stream, 1.0 dB of the final score (stream K = 10, pulling 1/4;
        README, issue 14).
        """
        p = model.params
        if model.num_gaussians == 0:
            return
        opac = torch.sigmoid(p["opacity_logits"])
        size = torch.exp(p["log_scales"]).max(-1).values
        keep = (opac > self.prune_opacity) & (size < self.prune_scale_rel * scene_depth)
        grads = self.grad_acc / self.grad_cnt.clamp(min=1)
        grads[~keep | (model.life[:, 1] <= since)] = 0      # retired before `since`: the past's only
        cand = torch.nonzero(grads > self.grad_threshold).squeeze(1)
        cand = cand[torch.argsort(grads[cand], descending=True, stable=True)]
        past = model.life[:, 0] < since
        # Within the budget, highest gradients first: a candidate adds a row (two when its parent stays with the
        # past), and the longest-retired Gaussians make room first.
        cost = 1 + past[cand].long()
        room = self.max_gaussians - int(keep.sum())
        drop = model.oldest_retired(int(cost.sum()) - room, keep)
        keep[drop] = False
        cand = cand[torch.cumsum(cost, 0) <= room + drop.numel()]
        cand = cand.sort().values
        split = cand[self.max_rad[cand] > self.split_radius_px]
        clone = cand[self.max_rad[cand] <= self.split_radius_px]
        src = torch.cat([clone, split, split, clone[past[clone]]])
        rows = {k: v.detach()[src] for k, v in p.items()}
        inferred = model.inferred[src]
        remembered = model.remembered[src]
        life = model.life[src].clone()
        life[:, 0].clamp_(min=since)
        if split.numel():
            # Split: two samples from the parent's distribution, scales shrunk by 1.6 (3DGS).
            ns = split.numel()
            R = quat_to_rotmat(p["quats"].detach()[split])
            sc = torch.exp(p["log_scales"].detach()[split])
            sc = torch.nn.functional.pad(sc, (0, 3 - sc.shape[1]))   # surfels: samples stay in their plane
            off = (R @ (torch.randn(2, ns, 3, device=sc.device) * sc)[..., None])[..., 0]
            nc = clone.numel()
            rows["means"][nc:nc + ns] += off[0]
            rows["means"][nc + ns:nc + 2 * ns] += off[1]
            rows["log_scales"][nc:nc + 2 * ns] -= math.log(1.6)
            keep[split[~past[split]]] = False
        if self.revised_opacity and cand.numel():
            # Two Gaussians of opacity 1 - sqrt(1 - o) where there was one of opacity o: a clone and its
            # parent composite exactly as the parent did, so a refinement does not undo the fit (single
            # EndoNeRF frame at 1/4: 51.8 dB fell to 37.7 at a refinement that doubled the opacity).
            half = lambda x: torch.logit(1 - torch.sqrt(1 - torch.sigmoid(x)), eps=1e-6)  # noqa: E731
            rows["opacity_logits"] = half(rows["opacity_logits"])
            now = clone[~past[clone]]
            p["opacity_logits"].data[now] = half(p["opacity_logits"].data[now])
        # The copy of a past parent is that Gaussian from `since` on: it continues its optimizer state as well.
        # Zero moments under Adam's shared step count made its next steps several times the learning rate
        # whatever its gradient, and undid its fit in the view shown right after (README, issue 14).
        carried = optimizer.moments(clone[past[clone]])
        kept = cand[past[cand]]
        model.life[kept, 1] = model.life[kept, 1].clamp(max=since)
        model.select(keep)
        optimizer.select(keep)
        n_new = src.numel()
        self.reset(int(keep.sum()), self.grad_acc.device)
        if n_new:
            model.append(rows, inferred, life, remembered)
            optimizer.append(n_new, carried)
            self.grow(n_new)
