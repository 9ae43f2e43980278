// CUDA kernels of entropic OT with the cost recomputed from features (never stored): the streaming
// passes of sinkhorn_kernels.cu with each tile of C rebuilt from a tile of x rows and one of y rows,
//   D = X_tile Y_tile^T   (register-tiled fp32 FMAs over d in chunks of kKc; fp64 for fp64)
//   sqeuclidean (cost 0)  C_ij = max(s_i + t_j - 2 D_ij, 0),  s_i = |x_i|^2, t_j = |y_j|^2
//   cosine      (cost 1)  C_ij = 1 - D_ij s_i t_j,          s_i = 1 / max(|x_i|, 1e-12), t_j alike
// (grounded_fast.ot.costs.cost_matrix's costs; s, t precomputed by the caller in O((n + m) d)).
// Both are symmetric in (x, y): the column pass is the row pass with the point clouds swapped, so
// every pass is written once, for rows.
//
// Tiling: a block of 16 x 16 threads owns kR = 16 * TM rows (TM = 4 for float, 2 for double) and
// streams the other cloud in tiles of kR points. Each k-chunk of both feature tiles is staged in
// shared memory (transposed, padded against bank conflicts); thread (ty, tx) accumulates the TM x TM
// entries of rows ty + 16u and columns tx + 16v (consecutive threads read consecutive columns: no
// bank conflicts, broadcasts for the rows). The per-entry work then runs on registers:
//   feat_lse:          online log-sum-exp per row, z_ij = v_j - C_ij eps^-1,
//                        m' = max(m, z), s' = s e^(m - m') + e^(z - m'),
//                      merged over the 16 threads sharing a row with shuffles; with `splits` > 1
//                      the streamed axis is cut into ranges (grid.y) whose (max, sum) pairs a second
//                      kernel merges, so that one problem (B = 1) still fills the GPU;
//   feat_row_stats:    r_i = sum_j P_ij, pc_i = sum_j P_ij C_ij, plp_i = sum_j P_ij log P_ij with
//                      log P_ij = lu_i + lv_j + w - C_ij eps^-1 (the objective; 0 log 0 = 0).
// The host side (grounded_fast/ops/entropic_ot_features/backend_cuda.py) drives them with the driver's solve_potentials;
// the envelope gradients (P y, P^T x) are a chunked torch computation there.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include "ot_device.cuh"
#include "sinkhorn_cuda.h"

namespace {

constexpr int kThreads = 256;  // 16 x 16
constexpr int kKc = 16;        // feature chunk staged in shared memory

using namespace gfot;  // neg_inf, cvt, gexp, glog, online, merge (ot_device.cuh)

// Sum over the 16 threads of a half-warp (the threads sharing rows: same ty).
template <typename T> __device__ __forceinline__ T half_warp_sum(T v) {
  for (int o = 8; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T, int TM> struct Stage {
  static constexpr int kR = 16 * TM;
  T xs[kKc][kR + 1];
  T ys[kKc][kR + 1];
};

// c[u][v] = C(row i0 + ty + 16u, column j0 + tx + 16v) for every thread of the block (all threads
// must call it: it synchronises). X, Y: this problem's (nr, d) and (nc, d) features; out-of-range
// points load as zeros (the caller masks their entries).
template <typename TF, typename T, int TM>
__device__ __forceinline__ void cost_tile(Stage<T, TM>& st, const TF* __restrict__ X, const TF* __restrict__ Y,
                                          int64_t nr, int64_t nc, int d, int64_t i0, int64_t j0, const T (&s)[TM],
                                          const T (&t)[TM], int cost, T (&c)[TM][TM]) {
  constexpr int kR = Stage<T, TM>::kR;
  const int tid = threadIdx.x, tx = tid & 15, ty = tid >> 4;
#pragma unroll
  for (int u = 0; u < TM; ++u)
#pragma unroll
    for (int v = 0; v < TM; ++v) c[u][v] = T(0);
  for (int k0 = 0; k0 < d; k0 += kKc) {
    __syncthreads();  // the previous chunk's readers are done
    for (int e = tid; e < kR * kKc; e += kThreads) {
      const int r = e / kKc, k = e % kKc;
      const bool kin = k0 + k < d;
      const int64_t i = i0 + r, j = j0 + r;
      st.xs[k][r] = (kin && i < nr) ? cvt<T>(X[i * d + k0 + k]) : T(0);
      st.ys[k][r] = (kin && j < nc) ? cvt<T>(Y[j * d + k0 + k]) : T(0);
    }
    __syncthreads();
#pragma unroll
    for (int k = 0; k < kKc; ++k) {
      T av[TM], bv[TM];
#pragma unroll
      for (int u = 0; u < TM; ++u) av[u] = st.xs[k][ty + 16 * u];
#pragma unroll
      for (int v = 0; v < TM; ++v) bv[v] = st.ys[k][tx + 16 * v];
#pragma unroll
      for (int u = 0; u < TM; ++u)
#pragma unroll
        for (int v = 0; v < TM; ++v) c[u][v] = fma(av[u], bv[v], c[u][v]);
    }
  }
#pragma unroll
  for (int u = 0; u < TM; ++u)
#pragma unroll
    for (int v = 0; v < TM; ++v)
      c[u][v] = cost == 0 ? max(s[u] + t[v] - T(2) * c[u][v], T(0)) : T(1) - c[u][v] * s[u] * t[v];
}

// Row pass (see the file comment). Grid (row blocks, splits, B). With splits == 1 it writes
// out[b, i] = LSE; otherwise the pair (max, sum) to work[0 / 1][b, split, i] for feat_lse_merge.
template <typename TF, typename T, int TM>
__global__ void __launch_bounds__(kThreads) feat_lse_kernel(const TF* __restrict__ X, const TF* __restrict__ Y,
                                                            const T* __restrict__ S, const T* __restrict__ Tn,
                                                            const T* __restrict__ vec, T* out, T* work, int64_t n,
                                                            int64_t m, int d, int cost, T inv_eps, int64_t per_split) {
  __shared__ Stage<T, TM> st;
  constexpr int kR = Stage<T, TM>::kR;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t pb = blockIdx.z, i0 = int64_t(blockIdx.x) * kR, split = blockIdx.y, nsplit = gridDim.y;
  const TF* Xb = X + pb * n * d;
  const TF* Yb = Y + pb * m * d;
  T s[TM], mx[TM], sm[TM];
#pragma unroll
  for (int u = 0; u < TM; ++u) {
    const int64_t i = i0 + ty + 16 * u;
    s[u] = i < n ? S[pb * n + i] : T(0);
    mx[u] = neg_inf<T>();
    sm[u] = T(0);
  }
  const int64_t jlo = split * per_split, jhi = jlo + per_split < m ? jlo + per_split : m;
  for (int64_t j0 = jlo; j0 < jhi; j0 += kR) {
    T t[TM], vv[TM], c[TM][TM];
#pragma unroll
    for (int v = 0; v < TM; ++v) {
      const int64_t j = j0 + tx + 16 * v;
      t[v] = j < jhi ? Tn[pb * m + j] : T(0);
      vv[v] = j < jhi ? vec[pb * m + j] : neg_inf<T>();
    }
    cost_tile<TF, T, TM>(st, Xb, Yb, n, m, d, i0, j0, s, t, cost, c);
#pragma unroll
    for (int u = 0; u < TM; ++u)
#pragma unroll
      for (int v = 0; v < TM; ++v) online(mx[u], sm[u], vv[v] == neg_inf<T>() ? vv[v] : vv[v] - c[u][v] * inv_eps);
  }
#pragma unroll
  for (int u = 0; u < TM; ++u) {
    for (int o = 8; o > 0; o >>= 1) {
      const T mx2 = __shfl_xor_sync(0xffffffffu, mx[u], o), s2 = __shfl_xor_sync(0xffffffffu, sm[u], o);
      merge(mx[u], sm[u], mx2, s2);
    }
    const int64_t i = i0 + ty + 16 * u;
    if (tx == 0 && i < n) {
      if (nsplit == 1) {
        out[pb * n + i] = sm[u] > 0 ? mx[u] + glog(sm[u]) : neg_inf<T>();
      } else {
        const int64_t off = (pb * nsplit + split) * n + i;
        work[off] = mx[u];
        work[gridDim.z * nsplit * n + off] = sm[u];
      }
    }
  }
}

// out[b, i] = LSE over the splits of (work[0], work[1])[b, :, i].
template <typename T>
__global__ void __launch_bounds__(kThreads) feat_lse_merge_kernel(const T* work, T* out, int64_t B, int64_t n,
                                                                  int64_t nsplit) {
  const int64_t q = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (q >= B * n) return;
  const int64_t pb = q / n, i = q % n;
  T mx = neg_inf<T>(), s = T(0);
  for (int64_t k = 0; k < nsplit; ++k) {
    const int64_t off = (pb * nsplit + k) * n + i;
    merge(mx, s, work[off], work[B * nsplit * n + off]);
  }
  out[q] = s > 0 ? mx + glog(s) : neg_inf<T>();
}

// r, pc, plp (B, n): the objective's row sums (file comment). Grid (row blocks, 1, B).
template <typename TF, typename T, int TM>
__global__ void __launch_bounds__(kThreads) feat_row_stats_kernel(
    const TF* __restrict__ X, const TF* __restrict__ Y, const T* __restrict__ S, const T* __restrict__ Tn,
    const T* __restrict__ lu, const T* __restrict__ lv, const T* __restrict__ w, T* r_out, T* pc_out, T* plp_out,
    int64_t n, int64_t m, int d, int cost, T inv_eps) {
  __shared__ Stage<T, TM> st;
  constexpr int kR = Stage<T, TM>::kR;
  const int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
  const int64_t pb = blockIdx.z, i0 = int64_t(blockIdx.x) * kR;
  const TF* Xb = X + pb * n * d;
  const TF* Yb = Y + pb * m * d;
  const T ws = w[pb];
  T s[TM], a[TM], r[TM], pc[TM], plp[TM];
#pragma unroll
  for (int u = 0; u < TM; ++u) {
    const int64_t i = i0 + ty + 16 * u;
    s[u] = i < n ? S[pb * n + i] : T(0);
    a[u] = i < n ? lu[pb * n + i] + ws : neg_inf<T>();
    r[u] = pc[u] = plp[u] = T(0);
  }
  for (int64_t j0 = 0; j0 < m; j0 += kR) {
    T t[TM], b[TM], c[TM][TM];
#pragma unroll
    for (int v = 0; v < TM; ++v) {
      const int64_t j = j0 + tx + 16 * v;
      t[v] = j < m ? Tn[pb * m + j] : T(0);
      b[v] = j < m ? lv[pb * m + j] : neg_inf<T>();
    }
    cost_tile<TF, T, TM>(st, Xb, Yb, n, m, d, i0, j0, s, t, cost, c);
#pragma unroll
    for (int u = 0; u < TM; ++u)
#pragma unroll
      for (int v = 0; v < TM; ++v) {
        if (a[u] == neg_inf<T>() || b[v] == neg_inf<T>()) continue;
        const T lp = -c[u][v] * inv_eps + a[u] + b[v];
        const T p = gexp(lp);
        r[u] += p;
        pc[u] += p * c[u][v];
        if (p > T(0)) plp[u] += p * lp;
      }
  }
#pragma unroll
  for (int u = 0; u < TM; ++u) {
    const T rs = half_warp_sum(r[u]), pcs = half_warp_sum(pc[u]), plps = half_warp_sum(plp[u]);
    const int64_t i = i0 + ty + 16 * u;
    if (tx == 0 && i < n) {
      r_out[pb * n + i] = rs;
      pc_out[pb * n + i] = pcs;
      plp_out[pb * n + i] = plps;
    }
  }
}

enum FeatPass { kLse, kStats };

struct FeatArgs {
  const void* x;
  const void* y;
  const void* s;
  const void* t;
  const void* v[3];
  void* out[3];
  void* work;
  int64_t B, n, m, d, splits;
  int cost;
  double inv_eps;
};

template <typename TF, typename T, int TM>
int feat_launch(FeatPass pass, const FeatArgs& q, cudaStream_t st) {
  if (q.B == 0 || q.n == 0 || q.m == 0) return 0;
  constexpr int kR = 16 * TM;
  const TF* X = static_cast<const TF*>(q.x);
  const TF* Y = static_cast<const TF*>(q.y);
  const T* S = static_cast<const T*>(q.s);
  const T* Tn = static_cast<const T*>(q.t);
  auto vec = [&](int k) { return static_cast<const T*>(q.v[k]); };
  const unsigned blocks = unsigned((q.n + kR - 1) / kR);
  const int d = int(q.d);
  const T inv_eps = T(q.inv_eps);
  switch (pass) {
    case kLse: {
      const int64_t per = ((q.m + q.splits - 1) / q.splits + kR - 1) / kR * kR;
      const int64_t splits = (q.m + per - 1) / per;
      feat_lse_kernel<TF, T, TM><<<dim3(blocks, unsigned(splits), unsigned(q.B)), kThreads, 0, st>>>(
          X, Y, S, Tn, vec(0), static_cast<T*>(q.out[0]), static_cast<T*>(q.work), q.n, q.m, d, q.cost, inv_eps, per);
      if (splits > 1) {
        cudaError_t err = cudaGetLastError();
        if (err != cudaSuccess) return int(err);
        feat_lse_merge_kernel<T><<<unsigned((q.B * q.n + kThreads - 1) / kThreads), kThreads, 0, st>>>(
            static_cast<const T*>(q.work), static_cast<T*>(q.out[0]), q.B, q.n, splits);
      }
      break;
    }
    default:
      feat_row_stats_kernel<TF, T, TM><<<dim3(blocks, 1, unsigned(q.B)), kThreads, 0, st>>>(
          X, Y, S, Tn, vec(0), vec(1), vec(2), static_cast<T*>(q.out[0]), static_cast<T*>(q.out[1]),
          static_cast<T*>(q.out[2]), q.n, q.m, d, q.cost, inv_eps);
  }
  return int(cudaGetLastError());
}

int feat_dispatch(FeatPass pass, int f_dtype, int v_dtype, const FeatArgs& q, cudaStream_t st) {
  if (q.cost < 0 || q.cost > 1 || q.B > 65535 || q.splits < 1 || q.splits > 65535 || q.d < 1 || q.d > (1ll << 30))
    return int(cudaErrorInvalidValue);
  if (v_dtype == GF_OT_F64) {
    if (f_dtype != GF_OT_F64) return int(cudaErrorInvalidValue);
    return feat_launch<double, double, 2>(pass, q, st);
  }
  if (v_dtype != GF_OT_F32) return int(cudaErrorInvalidValue);
  switch (f_dtype) {
    case GF_OT_F32: return feat_launch<float, float, 4>(pass, q, st);
    case GF_OT_F16: return feat_launch<__half, float, 4>(pass, q, st);
    case GF_OT_BF16: return feat_launch<__nv_bfloat16, float, 4>(pass, q, st);
    default: return int(cudaErrorInvalidValue);
  }
}

}  // namespace

extern "C" {

int64_t gf_ot_feat_lse_work(int64_t B, int64_t n, int64_t splits) { return splits > 1 ? 2 * B * splits * n : 0; }

int gf_ot_feat_lse(const void* x, const void* y, int f_dtype, const void* s, const void* t, const void* vec, void* out,
                   void* work, int v_dtype, int64_t B, int64_t n, int64_t m, int64_t d, int cost, double inv_eps,
                   int64_t splits, cudaStream_t stream) {
  if (splits > 1 && work == nullptr) return int(cudaErrorInvalidValue);
  FeatArgs q{x, y, s, t, {vec}, {out}, work, B, n, m, d, splits, cost, inv_eps};
  return feat_dispatch(kLse, f_dtype, v_dtype, q, stream);
}

int gf_ot_feat_row_stats(const void* x, const void* y, int f_dtype, const void* s, const void* t, const void* lu,
                         const void* lv, const void* w, void* r, void* pc, void* plp, int v_dtype, int64_t B,
                         int64_t n, int64_t m, int64_t d, int cost, double inv_eps, cudaStream_t stream) {
  FeatArgs q{x, y, s, t, {lu, lv, w}, {r, pc, plp}, nullptr, B, n, m, d, 1, cost, inv_eps};
  return feat_dispatch(kStats, f_dtype, v_dtype, q, stream);
}

}  // extern "C"
