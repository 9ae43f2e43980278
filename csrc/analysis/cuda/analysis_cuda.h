// C ABI of the CUDA analysis kernels (framework-agnostic: raw device pointers, sizes, a stream).
// Wrapped as torch ops by analysis_cuda_binding.cpp (built only with CUDA); compiled on its own by
// `nvcc -c` in CI (tests/test_cuda_compile.py). Every function returns a cudaError_t as int.
#pragma once
#include <cuda_runtime.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

// Element types of the inputs (accumulation is float32 for all of them).
enum GfDtype { GF_F32 = 0, GF_F64 = 1, GF_F16 = 2, GF_BF16 = 3 };

// Pairwise agreement, step 1: per row (model i, position n) of logits (M, N, V): lse, the first
// argmax, the entropy and a non-finite flag; rows at positions with weight[n] == 0 are skipped
// (outputs 0). lse, ent (M*N) float; top, bad (M*N) int32.
int gf_agreement_row_stats(const void* logits, int dtype, const float* weight, int64_t M, int64_t N,
                           int64_t V, float* lse, int32_t* top, float* ent, int32_t* bad, cudaStream_t stream);

// Step 2: partial[s, i, j] = sum over the positions of slice s (weight != 0) of
// sum_v p_i(n, v) l_j(n, v), p = exp(l), l = z - lse. partial: (slices, M, M) float.
int gf_agreement_cross(const void* logits, int dtype, const float* weight, const float* lse, int64_t M,
                       int64_t N, int64_t V, int64_t slices, float* partial, cudaStream_t stream);

// Optional step 3: partial[s, i, j] = sum over slice s of JSD(p_i, p_j) (clamped to [0, ln 2]),
// from lse and the per-row entropies ent of step 1. partial: (slices, M, M) float, i != j.
int gf_agreement_jsd(const void* logits, int dtype, const float* weight, const float* lse, const float* ent,
                     int64_t M, int64_t N, int64_t V, int64_t slices, float* partial, cudaStream_t stream);

// Attention distances: attn (M, R, S); source_mask (R, S) uint8 or NULL; weight (R) float.
// partial[s, i, j] = sum over the rows of slice s of weight_r * d(a_ir, a_jr) with rows masked and
// renormalised; metric 0 l2, 1 tv, 2 hellinger, 3 jsd. *bad is set to 1 when a counted row is
// negative, non-finite or has no mass. partial: (slices, M, M) float; work: 2 M R floats (each
// row's scale and entropy term).
int gf_attention_pairs(const void* attn, int dtype, const uint8_t* source_mask, const float* weight,
                       int64_t M, int64_t R, int64_t S, int metric, int64_t slices, float* partial,
                       float* work, int32_t* bad, cudaStream_t stream);

#ifdef __cplusplus
}
#endif
