"""Adam over a dict of tensors whose rows can be added/removed and whose time-knot axis can grow.

torch.optim keys its state by tensor identity, which breaks when densification replaces tensors; here
the moments live beside the parameters under the same names, so pruning, cloning and knot growth apply
the same row/column operation to both. Knot tensors ([N, K, D], named in `knot_keys`) can be stepped on a
knot window only (the knots an iteration touched), which keeps an iteration's cost independent of the sequence
length.
"""

from __future__ import annotations

import torch

from surg3d_nodes.recon.capacity import compact, grown


def _per_knot(x: torch.Tensor, dims: int) -> torch.Tensor:
    """Per-knot factors [K] as a contiguous [1, K, dims] tensor, to multiply [N, K, dims] windows."""
    return x[None, :, None].expand(1, -1, dims).contiguous()


class DictAdam:
    """Adam (betas 0.9/0.999, eps 1e-15 as in 3DGS) with per-name learning rates."""

    def __init__(self, lrs: dict[str, float], knot_keys: tuple[str, ...] = (),
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-15):
        # Knot tensors by name, not by shape: the [N, 3, 3] higher SH coefficients are 3-D as well (taken for
        # knots, they were stepped on the knot window's columns and their moments reset at every new knot).
        self.knot_keys = tuple(knot_keys)
        self.lrs = dict(lrs)
        self.betas = betas
        self.eps = eps
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}
        self.steps: dict[str, torch.Tensor] = {}
        # Knots count their first moment's steps apart from the second's: a new knot starts its first moment
        # afresh and continues the last knot's second moment (`grow_knots`).
        self.m_steps: dict[str, torch.Tensor] = {}

    def _ensure(self, name: str, p: torch.Tensor) -> None:
        if name not in self.m or self.m[name].shape != p.shape:
            self.m[name] = torch.zeros_like(p)
            self.v[name] = torch.zeros_like(p)
            self.steps[name] = torch.zeros(p.shape[1] if name in self.knot_keys else 1, device=p.device)
            if name in self.knot_keys:
                self.m_steps[name] = torch.zeros(p.shape[1], device=p.device)

    @torch.no_grad()
    def step(self, params: dict[str, torch.Tensor], grads: dict[str, torch.Tensor],
             knot_window: tuple[int, int] | None = None, scale: float = 1.0,
             rows: torch.Tensor | None = None) -> None:
        """One update of every parameter named in `grads`; `scale` multiplies all learning rates.

        Knot tensors are updated only on knots [lo, hi) of `knot_window` when given; their gradients
        are then those of the window's columns ([N, hi - lo, D], `GaussianModel.knot_window`). `rows` ([N]
        bool) limits the update to those Gaussians, as gsplat's SelectiveAdam: the others keep their values
        and their moments.
        """
        b1, b2 = self.betas
        # A [N] 0/1 factor rather than gathered rows: gathering and scattering every tensor made a CPU step 40 %
        # slower with a moving camera (most Gaussians out of view), the factor costs a multiply.
        keep = None if rows is None or bool(rows.all()) else rows.float()
        for name, g in grads.items():
            if name not in self.lrs:
                continue
            p = params[name]
            self._ensure(name, p)
            knots = name in self.knot_keys
            cols = slice(*knot_window) if knots and knot_window is not None else slice(None)
            sl = (slice(None), cols) if knots else (slice(None),)
            steps = self.steps[name][cols]
            steps += 1
            if knots:
                m_steps = self.m_steps[name][cols]
                m_steps += 1
            lr = self.lrs[name] * scale
            k = None if keep is None else keep.view(-1, *([1] * (g.dim() - 1)))
            # Unselected rows: no gradient, no decay of the moments, no step.
            w1 = 1 - b1 if k is None else (1 - b1) * k
            f2 = b2 if k is None else 1 - (1 - b2) * k
            if k is not None:
                g = g * k
            if knots:
                # The window's columns of [N, knots, D] are strided: torch's element-wise kernels ran up to 25x
                # slower per element on them (10 ms per knot tensor at 30k Gaussians, 63 knots, a window of 6:
                # more than the renderer). So: gathered once, updated contiguous, written back once; the
                # per-knot bias corrections as contiguous [1, window, D] factors (as [1, window, 1] they left
                # an inner loop of D = 3 elements).
                m = self.m[name][sl].lerp(g, w1)
                v = self.v[name][sl].mul(f2).addcmul_(g, g, value=1 - b2)
                self.m[name][sl], self.v[name][sl] = m, v
                denom = v.sqrt_().mul_(_per_knot((1 - b2 ** steps).rsqrt(), p.shape[2])).add_(self.eps)
                m.mul_(_per_knot(lr / (1 - b1 ** m_steps), p.shape[2]))
                if k is not None:
                    m.mul_(k)
                p[sl] -= m.div_(denom)
                continue
            m, v = self.m[name], self.v[name]
            # In place and fused where torch allows (lerp_, addcdiv_): the optimizer was a quarter of a
            # CPU training step, mostly temporaries.
            m.lerp_(g, w1)
            v.mul_(f2).addcmul_(g, g, value=1 - b2)
            bc1, bc2 = 1 - b1 ** float(steps), 1 - b2 ** float(steps)
            denom = (v / bc2).sqrt_().add_(self.eps)
            p.addcdiv_(m if k is None else m * k, denom, value=-lr / bc1)

    def select(self, keep: torch.Tensor) -> None:
        """Keep the moment rows of the kept Gaussians."""
        for d in (self.m, self.v):
            for k in d:
                d[k] = d[k][keep]

    def moments(self, rows: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Copies of the first and second moments of `rows` (indices), for `append`'s `last`."""
        return ({k: t[rows].clone() for k, t in self.m.items()}, {k: t[rows].clone() for k, t in self.v.items()})

    def append(self, n: int, last: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] | None = None) -> None:
        """Add zero moments for n new Gaussians (in place when there is room: recon.capacity); with `last`
        (`moments` of other rows), the last of the n continue those rows' moments."""
        for d in (self.m, self.v):
            for k, t in d.items():
                old = t.shape[0]
                d[k] = grown(t, old + n, t.shape[1] if k in self.knot_keys else None)
                d[k][old:] = 0
        if last is None:
            return
        for d, src in zip((self.m, self.v), last, strict=True):
            for k, t in src.items():
                if t.shape[0]:
                    d[k][-t.shape[0]:] = t

    def grow_knots(self, total: int) -> None:
        """Extend knot moments to `total` knots. A new knot starts as a copy of the last one
        (`GaussianModel.ensure_time`); its first moment (the direction of the steps) starts afresh, its second
        moment (the scale of each parameter's gradients, a property of the Gaussian rather than of the moment)
        continues the last knot's. Both from zero, Adam's bias correction made a new knot's first step the
        learning rate times the gradient's sign whatever its size, so every Gaussian the new frame saw jumped by
        the full rate; now the step is the gradient over its usual scale (README, issue 14)."""
        for k in list(self.m):
            t = self.m[k]
            if k in self.knot_keys and t.shape[1] < total:
                old = t.shape[1]
                self.m[k] = grown(t, t.shape[0], total)
                self.m[k][:, old:] = 0
                self.v[k] = grown(self.v[k], t.shape[0], total)
                self.v[k][:, old:] = self.v[k][:, old - 1:old]
                self.steps[k] = torch.cat([self.steps[k], self.steps[k][old - 1:].expand(total - old)])
                self.m_steps[k] = torch.cat([self.m_steps[k], self.m_steps[k].new_zeros(total - old)])

    def drop_knot(self, j: int) -> None:
        """Remove knot column j from the moments (after `GaussianModel.simplify_knots` removed it)."""
        for k in list(self.m):
            if k in self.knot_keys:
                keep = [i for i in range(self.m[k].shape[1]) if i != j]
                self.m[k], self.v[k] = self.m[k][:, keep], self.v[k][:, keep]
                self.steps[k], self.m_steps[k] = self.steps[k][keep], self.m_steps[k][keep]

    def state_dict(self) -> dict:
        """Moments, step counts and learning rates (each on a storage of its own size)."""
        return {"lrs": dict(self.lrs), "m": {k: compact(t) for k, t in self.m.items()},
                "v": {k: compact(t) for k, t in self.v.items()}, "steps": dict(self.steps),
                "m_steps": dict(self.m_steps)}

    def load_state_dict(self, sd: dict) -> None:
        """Restore from `state_dict()` (one written before knots counted their first moment's steps apart counts
        them as the second's)."""
        self.lrs = dict(sd["lrs"])
        self.m, self.v, self.steps = dict(sd["m"]), dict(sd["v"]), dict(sd["steps"])
        self.m_steps = dict(sd.get("m_steps") or {k: t.clone() for k, t in self.steps.items() if k in self.knot_keys})
