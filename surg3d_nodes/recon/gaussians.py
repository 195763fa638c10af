"""Deformable 3D Gaussian model: static Gaussians plus per-Gaussian temporal knot tracks.

Each Gaussian has a mean, log-scales, a wxyz quaternion, an opacity logit and colour as SH DC (+ optional
degree-1 rest). Motion and appearance change are per-Gaussian piecewise-linear tracks over time knots
(position offset, colour offset, optionally log-scale offset), shared by all Gaussians. Knots are appended
every `knot_spacing` as time advances, so the model can be rendered at any past time of an online
sequence, and a track is evaluated with two gathers (cheap for both backends). Memory stays bounded in a
long surgery: beyond `max_knots`, the past knot that the straight line between its neighbours explains
best is removed (`simplify_knots`), so old motion is kept at a coarser, adaptive time resolution while
the newest knots keep the full one. Gaussians born later inherit the motion of their nearest existing
neighbour so they follow the tissue they belong to.

Every Gaussian also carries an `inferred` flag (a boolean buffer, never trained): True for Gaussians seeded by
the completion of tissue no camera has seen (`recon.completion`), False for observed tissue; and a `life` span
[N,2] (born, retired] in model time, knot times both. Its visibility is a piecewise-linear track over the knots, as
the others: 0 up to `born` and 1 from the next knot on, 1 up to `retired` and 0 from the next knot on (`visibility`).
What a new frame adds or replaces changes the model from the knot before that frame on (`birth_time`; a time
between the two frames blends the two states, as the tracks do) and not how it shows the earlier frames, which it
has already fitted: tissue added to explain the frame, or
inferred under its instruments, is born there; an inferred Gaussian that the frame shows to be observed tissue
is retired there, not deleted. `append`, `select` and `load_params` keep both aligned with the parameter rows.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass

import numpy as np
import torch
from pykdtree.kdtree import KDTree

from surg3d_nodes.recon.capacity import grown
from surg3d_nodes.recon.config import TrainerConfig

SH_C0 = 0.28209479177387814
SH_C1 = 0.4886025119029199


@dataclass
class GaussianConfig:
    """Shape of the model: SH degree (0 or 1), knot spacing (model time units), knot budget (0 = none),
    deformable scale. The defaults are TrainerConfig's (one value each; the trainer passes its own)."""

    sh_degree: int = TrainerConfig.sh_degree
    knot_spacing: float = TrainerConfig.knot_spacing_s
    knots_at_frames: bool = TrainerConfig.knots_at_frames
    max_knots: int = TrainerConfig.max_knots
    deform_scale: bool = TrainerConfig.deform_scale
    init_opacity: float = TrainerConfig.init_opacity
    init_scale: float = TrainerConfig.init_scale   # new Gaussians' scale x the nearest-neighbour distance
    min_scale: float = 1e-5
    primitive: str = TrainerConfig.primitive   # 2dgs: surfels store two scales (the disc's axes)


def logit(p: float) -> float:
    """Inverse sigmoid."""
    return float(np.log(p / (1.0 - p)))


def _seeded_memory(sh_dc: torch.Tensor, knots: int) -> torch.Tensor:
    """[N,knots,3] remembered colours of Gaussians no frame has shown yet: their base colour, what they were seeded
    with (`GaussianModel.remember`)."""
    return (SH_C0 * sh_dc.detach() + 0.5).clamp(0.0, 1.0)[:, None].expand(-1, knots, -1)


class GaussianModel:
    """Parameters (leaf tensors in `params`) and the evaluation of the scene at a time t."""

    KNOT_KEYS = ("pos_knots", "col_knots", "scale_knots")

    def __init__(self, cfg: GaussianConfig, device: str | torch.device = "cpu", time_origin: float = 0.0):
        if cfg.sh_degree not in (0, 1):
            raise ValueError(f"sh_degree must be 0 or 1, got {cfg.sh_degree}")
        if cfg.knot_spacing <= 0:
            raise ValueError(f"knot_spacing must be positive, got {cfg.knot_spacing}")
        if cfg.max_knots and cfg.max_knots < 4:
            raise ValueError(f"max_knots must be 0 (unbounded) or at least 4, got {cfg.max_knots}")
        self.cfg = cfg
        self.device = torch.device(device)
        self.knot_times: list[float] = [float(time_origin)]
        self.params: dict[str, torch.Tensor] = {}
        self.inferred = torch.zeros(0, dtype=torch.bool, device=self.device)
        self.life = torch.zeros(0, 2, dtype=torch.float64, device=self.device)   # float64: model times
        # The colour each Gaussian showed when a frame last showed its centre as tissue, as of each knot
        # (`remember`): what the de-occluded view renders behind an instrument.
        self.remembered = torch.zeros(0, 1, 3, device=self.device)
        self._allocate(0, 1)

    # ----------------------------------------------------------------- structure
    def _allocate(self, n: int, knots: int) -> None:
        z = lambda *s: torch.zeros(*s, device=self.device)  # noqa: E731
        p = {
            "means": z(n, 3), "log_scales": z(n, self.scale_dims), "quats": z(n, 4), "opacity_logits": z(n),
            "sh_dc": z(n, 3), "pos_knots": z(n, knots, 3), "col_knots": z(n, knots, 3),
        }
        if self.cfg.sh_degree == 1:
            p["sh_rest"] = z(n, 3, 3)
        if self.cfg.deform_scale:
            p["scale_knots"] = z(n, knots, self.scale_dims)
        self.params = {k: v.requires_grad_() for k, v in p.items()}

    @property
    def scale_dims(self) -> int:
        """Scales per Gaussian: 3, or 2 for surfels."""
        return 2 if self.cfg.primitive == "2dgs" else 3

    @property
    def num_gaussians(self) -> int:
        return int(self.params["means"].shape[0])

    @property
    def num_knots(self) -> int:
        return int(self.params["pos_knots"].shape[1])

    def time_range(self) -> tuple[float, float]:
        """Model time covered by the knots."""
        return self.knot_times[0], self.knot_times[-1]

    def knot_index(self, t: float, knot_times: list[float] | None = None) -> tuple[int, int, float]:
        """Knots (i0, i1) around time t and the weight w of i1 (times outside the range clamp);
        `knot_times` defaults to the model's own."""
        kt = self.knot_times if knot_times is None else knot_times
        if t <= kt[0] or len(kt) == 1:
            return 0, 0, 0.0
        if t >= kt[-1]:
            return len(kt) - 1, len(kt) - 1, 0.0
        i0 = bisect_right(kt, t) - 1
        return i0, i0 + 1, (t - kt[i0]) / (kt[i0 + 1] - kt[i0])

    # ----------------------------------------------------------------- evaluation
    def _interp(self, p: dict[str, torch.Tensor], name: str, t: float) -> torch.Tensor:
        k = p[name]
        i0, i1, w = self.knot_index(t, p["knot_times"].tolist() if "knot_times" in p else None)
        return k[:, i0] * (1.0 - w) + k[:, i1] * w if w > 0 else k[:, i0]

    def evaluate(self, t: float, cam_center: torch.Tensor | None = None,
                 params: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """World-space means, quats, (linear) scales, opacities and RGB colours at time t.

        `params` lets a caller evaluate a detached copy (thread-safe rendering); default: own params.
        """
        p = self.params if params is None else params
        vis = self.visibility(t, params)
        means = p["means"] + self._interp(p, "pos_knots", t)
        log_s = p["log_scales"]
        if "scale_knots" in p:
            log_s = log_s + self._interp(p, "scale_knots", t)
        rgb = SH_C0 * p["sh_dc"] + 0.5 + self._interp(p, "col_knots", t)
        if "sh_rest" in p and cam_center is not None:
            d = torch.nn.functional.normalize(means.detach() - cam_center.to(means), dim=-1)
            r = p["sh_rest"]
            rgb = rgb + SH_C1 * (-d[:, 1:2] * r[:, 0] + d[:, 2:3] * r[:, 1] - d[:, 0:1] * r[:, 2])
        return {
            "means": means,
            "quats": p["quats"],
            "scales": torch.exp(log_s).clamp(min=self.cfg.min_scale),
            "opacities": torch.sigmoid(p["opacity_logits"]) * (1.0 if vis is None else vis.to(means.dtype)),
            "colors": rgb.clamp(min=0.0),
        }

    def visibility(self, t: float, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor | None:
        """[N] float 0..1: how much of each Gaussian shows at time t (its opacity's factor), from its `life` span
        and the knots (the module docstring); None for a parameter copy without spans.

        At a knot time it is 0 or 1: a frame is fitted with the Gaussians alive then. Between two knots a Gaussian
        born at the first fades in, as the tracks interpolate: a population switched at once made times between
        two frames 1.9 dB worse than the mean of the two frames' renders (stream K = 10, pulling 1/4, frame 9)."""
        life = self.life if params is None else params.get("life")
        if life is None:
            return None
        kt = self.knot_times if params is None else params.get("life_knots", params.get("knot_times", self.knot_times))
        kt = torch.as_tensor(kt, dtype=torch.float64, device=life.device)

        def ramp(edge: torch.Tensor) -> torch.Tensor:
            """0 at the knot `edge` and before, 1 from the next knot on (-inf: always 1; +inf: always 0)."""
            finite = torch.isfinite(edge)
            e = torch.where(finite, edge, torch.zeros_like(edge))
            i = torch.searchsorted(kt, e, right=True)
            nxt = torch.where(i < kt.numel(), kt[i.clamp(max=kt.numel() - 1)], e + self.cfg.knot_spacing)
            r = ((t - e) / (nxt - e).clamp(min=1e-12)).clamp(0.0, 1.0)
            return torch.where(finite, r, (edge < 0).to(r))

        return (ramp(life[:, 0]) * (1.0 - ramp(life[:, 1]))).float()

    def alive(self, t: float, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor | None:
        """[N] bool: the Gaussians that show at time t (`visibility` above 0; at a knot time, those whose `life`
        span (born, retired] contains it); None for a parameter copy without spans."""
        vis = self.visibility(t, params)
        return None if vis is None else vis > 0

    def retired(self) -> torch.Tensor:
        """[N] bool: the Gaussians retired at some time (kept only for the times before)."""
        return torch.isfinite(self.life[:, 1])

    def oldest_retired(self, n: int, among: torch.Tensor | None = None) -> torch.Tensor:
        """Indices of up to `n` retired Gaussians (of those in the bool mask `among`, default all), the longest
        retired first: what makes room for new ones within a budget, so the past loses detail before the present
        goes short of Gaussians."""
        mask = self.retired() if among is None else self.retired() & among
        idx = torch.nonzero(mask).squeeze(1)
        return idx[torch.argsort(self.life[idx, 1])[:max(0, n)]]

    def track_at(self, t: float, name: str) -> torch.Tensor:
        """Value [N,3] of track `name` (pos_knots, col_knots, scale_knots) of every Gaussian at time t."""
        return self._interp(self.params, name, t).detach()

    @torch.no_grad()
    def remember(self, t: float, rows: torch.Tensor, colours: torch.Tensor) -> None:
        """Remember `colours` [M,3] as what Gaussians `rows` showed at time t, from the knot at or after t on
        (the knots before keep what was shown until then)."""
        i0, i1, w = self.knot_index(t)
        self.remembered[rows, i0 if w == 0.0 else i1:] = colours[:, None]

    def remembered_at(self, t: float, params: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """[N,3] the remembered colours at time t (of `params`, a `detached_copy`, or the model's)."""
        return self._interp({"remembered": self.remembered} if params is None else params, "remembered", t)

    @torch.no_grad()
    def fit_track(self, name: str, t: float, rows: torch.Tensor, target: torch.Tensor) -> None:
        """Move track `name` of Gaussians `rows` towards `target` [M,3] at time t by changing only the knot
        at or after t, so earlier times keep their values (online: the past is already fitted). Exact
        when t is on a knot or in the later half of its interval; earlier in the interval the change is
        limited to twice the residual."""
        i0, i1, w = self.knot_index(t)
        k = self.params[name]
        r = target - (k[rows, i0] * (1.0 - w) + k[rows, i1] * w)
        if i0 == i1 or w == 0.0:
            k[rows, i0] += r
        else:
            k[rows, i1] += r / max(w, 0.5)

    def knot_window(self, lo: int, hi: int) -> dict[str, torch.Tensor]:
        """The parameters for one training step that only touches knots [lo, hi): the model's own leaves, except
        the knot tensors, which are new leaves viewing their columns [lo, hi) (an optimizer step writes through
        them into the model), with `knot_times` (the window's), `life` and `life_knots` (all knot times) for
        `evaluate`. Their gradients are window-sized: the gradient of a whole knot tensor is N x knots x 3 zeros
        for a step that touches six knots (with a knot per frame it cost more than the renderer)."""
        p = {k: (v.detach()[:, lo:hi].requires_grad_() if k in self.KNOT_KEYS else v) for k, v in self.params.items()}
        p["knot_times"] = torch.tensor(self.knot_times[lo:hi], dtype=torch.float64)
        p["life"] = self.life
        p["life_knots"] = torch.tensor(self.knot_times, dtype=torch.float64)
        return p

    def knot_context(self, window: dict[str, torch.Tensor], lo: int, hi: int, k: int) -> dict[str, torch.Tensor]:
        """The knot tensors of a `knot_window` [lo, hi) between up to `k` fixed (detached) neighbouring knots on
        each side: a regulariser over time sees the neighbours, and its gradient reaches the window only."""
        return {name: torch.cat([self.params[name].detach()[:, max(0, lo - k):lo], window[name],
                                 self.params[name].detach()[:, hi:hi + k]], 1)
                for name in self.KNOT_KEYS if name in window}

    def detached_copy(self) -> dict[str, torch.Tensor]:
        """A consistent detached copy of all parameters plus `knot_times` (a float64 tensor), the `inferred`
        flags, the `life` spans and the `remembered` colours, so it can be evaluated while training adds or
        removes knots (take it under the trainer's lock)."""
        copy = {k: v.detach().clone() for k, v in self.params.items()}
        copy["knot_times"] = torch.tensor(self.knot_times, dtype=torch.float64)
        copy["inferred"] = self.inferred.clone()
        copy["life"] = self.life.clone()
        copy["remembered"] = self.remembered.clone()
        return copy

    # ----------------------------------------------------------------- growth
    def ensure_time(self, t: float) -> int:
        """Cover time t with knots (copies of the last one); returns how many were added. On a grid: every
        `knot_spacing` until t. With `knots_at_frames`: one knot at t itself when t is at least `knot_spacing`
        after the last knot (a frame is then fitted by its own knot, and a time between two frames
        interpolates their fitted states)."""
        last, step = self.knot_times[-1], self.cfg.knot_spacing
        if self.cfg.knots_at_frames:
            extra = int(t >= last + step - 1e-9)
            new = [float(t)] * extra
        else:
            extra = max(0, int(np.ceil((t - last) / step - 1e-9)))
            new = [last + step * (i + 1) for i in range(extra)]
        if extra == 0:
            return 0
        self.knot_times += new
        for name in self.KNOT_KEYS:
            if name in self.params:
                k = self.params[name].detach()
                n, kn = k.shape[:2]
                out = grown(k, n, kn + extra)          # in place when there is room (recon.capacity)
                out[:, kn:] = k[:, kn - 1:kn]
                self.params[name] = out.requires_grad_()
        self.remembered = torch.cat([self.remembered, self.remembered[:, -1:].expand(-1, extra, -1)], 1)
        return extra

    @torch.no_grad()
    def simplify_knots(self, keep_recent: int, scales: dict[str, float] | None = None) -> list[int]:
        """Remove knots until at most `cfg.max_knots` remain (no-op when unbounded); returns the removed
        indices, in removal order, so the optimizer can drop the same columns.

        Only knots older than the newest `keep_recent` (and never the first) are candidates; each removal
        takes the knot whose values the linear interpolation of its two neighbours reproduces best (mean
        absolute deviation over all Gaussians, each track divided by `scales[name]`, e.g. the scene depth
        for positions).
        """
        removed: list[int] = []
        budget = self.cfg.max_knots
        while budget and self.num_knots > budget:
            hi = self.num_knots - max(1, keep_recent)         # candidates j in [1, hi)
            if hi <= 1:
                break
            kt = torch.tensor(self.knot_times, dtype=torch.float64)
            w = ((kt[1:hi] - kt[:hi - 1]) / (kt[2:hi + 1] - kt[:hi - 1])).to(self.device, torch.float32)
            err = torch.zeros(hi - 1, device=self.device)
            for name in self.KNOT_KEYS:
                if name not in self.params:
                    continue
                k = self.params[name].detach()
                lin = k[:, :hi - 1] * (1 - w)[None, :, None] + k[:, 2:hi + 1] * w[None, :, None]
                err += (k[:, 1:hi] - lin).abs().mean(dim=(0, 2)) / (scales or {}).get(name, 1.0)
            j = int(torch.argmin(err)) + 1
            keep = [i for i in range(self.num_knots) if i != j]
            for name in self.KNOT_KEYS:
                if name in self.params:
                    self.params[name] = self.params[name].detach()[:, keep].requires_grad_()
            self.remembered = self.remembered[:, keep]
            del self.knot_times[j]
            removed.append(j)
        return removed

    def new_gaussians(self, points: np.ndarray, colors: np.ndarray, t_birth: float,
                      camera_rotation: np.ndarray | None = None) -> dict[str, torch.Tensor]:
        """Parameter rows for Gaussians at world `points` [M,3] with RGB `colors` [M,3] in 0..1.

        Scales come from nearest-neighbour distances (pykdtree) among the new and existing points; the
        tracks are copied from each point's nearest existing Gaussian, shifted so the offset is zero at
        t_birth (the point is where it was observed).
        """
        pts = np.asarray(points, dtype=np.float32)
        m = pts.shape[0]
        cur = self.evaluate(t_birth)["means"].detach().cpu().numpy() if self.num_gaussians else None
        ref = pts if cur is None else np.concatenate([pts, cur.astype(np.float32)])
        tree = KDTree(ref)
        k = min(4, ref.shape[0])
        dist, _ = tree.query(pts, k=k)
        dist = np.asarray(dist, dtype=np.float64).reshape(m, k)
        nn = np.sqrt(np.mean(dist[:, 1:] ** 2, axis=1)) if k > 1 else np.full(m, 1e-3)
        nn = np.clip(np.nan_to_num(nn, nan=1e-3) * self.cfg.init_scale, self.cfg.min_scale, None)
        dev = self.device
        rows = {
            "means": torch.as_tensor(pts, device=dev),
            "log_scales": torch.as_tensor(np.log(nn), dtype=torch.float32, device=dev)[:, None].repeat(
                1, self.scale_dims),
            "opacity_logits": torch.full((m,), logit(self.cfg.init_opacity), device=dev),
            "sh_dc": (torch.as_tensor(np.asarray(colors), dtype=torch.float32, device=dev) - 0.5) / SH_C0,
        }
        q = torch.zeros(m, 4, device=dev)
        q[:, 0] = 1.0
        if camera_rotation is not None:
            from surg3d_nodes.common.geometry import matrix_to_quat
            x, y, z, w = matrix_to_quat(camera_rotation)
            q[:] = torch.tensor([w, x, y, z], dtype=torch.float32, device=dev)
        rows["quats"] = q
        if "sh_rest" in self.params:
            rows["sh_rest"] = torch.zeros(m, 3, 3, device=dev)
        kn = self.num_knots
        if cur is not None:
            _, idx = KDTree(cur.astype(np.float32)).query(pts, k=1)
            idx_t = torch.as_tensor(np.asarray(idx, dtype=np.int64).reshape(-1), device=dev)
        for name in self.KNOT_KEYS:
            if name not in self.params:
                continue
            if cur is None:
                rows[name] = torch.zeros(m, kn, self.params[name].shape[-1], device=dev)
            else:
                src = self.params[name].detach()[idx_t]
                here = self._interp(self.params, name, t_birth).detach()[idx_t]
                rows[name] = src - here[:, None, :]
        return rows

    def birth_time(self, t: float) -> float:
        """Where a change made for the frame at time t starts (a birth, or a retirement): the knot before t
        (-inf when t is on the first knot)."""
        i = bisect_right(self.knot_times, t - 1e-9) - 1
        return self.knot_times[i] if i >= 0 and t > self.knot_times[0] + 1e-9 else float("-inf")

    def append(self, rows: dict[str, torch.Tensor], inferred: torch.Tensor | bool = False,
               life: torch.Tensor | tuple[float, float] = (float("-inf"), float("inf")),
               remembered: torch.Tensor | None = None) -> None:
        """Append parameter rows (from `new_gaussians` or densification) with their `inferred` flags, `life`
        spans (one (born, retired) for all rows, or an [M,2] tensor: densification copies its parents') and
        `remembered` colours ([M,knots,3]; default: the rows' base colour, what a new Gaussian is seeded with)."""
        n = int(rows["means"].shape[0])
        if remembered is None:
            remembered = _seeded_memory(rows["sh_dc"], self.num_knots)
        flags = torch.as_tensor(inferred, dtype=torch.bool, device=self.device).expand(n)
        spans = torch.as_tensor(life, dtype=torch.float64, device=self.device).expand(n, 2)
        old = self.num_gaussians
        for k, v in self.params.items():
            out = grown(v.detach(), old + n, v.shape[1] if k in self.KNOT_KEYS else None)
            out[old:] = rows[k].to(v)
            self.params[k] = out.requires_grad_()
        self.inferred = torch.cat([self.inferred, flags])
        self.life = torch.cat([self.life, spans])
        self.remembered = torch.cat([self.remembered, remembered.to(self.remembered)])

    def select(self, keep: torch.Tensor) -> None:
        """Keep only the Gaussians where the boolean mask `keep` is True."""
        self.params = {k: v.detach()[keep].requires_grad_() for k, v in self.params.items()}
        self.inferred = self.inferred[keep]
        self.life = self.life[keep]
        self.remembered = self.remembered[keep]

    def inferred_share(self) -> float:
        """Fraction of the Gaussians alive now (not retired) that are inferred (0 for an empty model)."""
        now = ~self.retired()
        return float(self.inferred[now].float().mean()) if bool(now.any()) else 0.0

    def load_params(self, params: dict[str, torch.Tensor], knot_times: list[float],
                    inferred: torch.Tensor | None = None, life: torch.Tensor | None = None,
                    remembered: torch.Tensor | None = None) -> None:
        """Replace all parameters (checkpoint restore), the `inferred` flags (None: all observed), the `life`
        spans (None: all alive throughout) and the `remembered` colours (None: the base colours); keys must
        match this model's configuration."""
        if set(params) != set(self.params):
            raise ValueError(f"checkpoint parameters {sorted(params)} do not match the model's "
                             f"{sorted(self.params)}")
        if params["pos_knots"].shape[1] != len(knot_times):
            raise ValueError(f"checkpoint has {params['pos_knots'].shape[1]} knots but {len(knot_times)} "
                             "knot times")
        n = int(params["means"].shape[0])
        for name, value in (("inferred", inferred), ("life", life), ("remembered", remembered)):
            if value is not None and not isinstance(value, torch.Tensor):
                raise ValueError(f"checkpoint's {name} is a {type(value).__name__}, not a tensor")
        if inferred is not None and inferred.shape != (n,):
            raise ValueError(f"checkpoint has {tuple(inferred.shape)} inferred flags for {n} Gaussians")
        if life is not None and life.shape != (n, 2):
            raise ValueError(f"checkpoint has {tuple(life.shape)} life spans for {n} Gaussians")
        if remembered is not None and remembered.shape != (n, len(knot_times), 3):
            raise ValueError(f"checkpoint has {tuple(remembered.shape)} remembered colours for {n} Gaussians "
                             f"and {len(knot_times)} knots")
        self.params = {k: v.detach().to(self.device).clone().requires_grad_() for k, v in params.items()}
        self.inferred = (torch.zeros(n, dtype=torch.bool) if inferred is None else inferred.bool()).to(self.device)
        always = torch.tensor([float("-inf"), float("inf")]).expand(n, 2)
        self.life = (always if life is None else life).to(self.device, torch.float64).clone()
        if remembered is None:
            remembered = _seeded_memory(self.params["sh_dc"], len(knot_times))
        self.remembered = remembered.to(self.device, torch.float32).clone()
        self.knot_times = [float(x) for x in knot_times]
