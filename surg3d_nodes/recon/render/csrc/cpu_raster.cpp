// Multithreaded CPU 3D Gaussian splatting: projection, tile binning, front-to-back compositing and the
// analytic backward of all three. The conventions are gsplat 1.5's (classic mode), as in torch_backend.py,
// which is the test oracle: wxyz quaternions, EWA projection with the Jacobian evaluated at a point clamped
// to 1.3x the frustum, eps2d added to the 2D covariance, pixel centres at +0.5, alpha = min(0.999, o exp(-s)),
// contributions below 1/255 skipped, a ray stopped before the Gaussian that would take its transmittance
// to 1e-4 or below.
//
// Plain C ABI, no torch headers: Python (cpu_backend.py) allocates every array as a torch tensor and passes
// raw pointers through ctypes. That keeps the build to one g++ call of a few seconds with no dependency on
// the torch C++ ABI, and no second OpenMP runtime next to torch's: threads are std::threads, started per
// call (tens of microseconds, against milliseconds of work).
//
// Every function exists for float and double (suffix _f32 / _f64); double is for gradient checks.

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#ifdef __AVX__
#include <immintrin.h>
#endif
#include <thread>
#include <type_traits>
#include <vector>

namespace {

constexpr double kAlphaMin = 1.0 / 255.0;
constexpr double kAlphaMax = 0.999;
constexpr double kTMin = 1e-4;
constexpr double kExtentSigma = 3.33;
constexpr int kTile = 16;
constexpr int kGatherAhead = 16;  // binning: Gaussians whose inputs are fetched ahead

// body(item, thread) over items [0, n) in chunks of `grain`, taken dynamically (tile loads are uneven).
template <typename F>
void parallel_for(int64_t n, int threads, int64_t grain, F&& body) {
  const int64_t chunks = (n + grain - 1) / grain;
  threads = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, chunks)));
  std::atomic<int64_t> next{0};
  auto work = [&](int tid) {
    for (;;) {
      const int64_t c = next.fetch_add(1, std::memory_order_relaxed);
      if (c >= chunks) return;
      const int64_t end = std::min(n, (c + 1) * grain);
      for (int64_t i = c * grain; i < end; ++i) body(i, tid);
    }
  };
  if (threads == 1) {
    work(0);
    return;
  }
  std::vector<std::thread> pool;
  pool.reserve(threads - 1);
  for (int t = 1; t < threads; ++t) pool.emplace_back(work, t);
  work(0);
  for (auto& th : pool) th.join();
}

// 8 lanes of T as GCC vectors (one AVX register of floats); M is the mask type of their comparisons.
constexpr int kLanes = 8;
template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float V __attribute__((vector_size(32)));
  typedef int32_t M __attribute__((vector_size(32)));
};
template <>
struct Vec<double> {
  typedef double V __attribute__((vector_size(64)));
  typedef int64_t M __attribute__((vector_size(64)));
};
using DVec = Vec<double>::V;

template <typename V, typename T>
inline V vload(const T* p) {
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}
template <typename V, typename T>
inline void vstore(T* p, V v) {
  std::memcpy(p, &v, sizeof(V));
}
template <typename V>
inline auto hsum(V v) {
  auto s = v[0];
  for (int l = 1; l < kLanes; ++l) s += v[l];
  return s;
}
// A scalar function on every lane (GCC vectorises the loop where the instruction set has it).
template <typename V, typename F>
inline V lanewise(V x, F f) {
  for (int l = 0; l < kLanes; ++l) x[l] = f(x[l]);
  return x;
}
template <typename V>
inline V vsqrt(V x) { return lanewise(x, [](auto v) { return std::sqrt(v); }); }
template <typename V>
inline V vceil(V x) { return lanewise(x, [](auto v) { return std::ceil(v); }); }
template <typename V>
inline V vfloor(V x) { return lanewise(x, [](auto v) { return std::floor(v); }); }
template <typename V>
using Elem = std::remove_reference_t<decltype(V{}[0])>;
template <typename V>
inline V vmax(V a, Elem<V> b) {
  const V bv = V{} + b;
  return a < bv ? bv : a;
}
template <typename V>
inline V vmin(V a, Elem<V> b) {
  const V bv = V{} + b;
  return a > bv ? bv : a;
}

// The projection works on 8 Gaussians at a time, one per lane: lanes(src, i, n) reads K values per Gaussian
// of Gaussians i..i+7 (rows past n repeat row n-1) into K vectors; unlanes writes the valid lanes back.
template <int K, typename T, typename V = typename Vec<T>::V>
inline void lanes(const T* src, int64_t i, int64_t n, V out[K]) {
  for (int l = 0; l < kLanes; ++l) {
    const T* s = src + K * std::min(i + l, n - 1);
    for (int k = 0; k < K; ++k) out[k][l] = s[k];
  }
}
template <int K, typename T, typename V = typename Vec<T>::V>
inline void unlanes(const V in[K], int64_t i, int64_t n, T* dst) {
  const int valid = static_cast<int>(std::min<int64_t>(kLanes, n - i));
  for (int l = 0; l < valid; ++l)
    for (int k = 0; k < K; ++k) dst[K * (i + l) + k] = in[k][l];
}

template <typename V>
void quat_to_rotmat(const V* q, V* qn, V& norm, V R[9]) {
  norm = vmax(vsqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]), 1e-12);
  for (int i = 0; i < 4; ++i) qn[i] = q[i] / norm;
  const V w = qn[0], x = qn[1], y = qn[2], z = qn[3];
  R[0] = 1 - 2 * (y * y + z * z); R[1] = 2 * (x * y - w * z);     R[2] = 2 * (x * z + w * y);
  R[3] = 2 * (x * y + w * z);     R[4] = 1 - 2 * (x * x + z * z); R[5] = 2 * (y * z - w * x);
  R[6] = 2 * (x * z - w * y);     R[7] = 2 * (y * z + w * x);     R[8] = 1 - 2 * (x * x + y * y);
}

// Everything the projection of 8 Gaussians computes; the backward recomputes it (cheap, no storage).
template <typename T>
struct Proj {
  using V = typename Vec<T>::V;
  V qn[4], qnorm, Rq[9], M[9], Sig[9], mc[3], cc[9], tz, u, v, J[6], cov[4], a, b, c, det;
  typename Vec<T>::M clamp_u, clamp_v;
};

// The camera of a projection: world-to-camera rotation Rv and translation tv, focal lengths and principal
// point, and the clamp limits of x/z and y/z (1.3x the frustum, as gsplat).
template <typename T>
struct Cam {
  T Rv[9], tv[3], fx, fy, cx, cy, lim[4];
  Cam(const T* view, const T* K, int width, int height)
      : Rv{view[0], view[1], view[2], view[4], view[5], view[6], view[8], view[9], view[10]},
        tv{view[3], view[7], view[11]}, fx(K[0]), fy(K[4]), cx(K[2]), cy(K[5]) {
    const T tan_fovx = T(0.5) * width / fx, tan_fovy = T(0.5) * height / fy;
    lim[0] = (width - cx) / fx + T(0.3) * tan_fovx;   // x positive
    lim[1] = cx / fx + T(0.3) * tan_fovx;             // x negative
    lim[2] = (height - cy) / fy + T(0.3) * tan_fovy;
    lim[3] = cy / fy + T(0.3) * tan_fovy;
  }
};

template <typename T, typename V = typename Vec<T>::V>
void project_one(const V mean[3], const V quat[4], const V scale[3], const Cam<T>& cam, T eps2d, Proj<T>& p) {
  const T* Rv = cam.Rv;
  quat_to_rotmat(quat, p.qn, p.qnorm, p.Rq);
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) p.M[3 * i + j] = p.Rq[3 * i + j] * scale[j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      p.Sig[3 * i + j] = p.M[3 * i] * p.M[3 * j] + p.M[3 * i + 1] * p.M[3 * j + 1] + p.M[3 * i + 2] * p.M[3 * j + 2];
  for (int i = 0; i < 3; ++i)
    p.mc[i] = Rv[3 * i] * mean[0] + Rv[3 * i + 1] * mean[1] + Rv[3 * i + 2] * mean[2] + cam.tv[i];
  V RS[9];  // Rv Sig
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      RS[3 * i + j] = Rv[3 * i] * p.Sig[j] + Rv[3 * i + 1] * p.Sig[3 + j] + Rv[3 * i + 2] * p.Sig[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      p.cc[3 * i + j] = RS[3 * i] * Rv[3 * j] + RS[3 * i + 1] * Rv[3 * j + 1] + RS[3 * i + 2] * Rv[3 * j + 2];
  const V tiny = V{} + T(1e-12);
  const V tz = (p.mc[2] < tiny) & (p.mc[2] > -tiny) ? tiny : p.mc[2];
  p.tz = tz;
  const V ru = p.mc[0] / tz, rv = p.mc[1] / tz;
  p.u = vmin(vmax(ru, -cam.lim[1]), cam.lim[0]);
  p.v = vmin(vmax(rv, -cam.lim[3]), cam.lim[2]);
  p.clamp_u = (ru < -cam.lim[1]) | (ru > cam.lim[0]);
  p.clamp_v = (rv < -cam.lim[3]) | (rv > cam.lim[2]);
  // J = [[fx/z, 0, -fx u/z], [0, fy/z, -fy v/z]] with u, v the clamped x/z, y/z.
  p.J[0] = cam.fx / tz; p.J[1] = V{}; p.J[2] = -cam.fx * p.u / tz;
  p.J[3] = V{}; p.J[4] = cam.fy / tz; p.J[5] = -cam.fy * p.v / tz;
  V JC[6];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 3; ++j)
      JC[3 * i + j] = p.J[3 * i] * p.cc[j] + p.J[3 * i + 1] * p.cc[3 + j] + p.J[3 * i + 2] * p.cc[6 + j];
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 2; ++j)
      p.cov[2 * i + j] = JC[3 * i] * p.J[3 * j] + JC[3 * i + 1] * p.J[3 * j + 1] + JC[3 * i + 2] * p.J[3 * j + 2];
  p.a = p.cov[0] + eps2d;
  p.b = T(0.5) * (p.cov[1] + p.cov[2]);
  p.c = p.cov[3] + eps2d;
  p.det = vmax(p.a * p.c - p.b * p.b, T(1e-10));
}

template <typename T>
void project_fwd(int64_t n, const T* means, const T* quats, const T* scales, const T* view, const T* K, int width,
                 int height, T eps2d, T near_plane, T far_plane, T* means2d, T* conics, T* depths, int32_t* radii,
                 int threads) {
  using V = typename Vec<T>::V;
  const Cam<T> cam(view, K, width, height);
  parallel_for((n + kLanes - 1) / kLanes, threads, 512, [&](int64_t blk, int) {
    const int64_t i = blk * kLanes;
    V mean[3], quat[4], scale[3];
    lanes<3>(means, i, n, mean);
    lanes<4>(quats, i, n, quat);
    lanes<3>(scales, i, n, scale);
    Proj<T> p;
    project_one(mean, quat, scale, cam, eps2d, p);
    const V m2[2] = {cam.fx * p.mc[0] / p.tz + cam.cx, cam.fy * p.mc[1] / p.tz + cam.cy};
    const V con[3] = {p.c / p.det, -p.b / p.det, p.a / p.det};
    V rx = vceil(T(kExtentSigma) * vsqrt(vmax(p.a, T(0))));
    V ry = vceil(T(kExtentSigma) * vsqrt(vmax(p.c, T(0))));
    const auto keep = (p.mc[2] > near_plane) & (p.mc[2] < far_plane) & (m2[0] + rx > 0) & (m2[0] - rx < T(width)) &
                      (m2[1] + ry > 0) & (m2[1] - ry < T(height));
    rx = keep ? rx : V{};
    ry = keep ? ry : V{};
    unlanes<2>(m2, i, n, means2d);
    unlanes<3>(con, i, n, conics);
    unlanes<1>(&p.mc[2], i, n, depths);
    const int valid = static_cast<int>(std::min<int64_t>(kLanes, n - i));
    for (int l = 0; l < valid; ++l) {
      radii[2 * (i + l)] = static_cast<int32_t>(rx[l]);
      radii[2 * (i + l) + 1] = static_cast<int32_t>(ry[l]);
    }
  });
}

// Backward of project_fwd given dL/d(means2d, conics, depths); writes dL/d(means, quats, scales) and adds
// dL/dviewmat (row-major 4x4, last row untouched) into grad_view. Lanes whose incoming gradient is zero
// (culled Gaussians, whose projection may not be finite) get zeros.
template <typename T>
void project_bwd(int64_t n, const T* means, const T* quats, const T* scales, const T* view, const T* K, int width,
                 int height, T eps2d, const T* g_means2d, const T* g_conics, const T* g_depths, T* g_means,
                 T* g_quats, T* g_scales, T* g_view, int threads) {
  using V = typename Vec<T>::V;
  const Cam<T> cam(view, K, width, height);
  const T* Rv = cam.Rv;
  const T fx = cam.fx, fy = cam.fy;
  const int nthr = std::max(1, threads);
  std::vector<DVec> view_acc(static_cast<size_t>(nthr) * 12, DVec{});  // per thread, in double
  parallel_for((n + kLanes - 1) / kLanes, threads, 512, [&](int64_t blk, int tid) {
    const int64_t i = blk * kLanes;
    V gm2[2], gcon[3], gz_in, m[3], quat[4], s[3];
    lanes<2>(g_means2d, i, n, gm2);
    lanes<3>(g_conics, i, n, gcon);
    lanes<1>(g_depths, i, n, &gz_in);
    V lane{};  // lanes past n repeat Gaussian n-1 (lanes()): they must not count twice in dL/dviewmat
    for (int l = 0; l < kLanes; ++l) lane[l] = l;
    const auto live = (lane < T(n - i)) & ((gm2[0] != 0) | (gm2[1] != 0) | (gcon[0] != 0) | (gcon[1] != 0) |
                                           (gcon[2] != 0) | (gz_in != 0));
    lanes<3>(means, i, n, m);
    lanes<4>(quats, i, n, quat);
    lanes<3>(scales, i, n, s);
    Proj<T> p;
    project_one(m, quat, s, cam, eps2d, p);
    // conic = inverse of A = [[a, b], [b, c]]: dL/dA = -A^-1 G A^-1 with G the symmetric split of dL/dconic.
    const V i00 = p.c / p.det, i01 = -p.b / p.det, i11 = p.a / p.det;
    const V G00 = gcon[0], G01 = T(0.5) * gcon[1], G11 = gcon[2];
    const V X00 = G00 * i00 + G01 * i01, X01 = G00 * i01 + G01 * i11;  // G A^-1
    const V X10 = G01 * i00 + G11 * i01, X11 = G01 * i01 + G11 * i11;
    V Gc[4];  // dL/dcov2d (symmetric)
    Gc[0] = -(i00 * X00 + i01 * X10);
    Gc[1] = -(i00 * X01 + i01 * X11);
    Gc[2] = -(i01 * X00 + i11 * X10);
    Gc[3] = -(i01 * X01 + i11 * X11);
    const V g01 = T(0.5) * (Gc[1] + Gc[2]);
    Gc[1] = Gc[2] = g01;
    // cov2d = J cc J^T: dL/dcc = J^T Gc J, dL/dJ = 2 Gc J cc.
    V GJ_[6];  // Gc J
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 3; ++j) GJ_[3 * r + j] = Gc[2 * r] * p.J[j] + Gc[2 * r + 1] * p.J[3 + j];
    V Gcc[9];
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 3; ++j) Gcc[3 * r + j] = p.J[r] * GJ_[j] + p.J[3 + r] * GJ_[3 + j];
    V dJ[6];
    for (int r = 0; r < 2; ++r)
      for (int j = 0; j < 3; ++j)
        dJ[3 * r + j] = 2 * (GJ_[3 * r] * p.cc[j] + GJ_[3 * r + 1] * p.cc[3 + j] + GJ_[3 * r + 2] * p.cc[6 + j]);
    // cc = Rv Sig Rv^T: dL/dSig = Rv^T Gcc Rv, dL/dRv += 2 Gcc Rv Sig.
    V GR[9];  // Gcc Rv
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 3; ++j)
        GR[3 * r + j] = Gcc[3 * r] * Rv[j] + Gcc[3 * r + 1] * Rv[3 + j] + Gcc[3 * r + 2] * Rv[6 + j];
    V GSig[9];
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 3; ++j)
        GSig[3 * r + j] = Rv[r] * GR[j] + Rv[3 + r] * GR[3 + j] + Rv[6 + r] * GR[6 + j];
    V gview[12];
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 3; ++j)
        gview[3 * r + j] = 2 * (GR[3 * r] * p.Sig[j] + GR[3 * r + 1] * p.Sig[3 + j] + GR[3 * r + 2] * p.Sig[6 + j]);
    // Sig = M M^T: dL/dM = 2 GSig M; M = Rq diag(s).
    V GM[9];
    for (int r = 0; r < 3; ++r)
      for (int j = 0; j < 3; ++j)
        GM[3 * r + j] = 2 * (GSig[3 * r] * p.M[j] + GSig[3 * r + 1] * p.M[3 + j] + GSig[3 * r + 2] * p.M[6 + j]);
    V GRq[9], gs[3];
    for (int j = 0; j < 3; ++j) {
      V acc{};
      for (int r = 0; r < 3; ++r) {
        GRq[3 * r + j] = GM[3 * r + j] * s[j];
        acc += GM[3 * r + j] * p.Rq[3 * r + j];
      }
      gs[j] = live ? acc : V{};
    }
    const V w = p.qn[0], x = p.qn[1], y = p.qn[2], z = p.qn[3];
    const V* G = GRq;
    const V gqn[4] = {
        2 * (-z * G[1] + y * G[2] + z * G[3] - x * G[5] - y * G[6] + x * G[7]),
        2 * (y * G[1] + z * G[2] + y * G[3] - 2 * x * G[4] - w * G[5] + z * G[6] + w * G[7] - 2 * x * G[8]),
        2 * (-2 * y * G[0] + x * G[1] + w * G[2] + x * G[3] + z * G[5] - w * G[6] + z * G[7] - 2 * y * G[8]),
        2 * (-2 * z * G[0] - w * G[1] + x * G[2] + w * G[3] - 2 * z * G[4] + y * G[5] + x * G[6] + y * G[7])};
    const V dot = w * gqn[0] + x * gqn[1] + y * gqn[2] + z * gqn[3];
    V gq[4];
    for (int k = 0; k < 4; ++k) gq[k] = live ? (gqn[k] - p.qn[k] * dot) / p.qnorm : V{};
    // J, means2d and depth as functions of the camera-frame mean.
    const V tz = p.tz, tz2 = tz * tz;
    V gx = gm2[0] * fx / tz, gy = gm2[1] * fy / tz;
    V gz = gz_in - gm2[0] * fx * p.mc[0] / tz2 - gm2[1] * fy * p.mc[1] / tz2;
    gz += -dJ[0] * fx / tz2 - dJ[4] * fy / tz2;
    // J02 = -fx u / z with u = x/z unless clamped (then a constant).
    gz += p.clamp_u ? dJ[2] * fx * p.u / tz2 : dJ[2] * 2 * fx * p.mc[0] / (tz2 * tz);
    gx += p.clamp_u ? V{} : -dJ[2] * fx / tz2;
    gz += p.clamp_v ? dJ[5] * fy * p.v / tz2 : dJ[5] * 2 * fy * p.mc[1] / (tz2 * tz);
    gy += p.clamp_v ? V{} : -dJ[5] * fy / tz2;
    const V gmc[3] = {gx, gy, gz};
    V gmean[3];
    for (int j = 0; j < 3; ++j)
      gmean[j] = live ? Rv[j] * gmc[0] + Rv[3 + j] * gmc[1] + Rv[6 + j] * gmc[2] : V{};
    for (int r = 0; r < 3; ++r) {
      for (int j = 0; j < 3; ++j) gview[3 * r + j] += gmc[r] * m[j];
      gview[9 + r] = gmc[r];
    }
    DVec* vacc = view_acc.data() + 12 * tid;
    for (int k = 0; k < 12; ++k) vacc[k] += __builtin_convertvector(live ? gview[k] : V{}, DVec);
    unlanes<3>(gmean, i, n, g_means);
    unlanes<4>(gq, i, n, g_quats);
    unlanes<3>(gs, i, n, g_scales);
  });
  for (int t = 0; t < nthr; ++t) {
    const DVec* v = view_acc.data() + 12 * t;
    for (int r = 0; r < 3; ++r) {
      for (int j = 0; j < 3; ++j) g_view[4 * r + j] += static_cast<T>(hsum(v[3 * r + j]));
      g_view[4 * r + 3] += static_cast<T>(hsum(v[9 + r]));
    }
  }
}

// Pixel boxes (inclusive) of Gaussians i..i+7 (up to n): the pixels each can reach with alpha >= 1/255,
// the ellipse d^T conic d <= 2 ln(255 o); empty (x0 > x1) for culled or too transparent Gaussians.
template <typename T>
void pixel_boxes(int64_t i, int64_t n, const T* means2d, const T* conics, const T* opacities,
                 const int32_t* radii, int width, int height, int32_t* boxes) {
  using V = typename Vec<T>::V;
  V m2[2], con[3], o;
  lanes<2>(means2d, i, n, m2);
  lanes<3>(conics, i, n, con);
  lanes<1>(opacities, i, n, &o);
  V k2{}, seen{};
  for (int l = 0; l < kLanes; ++l) {
    const int64_t g = std::min(i + l, n - 1);
    seen[l] = radii[2 * g] > 0 && radii[2 * g + 1] > 0 && o[l] * T(255) > T(1);
    k2[l] = seen[l] != 0 ? 2 * std::log(o[l] * T(255)) : T(0);
  }
  const V cdet = con[0] * con[2] - con[1] * con[1];
  const V safe = vmax(cdet, std::numeric_limits<T>::min());
  // Axis extents of the ellipse (the inverse conic's diagonal), with a margin against rounding.
  const V rx = vsqrt(k2 * con[2] / safe) * T(1.0001) + T(1e-3);
  const V ry = vsqrt(k2 * con[0] / safe) * T(1.0001) + T(1e-3);
  const V x0 = vceil(m2[0] - rx - T(0.5)), x1 = vfloor(m2[0] + rx - T(0.5));
  const V y0 = vceil(m2[1] - ry - T(0.5)), y1 = vfloor(m2[1] + ry - T(0.5));
  const auto keep = (seen != 0) & (cdet > 0) & (x1 >= 0) & (y1 >= 0) & (x0 <= T(width - 1)) & (y0 <= T(height - 1));
  const V b[4] = {vmax(x0, T(0)), vmin(x1, T(width - 1)), vmax(y0, T(0)), vmin(y1, T(height - 1))};
  for (int l = 0; l < static_cast<int>(std::min<int64_t>(kLanes, n - i)); ++l) {
    int32_t* box = boxes + 4 * (i + l);
    for (int k = 0; k < 4; ++k) box[k] = keep[l] ? static_cast<int32_t>(b[k][l]) : (k % 2 ? -1 : 0);
  }
}

// LSD radix sort of (key, value) by 32-bit key, stable.
void radix_sort(std::vector<uint32_t>& keys, std::vector<int32_t>& vals) {
  const size_t n = keys.size();
  std::vector<uint32_t> k2(n);
  std::vector<int32_t> v2(n);
  for (int shift = 0; shift < 32; shift += 8) {
    size_t count[257] = {0};
    for (size_t i = 0; i < n; ++i) ++count[((keys[i] >> shift) & 255) + 1];
    if (count[((keys[0] >> shift) & 255) + 1] == n) continue;  // all equal in this byte
    for (int b = 0; b < 256; ++b) count[b + 1] += count[b];
    for (size_t i = 0; i < n; ++i) {
      const size_t d = count[(keys[i] >> shift) & 255]++;
      k2[d] = keys[i];
      v2[d] = vals[i];
    }
    keys.swap(k2);
    vals.swap(v2);
  }
}

template <typename T>
uint32_t depth_key(T d) {  // monotone in d for the positive depths of visible Gaussians
  const float f = static_cast<float>(d);
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace

// ------------------------------------------------------------------------------------------------ binning
// Step 1: pixel boxes [n,4], the depth order of the Gaussians with a non-empty box (order[:visible]) and
// where each tile's list will start (tile_offsets [tiles + 1]). Returns the number of (tile, Gaussian)
// intersections.
template <typename T>
static int64_t bin_prepare(int64_t n, const T* means2d, const T* conics, const T* opacities, const T* depths,
                           const int32_t* radii, int width, int height, int32_t* boxes, int32_t* order,
                           int64_t* visible, int64_t* tile_offsets, int threads) {
  constexpr int tile = kTile;
  const int tx = (width + tile - 1) / tile, ty = (height + tile - 1) / tile;
  std::fill(tile_offsets, tile_offsets + static_cast<int64_t>(tx) * ty + 1, int64_t{0});
  parallel_for((n + kLanes - 1) / kLanes, threads, 512, [&](int64_t blk, int) {
    pixel_boxes(blk * kLanes, n, means2d, conics, opacities, radii, width, height, boxes);
  });
  std::vector<uint32_t> keys;
  std::vector<int32_t> ids;
  keys.reserve(n);
  ids.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t* b = boxes + 4 * i;
    if (b[0] > b[1] || b[2] > b[3]) continue;
    keys.push_back(depth_key(depths[i]));
    ids.push_back(static_cast<int32_t>(i));
    for (int y = b[2] / tile; y <= b[3] / tile; ++y)
      for (int x = b[0] / tile; x <= b[1] / tile; ++x) ++tile_offsets[static_cast<int64_t>(y) * tx + x + 1];
  }
  for (int64_t t = 0; t < static_cast<int64_t>(tx) * ty; ++t) tile_offsets[t + 1] += tile_offsets[t];
  if (!keys.empty()) radix_sort(keys, ids);
  std::copy(ids.begin(), ids.end(), order);
  *visible = static_cast<int64_t>(ids.size());
  return tile_offsets[static_cast<int64_t>(tx) * ty];
}

// Record of one visible Gaussian in depth order, what the compositing reads: mx, my, conic (3), opacity,
// pixel box (x0, x1, y0, y1) and the C features, padded to whole cache lines. Tile lists hold record
// indices, so a tile walks memory in increasing order instead of jumping between five arrays.
template <typename T>
int64_t record_stride(int channels) {
  constexpr int per_line = 64 / sizeof(T);
  return (10 + channels + per_line - 1) / per_line * per_line;
}

// Step 2: the records [visible, stride] and the per-tile lists of record indices in depth order (isect
// [total], starting at tile_offsets from step 1).
template <typename T>
static void bin_fill(int64_t visible, const int32_t* order, const int32_t* boxes, const T* means2d,
                     const T* conics, const T* opacities, const T* features, int channels, int width, int height,
                     const int64_t* tile_offsets, int32_t* isect, T* records, int threads) {
  constexpr int tile = kTile;
  const int tx = (width + tile - 1) / tile, ty = (height + tile - 1) / tile;
  const int64_t R = record_stride<T>(channels);
  parallel_for(visible, threads, 4096, [&](int64_t k, int) {
    // The depth order scatters the Gaussians over the inputs: fetch a few ahead.
    if (k + kGatherAhead < visible) {
      const int32_t ga = order[k + kGatherAhead];
      __builtin_prefetch(means2d + 2 * ga);
      __builtin_prefetch(conics + 3 * ga);
      __builtin_prefetch(opacities + ga);
      __builtin_prefetch(boxes + 4 * ga);
      __builtin_prefetch(features + static_cast<int64_t>(ga) * channels);
    }
    const int32_t g = order[k];
    T* r = records + k * R;
    r[0] = means2d[2 * g]; r[1] = means2d[2 * g + 1];
    r[2] = conics[3 * g]; r[3] = conics[3 * g + 1]; r[4] = conics[3 * g + 2];
    r[5] = opacities[g];
    for (int j = 0; j < 4; ++j) r[6 + j] = static_cast<T>(boxes[4 * g + j]);
    for (int ch = 0; ch < channels; ++ch) r[10 + ch] = features[static_cast<int64_t>(g) * channels + ch];
  });
  // Tile ranges from the records' boxes: read in order, unlike boxes[order[k]].
  std::vector<int64_t> cursor(tile_offsets, tile_offsets + static_cast<int64_t>(tx) * ty);
  for (int64_t k = 0; k < visible; ++k) {
    const T* r = records + k * R;
    for (int y = static_cast<int>(r[8]) / tile; y <= static_cast<int>(r[9]) / tile; ++y)
      for (int x = static_cast<int>(r[6]) / tile; x <= static_cast<int>(r[7]) / tile; ++x)
        isect[cursor[static_cast<int64_t>(y) * tx + x]++] = static_cast<int32_t>(k);
  }
}

// ------------------------------------------------------------------------------------------------ rasterize
// A tile is 16x16 pixels. Within a tile the Gaussians are walked in depth order; each one updates the rows
// of its pixel box in chunks of 8 pixels written with GCC vector extensions (one AVX register of floats),
// branch-free (but for a ray's stop), a few chunks at a time so that their exp chains overlap in the CPU's
// pipeline (for_chunk_groups).

namespace {

constexpr int kPrefetch = 8;   // tile-list entries whose record is fetched ahead
constexpr int kCheckDone = 16; // entries between checks whether every pixel of a tile has stopped

// scale * exp(x) for K vectors x (floats, x <= 80), relative error ~2e-7 where scale * exp(x) >= 1/255
// (|n| <= 8 there): x = n ln2 + r with n rounded by adding 1.5 * 2^23 (whose low mantissa bits then hold n: no
// float-int conversions) and r in one step (float ln2 is off by 1.5e-8), exp(r) = 1 + r + r^2 P(r) with P a
// cubic fitted for the least maximum relative error on |r| <= ln2 / 2 (1.05e-7; Cephes' quintic, 1e-9 before
// rounding, costs two more steps) in Estrin's scheme, and scale taken into 2^n (exactly) off the chain. The
// compositing loops are latency-bound on this chain. Each step is done for all K vectors before the next, so
// that their independent chains interleave in the instruction stream. Doubles (gradient checks) take the
// library's exp.
template <int K>
inline void vexp(Vec<float>::V (&x)[K], float scale) {
  using V = Vec<float>::V;
  using M = Vec<float>::M;
  const V lo = V{} - 80.0f, magic = V{} + 12582912.0f;
  V t[K], r[K], r2[K], p[K];
  for (int j = 0; j < K; ++j) x[j] = x[j] < lo ? lo : x[j];
  for (int j = 0; j < K; ++j) t[j] = x[j] * 1.44269504088896341f + magic;
  for (int j = 0; j < K; ++j) r[j] = x[j] - (t[j] - magic) * 0.693147180559945f;
  for (int j = 0; j < K; ++j) r2[j] = r[j] * r[j];
  for (int j = 0; j < K; ++j) p[j] = 4.1890113432e-2f + 8.3125250495e-3f * r[j];
  for (int j = 0; j < K; ++j) p[j] = 4.9999231789e-1f + 1.6667114464e-1f * r[j] + r2[j] * p[j];
  for (int j = 0; j < K; ++j) {
    const M bits = (__builtin_bit_cast(M, t[j]) - __builtin_bit_cast(M, magic) + 127) << 23;
    x[j] = (r2[j] * p[j] + (r[j] + 1.0f)) * (scale * __builtin_bit_cast(V, bits));
  }
}
template <int K>
inline void vexp(Vec<double>::V (&x)[K], double scale) {
  for (int j = 0; j < K; ++j)
    for (int l = 0; l < kLanes; ++l) x[j][l] = scale * std::exp(x[j][l]);
}

constexpr int kPixels = kTile * kTile;
// The compositing takes a Gaussian's chunks up to kGroup at a time (for_chunk_groups).
constexpr int kGroup = 4;

// Per-thread scratch of one tile: row-major 16x16, all in T so that lanes line up with the vectors.
template <typename T>
struct TileBuf {
  alignas(64) T Tr[kPixels];    // transmittance
  alignas(64) T Tfin[kPixels];  // forward: final transmittance of the rays that have stopped
  alignas(64) T gA[kPixels];    // backward: dL/dalpha times the final transmittance
  alignas(64) T last[kPixels];  // list entries that can have contributed (exact in T for any tile)
  std::vector<T> acc;          // [C][kPixels]: forward features, backward dL/dfeature
  std::vector<T> S;            // [C][kPixels]: backward, features of the contributions behind
};

// The record's pixel box clipped to the tile at (ox, oy), in tile coordinates: rows y0..y1, columns x0..x1.
template <typename T>
inline void clip_box(const T* r, int ox, int oy, int w, int h, int& x0, int& x1, int& y0, int& y1) {
  x0 = std::max(static_cast<int>(r[6]), ox) - ox;
  x1 = std::min(static_cast<int>(r[7]), ox + w - 1) - ox;
  y0 = std::max(static_cast<int>(r[8]), oy) - oy;
  y1 = std::min(static_cast<int>(r[9]), oy + h - 1) - oy;
}

// Calls chunk(base) for 8-pixel chunks covering columns x0..x1 of rows y0..y1, each pixel once: a box at
// most 8 wide takes one (unaligned) chunk per row, a wider one the whole row in two. Lanes outside the box
// lie outside the Gaussian's ellipse, where alpha < 1/255: they change nothing.
template <typename F>
inline void for_chunks(int x0, int x1, int y0, int y1, F&& chunk) {
  if (x1 - x0 < kLanes) {
    const int xs = std::min(x0, kTile - kLanes);
    for (int y = y0; y <= y1; ++y) chunk(y * kTile + xs);
  } else {
    for (int base = y0 * kTile; base < (y1 + 1) * kTile; base += kLanes) chunk(base);
  }
}

// for_chunks, several chunks at a time: group(size, bases) with the first pixels of size() chunks, kGroup
// while that many are left, then the rest. Computing several chunks together interleaves their exp chains
// (vexp): the backward gains 12-28% from it, the forward 3-10% at 640x512 (and loses 4% at 160x128, where a
// Gaussian has fewer chunks per tile).
template <typename F>
inline void for_chunk_groups(int x0, int x1, int y0, int y1, F&& group) {
  int bases[2 * kTile], n = 0;
  for_chunks(x0, x1, y0, y1, [&](int base) { bases[n++] = base; });
  int i = 0;
  for (; i + kGroup <= n; i += kGroup) group(std::integral_constant<int, kGroup>{}, bases + i);
  static_assert(kGroup == 4, "the rest below takes up to 3 chunks");
  if (n - i == 3) group(std::integral_constant<int, 3>{}, bases + i);
  if (n - i == 2) group(std::integral_constant<int, 2>{}, bases + i);
  if (n - i == 1) group(std::integral_constant<int, 1>{}, bases + i);
}

// -sigma = -d^T conic d / 2 for lane offsets dx, row offset dy and the conic's coefficients, as a polynomial
// in dx (Horner: two steps on the chain): one expression for both passes, so that they agree bit for bit on
// which Gaussians reach which pixels.
template <typename V, typename T>
inline V neg_sigma(const T* conic, V dx, T dy) {
  return (T(-0.5) * conic[0] * dx - conic[1] * dy) * dx - T(0.5) * conic[2] * dy * dy;
}

// True when some lane of the comparison mask m is set.
template <typename M>
inline bool any_set(M m) {
#ifdef __AVX__
  if constexpr (sizeof(M) == 32 && sizeof(m[0]) == 4) return _mm256_movemask_ps(reinterpret_cast<__m256>(m)) != 0;
#endif
  for (int l = 0; l < kLanes; ++l)
    if (m[l]) return true;
  return false;
}

template <typename V>
inline V lane_offsets() {
  V v{};
  for (int l = 0; l < kLanes; ++l) v[l] = l + 0.5;  // pixel centres
  return v;
}

}  // namespace

// Forward: out_feat [H,W,C], out_alpha [H,W] (1 - final transmittance), last [H,W] (how many entries of the
// pixel's tile list can have contributed: those before the one that stopped the ray, else all). A stopped
// ray keeps a transmittance of 0 (as do pixels outside the image), which excludes it from every later
// contribution, so that per chunk only the transmittance and the features are read and written.
template <typename T>
static void raster_fwd(int width, int height, int channels, const T* records, const int64_t* tile_offsets,
                       const int32_t* isect, T* out_feat, T* out_alpha, int32_t* last, int threads) {
  using V = typename Vec<T>::V;
  using M = typename Vec<T>::M;
  const int tx = (width + kTile - 1) / kTile, ty = (height + kTile - 1) / kTile;
  const int C = channels;
  const int64_t R = record_stride<T>(C);
  const V lanes = lane_offsets<V>(), zero = V{};
  std::vector<TileBuf<T>> bufs(std::max(1, threads));
  parallel_for(static_cast<int64_t>(tx) * ty, threads, 1, [&](int64_t t, int tid) {
    TileBuf<T>& B = bufs[tid];
    B.acc.assign(static_cast<size_t>(C) * kPixels, T(0));
    const int ox = static_cast<int>(t % tx) * kTile, oy = static_cast<int>(t / tx) * kTile;
    const int w = std::min(kTile, width - ox), h = std::min(kTile, height - oy);
    const int64_t start = tile_offsets[t], end = tile_offsets[t + 1];
    for (int p = 0; p < kPixels; ++p) {
      B.Tr[p] = (p % kTile) >= w || (p / kTile) >= h ? T(0) : T(1);
      B.last[p] = static_cast<T>(end - start);
    }
    for (int64_t e = start; e < end; ++e) {
      if ((e - start) % kCheckDone == kCheckDone - 1) {
        M all = vload<V>(B.Tr) == T(0);
        for (int p = kLanes; p < kPixels; p += kLanes) all &= vload<V>(B.Tr + p) == T(0);
        if (hsum(all) == -kLanes) break;
      }
      // A tile's records are scattered over the whole depth-sorted array: fetch a few entries ahead.
      if (e + kPrefetch < end) __builtin_prefetch(records + static_cast<int64_t>(isect[e + kPrefetch]) * R);
      const T* r = records + static_cast<int64_t>(isect[e]) * R;
      int x0, x1, y0, y1;
      clip_box(r, ox, oy, w, h, x0, x1, y0, y1);
      const T mx = r[0] - ox, my = r[1] - oy;
      const T o = r[5];
      const T* f = r + 10;
      const V pos = zero + static_cast<T>(e - start);
      for_chunk_groups(x0, x1, y0, y1, [&](auto size, const int* bases) {
        constexpr int K = decltype(size)::value;
        V nsig[K], alpha[K];
        for (int j = 0; j < K; ++j)
          alpha[j] = nsig[j] = neg_sigma(r + 2, lanes + static_cast<T>(bases[j] % kTile - mx),
                                         (bases[j] / kTile) + T(0.5) - my);
        vexp(alpha, o);
        for (int j = 0; j < K; ++j) {
          const int base = bases[j];
          const V ns = nsig[j];
          const V a = alpha[j] < T(kAlphaMax) ? alpha[j] : zero + T(kAlphaMax);
          const V Tr = vload<V>(B.Tr + base);
          const M ok = (Tr > T(0)) & (ns <= T(0)) & (a >= T(kAlphaMin));
          const V next = Tr * (T(1) - a);
          const M stop = ok & (next <= T(kTMin));
          const M con = ok & ~stop;
          const V vis = con ? a * Tr : zero;
          vstore(B.Tr + base, con ? next : Tr);
          if (any_set(stop)) {  // once per pixel at most
            vstore(B.Tfin + base, stop ? Tr : vload<V>(B.Tfin + base));
            vstore(B.last + base, stop ? pos : vload<V>(B.last + base));
            vstore(B.Tr + base, stop ? zero : vload<V>(B.Tr + base));
          }
          for (int ch = 0; ch < C; ++ch) {
            T* acc = B.acc.data() + ch * kPixels + base;
            vstore(acc, vload<V>(acc) + f[ch] * vis);
          }
        }
      });
    }
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const int p = y * kTile + x;
        const int64_t q = static_cast<int64_t>(oy + y) * width + ox + x;
        out_alpha[q] = 1 - (B.Tr[p] > 0 ? B.Tr[p] : B.Tfin[p]);
        last[q] = static_cast<int32_t>(B.last[p]);
        for (int ch = 0; ch < C; ++ch) out_feat[q * C + ch] = B.acc[ch * kPixels + p];
      }
  });
}

// Backward: walks every tile list back to front, undoing the transmittance per pixel, and accumulates
// dL/d(means2d, conics, opacities, features) per record (per-thread buffers), then sums them into the
// Gaussians' gradients (order maps records to Gaussians; Gaussians without a record get zeros).
template <typename T>
static void raster_bwd(int64_t n, int64_t visible, const int32_t* order, int width, int height, int channels,
                       const T* records, const int64_t* tile_offsets, const int32_t* isect, const T* out_alpha,
                       const int32_t* last, const T* g_feat, const T* g_alpha, T* g_means2d, T* g_conics,
                       T* g_opac, T* g_features, int threads) {
  using V = typename Vec<T>::V;
  using M = typename Vec<T>::M;
  const int tx = (width + kTile - 1) / kTile, ty = (height + kTile - 1) / kTile;
  const int C = channels;
  const int64_t R = record_stride<T>(C);
  const int64_t ntiles = static_cast<int64_t>(tx) * ty;
  const int nthr = static_cast<int>(std::max<int64_t>(1, std::min<int64_t>(threads, ntiles)));
  const int stride = 6 + C;  // means2d 2, conic 3, opacity 1, features C
  const V lanes = lane_offsets<V>(), zero = V{};
  std::vector<std::vector<T>> grads(nthr);
  for (auto& gb : grads) gb.assign(static_cast<size_t>(visible) * stride, T(0));
  std::vector<TileBuf<T>> bufs(nthr);
  parallel_for(ntiles, nthr, 1, [&](int64_t t, int tid) {
    T* G = grads[tid].data();
    TileBuf<T>& B = bufs[tid];
    B.acc.assign(static_cast<size_t>(C) * kPixels, T(0));  // dL/dfeature per pixel
    B.S.assign(static_cast<size_t>(C) * kPixels, T(0));
    const int ox = static_cast<int>(t % tx) * kTile, oy = static_cast<int>(t / tx) * kTile;
    const int w = std::min(kTile, width - ox), h = std::min(kTile, height - oy);
    int32_t maxlast = 0;
    for (int p = 0; p < kPixels; ++p) {
      B.Tr[p] = T(1);
      B.gA[p] = B.last[p] = T(0);
    }
    for (int y = 0; y < h; ++y)
      for (int x = 0; x < w; ++x) {
        const int p = y * kTile + x;
        const int64_t q = static_cast<int64_t>(oy + y) * width + ox + x;
        B.Tr[p] = 1 - out_alpha[q];
        B.gA[p] = g_alpha[q] * B.Tr[p];
        B.last[p] = static_cast<T>(last[q]);
        maxlast = std::max(maxlast, last[q]);
        for (int ch = 0; ch < C; ++ch) B.acc[ch * kPixels + p] = g_feat[q * C + ch];
      }
    const int64_t start = tile_offsets[t];
    for (int64_t e = start + maxlast - 1; e >= start; --e) {
      if (e - kPrefetch >= start) {
        const int64_t kp = isect[e - kPrefetch];
        __builtin_prefetch(records + kp * R);
        __builtin_prefetch(G + kp * stride, 1);
      }
      const int32_t k = isect[e];
      const T* r = records + static_cast<int64_t>(k) * R;
      int x0, x1, y0, y1;
      clip_box(r, ox, oy, w, h, x0, x1, y0, y1);
      const T mx = r[0] - ox, my = r[1] - oy;
      const T c0 = r[2], c1 = r[3], c2 = r[4], o = r[5];
      const T* f = r + 10;
      const V pos = zero + static_cast<T>(e - start);
      // Per-lane partial sums over its chunks of g = dL/dsigma times dx, dx^2, dy, dx dy and dy^2 (which give
      // this Gaussian's gradient), of o dL/do and of dL/dfeature.
      V s_x{}, s_xx{}, s_y{}, s_xy{}, s_yy{}, l_o{};
      V l_f[16];
      for (int ch = 0; ch < C; ++ch) l_f[ch] = zero;
      for_chunk_groups(x0, x1, y0, y1, [&](auto size, const int* bases) {
        constexpr int K = decltype(size)::value;
        V dx[K], dy[K], ns[K], raw[K];
        for (int j = 0; j < K; ++j) {
          const T dys = (bases[j] / kTile) + T(0.5) - my;
          dy[j] = zero + dys;
          dx[j] = lanes + static_cast<T>(bases[j] % kTile - mx);
          raw[j] = ns[j] = neg_sigma(r + 2, dx[j], dys);
        }
        vexp(raw, o);  // o exp(-sigma)
        for (int j = 0; j < K; ++j) {
          const int base = bases[j];
          const V a = raw[j] < T(kAlphaMax) ? raw[j] : zero + T(kAlphaMax);
          const M ok = (pos < vload<V>(B.last + base)) & (ns[j] <= T(0)) & (a >= T(kAlphaMin));
          const V inv = T(1) / (T(1) - a);
          const V Tr = vload<V>(B.Tr + base);
          const V Tk = ok ? Tr * inv : Tr;
          const V vis = ok ? a * Tk : zero;
          // dL/dalpha; lanes without a contribution are masked out below (d), so no selects here
          V dal = vload<V>(B.gA + base) * inv;
          for (int ch = 0; ch < C; ++ch) {
            const T fc = f[ch];
            const V gp = vload<V>(B.acc.data() + ch * kPixels + base);
            T* sp = B.S.data() + ch * kPixels + base;
            const V Sp = vload<V>(sp);
            dal += gp * (fc * Tk - Sp * inv);
            l_f[ch] += vis * gp;
            vstore(sp, Sp + fc * vis);
          }
          vstore(B.Tr + base, Tk);
          // A clamped alpha (raw > 0.999) passes no gradient to the Gaussian's shape and opacity.
          const V d = ok & (raw[j] <= T(kAlphaMax)) ? dal : zero;
          const V gs = -a * d, gx = gs * dx[j], gy = gs * dy[j];
          l_o += raw[j] * d;  // o dalpha/do
          s_x += gx;
          s_xx += gx * dx[j];
          s_y += gy;
          s_xy += gx * dy[j];
          s_yy += gy * dy[j];
        }
      });
      T* Gg = G + static_cast<int64_t>(k) * stride;
      // sigma = (c0 dx^2 + c2 dy^2) / 2 + c1 dx dy with dx = px - mx, dy = py - my.
      const T gx = hsum(s_x), gy = hsum(s_y);
      Gg[0] -= c0 * gx + c1 * gy;
      Gg[1] -= c1 * gx + c2 * gy;
      Gg[2] += T(0.5) * hsum(s_xx);
      Gg[3] += hsum(s_xy);
      Gg[4] += T(0.5) * hsum(s_yy);
      Gg[5] += hsum(l_o) / o;
      for (int ch = 0; ch < C; ++ch) Gg[6 + ch] += hsum(l_f[ch]);
    }
  });
  std::fill(g_means2d, g_means2d + 2 * n, T(0));
  std::fill(g_conics, g_conics + 3 * n, T(0));
  std::fill(g_opac, g_opac + n, T(0));
  std::fill(g_features, g_features + n * C, T(0));
  parallel_for(visible, threads, 8192, [&](int64_t k, int) {
    T s[6 + 16];
    for (int j = 0; j < stride; ++j) s[j] = grads[0][k * stride + j];
    for (int th = 1; th < nthr; ++th)
      for (int j = 0; j < stride; ++j) s[j] += grads[th][k * stride + j];
    const int64_t i = order[k];
    g_means2d[2 * i] = s[0];
    g_means2d[2 * i + 1] = s[1];
    for (int j = 0; j < 3; ++j) g_conics[3 * i + j] = s[2 + j];
    g_opac[i] = s[5];
    for (int ch = 0; ch < C; ++ch) g_features[i * C + ch] = s[6 + ch];
  });
}

// ------------------------------------------------------------------------------------------------ C ABI
#define S3D_EXPORT extern "C" __attribute__((visibility("default")))

#define S3D_INSTANTIATE(T, SUF)                                                                                \
  S3D_EXPORT void project_fwd_##SUF(int64_t n, const T* means, const T* quats, const T* scales, const T* view,  \
                                    const T* K, int width, int height, double eps2d, double near_plane,        \
                                    double far_plane, T* means2d, T* conics, T* depths, int32_t* radii,        \
                                    int threads) {                                                             \
    project_fwd<T>(n, means, quats, scales, view, K, width, height, T(eps2d), T(near_plane), T(far_plane),     \
                   means2d, conics, depths, radii, threads);                                                   \
  }                                                                                                            \
  S3D_EXPORT void project_bwd_##SUF(int64_t n, const T* means, const T* quats, const T* scales, const T* view,  \
                                    const T* K, int width, int height, double eps2d, const T* g_means2d,       \
                                    const T* g_conics, const T* g_depths, T* g_means, T* g_quats,              \
                                    T* g_scales, T* g_view, int threads) {                                     \
    project_bwd<T>(n, means, quats, scales, view, K, width, height, T(eps2d), g_means2d, g_conics, g_depths,   \
                   g_means, g_quats, g_scales, g_view, threads);                                               \
  }                                                                                                            \
  S3D_EXPORT int64_t bin_prepare_##SUF(int64_t n, const T* means2d, const T* conics, const T* opacities,        \
                                       const T* depths, const int32_t* radii, int width, int height,           \
                                       int32_t* boxes, int32_t* order, int64_t* visible,                       \
                                       int64_t* tile_offsets, int threads) {                                   \
    return bin_prepare<T>(n, means2d, conics, opacities, depths, radii, width, height, boxes, order, visible,  \
                          tile_offsets, threads);                                                              \
  }                                                                                                            \
  S3D_EXPORT int64_t record_stride_##SUF(int channels) { return record_stride<T>(channels); }                 \
  S3D_EXPORT void bin_fill_##SUF(int64_t visible, const int32_t* order, const int32_t* boxes, const T* means2d, \
                                 const T* conics, const T* opacities, const T* features, int channels,         \
                                 int width, int height, const int64_t* tile_offsets, int32_t* isect,           \
                                 T* records, int threads) {                                                    \
    bin_fill<T>(visible, order, boxes, means2d, conics, opacities, features, channels, width, height,          \
                tile_offsets, isect, records, threads);                                                        \
  }                                                                                                            \
  S3D_EXPORT void raster_fwd_##SUF(int width, int height, int channels, const T* records,                      \
                                   const int64_t* tile_offsets, const int32_t* isect, T* out_feat,             \
                                   T* out_alpha, int32_t* last, int threads) {                                 \
    raster_fwd<T>(width, height, channels, records, tile_offsets, isect, out_feat, out_alpha, last, threads);  \
  }                                                                                                            \
  S3D_EXPORT void raster_bwd_##SUF(int64_t n, int64_t visible, const int32_t* order, int width, int height,     \
                                   int channels, const T* records, const int64_t* tile_offsets,                \
                                   const int32_t* isect, const T* out_alpha, const int32_t* last,              \
                                   const T* g_feat, const T* g_alpha, T* g_means2d, T* g_conics, T* g_opac,    \
                                   T* g_features, int threads) {                                               \
    raster_bwd<T>(n, visible, order, width, height, channels, records, tile_offsets, isect, out_alpha, last,   \
                  g_feat, g_alpha, g_means2d, g_conics, g_opac, g_features, threads);                          \
  }

S3D_INSTANTIATE(float, f32)
S3D_INSTANTIATE(double, f64)

S3D_EXPORT int tile_size() { return kTile; }
