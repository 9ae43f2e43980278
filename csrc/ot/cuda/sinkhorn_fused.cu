// The 'fused' regime of the CUDA backend: both half-iterations of Sinkhorn in one read of C from
// device memory (the streaming regime of sinkhorn_kernels.cu reads it twice an iteration).
//
// One call, for K = -C/eps, computes
//   lu'_i  = active_b ? min(la_i - scale LSE_j(lv_j + K_ij), cap ? lu_i : +inf) : lu_i
//                                                            (lu'_i = -inf where la_i = -inf)
//   col_j  = LSE_i(lu'_i + K_ij)                             (the next lv is log b_j - col_j)
// Balanced problems: la = log a, scale 1, no cap; unbalanced and partial: their la, scale and cap
// as the driver (grounded_fast/ops/entropic_ot/driver.py, solve_potentials) defines them.
// A block owns rows [r0, r1) of one problem and the whole width m (m <= kMaxM). Thread t holds, in
// registers, the columns j = (k kThreads + t) VEC + e (k < CPT / VEC, e < VEC; 16-byte loads of VEC
// entries: C's rows are ldc entries apart, ldc a multiple of VEC, and the caller pads C where m is
// not): lv_j and the block's running column partials (max, sum) of lu'_i + K_ij over the rows it
// has done. For each row:
//   1. the row's entries for the thread's columns (loaded one row ahead, so that a row's memory
//      latency overlaps the previous row's arithmetic);
//   2. the row LSE as max then sum (two block reductions, exact: every exp is of a value <= 0);
//   3. lu'_i, then each thread folds lu'_i + K_ij into its columns' partials with one exp:
//      d = x - mx, e = exp(-|d|); d > 0: (mx, s) <- (x, s e + 1), else s <- s + e. mx starts at
//      -FLT_MAX, not -inf, so an entry x = -inf gives d = -inf, e = 0 and changes nothing, with no
//      test (-inf - -inf would be NaN); a column with no entry is stored as (-inf, 0).
// All of it in base 2: K_ij, lv_j and lu'_i are held times log2(e) (C scaled by -log2(e)/eps once),
// so that every exp is one 2^x, the hardware's ex2 (gexp2; __expf is a multiply by log2(e) and a
// guarded ex2: four instructions more, twice an entry); the row LSE and the stored column maxima
// are brought back to nats with one multiply each (s = sum 2^(x - mx) = sum e^(x ln2 - mx ln2)).
// The blocks' partials (B, P, m) are merged by fused_merge_kernel into col. Device-memory traffic
// an iteration: one read of C, plus 2 B P m partials written and read.
#include <cfloat>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math_constants.h>

#include "ot_device.cuh"
#include "sinkhorn_cuda.h"

namespace {

using namespace gfot;  // neg_inf, cvt, gexp, glog, gexp2, glog2, kLog2e, kLn2 (ot_device.cuh)

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int64_t kMaxM = 32 * kThreads;  // columns a block holds in registers (CPT = 32)

__device__ __forceinline__ __half from_bits(unsigned short u, __half) { return __ushort_as_half(u); }
__device__ __forceinline__ __nv_bfloat16 from_bits(unsigned short u, __nv_bfloat16) { return __ushort_as_bfloat16(u); }

// The VEC = 16 / sizeof(TC) entries of C at p (16-byte aligned), converted to float.
template <typename TC> struct Loader {  // 8 half-precision entries
  static constexpr int VEC = 8;
  static __device__ __forceinline__ void run(const TC* p, float* out) {
    // entry e is the (e % 2)-th 16 bits of word e / 2 (little-endian), taken out by shifts: reading
    // the loaded vector through a TC pointer would break C++'s aliasing rule (cuda_sim's g++ -O2
    // build then read zeros)
    const uint4 v = __ldg(reinterpret_cast<const uint4*>(p));
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) out[e] = cvt<float>(from_bits(static_cast<unsigned short>(w[e / 2] >> (16 * (e % 2))), TC()));
  }
};
template <> struct Loader<float> {
  static constexpr int VEC = 4;
  static __device__ __forceinline__ void run(const float* p, float* out) {
    const float4 v = __ldg(reinterpret_cast<const float4*>(p));
    out[0] = v.x, out[1] = v.y, out[2] = v.z, out[3] = v.w;
  }
};

template <int VEC> __device__ __forceinline__ int64_t column(int slot) {
  return (int64_t(slot / VEC) * kThreads + threadIdx.x) * VEC + slot % VEC;
}

// The thread's entries of one row; those at or past m read as +inf, so that K = -inf there. Where
// all of the thread's columns are inside the row (``inside``: every thread when m is a multiple of
// kThreads VEC, e.g. 4096) the addresses are the thread's first column plus constants and nothing
// is tested (the tests and recomputed indices cost several instructions an entry: docs/PERFORMANCE.md,
// "SASS instruction counts and registers").
template <typename TC, int CPT>
__device__ __forceinline__ void load_row(const TC* row, int64_t m, bool inside, float (&x)[CPT]) {
  constexpr int VEC = Loader<TC>::VEC;
  if (inside) {
#pragma unroll
    for (int k = 0; k < CPT; k += VEC) Loader<TC>::run(row + column<VEC>(k), x + k);
    return;
  }
#pragma unroll
  for (int k = 0; k < CPT; k += VEC) {
    const int64_t j = column<VEC>(k);
    if (j < m) {  // the vector is inside the padded row (ldc >= m rounded up to VEC)
      Loader<TC>::run(row + j, x + k);
      if (j + VEC > m) {
#pragma unroll
        for (int e = 0; e < VEC; ++e) x[k + e] = j + e < m ? x[k + e] : CUDART_INF_F;
      }
    } else {
#pragma unroll
      for (int e = 0; e < VEC; ++e) x[k + e] = CUDART_INF_F;
    }
  }
}

// Every thread gets the block's max (or sum) of v; `red` holds kWarps floats and is free on entry.
__device__ __forceinline__ float block_max_all(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r = fmaxf(r, red[w]);
  return r;
}
__device__ __forceinline__ float block_sum_all(float v, float* red) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  float r = red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) r += red[w];
  return r;
}

template <typename TC, int CPT>
__global__ void __launch_bounds__(kThreads, CPT <= 16 ? 2 : 1) fused_rows_kernel(
    const TC* __restrict__ C, const float* __restrict__ lv, const float* __restrict__ la,
    const float* __restrict__ lu_in, float* __restrict__ lu_out, const uint8_t* __restrict__ active, float* pmx,
    float* psm, int64_t n, int64_t m, int64_t ldc, int64_t rows_per_block, float inv_eps, float scale, bool cap) {
  constexpr int VEC = Loader<TC>::VEC;
  // the row max goes through red[0], the row sum through red[1]: each is rewritten only after the
  // barrier of the other, which every thread reaches after reading it
  __shared__ float red[2][kWarps];
  const int64_t b = blockIdx.y, p = blockIdx.x, P = gridDim.x;
  const int64_t r0 = p * rows_per_block, r1 = min(n, r0 + rows_per_block);
  const bool act = active[b] != 0;
  const TC* Cb = C + b * n * ldc;
  const float k2 = -inv_eps * float(kLog2e), l2e = float(kLog2e), ln2 = float(kLn2);
  float v[CPT], mx[CPT], s[CPT], cur[CPT], nxt[CPT];  // v, cur, mx: times log2(e)
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    const int64_t j = column<VEC>(k);
    v[k] = j < m ? lv[b * m + j] * l2e : neg_inf<float>();
    mx[k] = -FLT_MAX;  // finite: x - mx is never -inf - (-inf), so no entry needs a test (see below)
    s[k] = 0.f;
  }
  const bool inside = column<VEC>(CPT - 1) < m;
  if (r0 < r1) load_row<TC, CPT>(Cb + r0 * ldc, m, inside, cur);
  for (int64_t i = r0; i < r1; ++i) {
    if (i + 1 < r1) load_row<TC, CPT>(Cb + (i + 1) * ldc, m, inside, nxt);
    // 2. LSE_j(lv_j + K_ij): the block's max, then the sum of exp(z - max)
    float z_max = neg_inf<float>();
#pragma unroll
    for (int k = 0; k < CPT; ++k) {
      cur[k] *= k2;  // K_ij log2(e) (-inf past m)
      z_max = fmaxf(z_max, v[k] + cur[k]);
    }
    const float M = block_max_all(z_max, red[0]);
    const float safe = M == neg_inf<float>() ? 0.f : M;
    float z_sum = 0.f;
#pragma unroll
    for (int k = 0; k < CPT; ++k) z_sum += gexp2(v[k] + cur[k] - safe);
    const float S = block_sum_all(z_sum, red[1]);
    const float rl = S > 0.f ? (safe + glog2(S)) * ln2 : neg_inf<float>();
    // 3. the new lu_i, and its row's share of the column LSE
    const float lai = la[b * n + i];
    float lu = neg_inf<float>();
    if (lai != neg_inf<float>()) {
      const float old = lu_in[b * n + i];
      lu = act ? (cap ? fminf(lai - scale * rl, old) : lai - scale * rl) : old;
    }
    if (threadIdx.x == 0) lu_out[b * n + i] = lu;
    if (lu != neg_inf<float>()) {
      const float lu2 = lu * l2e;
#pragma unroll
      for (int k = 0; k < CPT; ++k) {
        const float x = lu2 + cur[k];
        const float d = x - mx[k];
        // x = -inf (past m, or C = +inf) gives d = -inf, e = 0: (mx, s) unchanged. With a test
        // instead, the compiler branched around each ex2 (3 instructions more an entry)
        const float e = gexp2(-fabsf(d));
        s[k] = d > 0.f ? fmaf(s[k], e, 1.f) : s[k] + e;
        mx[k] = fmaxf(mx[k], x);
      }
    }
#pragma unroll
    for (int k = 0; k < CPT; ++k) cur[k] = nxt[k];
  }
  const int64_t part = (b * P + p) * m;
#pragma unroll
  for (int k = 0; k < CPT; ++k) {
    const int64_t j = column<VEC>(k);
    if (j < m) {
      pmx[part + j] = s[k] > 0.f ? mx[k] * ln2 : neg_inf<float>();  // no entry: the finite floor
      psm[part + j] = s[k];
    }
  }
}

// col (B, m) = LSE over the blocks p of (pmx + log psm)[b, p, :].
__global__ void __launch_bounds__(kThreads) fused_merge_kernel(const float* pmx, const float* psm, float* col,
                                                               int64_t m, int64_t P) {
  const int64_t b = blockIdx.y, j = int64_t(blockIdx.x) * kThreads + threadIdx.x;
  if (j >= m) return;
  float mx = neg_inf<float>(), s = 0.f;
  for (int64_t p = 0; p < P; ++p) {
    const float m2 = pmx[(b * P + p) * m + j], s2 = psm[(b * P + p) * m + j];
    if (m2 == neg_inf<float>()) continue;
    const float d = m2 - mx, e = __expf(-fabsf(d));
    s = d > 0.f ? fmaf(s, e, s2) : fmaf(s2, e, s);
    mx = fmaxf(mx, m2);
  }
  col[b * m + j] = s > 0.f ? mx + __logf(s) : neg_inf<float>();
}

// The narrowest CPT in {8, 16, 32} that holds m columns.
template <typename TC>
int launch_rows(const void* C, const float* lv, const float* la, const float* lu_in, float* lu_out,
                const uint8_t* active, float* pmx, float* psm, int64_t B, int64_t n, int64_t m, int64_t ldc,
                int64_t P, float inv_eps, float scale, bool cap, cudaStream_t st) {
  const int64_t rows = (n + P - 1) / P;
  const dim3 grid(static_cast<unsigned>(P), static_cast<unsigned>(B));
  const TC* c = static_cast<const TC*>(C);
  if (m <= 8 * kThreads)
    fused_rows_kernel<TC, 8><<<grid, kThreads, 0, st>>>(c, lv, la, lu_in, lu_out, active, pmx, psm, n, m, ldc, rows,
                                                         inv_eps, scale, cap);
  else if (m <= 16 * kThreads)
    fused_rows_kernel<TC, 16><<<grid, kThreads, 0, st>>>(c, lv, la, lu_in, lu_out, active, pmx, psm, n, m, ldc, rows,
                                                          inv_eps, scale, cap);
  else
    fused_rows_kernel<TC, 32><<<grid, kThreads, 0, st>>>(c, lv, la, lu_in, lu_out, active, pmx, psm, n, m, ldc, rows,
                                                          inv_eps, scale, cap);
  return int(cudaGetLastError());
}

}  // namespace

extern "C" {

int64_t gf_ot_fused_max_m() { return kMaxM; }

int64_t gf_ot_fused_row_align(int c_dtype) {
  return c_dtype == GF_OT_F32 ? Loader<float>::VEC : c_dtype == GF_OT_F16 || c_dtype == GF_OT_BF16 ? 8 : 0;
}

int gf_ot_fused_pass(const void* C, int c_dtype, int64_t ldc, const float* lv, const float* la, const float* lu_in,
                     float* lu_out, const uint8_t* active, float* pmx, float* psm, float* col, int64_t B, int64_t n,
                     int64_t m, int64_t blocks, double inv_eps, double scale, int cap, cudaStream_t stream) {
  const int64_t align = gf_ot_fused_row_align(c_dtype);
  if (!align || B <= 0 || n <= 0 || m <= 0 || m > kMaxM || ldc < m || ldc % align || blocks <= 0 || blocks > n ||
      reinterpret_cast<uintptr_t>(C) % 16)
    return int(cudaErrorInvalidValue);
  const float ie = float(inv_eps), sc = float(scale);
  int err;
  if (c_dtype == GF_OT_F32)
    err = launch_rows<float>(C, lv, la, lu_in, lu_out, active, pmx, psm, B, n, m, ldc, blocks, ie, sc, cap, stream);
  else if (c_dtype == GF_OT_F16)
    err = launch_rows<__half>(C, lv, la, lu_in, lu_out, active, pmx, psm, B, n, m, ldc, blocks, ie, sc, cap, stream);
  else
    err = launch_rows<__nv_bfloat16>(C, lv, la, lu_in, lu_out, active, pmx, psm, B, n, m, ldc, blocks, ie, sc, cap,
                                     stream);
  if (err) return err;
  fused_merge_kernel<<<dim3(unsigned((m + kThreads - 1) / kThreads), unsigned(B)), kThreads, 0, stream>>>(
      pmx, psm, col, m, blocks);
  return int(cudaGetLastError());
}

}  // extern "C"
