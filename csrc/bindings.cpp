// Torch bindings: the schemas of the native kernel ops (TORCH_LIBRARY) and their CPU implementations.
// The public ops, their fake tensors, autograd and backend choice are in grounded_fast/ops/.
#include <Python.h>
#include <torch/library.h>
#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "analysis/cpu/analysis_cpu.h"
#include "ot/cpu/sinkhorn_cpu.h"
#include "common/check.h"

namespace {

using at::Tensor;

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ot_solve_cpu(
    const Tensor& C, const Tensor& a, const Tensor& b, const Tensor& mass, const Tensor& lu0,
    const Tensor& lv0, int64_t problem, double reg, double reg_m_a, double reg_m_b, double fa, double fb,
    bool kl_ref, int64_t max_iter, double tol, int64_t check_every, int64_t domain, int64_t hist_len, double floor) {
  GF_CHECK(C.dim() == 3, "ot_solve_cpu: C must be (B, n, m), got ", C.sizes());
  const int64_t B = C.size(0), n = C.size(1), m = C.size(2);
  GF_CHECK(a.sizes() == at::IntArrayRef({B, n}), "ot_solve_cpu: a must be (B, n)");
  GF_CHECK(b.sizes() == at::IntArrayRef({B, m}), "ot_solve_cpu: b must be (B, m)");
  GF_CHECK(lu0.sizes() == a.sizes() && lv0.sizes() == b.sizes(), "ot_solve_cpu: bad warm start");
  GF_CHECK(mass.sizes() == at::IntArrayRef({B}), "ot_solve_cpu: mass must be (B,)");
  GF_CHECK(C.scalar_type() == at::kFloat || C.scalar_type() == at::kDouble,
           "ot_solve_cpu: CPU kernel supports float32 and float64");
  for (const Tensor* t : {&a, &b, &mass, &lu0, &lv0})
    GF_CHECK(t->scalar_type() == C.scalar_type(), "ot_solve_cpu: all tensors must share C's dtype");
  GF_CHECK(reg > 0, "ot_solve_cpu: reg must be > 0");

  gf::SolveOptions o;
  o.problem = problem;
  o.reg = reg;
  o.reg_m_a = reg_m_a;
  o.reg_m_b = reg_m_b;
  o.fi_a = fa;
  o.fi_b = fb;
  o.kl_ref = kl_ref;
  o.max_iter = max_iter;
  o.tol = tol;
  GF_CHECK(floor >= 0, "ot_solve_cpu: floor must be >= 0");
  o.floor = floor;
  o.check_every = check_every;
  GF_CHECK(domain == gf::kAuto || domain == gf::kLog, "ot_solve_cpu: domain must be 0 (auto) or 1 (log)");
  o.domain = domain;
  GF_CHECK(hist_len >= 0, "ot_solve_cpu: hist_len must be >= 0");
  o.hist_len = hist_len;

  Tensor Cc = C.contiguous(), ac = a.contiguous(), bc = b.contiguous(), mc = mass.contiguous();
  Tensor plan = at::empty({B, n, m}, C.options());
  Tensor lu = lu0.clone(at::MemoryFormat::Contiguous);
  Tensor lv = lv0.clone(at::MemoryFormat::Contiguous);
  Tensor lw = at::zeros({B}, C.options());
  Tensor value = at::empty({B}, C.options());
  Tensor value_linear = at::empty({B}, C.options());
  Tensor n_iter = at::zeros({B}, C.options().dtype(at::kLong));
  Tensor status = at::zeros({B}, C.options().dtype(at::kLong));
  Tensor hist = at::empty({B, o.hist_len}, C.options());
  if (B == 0) return {plan, lu, lv, lw, value, value_linear, n_iter, status, hist};

  AT_DISPATCH_FLOATING_TYPES(C.scalar_type(), "ot_solve_cpu", [&] {
    gf::solve_batch_cpu<scalar_t>(Cc.data_ptr<scalar_t>(), B, n, m, ac.data_ptr<scalar_t>(),
                                  bc.data_ptr<scalar_t>(), mc.data_ptr<scalar_t>(), o,
                                  plan.data_ptr<scalar_t>(), lu.data_ptr<scalar_t>(),
                                  lv.data_ptr<scalar_t>(), lw.data_ptr<scalar_t>(),
                                  value.data_ptr<scalar_t>(), value_linear.data_ptr<scalar_t>(),
                                  n_iter.data_ptr<int64_t>(), status.data_ptr<int64_t>(),
                                  hist.data_ptr<scalar_t>());
  });
  return {plan, lu, lv, lw, value, value_linear, n_iter, status, hist};
}

}  // namespace

TORCH_LIBRARY(grounded_fast, m) {
  // Kernel ops: the native kernels behind the public ops of grounded_fast/ops/ (which own the
  // schemas users call, input validation, fake tensors and autograd). Called with validated inputs.
  //
  // The C++/OpenMP Sinkhorn of grounded_fast::entropic_ot's 'cpu' backend, for the solve
  // specification of grounded_fast/ops/entropic_ot/spec.py (fa, fb, hist_len its derived values).
  // Returns (plan, log_u, log_v, log_scale, value, value_linear, n_iter, status, err_history).
  m.def(
      "ot_solve_cpu(Tensor C, Tensor a, Tensor b, Tensor mass, Tensor log_u0, Tensor log_v0, "
      "int problem, float reg, float reg_m_a, float reg_m_b, float fa, float fb, bool kl_ref, int max_iter, "
      "float tol, int check_every, int domain, int hist_len, float floor) -> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The analysis kernels behind grounded_fast::pairwise_agreement and ::attention_pair_sums'
  // 'cpu' and 'cuda' backends: one schema each, the CPU kernel here and the CUDA kernel in
  // csrc/analysis/cuda/ (the dispatcher picks by the tensors' device).
  // Chunk sums over the positions where mask is True, for logits (M, N, V):
  // (agree (M,M) int64 argmax-agreement counts, kl (M,M) f64 sum KL(p_i||p_j), entropy (M) f64,
  //  jsd (M,M) f64 (zeros unless jsd), count () int64).
  m.def("pairwise_agreement_kernel(Tensor logits, Tensor mask, bool jsd=False) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // sum_r row_weight_r * d(attn[i,r], attn[j,r]) for all model pairs, attn (M, R, S), rows
  // restricted to source_mask (R, S) (empty: all sources) and renormalised.
  // metric: 0 l2, 1 tv, 2 hellinger, 3 jsd.
  m.def("attention_pair_sums_kernel(Tensor attn, Tensor source_mask, Tensor row_weight, int metric) -> Tensor");
}

TORCH_LIBRARY_IMPL(grounded_fast, CPU, m) {
  m.impl("ot_solve_cpu", &ot_solve_cpu);
  m.impl("pairwise_agreement_kernel", &gf::pairwise_agreement_cpu);
  m.impl("attention_pair_sums_kernel", &gf::attention_pair_sums_cpu);
}
// An importable (empty) Python module: importing it runs the registrations above.
extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&def);
}
}
