"""Compiled, multithreaded CPU backend: 3DGS in C++ (csrc/cpu_raster.cpp), called through ctypes.

Same conventions and outputs as the torch backend (the test oracle): RGB [H,W,3], expected depth [H,W],
alpha [H,W] and an info dict with `means2d` [N,2] (gradient retained for densification), `radii` [N,2]
and `depths` [N]. Differentiable w.r.t. means, quats, scales, opacities, colours and the view matrix (pose
refinement differentiates through it).

Why C++ through ctypes rather than a torch extension: the library has no torch headers, so it builds with
one g++ call in a few seconds (a torch C++ extension takes about a minute and needs ninja and the torch
ABI), and its std::threads do not bring a second OpenMP runtime next to torch's. The library is built on
first use (or by tools/setup.sh) into a cache directory keyed by a hash of the source, the compiler and
the CPU, and written atomically, so concurrent first uses cannot leave a half-written library behind
(unlike a torch extension's lock file, which a killed build leaves behind).
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch

from surg3d_nodes.recon.render.camera import EPS2D, RenderCamera

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "cpu_raster.cpp"
# The relaxed floating-point flags let GCC keep the compositing loops branch-free (min/max and selects on
# vectors); nothing in the library relies on NaN/Inf semantics or signed zeros. -Wno-psabi: the double
# vectors are 64 bytes, which only matters for an exported ABI, and these functions are internal.
FLAGS = ["-O3", "-march=native", "-std=c++17", "-shared", "-fPIC", "-pthread", "-fno-math-errno", "-fno-trapping-math",
         "-fno-signed-zeros", "-ffinite-math-only", "-Wno-psabi"]
MAX_CHANNELS = 16           # the C++ side keeps per-Gaussian feature gradients in a fixed-size array
_lib_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_lib_error: str | None = None


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def cache_dir() -> Path:
    """Where built libraries go: $SURG3D_CACHE_DIR, else $XDG_CACHE_HOME/surg3d, else ~/.cache/surg3d."""
    base = os.environ.get("SURG3D_CACHE_DIR")
    if base:
        return Path(base) / "ext"
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "surg3d" / "ext"


def _cpu_signature() -> str:
    # -march=native code must not be reused on a CPU with fewer instruction-set extensions.
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((ln for ln in fh if ln.startswith("flags")), "")
    except OSError:
        flags = ""
    return platform.machine() + flags


def library_path(cxx: str) -> Path:
    """Path of the built library for this source, compiler and CPU."""
    try:
        version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        version = ""
    h = hashlib.sha1()
    for part in (SOURCE.read_bytes(), " ".join(FLAGS).encode(), version.encode(), _cpu_signature().encode()):
        h.update(part)
        h.update(b"\0")
    return cache_dir() / f"surg3d_cpu_raster-{h.hexdigest()[:16]}.so"


def build() -> Path:
    """Compile the library unless the cached one is current; returns its path (raises on failure)."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (g++ or $CXX) found")
    path = library_path(cxx)
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        res = subprocess.run([cxx, *FLAGS, str(SOURCE), "-o", tmp], capture_output=True, text=True)
        if res.returncode != 0:
            raise RuntimeError(f"building the CPU rasterizer failed:\n{res.stderr[-4000:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _declare(lib: ctypes.CDLL) -> None:
    p, i64, i32, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for suf in ("f32", "f64"):
        getattr(lib, f"project_fwd_{suf}").argtypes = [i64, p, p, p, p, p, i32, i32, f64, f64, f64, p, p, p, p, i32]
        getattr(lib, f"project_bwd_{suf}").argtypes = [i64, p, p, p, p, p, i32, i32, f64, p, p, p, p, p, p, p, i32]
        fn = getattr(lib, f"bin_prepare_{suf}")
        fn.argtypes = [i64, p, p, p, p, p, i32, i32, p, p, p, p, i32]
        fn.restype = i64
        getattr(lib, f"record_stride_{suf}").argtypes = [i32]
        getattr(lib, f"record_stride_{suf}").restype = i64
        getattr(lib, f"bin_fill_{suf}").argtypes = [i64, p, p, p, p, p, p, i32, i32, i32, p, p, p, i32]
        getattr(lib, f"raster_fwd_{suf}").argtypes = [i32, i32, i32] + [p] * 6 + [i32]
        getattr(lib, f"raster_bwd_{suf}").argtypes = [i64, i64, p, i32, i32, i32] + [p] * 11 + [i32]
    lib.tile_size.restype = i32


def load() -> ctypes.CDLL:
    """The loaded library, built on first use (raises RuntimeError when that is impossible)."""
    global _lib, _lib_error
    with _lib_lock:
        if _lib is None and _lib_error is None:
            try:
                lib = ctypes.CDLL(str(build()))
                _declare(lib)
                _lib = lib
            except (RuntimeError, OSError) as exc:
                _lib_error = str(exc)
                log.warning("compiled CPU rasterizer unavailable (%s); the torch backend is used", exc)
        if _lib is None:
            raise RuntimeError(f"compiled CPU rasterizer unavailable: {_lib_error}")
        return _lib


def available() -> bool:
    """True when the library is built or can be built here."""
    try:
        load()
    except RuntimeError:
        return False
    return True


def _ptr(t: torch.Tensor) -> int:
    return t.data_ptr()


def _suffix(dtype: torch.dtype) -> str:
    if dtype == torch.float32:
        return "f32"
    if dtype == torch.float64:
        return "f64"
    raise TypeError(f"the CPU backend renders float32 or float64, got {dtype}")


class _Project(torch.autograd.Function):
    """EWA projection: (means, quats, scales, viewmat) -> means2d, conics, depths (+ radii, no gradient)."""

    @staticmethod
    def forward(ctx, means, quats, scales, viewmat, K, width, height, eps2d, near_plane):
        lib, suf = load(), _suffix(means.dtype)
        n = means.shape[0]
        means, quats, scales = means.contiguous(), quats.contiguous(), scales.contiguous()
        viewmat, K = viewmat.to(means).contiguous(), K.to(means).contiguous()
        means2d = means.new_empty(n, 2)
        conics = means.new_empty(n, 3)
        depths = means.new_empty(n)
        radii = torch.empty(n, 2, dtype=torch.int32)
        getattr(lib, f"project_fwd_{suf}")(n, _ptr(means), _ptr(quats), _ptr(scales), _ptr(viewmat), _ptr(K),
                                           width, height, eps2d, near_plane, 1e10, _ptr(means2d), _ptr(conics),
                                           _ptr(depths), _ptr(radii), torch.get_num_threads())
        ctx.save_for_backward(means, quats, scales, viewmat, K)
        ctx.args = (width, height, eps2d)
        ctx.mark_non_differentiable(radii)
        return means2d, conics, depths, radii

    @staticmethod
    def backward(ctx, g_means2d, g_conics, g_depths, _g_radii):
        means, quats, scales, viewmat, K = ctx.saved_tensors
        width, height, eps2d = ctx.args
        lib, suf = load(), _suffix(means.dtype)
        n = means.shape[0]
        g_means2d = g_means2d.contiguous() if g_means2d is not None else means.new_zeros(n, 2)
        g_conics = g_conics.contiguous() if g_conics is not None else means.new_zeros(n, 3)
        g_depths = g_depths.contiguous() if g_depths is not None else means.new_zeros(n)
        g_means, g_quats, g_scales = torch.empty_like(means), torch.empty_like(quats), torch.empty_like(scales)
        g_view = torch.zeros_like(viewmat)
        getattr(lib, f"project_bwd_{suf}")(n, _ptr(means), _ptr(quats), _ptr(scales), _ptr(viewmat), _ptr(K),
                                           width, height, eps2d, _ptr(g_means2d), _ptr(g_conics),
                                           _ptr(g_depths), _ptr(g_means), _ptr(g_quats), _ptr(g_scales),
                                           _ptr(g_view), torch.get_num_threads())
        g_view = g_view if ctx.needs_input_grad[3] else None
        return g_means, g_quats, g_scales, g_view, None, None, None, None, None


class _Rasterize(torch.autograd.Function):
    """Tile-binned front-to-back compositing of features [N,C] -> image [H,W,C] and alpha [H,W]."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, features, depths, radii, width, height):
        lib, suf = load(), _suffix(means2d.dtype)
        n, ch = features.shape
        if ch > MAX_CHANNELS:
            raise ValueError(f"at most {MAX_CHANNELS} feature channels, got {ch}")
        means2d, conics = means2d.contiguous(), conics.contiguous()
        opacities, features = opacities.contiguous(), features.contiguous()
        depths, radii = depths.contiguous(), radii.contiguous()
        threads = torch.get_num_threads()
        boxes = torch.empty(n, 4, dtype=torch.int32)
        order = torch.empty(n, dtype=torch.int32)
        visible = ctypes.c_int64(0)
        tile = lib.tile_size()
        tile_offsets = torch.empty(math.ceil(width / tile) * math.ceil(height / tile) + 1, dtype=torch.int64)
        total = getattr(lib, f"bin_prepare_{suf}")(n, _ptr(means2d), _ptr(conics), _ptr(opacities), _ptr(depths),
                                                   _ptr(radii), width, height, _ptr(boxes), _ptr(order),
                                                   ctypes.addressof(visible), _ptr(tile_offsets), threads)
        isect = torch.empty(total, dtype=torch.int32)
        vis = visible.value
        records = means2d.new_empty(vis, getattr(lib, f"record_stride_{suf}")(ch))
        getattr(lib, f"bin_fill_{suf}")(vis, _ptr(order), _ptr(boxes), _ptr(means2d), _ptr(conics),
                                        _ptr(opacities), _ptr(features), ch, width, height, _ptr(tile_offsets),
                                        _ptr(isect), _ptr(records), threads)
        img = means2d.new_empty(height, width, ch)
        alpha = means2d.new_empty(height, width)
        last = torch.empty(height, width, dtype=torch.int32)
        getattr(lib, f"raster_fwd_{suf}")(width, height, ch, _ptr(records), _ptr(tile_offsets), _ptr(isect),
                                          _ptr(img), _ptr(alpha), _ptr(last), threads)
        ctx.save_for_backward(order, records, tile_offsets, isect, alpha, last)
        ctx.shape = (n, vis, ch, width, height)
        return img, alpha

    @staticmethod
    def backward(ctx, g_img, g_alpha):
        order, records, tile_offsets, isect, alpha, last = ctx.saved_tensors
        n, vis, ch, width, height = ctx.shape
        lib, suf = load(), _suffix(records.dtype)
        g_img = g_img.contiguous() if g_img is not None else records.new_zeros(height, width, ch)
        g_alpha = g_alpha.contiguous() if g_alpha is not None else torch.zeros_like(alpha)
        g_m2, g_con = records.new_empty(n, 2), records.new_empty(n, 3)
        g_op, g_feat = records.new_empty(n), records.new_empty(n, ch)
        getattr(lib, f"raster_bwd_{suf}")(n, vis, _ptr(order), width, height, ch, _ptr(records),
                                          _ptr(tile_offsets), _ptr(isect), _ptr(alpha), _ptr(last), _ptr(g_img),
                                          _ptr(g_alpha), _ptr(g_m2), _ptr(g_con), _ptr(g_op), _ptr(g_feat),
                                          torch.get_num_threads())
        return g_m2, g_con, g_op, g_feat, None, None, None, None


def project(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, viewmat: torch.Tensor,
            K: torch.Tensor, width: int, height: int, eps2d: float = EPS2D,
            near_plane: float = 0.01) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """means2d [N,2], conics [N,3], depths [N], radii [N,2] int32 (as torch_backend.project)."""
    return _Project.apply(means, quats, scales, viewmat, K, width, height, eps2d, near_plane)


def rasterize(means2d: torch.Tensor, conics: torch.Tensor, opacities: torch.Tensor, features: torch.Tensor,
              depths: torch.Tensor, radii: torch.Tensor, width: int,
              height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Blended features [H,W,C] and accumulated alpha [H,W] (as torch_backend.rasterize; 16 px tiles)."""
    return _Rasterize.apply(means2d, conics, opacities, features, depths.detach(), radii, width, height)


def render(means: torch.Tensor, quats: torch.Tensor, scales: torch.Tensor, opacities: torch.Tensor,
           colors: torch.Tensor, camera: RenderCamera, near_plane: float = 0.01
           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
    """Render RGB [H,W,3], expected depth [H,W] and alpha [H,W] (the camera's low-pass); info as the torch
    backend's."""
    if means.device.type != "cpu":
        raise ValueError(f"the compiled CPU backend renders CPU tensors, got {means.device}")
    means2d, conics, depths, radii = project(means, quats, scales, camera.viewmat, camera.K, camera.width,
                                             camera.height, eps2d=camera.eps2d, near_plane=near_plane)
    if means2d.requires_grad:
        means2d.retain_grad()
    feats = torch.cat([colors, depths[:, None]], dim=-1)
    img, alpha = rasterize(means2d, conics, opacities, feats, depths, radii, camera.width, camera.height)
    depth = img[..., 3] / alpha.clamp(min=1e-10)
    return img[..., :3], depth, alpha, {"means2d": means2d, "radii": radii, "depths": depths}
