// CUDA kernels of the entropic OT family (log domain), see csrc/ot/cpu/sinkhorn_cpu.cpp for the math:
//   balanced    lv = log b - LSE_i(lu_i + K_ij),  lu = log a - LSE_j(lv_j + K_ij),  K = -C / eps;
//               stop: ||P^T 1 - b||_2 < tol from the next iteration's column LSE;
//   unbalanced  lu = (1 - fa) s_a + fa (log a - LSE_j(lv_j + K_ij)), then lv alike; POT's stop test;
//   partial     Dykstra with vector corrections p, s and scalar t; stop ||log P - log P_prev||_F <= tol
//               (O(n + m) from the potentials' changes).
//   Every kind also stops at the rounding floor of its stop quantity (see ot_small_kernel).
//
// ot_small_kernel: the persistent regime. One block per problem; K (n x m, pre-scaled by log2 e)
//   lives in shared memory for all iterations together with every O(n + m) vector; a warp per row
//   computes the row LSE, a thread per column the column LSE (consecutive threads read consecutive
//   columns: no bank conflicts), each in one pass with exp2 and a shift bounded in advance (see
//   "persistent regime" below); loop control is block-uniform (scalars come out of block
//   reductions that every thread reads).
// row_lse / col_lse: the streaming regime, one launch per pass over C in device
//   memory. Row pass: a warp per row, lanes striding the row (coalesced), per-lane online LSE
//   merged across the warp. Column pass: a block per 32 columns x all rows, lane = column,
//   8 row groups, online LSE per thread merged in shared memory. Both take kUnroll entries a
//   thread per step, loaded together (kUnroll loads in flight a thread instead of one behind each
//   online update, whose branch and exp kept the compiler from overlapping them; the one-load
//   form's share of the copy bandwidth on an H100: docs/PERFORMANCE.md, "Backend choice by
//   regime") and folded into the running LSE with one rescale.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include "ot_device.cuh"
#include "sinkhorn_cuda.h"

namespace {

constexpr int kThreads = 256;
constexpr int kUnroll = 4;  // entries a thread loads together in the streaming passes

using namespace gfot;  // neg_inf, load_as, gexp, glog, online, merge (ot_device.cuh)

template <typename T> __device__ __forceinline__ T warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
template <typename T> __device__ __forceinline__ T warp_max(T v) {
  for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Block-wide reductions whose result every thread reads (keeps loop control uniform).
template <typename T> __device__ T block_sum(T v, T* red) {
  v = warp_sum(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = 0;
  for (int k = 0; k < int(blockDim.x >> 5); ++k) r += red[k];
  return r;
}
template <typename T> __device__ T block_max(T v, T* red) {
  v = warp_max(v);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  T r = neg_inf<T>();
  for (int k = 0; k < int(blockDim.x >> 5); ++k) r = max(r, red[k]);
  return r;
}
template <typename T> __device__ T block_lse(const T* x, int len, T* red) {
  T mx = neg_inf<T>();
  for (int i = threadIdx.x; i < len; i += blockDim.x) mx = max(mx, x[i]);
  mx = block_max(mx, red);
  const T safe = mx == neg_inf<T>() ? T(0) : mx;
  T s = 0;
  for (int i = threadIdx.x; i < len; i += blockDim.x) s += gexp(x[i] - safe);
  s = block_sum(s, red);
  return s > 0 ? safe + glog(s) : neg_inf<T>();
}

// ---------------------------------------------------------------------------- persistent regime
// The tile holds K2 = K log2(e) = -C log2(e) / eps, so each term of a log-sum-exp is one exp2 (MUFU.EX2):
//   LSE_j(K_ij + v_j) = ln 2 * (h + log2 sum_j 2^(K2_ij + v_j log2 e - h))   for any shift h.
// One pass instead of max-then-sum: h = kmax_i + vmax log2 e, with kmax_i = max_j K2_ij (fixed for the
// solve, computed once) and vmax = max_j v_j (one block reduction per half-iteration), bounds every
// exponent by 0, so nothing overflows. The sum is >= 2^(true max - h); when it is below 2^-64 the bound
// was too loose for the terms that matter to stay normal floats, and that row/column is redone exactly
// (max, then sum). For costs whose range within a row (column) is below 64 eps ln 2 (e.g. cosine costs,
// C in [0, 2], at eps >= 0.046) the exact path never runs.
// gexp2 (ot_device.cuh): results below 2^-126 flush to 0: in a sum that passes the 2^-64 test below,
// such terms are more than 2^-45 below its largest one (at most 2^16 terms fit on-chip), beyond
// float32 resolution.
template <typename T> __device__ __forceinline__ T loose_bound() { return T(5.421010862427522e-20); }  // 2^-64

// max_i x_i over the block (every thread reads it); also the barrier that publishes x.
template <typename T> __device__ T block_vmax(const T* x, int len, T* red) {
  T mx = neg_inf<T>();
  for (int i = threadIdx.x; i < len; i += blockDim.x) mx = max(mx, x[i]);
  return block_max(mx, red);
}

// out_i = LSE_j(K_ij + lv_j), a warp per row, kRowsInFlight rows per warp at a time (their sums share
// the loads of lv and their warp reductions overlap); kr_i = max_j K2_ij; vmax = max_j lv_j.
constexpr int kRowsInFlight = 8;
template <typename T>
__device__ void tile_row_lse(const T* K2, const T* lv, T vmax, const T* kr, T* out, int n, int m) {
  const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
  const T L2E = T(kLog2e), vh = vmax * L2E;
  for (int i0 = threadIdx.x >> 5; i0 < n; i0 += nw * kRowsInFlight) {
    T h[kRowsInFlight], s[kRowsInFlight];
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r) {
      const int i = i0 + r * nw;
      h[r] = i < n ? kr[i] + vh : T(0);
      s[r] = 0;
    }
    for (int j = lane; j < m; j += 32) {
      const T v = lv[j];
#pragma unroll
      for (int r = 0; r < kRowsInFlight; ++r) {
        const int i = i0 + r * nw;
        if (i < n) s[r] += gexp2(fma(v, L2E, K2[i * m + j] - h[r]));
      }
    }
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r) s[r] = warp_sum(s[r]);
#pragma unroll
    for (int r = 0; r < kRowsInFlight; ++r) {
      const int i = i0 + r * nw;
      if (i >= n) continue;  // warp-uniform
      const T* k = K2 + i * m;
      if (!(s[r] >= loose_bound<T>())) {  // warp-uniform (xor reduction); also -inf / NaN shifts
        T mx = neg_inf<T>();
        for (int j = lane; j < m; j += 32) mx = max(mx, fma(lv[j], L2E, k[j]));
        mx = warp_max(mx);
        const T safe = mx == neg_inf<T>() ? T(0) : mx;
        T t = 0;
        for (int j = lane; j < m; j += 32) t += gexp2(fma(lv[j], L2E, k[j]) - safe);
        t = warp_sum(t);
        if (lane == 0) out[i] = t > 0 ? (safe + glog2(t)) * T(kLn2) : neg_inf<T>();
      } else if (lane == 0) {
        out[i] = (h[r] + glog2(s[r])) * T(kLn2);
      }
    }
  }
}

// out_j = LSE_i(K_ij + lu_i), a thread per column (consecutive threads, consecutive banks), four
// independent partial sums; kc_j = max_i K2_ij; umax = max_i lu_i.
template <typename T>
__device__ void tile_col_lse(const T* K2, const T* lu, T umax, const T* kc, T* out, int n, int m) {
  const T L2E = T(kLog2e), uh = umax * L2E;
  for (int j = threadIdx.x; j < m; j += blockDim.x) {
    const T h = kc[j] + uh;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    int i = 0;
    for (; i + 4 <= n; i += 4) {
      s0 += gexp2(fma(lu[i], L2E, K2[i * m + j] - h));
      s1 += gexp2(fma(lu[i + 1], L2E, K2[(i + 1) * m + j] - h));
      s2 += gexp2(fma(lu[i + 2], L2E, K2[(i + 2) * m + j] - h));
      s3 += gexp2(fma(lu[i + 3], L2E, K2[(i + 3) * m + j] - h));
    }
    for (; i < n; ++i) s0 += gexp2(fma(lu[i], L2E, K2[i * m + j] - h));
    T s = (s0 + s1) + (s2 + s3);
    if (s >= loose_bound<T>()) {
      out[j] = (h + glog2(s)) * T(kLn2);
      continue;
    }
    T mx = neg_inf<T>();
    for (i = 0; i < n; ++i) mx = max(mx, fma(lu[i], L2E, K2[i * m + j]));
    const T safe = mx == neg_inf<T>() ? T(0) : mx;
    s = 0;
    for (i = 0; i < n; ++i) s += gexp2(fma(lu[i], L2E, K2[i * m + j]) - safe);
    out[j] = s > 0 ? (safe + glog2(s)) * T(kLn2) : neg_inf<T>();
  }
}

// POT's unbalanced stop quantity for one scaling vector: max|u - u'| / max(|u|, |u'|, 1).
template <typename T> __device__ T rel_change(const T* x, const T* px, const T* sref, int len, T* red) {
  // from log u = x - sref shifted by S = max(0, max log u, max log u'): the denominator is then
  // exactly 1, and u (which overflows float32 once the potentials pass ~88) is never formed
  T S = 0;
  for (int i = threadIdx.x; i < len; i += blockDim.x)
    if (x[i] != neg_inf<T>()) S = max(S, max(x[i] - sref[i], px[i] - sref[i]));
  S = block_max(S, red);
  T nu = 0;
  for (int i = threadIdx.x; i < len; i += blockDim.x) {
    if (x[i] == neg_inf<T>()) continue;  // masked entry
    nu = max(nu, abs(gexp(x[i] - sref[i] - S) - gexp(px[i] - sref[i] - S)));
  }
  return block_max(nu, red);
}

// err_history[k] = err (the last slot keeps the latest check once the history is full); returns k + 1.
template <typename T>
__device__ __forceinline__ int64_t record(T* hist, int64_t pb, int64_t hist_len, int64_t k, T err) {
  if (hist_len > 0 && threadIdx.x == 0) hist[pb * hist_len + min(k, hist_len - 1)] = err;
  return k + 1;
}

// max |x_i| over the entries that are not -inf (masked), 0 if none; every thread gets it.
template <typename T> __device__ T block_absmax(const T* x, int len, T* red) {
  T mx = 0;
  for (int i = threadIdx.x; i < len; i += blockDim.x)
    if (x[i] != neg_inf<T>()) mx = max(mx, abs(x[i]));
  return block_max(mx, red);
}

// ||log P' - log P||_F over the support with log P'_ij - log P_ij = (x_i - px_i) + (y_j - py_j) + dw
// (entries where the log weight lw is -inf are off the support), from the centred changes:
//   m' sum_i (du_i - mean du)^2 + n' sum_j (dv_j - mean dv)^2 + n' m' (mean du + mean dv + dw)^2.
template <typename T>
__device__ T log_plan_change(const T* x, const T* px, const T* la, int n, const T* y, const T* py, const T* lb,
                             int m, T dw, T na, T nb, T* red) {
  T su = 0, sv = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) if (la[i] != neg_inf<T>()) su += x[i] - px[i];
  for (int j = threadIdx.x; j < m; j += blockDim.x) if (lb[j] != neg_inf<T>()) sv += y[j] - py[j];
  const T ubar = block_sum(su, red) / max(na, T(1)), vbar = block_sum(sv, red) / max(nb, T(1));
  T qu = 0, qv = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x)
    if (la[i] != neg_inf<T>()) { const T d = x[i] - px[i] - ubar; qu += d * d; }
  for (int j = threadIdx.x; j < m; j += blockDim.x)
    if (lb[j] != neg_inf<T>()) { const T d = y[j] - py[j] - vbar; qv += d * d; }
  const T c = ubar + vbar + dw;
  return sqrt(nb * block_sum(qu, red) + na * block_sum(qv, red) + na * nb * c * c);
}

// Block-wide max and sum of two values at once (one pair of barriers instead of two).
template <typename T> __device__ void block_max_sum(T& mx, T& sm, T* red) {
  mx = warp_max(mx);
  sm = warp_sum(sm);
  const int nw = int(blockDim.x >> 5);
  __syncthreads();
  if ((threadIdx.x & 31) == 0) {
    red[threadIdx.x >> 5] = mx;
    red[nw + (threadIdx.x >> 5)] = sm;
  }
  __syncthreads();
  mx = neg_inf<T>();
  sm = 0;
  for (int k = 0; k < nw; ++k) {
    mx = max(mx, red[k]);
    sm += red[nw + k];
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads, 1) ot_small_kernel(
    const T* __restrict__ C, const T* __restrict__ a, const T* __restrict__ b, const T* __restrict__ mass,
    const T* __restrict__ lu0, const T* __restrict__ lv0, int n, int m, T inv_eps, T fa, T fb, int problem,
    int kl_ref, int64_t max_iter, T tol, T unit, int64_t check_every, int64_t hist_len, T* lu_out, T* lv_out,
    T* w_out, int32_t* niter_out, int32_t* status_out, T* hist) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  __shared__ T red[2 * (kThreads / 32)];
  const int64_t pb = blockIdx.x;
  const int nm = n * m;
  T* K = reinterpret_cast<T*>(smem_raw);  // K2 = -C log2(e) / eps
  T* lu = K + nm;  T* lv = lu + n;   // potentials
  T* la = lv + m;  T* lb = la + n;   // log weights (-inf where masked)
  T* p = lb + m;   T* s = p + n;     // partial: Dykstra corrections; unbalanced: s_a, s_b
  T* pu = s + m;   T* pv = pu + n;   // previous potentials (stop tests)
  T* rl = pv + m;  T* cl = rl + n;   // row / column LSE
  T* bw = cl + m;                    // b
  T* kr = bw + m;  T* kc = kr + n;   // row / column maxima of K2
  const T NEG = neg_inf<T>();
  const T L2E = T(kLog2e), LN2 = T(kLn2);
  const T* Cp = C + pb * nm;
  const T k2scale = inv_eps * L2E;
  for (int e = threadIdx.x; e < nm; e += blockDim.x) K[e] = -Cp[e] * k2scale;
  int live_a = 0, live_b = 0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const T ai = a[pb * n + i];
    live_a += ai > 0;
    la[i] = ai > 0 ? glog(ai) : NEG;
    lu[i] = ai > 0 ? lu0[pb * n + i] : NEG;
    p[i] = 0;
  }
  for (int j = threadIdx.x; j < m; j += blockDim.x) {
    const T bj = b[pb * m + j];
    live_b += bj > 0;
    bw[j] = bj;
    lb[j] = bj > 0 ? glog(bj) : NEG;
    lv[j] = bj > 0 ? lv0[pb * m + j] : NEG;
    s[j] = 0;
  }
  __syncthreads();  // K complete
  {
    const int lane = threadIdx.x & 31, nw = blockDim.x >> 5;
    for (int i = threadIdx.x >> 5; i < n; i += nw) {
      T mx = NEG;
      for (int j = lane; j < m; j += 32) mx = max(mx, K[i * m + j]);
      mx = warp_max(mx);
      if (lane == 0) kr[i] = mx;
    }
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
      T mx = NEG;
      for (int i = 0; i < n; ++i) mx = max(mx, K[i * m + j]);
      kc[j] = mx;
    }
  }
  const T na = block_sum(T(live_a), red), nb = block_sum(T(live_b), red);
  const T ms = mass[pb];
  const bool nonempty = na > 0 && nb > 0 && (problem != 2 || ms > 0);
  __syncthreads();
  int64_t it = 0, k = 0;
  int status = nonempty ? 1 : 0;
  bool go = nonempty;
  T w = 0;
  // The rounding floor of the stop quantity: unit (1 + max|lu| + max|lv| + |w| + max|log a| +
  // max|log b|) x (partial sqrt(n' m'), balanced ||b||_2, unbalanced 1); a check at or below it
  // and no smaller than the previous check stops (solve_potentials' check in
  // grounded_fast/ops/entropic_ot/driver.py).
  const T base = 1 + block_absmax(la, n, red) + block_absmax(lb, m, red);
  T shape = 1;
  if (problem == 0) {
    T bb = 0;
    for (int j = threadIdx.x; j < m; j += blockDim.x) bb += lb[j] != NEG ? bw[j] * bw[j] : T(0);
    shape = sqrt(block_sum(bb, red));
  } else if (problem == 2) {
    shape = sqrt(na * nb);
  }
  T prev = -neg_inf<T>();
  auto at_floor = [&](T err, T wabs) {
    const T fl = unit * (base + block_absmax(lu, n, red) + block_absmax(lv, m, red) + wabs) * shape;
    const bool r = err <= fl && err >= prev;
    prev = err;
    return r;
  };
  if (problem == 0) {  // ------------------------------------------------ balanced
    bool pending = false;
    T umax = block_vmax(lu, n, red);
    while (go) {
      tile_col_lse(K, lu, umax, kc, cl, n, m);
      __syncthreads();
      if (pending) {
        T e = 0;
        for (int j = threadIdx.x; j < m; j += blockDim.x) {
          const T d = (lb[j] != NEG ? gexp(cl[j] + lv[j]) : T(0)) - bw[j];
          e += d * d;
        }
        const T err = sqrt(block_sum(e, red));
        k = record(hist, pb, hist_len, k, err);
        if (at_floor(err, T(0)) || err < tol) { status = 0; go = false; }
      }
      if (go) {
        for (int j = threadIdx.x; j < m; j += blockDim.x) lv[j] = lb[j] != NEG ? lb[j] - cl[j] : NEG;
        const T vmax = block_vmax(lv, m, red);
        tile_row_lse(K, lv, vmax, kr, rl, n, m);
        __syncthreads();
        for (int i = threadIdx.x; i < n; i += blockDim.x) lu[i] = la[i] != NEG ? la[i] - rl[i] : NEG;
        umax = block_vmax(lu, n, red);
        pending = check_every > 0 && it % check_every == 0;
        ++it;
        if (it >= max_iter) {
          go = false;
          if (pending) {
            tile_col_lse(K, lu, umax, kc, cl, n, m);
            __syncthreads();
            T e = 0;
            for (int j = threadIdx.x; j < m; j += blockDim.x) {
              const T d = (lb[j] != NEG ? gexp(cl[j] + lv[j]) : T(0)) - bw[j];
              e += d * d;
            }
            const T err = sqrt(block_sum(e, red));
            k = record(hist, pb, hist_len, k, err);
            if (at_floor(err, T(0)) || err < tol) status = 0;
          }
        }
      }
    }
  } else if (problem == 1) {  // ----------------------------------------- unbalanced (KL)
    T* sa = p;  // reference measure terms: log a (kl_ref) or 0
    T* sb = s;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
      sa[i] = kl_ref ? la[i] : T(0);
      lu[i] = la[i] != NEG ? lu[i] + sa[i] : NEG;
    }
    for (int j = threadIdx.x; j < m; j += blockDim.x) {
      sb[j] = kl_ref ? lb[j] : T(0);
      lv[j] = lb[j] != NEG ? lv[j] + sb[j] : NEG;
    }
    T vmax = block_vmax(lv, m, red);
    while (go) {
      for (int i = threadIdx.x; i < n; i += blockDim.x) pu[i] = lu[i];
      for (int j = threadIdx.x; j < m; j += blockDim.x) pv[j] = lv[j];
      tile_row_lse(K, lv, vmax, kr, rl, n, m);
      __syncthreads();
      for (int i = threadIdx.x; i < n; i += blockDim.x)
        lu[i] = la[i] != NEG ? (1 - fa) * sa[i] + fa * (la[i] - rl[i]) : NEG;
      const T umax = block_vmax(lu, n, red);
      tile_col_lse(K, lu, umax, kc, cl, n, m);
      __syncthreads();
      for (int j = threadIdx.x; j < m; j += blockDim.x)
        lv[j] = lb[j] != NEG ? (1 - fb) * sb[j] + fb * (lb[j] - cl[j]) : NEG;
      vmax = block_vmax(lv, m, red);
      if (check_every > 0 && it % check_every == 0) {
        const T err = T(0.5) * (rel_change(lu, pu, sa, n, red) + rel_change(lv, pv, sb, m, red));
        k = record(hist, pb, hist_len, k, err);
        if (at_floor(err, T(0)) || err < tol) { status = 0; go = false; }
      }
      ++it;
      if (it >= max_iter) go = false;
    }
  } else {  // ------------------------------------------------------------ partial
    for (int i = threadIdx.x; i < n; i += blockDim.x) lu[i] = la[i] != NEG ? T(0) : NEG;
    for (int j = threadIdx.x; j < m; j += blockDim.x) lv[j] = lb[j] != NEG ? T(0) : NEG;
    T vmax = block_vmax(lv, m, red);
    const T lbmax = block_vmax(lb, m, red);  // after the projection cl_j <= lb_j: a shift for total
    const T lmass = glog(ms);
    tile_row_lse(K, lv, vmax, kr, rl, n, m);
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) pu[i] = la[i] != NEG ? rl[i] : NEG;
    __syncthreads();
    w = lmass - block_lse(pu, n, red);
    T t = 0;
    __syncthreads();
    while (go) {
      const T pw = w;
      for (int i = threadIdx.x; i < n; i += blockDim.x) pu[i] = lu[i];
      for (int j = threadIdx.x; j < m; j += blockDim.x) pv[j] = lv[j];
      tile_row_lse(K, lv, vmax, kr, rl, n, m);
      __syncthreads();
      for (int i = threadIdx.x; i < n; i += blockDim.x) {
        if (la[i] == NEG) { lu[i] = NEG; continue; }
        const T l1 = lu[i] - p[i];
        const T pn = min(la[i] - (l1 + w + rl[i]), T(0));
        p[i] = pn;
        lu[i] = l1 + pn;
      }
      const T umax = block_vmax(lu, n, red);
      tile_col_lse(K, lu, umax, kc, cl, n, m);
      __syncthreads();
      T vm = NEG, cs = 0;
      for (int j = threadIdx.x; j < m; j += blockDim.x) {
        if (lb[j] == NEG) { lv[j] = NEG; cl[j] = NEG; continue; }
        const T l1 = lv[j] - s[j];
        const T lc = l1 + w + cl[j];
        const T sn = min(lb[j] - lc, T(0));
        s[j] = sn;
        lv[j] = l1 + sn;
        cl[j] = lc + sn;  // log column sum after the projection
        vm = max(vm, lv[j]);
        cs += gexp2((cl[j] - lbmax) * L2E);
      }
      block_max_sum(vm, cs, red);
      vmax = vm;
      const T total = (cs >= loose_bound<T>() ? lbmax + glog2(cs) * LN2 : block_lse(cl, m, red)) - t;
      w = w - t;
      t = lmass - total;
      w = w + t;
      if (check_every > 0 && it % check_every == 0) {
        const T err = log_plan_change(lu, pu, la, n, lv, pv, lb, m, w - pw, na, nb, red);
        k = record(hist, pb, hist_len, k, err);
        if (at_floor(err, abs(w)) || err <= tol) { status = 0; go = false; }
      }
      ++it;
      if (it >= max_iter) go = false;
      __syncthreads();
    }
  }
  for (int i = threadIdx.x; i < n; i += blockDim.x) lu_out[pb * n + i] = lu[i];
  for (int j = threadIdx.x; j < m; j += blockDim.x) lv_out[pb * m + j] = lv[j];
  if (threadIdx.x == 0) {
    w_out[pb] = w;
    niter_out[pb] = int32_t(it);
    status_out[pb] = status;
  }
}

// ---------------------------------------------------------------------------- streaming regime

template <typename TC, typename T>
__global__ void __launch_bounds__(kThreads) row_lse_kernel(const TC* __restrict__ C, const T* __restrict__ lv,
                                                           T* out, int64_t n, int64_t m, T inv_eps) {
  const int lane = threadIdx.x & 31;
  const int64_t pb = blockIdx.y, i = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);
  if (i >= n) return;
  const TC* row = C + (pb * n + i) * m;
  const T* v = lv + pb * m;
  T mx = neg_inf<T>(), s = 0;
  for (int64_t j0 = lane; j0 < m; j0 += 32 * kUnroll) {
    T z[kUnroll];
#pragma unroll
    for (int u = 0; u < kUnroll; ++u) {
      const int64_t j = j0 + 32 * u;
      z[u] = j < m ? v[j] - load_as<T>(row + j) * inv_eps : neg_inf<T>();
    }
    online_block(mx, s, z);
  }
  for (int o = 16; o > 0; o >>= 1) {
    const T mx2 = __shfl_xor_sync(0xffffffffu, mx, o), s2 = __shfl_xor_sync(0xffffffffu, s, o);
    merge(mx, s, mx2, s2);
  }
  if (lane == 0) out[pb * n + i] = s > 0 ? mx + glog(s) : neg_inf<T>();
}

template <typename TC, typename T>
__global__ void __launch_bounds__(kThreads) col_lse_kernel(const TC* __restrict__ C, const T* __restrict__ lu,
                                                           T* out, int64_t n, int64_t m, T inv_eps) {
  __shared__ T smx[kThreads / 32][32], ss[kThreads / 32][32];
  const int lane = threadIdx.x & 31, grp = threadIdx.x >> 5;
  const int64_t pb = blockIdx.y, j = int64_t(blockIdx.x) * 32 + lane;
  T mx = neg_inf<T>(), s = 0;
  constexpr int kGroups = kThreads / 32;
  if (j < m)
    for (int64_t i0 = grp; i0 < n; i0 += kGroups * kUnroll) {
      T z[kUnroll];
#pragma unroll
      for (int u = 0; u < kUnroll; ++u) {
        const int64_t i = i0 + kGroups * u;
        z[u] = i < n ? lu[pb * n + i] - load_as<T>(C + (pb * n + i) * m + j) * inv_eps : neg_inf<T>();
      }
      online_block(mx, s, z);
    }
  smx[grp][lane] = mx;
  ss[grp][lane] = s;
  __syncthreads();
  if (grp == 0 && j < m) {
    for (int g = 1; g < kThreads / 32; ++g) merge(mx, s, smx[g][lane], ss[g][lane]);
    out[pb * m + j] = s > 0 ? mx + glog(s) : neg_inf<T>();
  }
}

template <typename T> int small_launch(const void* C, const void* a, const void* b, const void* mass, const void* lu0,
                                       const void* lv0, int64_t B, int64_t n, int64_t m, double inv_eps, double fa,
                                       double fb, int problem, int kl_ref, int64_t max_iter, double tol,
                                       double unit, int64_t check_every, int64_t hist_len, void* lu, void* lv, void* w,
                                       int32_t* n_iter, int32_t* status, void* hist, cudaStream_t st) {
  if (B == 0) return 0;
  const size_t bytes = size_t(gf_ot_small_smem_bytes(n, m, sizeof(T) == 8 ? GF_OT_F64 : GF_OT_F32));
  auto kernel = ot_small_kernel<T>;
  cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes));
  if (err != cudaSuccess) {
    (void)cudaGetLastError();  // returned here: left as the thread's last error, the next launch would report it
    return int(err);
  }
  kernel<<<dim3(unsigned(B)), kThreads, bytes, st>>>(
      static_cast<const T*>(C), static_cast<const T*>(a), static_cast<const T*>(b), static_cast<const T*>(mass),
      static_cast<const T*>(lu0), static_cast<const T*>(lv0), int(n), int(m), T(inv_eps), T(fa), T(fb), problem,
      kl_ref, max_iter, T(tol), T(unit), check_every, hist_len, static_cast<T*>(lu), static_cast<T*>(lv),
      static_cast<T*>(w),
      n_iter, status, static_cast<T*>(hist));
  return int(cudaGetLastError());
}

enum Pass { kRow, kCol };

template <typename TC, typename T>
int pass_launch(Pass pass, const void* C, const void* const* v, void* out, int64_t B, int64_t n, int64_t m,
                double inv_eps, cudaStream_t st) {
  if (B == 0 || n == 0 || m == 0) return 0;
  const TC* c = static_cast<const TC*>(C);
  const int rows_per_block = kThreads / 32;
  switch (pass) {
    case kRow:
      row_lse_kernel<TC, T><<<dim3(unsigned((n + rows_per_block - 1) / rows_per_block), unsigned(B)), kThreads, 0,
                              st>>>(c, static_cast<const T*>(v[0]), static_cast<T*>(out), n, m, T(inv_eps));
      break;
    case kCol:
      col_lse_kernel<TC, T><<<dim3(unsigned((m + 31) / 32), unsigned(B)), kThreads, 0, st>>>(
          c, static_cast<const T*>(v[0]), static_cast<T*>(out), n, m, T(inv_eps));
      break;
  }
  return int(cudaGetLastError());
}

int pass_dispatch(Pass pass, const void* C, int c_dtype, const void* const* v, void* out, int v_dtype, int64_t B,
                  int64_t n, int64_t m, double inv_eps, cudaStream_t st) {
  if (v_dtype == GF_OT_F64) {
    if (c_dtype != GF_OT_F64) return int(cudaErrorInvalidValue);
    return pass_launch<double, double>(pass, C, v, out, B, n, m, inv_eps, st);
  }
  if (v_dtype != GF_OT_F32) return int(cudaErrorInvalidValue);
  switch (c_dtype) {
    case GF_OT_F32: return pass_launch<float, float>(pass, C, v, out, B, n, m, inv_eps, st);
    case GF_OT_F16: return pass_launch<__half, float>(pass, C, v, out, B, n, m, inv_eps, st);
    case GF_OT_BF16: return pass_launch<__nv_bfloat16, float>(pass, C, v, out, B, n, m, inv_eps, st);
    default: return int(cudaErrorInvalidValue);
  }
}

}  // namespace

extern "C" {

int64_t gf_ot_small_smem_bytes(int64_t n, int64_t m, int dtype) {
  return (n * m + 6 * n + 7 * m) * (dtype == GF_OT_F64 ? 8 : 4);
}

int gf_ot_small(const void* C, const void* a, const void* b, const void* mass, const void* lu0, const void* lv0,
                int dtype, int64_t B, int64_t n, int64_t m, double inv_eps, double fa, double fb, int problem,
                int kl_ref, int64_t max_iter, double tol, double unit, int64_t check_every, int64_t hist_len,
                void* lu, void* lv, void* w, int32_t* n_iter, int32_t* status, void* hist, cudaStream_t stream) {
  if (problem < 0 || problem > 2) return int(cudaErrorInvalidValue);
  if (dtype == GF_OT_F64)
    return small_launch<double>(C, a, b, mass, lu0, lv0, B, n, m, inv_eps, fa, fb, problem, kl_ref, max_iter, tol,
                                unit, check_every, hist_len, lu, lv, w, n_iter, status, hist, stream);
  if (dtype == GF_OT_F32)
    return small_launch<float>(C, a, b, mass, lu0, lv0, B, n, m, inv_eps, fa, fb, problem, kl_ref, max_iter, tol,
                               unit, check_every, hist_len, lu, lv, w, n_iter, status, hist, stream);
  return int(cudaErrorInvalidValue);
}

int gf_ot_row_lse(const void* C, int c_dtype, const void* lv, void* out, int v_dtype, int64_t B, int64_t n, int64_t m,
                  double inv_eps, cudaStream_t stream) {
  const void* v[1] = {lv};
  return pass_dispatch(kRow, C, c_dtype, v, out, v_dtype, B, n, m, inv_eps, stream);
}

int gf_ot_col_lse(const void* C, int c_dtype, const void* lu, void* out, int v_dtype, int64_t B, int64_t n, int64_t m,
                  double inv_eps, cudaStream_t stream) {
  const void* v[1] = {lu};
  return pass_dispatch(kCol, C, c_dtype, v, out, v_dtype, B, n, m, inv_eps, stream);
}

}  // extern "C"
