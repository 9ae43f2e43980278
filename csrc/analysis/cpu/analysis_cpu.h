// CPU kernels of the analysis ops (torch-facing; registered in csrc/bindings.cpp).
#pragma once
#include <ATen/ATen.h>

#include <tuple>

namespace gf {

// logits (M, N, V) float64/32/16/bfloat16; mask (N,) bool. Sums over the counted positions:
// (agree (M,M) int64, kl (M,M) f64, entropy (M) f64, jsd (M,M) f64, count () int64).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_agreement_cpu(
    const at::Tensor& logits, const at::Tensor& mask, bool jsd);

// attn (M, R, S) float64/32/16/bfloat16; source_mask (R, S) bool or an empty tensor (no mask);
// row_weight (R,) float64. Returns (M, M) f64: sum_r w_r d(a_ir, a_jr) over rows with w_r != 0,
// rows restricted to the valid sources and renormalised. metric: 0 l2, 1 tv, 2 hellinger, 3 jsd.
at::Tensor attention_pair_sums_cpu(const at::Tensor& attn, const at::Tensor& source_mask,
                                   const at::Tensor& row_weight, int64_t metric);

}  // namespace gf
