// C ABI of the CUDA entropic-OT kernels (framework-agnostic: raw device pointers, sizes, a stream).
// The math is that of csrc/ot/cpu/sinkhorn_cpu.cpp in the log domain; the host-side driver of the
// streaming regime is grounded_fast.ops.entropic_ot.driver.solve_potentials (shared by every
// streaming backend). Wrapped as torch ops by sinkhorn_cuda_binding.cpp (CUDA builds only).
// Every function returns a cudaError_t as int.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types (cost tensors may be any of them; potentials are float32, float64 for float64 costs).
enum GfOtDtype { GF_OT_F32 = 0, GF_OT_F64 = 1, GF_OT_F16 = 2, GF_OT_BF16 = 3 };

// Dynamic shared memory (bytes) the persistent kernel needs for one n x m problem in `dtype`
// (GF_OT_F32 or GF_OT_F64); the caller compares it with the device's opt-in limit.
int64_t gf_ot_small_smem_bytes(int64_t n, int64_t m, int dtype);

// Persistent solve: one block per problem, the cost tile -C/eps in shared memory for all
// iterations, stop tests in the kernel. C (B,n,m), a, lu0, lu (B,n), b, lv0, lv (B,m), mass, w (B),
// n_iter, status (B) int32, hist (B, hist_len); all float arrays in `dtype` (F32 or F64).
// problem: 0 balanced, 1 unbalanced (fa, fb = rho / (rho + eps); kl_ref), 2 partial. unit: the
// relative rounding unit of the floor stop (0: none); checks past hist_len overwrite its last slot.
int gf_ot_small(const void* C, const void* a, const void* b, const void* mass, const void* lu0, const void* lv0,
                int dtype, int64_t B, int64_t n, int64_t m, double inv_eps, double fa, double fb, int problem,
                int kl_ref, int64_t max_iter, double tol, double unit, int64_t check_every, int64_t hist_len,
                void* lu, void* lv, void* w, int32_t* n_iter, int32_t* status, void* hist, cudaStream_t stream);

// Streaming passes over C (B,n,m) of type c_dtype; vectors of type v_dtype (F32, or F64 for F64 C):
//   row:  out (B,n) = LSE_j(lv_j - C_ij inv_eps)      col: out (B,m) = LSE_i(lu_i - C_ij inv_eps)
int gf_ot_row_lse(const void* C, int c_dtype, const void* lv, void* out, int v_dtype, int64_t B, int64_t n, int64_t m,
                  double inv_eps, cudaStream_t stream);
int gf_ot_col_lse(const void* C, int c_dtype, const void* lu, void* out, int v_dtype, int64_t B, int64_t n, int64_t m,
                  double inv_eps, cudaStream_t stream);

// The fused regime (sinkhorn_fused.cu): one read of C (B, n, m) an iteration,
//   lu_out_i = active_b ? min(la_i - scale LSE_j(lv_j - C_ij inv_eps), cap ? lu_in_i : +inf) : lu_in_i
//              (-inf where la_i = -inf; balanced problems: scale 1, cap 0)
//   col_j    = LSE_i(lu_out_i - C_ij inv_eps)
// with C's rows ldc entries apart (ldc >= m, a multiple of gf_ot_fused_row_align(c_dtype); the
// entries past m are not read as costs), C 16-byte aligned, m <= gf_ot_fused_max_m(); c_dtype F32,
// F16 or BF16, vectors float32, active (B) bytes. `blocks` (1..n) blocks share a problem's rows; pmx,
// psm are (B, blocks, m) float32 scratch.
int64_t gf_ot_fused_max_m();
int64_t gf_ot_fused_row_align(int c_dtype);
int gf_ot_fused_pass(const void* C, int c_dtype, int64_t ldc, const float* lv, const float* la, const float* lu_in,
                     float* lu_out, const uint8_t* active, float* pmx, float* psm, float* col, int64_t B, int64_t n,
                     int64_t m, int64_t blocks, double inv_eps, double scale, int cap, cudaStream_t stream);

// Streaming passes with the cost recomputed from features (sinkhorn_features.cu), never stored:
// x (B,n,d), y (B,m,d) of f_dtype (any GfOtDtype), row-major; s (B,n), t (B,m) of v_dtype (F32, or
// F64 for F64 features): |x_i|^2, |y_j|^2 for cost 0 (sqeuclidean, C = max(s_i + t_j - 2 x_i.y_j, 0))
// or 1 / max(|x_i|, 1e-12), 1 / max(|y_j|, 1e-12) for cost 1 (cosine, C = 1 - x_i.y_j s_i t_j).
// Column passes are row passes with (x, s) and (y, t) exchanged (both costs are symmetric).
//   lse:         out (B,n) = LSE_j(vec_j - C_ij inv_eps); the streamed axis is cut into `splits`
//                ranges (more blocks for small B); work: gf_ot_feat_lse_work(B, n, splits) elements
//                of v_dtype (NULL when splits == 1)
//   row_stats:   r, pc, plp (B,n) = sum_j P_ij, sum_j P_ij C_ij, sum_j P_ij log P_ij,
//                P_ij = exp(lu_i + lv_j + w - C_ij inv_eps)
int64_t gf_ot_feat_lse_work(int64_t B, int64_t n, int64_t splits);
int gf_ot_feat_lse(const void* x, const void* y, int f_dtype, const void* s, const void* t, const void* vec, void* out,
                   void* work, int v_dtype, int64_t B, int64_t n, int64_t m, int64_t d, int cost, double inv_eps,
                   int64_t splits, cudaStream_t stream);
int gf_ot_feat_row_stats(const void* x, const void* y, int f_dtype, const void* s, const void* t, const void* lu,
                         const void* lv, const void* w, void* r, void* pc, void* plp, int v_dtype, int64_t B,
                         int64_t n, int64_t m, int64_t d, int cost, double inv_eps, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
