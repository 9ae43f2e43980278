// CUDA implementations of grounded_fast::pairwise_agreement and grounded_fast::attention_pair_sums
// (schemas in csrc/bindings.cpp): allocate with torch, launch the C-ABI kernels of
// analysis_kernels.cu on torch's current stream, finish the small (M, M) reductions with torch.
// Built only into the CUDA extension grounded_fast._C_cuda.
#include <Python.h>
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <algorithm>
#include <string>

#include "analysis_cuda.h"
#include "../../common/check.h"

namespace {

using at::Tensor;

int dtype_code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return GF_F32;
    case at::kDouble: return GF_F64;
    case at::kHalf: return GF_F16;
    case at::kBFloat16: return GF_BF16;
    default: GF_CHECK(false, "analysis ops: unsupported dtype ", t);
  }
}

void check(int err, const char* what) {
  GF_CHECK(err == 0, what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

// Enough slices of the position / row axis to give every SM a few blocks (``blocks``: those that
// run per slice).
int64_t slices_for(int64_t len, int64_t blocks, const Tensor& t) {
  int sms = 1;
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, t.device().index()), "cudaDeviceGetAttribute");
  return std::max<int64_t>(1, std::min<int64_t>(len, (4 * sms + blocks - 1) / blocks));
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> pairwise_agreement_cuda(const Tensor& logits, const Tensor& mask,
                                                                           bool jsd) {
  GF_CHECK(logits.dim() == 3, "pairwise_agreement: logits must be (M, N, V), got ", logits.sizes());
  const int64_t M = logits.size(0), N = logits.size(1), V = logits.size(2);
  GF_CHECK(mask.dim() == 1 && mask.size(0) == N && mask.scalar_type() == at::kBool,
           "pairwise_agreement: mask must be a bool tensor of shape (N,)");
  GF_CHECK(mask.device() == logits.device(), "pairwise_agreement: mask must be on the logits' device");
  c10::cuda::CUDAGuard guard(logits.device());
  const auto f32 = logits.options().dtype(at::kFloat), f64 = logits.options().dtype(at::kDouble);
  const Tensor count = mask.sum().to(at::kLong);
  if (M == 0 || N == 0 || count.item<int64_t>() == 0)
    return {at::zeros({M, M}, logits.options().dtype(at::kLong)), at::zeros({M, M}, f64), at::zeros({M}, f64),
            at::zeros({M, M}, f64), count};
  GF_CHECK(V > 0, "pairwise_agreement: the vocabulary axis V is empty");
  const Tensor z = logits.contiguous(), w = mask.to(at::kFloat).contiguous();
  const int code = dtype_code(z.scalar_type());
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  Tensor lse = at::empty({M, N}, f32), ent = at::empty({M, N}, f32);
  Tensor top = at::empty({M, N}, logits.options().dtype(at::kInt)), bad = at::empty({M, N}, top.options());
  check(gf_agreement_row_stats(z.data_ptr(), code, w.data_ptr<float>(), M, N, V, lse.data_ptr<float>(),
                               top.data_ptr<int32_t>(), ent.data_ptr<float>(), bad.data_ptr<int32_t>(), stream),
        "gf_agreement_row_stats");
  const Tensor flagged = at::nonzero(bad).cpu();
  GF_CHECK_VALUE(flagged.size(0) == 0, "pairwise_agreement: the logits of model ", flagged[0][0].item<int64_t>(),
           " at position ", flagged[0][1].item<int64_t>(), " contain NaN or inf");
  const int64_t slices = slices_for(N, ((M + 63) / 64) * ((M + 63) / 64), z);
  Tensor part = at::zeros({slices, M, M}, f32);
  check(gf_agreement_cross(z.data_ptr(), code, w.data_ptr<float>(), lse.data_ptr<float>(), M, N, V, slices,
                           part.data_ptr<float>(), stream),
        "gf_agreement_cross");
  const Tensor Y = part.to(at::kDouble).sum(0);
  Tensor kl = Y.diagonal().unsqueeze(1) - Y;
  kl.fill_diagonal_(0.0);
  const Tensor entropy = at::where(mask, ent.to(at::kDouble), at::zeros({}, f64)).sum(1);
  const Tensor t = top.index({at::indexing::Slice(), mask});
  const Tensor agree = at::eq(t.unsqueeze(1), t.unsqueeze(0)).sum(-1).to(at::kLong);
  Tensor js = at::zeros({M, M}, f64);
  if (jsd && M > 1) {
    const int64_t jslices = slices_for(N, ((M + 15) / 16) * ((M + 15) / 16), z);
    Tensor jpart = at::zeros({jslices, M, M}, f32);
    check(gf_agreement_jsd(z.data_ptr(), code, w.data_ptr<float>(), lse.data_ptr<float>(), ent.data_ptr<float>(), M,
                           N, V, jslices, jpart.data_ptr<float>(), stream),
          "gf_agreement_jsd");
    js = jpart.to(at::kDouble).sum(0);
  }
  return {agree, kl, entropy, js, count};
}

Tensor attention_pair_sums_cuda(const Tensor& attn, const Tensor& source_mask, const Tensor& row_weight,
                                int64_t metric) {
  GF_CHECK(attn.dim() == 3, "attention_pair_sums: attn must be (M, R, S), got ", attn.sizes());
  const int64_t M = attn.size(0), R = attn.size(1), S = attn.size(2);
  GF_CHECK(metric >= 0 && metric <= 3, "attention_pair_sums: metric must be 0..3, got ", metric);
  GF_CHECK(row_weight.dim() == 1 && row_weight.size(0) == R, "attention_pair_sums: row_weight must be (R,)");
  const bool masked = source_mask.numel() > 0;
  if (masked)
    GF_CHECK(source_mask.dim() == 2 && source_mask.size(0) == R && source_mask.size(1) == S &&
                    source_mask.scalar_type() == at::kBool,
             "attention_pair_sums: source_mask must be bool (R, S) or empty");
  c10::cuda::CUDAGuard guard(attn.device());
  Tensor out = at::zeros({M, M}, attn.options().dtype(at::kDouble));
  if (M < 2 || R == 0) return out;
  GF_CHECK(S > 0, "attention_pair_sums: the source axis S is empty");
  const Tensor x = attn.contiguous(), w = row_weight.to(at::kFloat).contiguous();
  const Tensor mk = masked ? source_mask.contiguous().to(at::kByte) : Tensor();
  const int64_t tiles = (M + 15) / 16;
  const int64_t slices = slices_for(R, tiles * (tiles + 1) / 2, x);  // tiles on and above the diagonal run
  Tensor part = at::zeros({slices, M, M}, attn.options().dtype(at::kFloat));
  Tensor bad = at::zeros({1}, attn.options().dtype(at::kInt));
  Tensor work = at::empty({2, M, R}, attn.options().dtype(at::kFloat));
  check(gf_attention_pairs(x.data_ptr(), dtype_code(x.scalar_type()), masked ? mk.data_ptr<uint8_t>() : nullptr,
                           w.data_ptr<float>(), M, R, S, int(metric), slices, part.data_ptr<float>(),
                           work.data_ptr<float>(), bad.data_ptr<int32_t>(), c10::cuda::getCurrentCUDAStream().stream()),
        "gf_attention_pairs");
  GF_CHECK_VALUE(bad.item<int32_t>() == 0, "attention_distance: an attention row is negative, non-finite or has no "
           "mass on the valid sources");
  return part.to(at::kDouble).sum(0);
}

}  // namespace

TORCH_LIBRARY_IMPL(grounded_fast, CUDA, m) {
  m.impl("pairwise_agreement_kernel", &pairwise_agreement_cuda);
  m.impl("attention_pair_sums_kernel", &attention_pair_sums_cuda);
}

extern "C" {
PyObject* PyInit__C_cuda(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C_cuda", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
}
