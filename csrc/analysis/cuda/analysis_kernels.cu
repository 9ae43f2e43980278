// CUDA kernels of the analysis ops. The math is that of csrc/analysis/cpu/*.cpp:
//
// Pairwise agreement (logits z of M models at N positions over V entries; l = z - LSE(z), p = e^l):
//   KL(p_i || p_j) = Y_ii - Y_ij,  Y_ij = sum_n w_n sum_v p_i(n, v) l_j(n, v),  H_i = -sum p_i l_i,
//   JSD(p_i, p_j) = H((p_i + p_j) / 2) - (H_i + H_j) / 2.
//   row_stats: one block per (model, position) row: a thread-local online (max, sum e^(z-max),
//     first argmax) over a strided share of V, merged across the block; then the entropy.
//   cross: Y as a GEMM whose contraction index is (position, vocabulary entry); a block owns a
//     64 x 64 tile of (i, j) models and a slice of positions, forms P and L tiles of 32 entries
//     on the fly from the logits in shared memory (never stored in global memory) and runs a
//     4 x 4 register-tiled outer product per thread in fp32 FMA (TF32 would spoil KL, a
//     difference of such sums). Partial tiles per slice are summed in float64 by the binding.
//   jsd: a block owns a 16 x 16 pair tile and a slice of positions; one log per pair and entry.
// Attention distances (rows a over S sources, masked and renormalised): first a warp per (model,
//   row) reduces its mass and sum x log2 x (once, not once per pair tile); then a block owns a
//   16 x 16 pair tile on or above the diagonal (the metrics are symmetric) and a slice of rows,
//   staged 4 rows x 64 sources at a time in shared memory (the metric is a template parameter).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include <climits>

#include "analysis_cuda.h"

namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float to_f(float x) { return x; }
__device__ __forceinline__ float to_f(double x) { return float(x); }
__device__ __forceinline__ float to_f(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }


// x log2 x with the hardware log2 (lg2.approx: absolute error <= 2^-22 on [1/2, 2], 2 ulp elsewhere),
// for the loops with one log per pair and entry; logf is a ~25-instruction polynomial. Below 1e-30
// the term (< 1e-28) is dropped, so no subnormal reaches the log: the .ftz form skips the
// subnormal rescaling that __log2f wraps around MUFU.LG2 (four instructions per entry).
__device__ __forceinline__ float lg2_ftz(float x) {
  float y;
  asm("lg2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float xlog2x(float x) { return x > 1e-30f ? x * lg2_ftz(x) : 0.f; }
// The pair loop's JSD adds kTiny to one side of every mixture instead: m = u + v >= kTiny, so m
// log2 m needs no compare and select (lg2 never sees 0: -inf, and 0 x -inf = NaN); each term moves
// by about kTiny (log2 m + 1.44), below 1e-27 (an empty entry: kTiny log2 kTiny = -1e-28).
constexpr float kTiny = 1e-30f;
constexpr float kLn2 = 0.69314718055994531f;

// ------------------------------------------------------------------------- block reductions
__device__ __forceinline__ float block_sum(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  __syncthreads();
  if (lane == 0) red[warp] = v;
  __syncthreads();
  v = threadIdx.x < blockDim.x / 32 ? red[threadIdx.x] : 0.f;
  if (warp == 0)
    for (int o = 16; o > 0; o >>= 1) v += __shfl_down_sync(0xffffffffu, v, o);
  if (threadIdx.x == 0) red[0] = v;
  __syncthreads();
  return red[0];
}

struct MaxSum {  // online log-sum-exp state with the first index of the maximum
  float m, s;
  int arg;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  MaxSum r;
  r.m = fmaxf(a.m, b.m);
  if (r.m == -CUDART_INF_F) return {r.m, 0.f, min(a.arg, b.arg)};
  r.s = a.s * expf(a.m - r.m) + b.s * expf(b.m - r.m);
  r.arg = a.m > b.m ? a.arg : (b.m > a.m ? b.arg : min(a.arg, b.arg));
  return r;
}

__device__ MaxSum block_maxsum(MaxSum v, MaxSum* red) {
  for (int o = 16; o > 0; o >>= 1) {
    MaxSum u{__shfl_down_sync(0xffffffffu, v.m, o), __shfl_down_sync(0xffffffffu, v.s, o),
             __shfl_down_sync(0xffffffffu, v.arg, o)};
    v = merge(v, u);
  }
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) red[warp] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    MaxSum r = red[0];
    for (int k = 1; k < int(blockDim.x / 32); ++k) r = merge(r, red[k]);
    red[0] = r;
  }
  __syncthreads();
  return red[0];
}

// ------------------------------------------------------------------------- agreement
template <typename T>
__global__ void __launch_bounds__(kThreads) row_stats_kernel(const T* __restrict__ z, const float* __restrict__ w,
                                                             int64_t N, int64_t V, float* lse, int32_t* top,
                                                             float* ent, int32_t* bad) {
  __shared__ MaxSum red_ms[kThreads / 32];
  __shared__ float red[kThreads / 32];
  __shared__ int nonfinite;
  const int64_t row = blockIdx.x;
  const int64_t n = row % N;
  if (w[n] == 0.f) {
    if (threadIdx.x == 0) { lse[row] = 0.f; top[row] = 0; ent[row] = 0.f; bad[row] = 0; }
    return;
  }
  if (threadIdx.x == 0) nonfinite = 0;
  __syncthreads();
  const T* zr = z + row * V;
  MaxSum st{-CUDART_INF_F, 0.f, INT_MAX};
  int nf = 0;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float x = to_f(zr[v]);
    if (!isfinite(x)) { nf = 1; continue; }
    if (x > st.m) {
      st.s = st.s * expf(st.m - x) + 1.f;
      st.m = x;
      st.arg = int(v);
    } else {
      st.s += expf(x - st.m);
    }
  }
  if (nf) atomicOr(&nonfinite, 1);
  st = block_maxsum(st, red_ms);
  const float l0 = st.m + logf(st.s);
  float h = 0.f;
  for (int64_t v = threadIdx.x; v < V; v += blockDim.x) {
    const float l = to_f(zr[v]) - l0;
    h += expf(l) * l;
  }
  h = block_sum(h, red);
  if (threadIdx.x == 0) {
    lse[row] = l0;
    top[row] = st.arg;
    ent[row] = -h;
    bad[row] = nonfinite;
  }
}

constexpr int kTile = 64;    // models per side of a cross-term tile
constexpr int kBV = 32;      // vocabulary entries per shared-memory step
constexpr int kPad = 4;      // keeps float4 alignment, spreads the transposed stores over banks

template <typename T>
__global__ void __launch_bounds__(kThreads) cross_kernel(const T* __restrict__ z, const float* __restrict__ w,
                                                         const float* __restrict__ lse, int64_t M, int64_t N,
                                                         int64_t V, int64_t per_slice, int tiles, float* partial) {
  __shared__ __align__(16) float Ps[kBV][kTile + kPad];
  __shared__ __align__(16) float Ls[kBV][kTile + kPad];
  const int i0 = (blockIdx.x / tiles) * kTile, j0 = (blockIdx.x % tiles) * kTile;
  const int64_t slice = blockIdx.y;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  float acc[4][4] = {};
  const int64_t n_end = min(N, (slice + 1) * per_slice);
  for (int64_t n = slice * per_slice; n < n_end; ++n) {
    if (w[n] == 0.f) continue;
    for (int64_t v0 = 0; v0 < V; v0 += kBV) {
      // 2 x 64 rows x 32 entries: thread t loads entry t % 32 of rows t / 32 + 8k
      const int c = threadIdx.x % kBV;
      const int64_t v = v0 + c;
      for (int r = threadIdx.x / kBV; r < kTile; r += kThreads / kBV) {
        const int64_t i = i0 + r, j = j0 + r;
        float p = 0.f, l = 0.f;
        if (i < M && v < V) p = expf(to_f(z[(i * N + n) * V + v]) - lse[i * N + n]);
        if (j < M && v < V) l = to_f(z[(j * N + n) * V + v]) - lse[j * N + n];
        Ps[c][r] = p;
        Ls[c][r] = l;
      }
      __syncthreads();
#pragma unroll 8
      for (int k = 0; k < kBV; ++k) {
        const float4 a = *reinterpret_cast<const float4*>(&Ps[k][ty * 4]);
        const float4 b = *reinterpret_cast<const float4*>(&Ls[k][tx * 4]);
        const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
        for (int p = 0; p < 4; ++p)
#pragma unroll
          for (int q = 0; q < 4; ++q) acc[p][q] = fmaf(av[p], bv[q], acc[p][q]);
      }
      __syncthreads();
    }
  }
  float* out = partial + slice * M * M;
#pragma unroll
  for (int p = 0; p < 4; ++p)
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      const int64_t i = i0 + ty * 4 + p, j = j0 + tx * 4 + q;
      if (i < M && j < M) out[i * M + j] = acc[p][q];
    }
}

constexpr int kPair = 16;   // models per side of a pair tile (16 x 16 = 256 threads)
constexpr int kBJ = 64;     // entries per shared-memory step of the JSD / attention kernels

template <typename T>
__global__ void __launch_bounds__(kThreads) jsd_kernel(const T* __restrict__ z, const float* __restrict__ w,
                                                       const float* __restrict__ lse, const float* __restrict__ ent,
                                                       int64_t M, int64_t N, int64_t V, int64_t per_slice,
                                                       int tiles, float* partial) {
  __shared__ float Pi[kPair][kBJ + 1];
  __shared__ float Pj[kPair][kBJ + 1];
  const int i0 = (blockIdx.x / tiles) * kPair, j0 = (blockIdx.x % tiles) * kPair;
  const int64_t slice = blockIdx.y;
  const int a = threadIdx.x / kPair, b = threadIdx.x % kPair;
  const int64_t i = i0 + a, j = j0 + b;
  float acc = 0.f;
  const int64_t n_end = min(N, (slice + 1) * per_slice);
  for (int64_t n = slice * per_slice; n < n_end; ++n) {
    if (w[n] == 0.f) continue;
    float s = 0.f;
    for (int64_t v0 = 0; v0 < V; v0 += kBJ) {
      for (int e = threadIdx.x; e < 2 * kPair * kBJ; e += kThreads) {
        const int r = (e / kBJ) % kPair, c = e % kBJ;
        const bool first = e < kPair * kBJ;
        const int64_t v = v0 + c, model = (first ? i0 : j0) + r;
        const float p = (model < M && v < V) ? expf(to_f(z[(model * N + n) * V + v]) - lse[model * N + n]) : 0.f;
        (first ? Pi : Pj)[r][c] = p;
      }
      __syncthreads();
#pragma unroll 4
      const int cn = V - v0 < kBJ ? int(V - v0) : kBJ;
      for (int c = 0; c < cn; ++c) s += xlog2x(0.5f * (Pi[a][c] + Pj[b][c]));
      __syncthreads();
    }
    if (i < M && j < M) {
      const float d = -kLn2 * s - 0.5f * (ent[i * N + n] + ent[j * N + n]);
      acc += fminf(fmaxf(d, 0.f), 0.69314718f);
    }
  }
  if (i < M && j < M && i != j) partial[slice * M * M + i * M + j] = acc;
}

// ------------------------------------------------------------------------- attention distances
// Two kernels. attention_stats_kernel: a warp per (model, row) of a counted row: the row's mass s
// over the valid sources and sum x log2 x, stored as inv = h / s (h = 1/2 for JSD, else 1) and
// nh = sum a log2 a of the normalised row; a bad row (negative, non-finite, no mass) sets *bad.
// attention_kernel: a block owns a 16 x 16 pair tile on or above the diagonal of tiles (every
// metric is symmetric: blocks below it return at once, the others write (i, j) and (j, i)) and a
// slice of rows, taken kRows at a time: the 32 models' normalised rows of the kRows rows are staged
// in shared memory 64 sources at a time (coalesced, independent loads scaled by inv), then thread
// (a, b) runs over them. Per kRows rows: two barriers a chunk of sources, no reductions. JSD runs
// in base 2 on half rows (m = a_i / 2 + a_j / 2), times ln 2 at the end.
constexpr int kRows = 4;  // rows staged together: 4 x 32 x 65 floats = 33 KB of shared memory

template <typename T>
__global__ void __launch_bounds__(kThreads) attention_stats_kernel(const T* __restrict__ x,
                                                                   const uint8_t* __restrict__ smask,
                                                                   const float* __restrict__ w, int64_t M, int64_t R,
                                                                   int64_t S, float half, float* inv, float* nh,
                                                                   int32_t* bad) {
  const int lane = threadIdx.x & 31;
  const int64_t q = int64_t(blockIdx.x) * (kThreads / 32) + (threadIdx.x >> 5);  // q = model * R + r
  if (q >= M * R) return;
  const int64_t r = q % R;
  if (w[r] == 0.f) {
    if (lane == 0) inv[q] = 0.f, nh[q] = 0.f;
    return;
  }
  const uint8_t* mk = smask ? smask + r * S : nullptr;
  const T* row = x + q * S;
  float s = 0.f, t = 0.f;
  int invalid = 0;
  for (int64_t c = lane; c < S; c += 32) {
    const float v = (mk && !mk[c]) ? 0.f : to_f(row[c]);
    invalid |= !(v >= 0.f && v <= 3.0e38f);
    s += v;
    t += xlog2x(v);
  }
  for (int o = 16; o > 0; o >>= 1) {
    s += __shfl_xor_sync(0xffffffffu, s, o);
    t += __shfl_xor_sync(0xffffffffu, t, o);
    invalid |= __shfl_xor_sync(0xffffffffu, invalid, o);
  }
  if (lane == 0) {
    if (invalid || !(s > 0.f)) atomicExch(bad, 1);
    const float is = s > 0.f ? 1.f / s : 0.f;
    inv[q] = is * half;
    nh[q] = s > 0.f ? t * is - __log2f(s) : 0.f;
  }
}

// (kThreads, 2): with the metric a template parameter, a bare __launch_bounds__(kThreads) let ptxas
// (CUDA 13) cap the kernel at 32 registers and spill; asking for 2 blocks per SM leaves it 64-80.
template <typename T, int METRIC>
__global__ void __launch_bounds__(kThreads, 2) attention_kernel(const T* __restrict__ x, const uint8_t* __restrict__ smask,
                                                             const float* __restrict__ w,
                                                             const float* __restrict__ inv,
                                                             const float* __restrict__ nh, int64_t M, int64_t R,
                                                             int64_t S, int64_t per_slice, int tiles, float* partial) {
  __shared__ float A[kRows][2 * kPair][kBJ + 1];  // [row][i models, then j models][source]
  const int ti = blockIdx.x / tiles, tj = blockIdx.x % tiles;
  if (ti > tj) return;  // the whole block: before any barrier
  const int i0 = ti * kPair, j0 = tj * kPair;
  const int64_t slice = blockIdx.y;
  const int a = threadIdx.x / kPair, b = threadIdx.x % kPair;
  float acc = 0.f;
  const int64_t r_begin = slice * per_slice, r_end = min(R, (slice + 1) * per_slice);
  for (int64_t r0 = r_begin; r0 < r_end; r0 += kRows) {
    float d[kRows];
#pragma unroll
    for (int k = 0; k < kRows; ++k) d[k] = 0.f;
    for (int64_t c0 = 0; c0 < S; c0 += kBJ) {
      for (int e = threadIdx.x; e < kRows * 2 * kPair * kBJ; e += kThreads) {
        const int k = e / (2 * kPair * kBJ), q = (e / kBJ) % (2 * kPair), c = e % kBJ;
        const int64_t r = r0 + k, col = c0 + c, model = q < kPair ? i0 + q : j0 + q - kPair;
        float v = 0.f;
        if (r < r_end && col < S && model < M && !(smask && !smask[r * S + col])) {
          const float sc = inv[model * R + r];  // 0 for a row of zero weight
          if (sc != 0.f) v = to_f(x[(model * R + r) * S + col]) * sc;
        }
        A[k][q][c] = (METRIC == 3 && q < kPair) ? v + kTiny : v;
      }
      __syncthreads();
      const int cn = S - c0 < kBJ ? int(S - c0) : kBJ;  // S = 72: the second chunk holds 8 sources, not 64
#pragma unroll
      for (int k = 0; k < kRows; ++k) {
        float dk = d[k];
#pragma unroll 8
        for (int c = 0; c < cn; ++c) {
          const float u = A[k][a][c], v = A[k][kPair + b][c];
          if (METRIC == 0) {
            dk = fmaf(u - v, u - v, dk);
          } else if (METRIC == 1) {
            dk += fabsf(u - v);
          } else if (METRIC == 2) {
            const float e = sqrtf(u) - sqrtf(v);
            dk = fmaf(e, e, dk);
          } else {
            const float m = u + v;
            dk = fmaf(m, lg2_ftz(m), dk);
          }
        }
        d[k] = dk;
      }
      __syncthreads();  // A is rewritten for the next chunk
    }
#pragma unroll
    for (int k = 0; k < kRows; ++k) {
      const int64_t r = r0 + k;
      if (r >= r_end) break;
      const float wr = w[r];
      if (wr == 0.f) continue;
      float dk = d[k];
      if (METRIC == 0) dk = sqrtf(dk);
      else if (METRIC == 1) dk *= 0.5f;
      else if (METRIC == 2) dk = sqrtf(0.5f * dk);
      else {
        const int64_t i = min(int64_t(i0 + a), M - 1), j = min(int64_t(j0 + b), M - 1);  // pads: any row
        dk = kLn2 * fmaxf(0.5f * (nh[i * R + r] + nh[j * R + r]) - dk, 0.f);
      }
      acc += wr * dk;
    }
  }
  const int64_t i = i0 + a, j = j0 + b;
  if (i < M && j < M && i != j) {
    partial[slice * M * M + i * M + j] = acc;
    if (ti != tj) partial[slice * M * M + j * M + i] = acc;
  }
}

template <template <typename> class Launch, typename... Args>
int dispatch(int dtype, Args... args) {
  switch (dtype) {
    case GF_F32: return Launch<float>::run(args...);
    case GF_F64: return Launch<double>::run(args...);
    case GF_F16: return Launch<__half>::run(args...);
    case GF_BF16: return Launch<__nv_bfloat16>::run(args...);
    default: return int(cudaErrorInvalidValue);
  }
}

template <typename T>
struct RowStats {
  static int run(const void* z, const float* w, int64_t M, int64_t N, int64_t V, float* lse, int32_t* top,
                 float* ent, int32_t* bad, cudaStream_t st) {
    if (M * N == 0) return 0;
    row_stats_kernel<T><<<dim3(unsigned(M * N)), kThreads, 0, st>>>(static_cast<const T*>(z), w, N, V, lse, top,
                                                                     ent, bad);
    return int(cudaGetLastError());
  }
};

template <typename T>
struct Cross {
  static int run(const void* z, const float* w, const float* lse, int64_t M, int64_t N, int64_t V, int64_t slices,
                 float* partial, cudaStream_t st) {
    if (M * N == 0 || slices <= 0) return 0;
    const int tiles = int((M + kTile - 1) / kTile);
    const int64_t per = (N + slices - 1) / slices;
    cross_kernel<T><<<dim3(unsigned(tiles * tiles), unsigned(slices)), kThreads, 0, st>>>(
        static_cast<const T*>(z), w, lse, M, N, V, per, tiles, partial);
    return int(cudaGetLastError());
  }
};

template <typename T>
struct Jsd {
  static int run(const void* z, const float* w, const float* lse, const float* ent, int64_t M, int64_t N, int64_t V,
                 int64_t slices, float* partial, cudaStream_t st) {
    if (M * N == 0 || slices <= 0) return 0;
    const int tiles = int((M + kPair - 1) / kPair);
    const int64_t per = (N + slices - 1) / slices;
    jsd_kernel<T><<<dim3(unsigned(tiles * tiles), unsigned(slices)), kThreads, 0, st>>>(
        static_cast<const T*>(z), w, lse, ent, M, N, V, per, tiles, partial);
    return int(cudaGetLastError());
  }
};

template <typename T>
struct Attention {
  template <int METRIC>
  static void launch(dim3 grid, cudaStream_t st, const void* x, const uint8_t* smask, const float* w,
                     const float* inv, const float* nh, int64_t M, int64_t R, int64_t S, int64_t per, int tiles,
                     float* partial) {
    attention_kernel<T, METRIC><<<grid, kThreads, 0, st>>>(static_cast<const T*>(x), smask, w, inv, nh, M, R, S, per,
                                                          tiles, partial);
  }
  static int run(const void* x, const uint8_t* smask, const float* w, int64_t M, int64_t R, int64_t S, int metric,
                 int64_t slices, float* partial, float* work, int32_t* bad, cudaStream_t st) {
    if (M * R == 0 || slices <= 0) return 0;
    if (metric < 0 || metric > 3) return int(cudaErrorInvalidValue);
    float* inv = work;
    float* nh = work + M * R;
    const int64_t warps = kThreads / 32;
    attention_stats_kernel<T><<<unsigned((M * R + warps - 1) / warps), kThreads, 0, st>>>(
        static_cast<const T*>(x), smask, w, M, R, S, metric == 3 ? 0.5f : 1.f, inv, nh, bad);
    const int tiles = int((M + kPair - 1) / kPair);
    const int64_t per = (R + slices - 1) / slices;
    const dim3 grid(unsigned(tiles * tiles), unsigned(slices));
    switch (metric) {
      case 0: launch<0>(grid, st, x, smask, w, inv, nh, M, R, S, per, tiles, partial); break;
      case 1: launch<1>(grid, st, x, smask, w, inv, nh, M, R, S, per, tiles, partial); break;
      case 2: launch<2>(grid, st, x, smask, w, inv, nh, M, R, S, per, tiles, partial); break;
      default: launch<3>(grid, st, x, smask, w, inv, nh, M, R, S, per, tiles, partial); break;
    }
    return int(cudaGetLastError());
  }
};

}  // namespace

extern "C" {

int gf_agreement_row_stats(const void* logits, int dtype, const float* weight, int64_t M, int64_t N, int64_t V,
                           float* lse, int32_t* top, float* ent, int32_t* bad, cudaStream_t stream) {
  return dispatch<RowStats>(dtype, logits, weight, M, N, V, lse, top, ent, bad, stream);
}

int gf_agreement_cross(const void* logits, int dtype, const float* weight, const float* lse, int64_t M, int64_t N,
                       int64_t V, int64_t slices, float* partial, cudaStream_t stream) {
  return dispatch<Cross>(dtype, logits, weight, lse, M, N, V, slices, partial, stream);
}

int gf_agreement_jsd(const void* logits, int dtype, const float* weight, const float* lse, const float* ent,
                     int64_t M, int64_t N, int64_t V, int64_t slices, float* partial, cudaStream_t stream) {
  return dispatch<Jsd>(dtype, logits, weight, lse, ent, M, N, V, slices, partial, stream);
}

int gf_attention_pairs(const void* attn, int dtype, const uint8_t* source_mask, const float* weight, int64_t M,
                       int64_t R, int64_t S, int metric, int64_t slices, float* partial, float* work, int32_t* bad,
                       cudaStream_t stream) {
  return dispatch<Attention>(dtype, attn, source_mask, weight, M, R, S, metric, slices, partial, work, bad, stream);
}

}  // extern "C"
