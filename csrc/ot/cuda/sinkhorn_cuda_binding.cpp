// Torch ops over the CUDA entropic-OT kernels (sinkhorn_kernels.cu), built only into the CUDA
// extension grounded_fast._C_cuda. They are the primitives of the 'cuda' backend of
// grounded_fast::entropic_ot, whose host side (regime choice, the streaming driver, the plan and
// objective) is grounded_fast/ops/entropic_ot/backend_cuda.py:
//   ot_small_cuda       the persistent solve -> (log_u, log_v, log_scale, n_iter, status, err_history)
//   ot_row_lse_cuda     (B,n) = LSE_j(lv_j - C_ij / eps)
//   ot_col_lse_cuda     (B,m) = LSE_i(lu_i - C_ij / eps)
//   ot_fused_pass_cuda  (lu', col) of one iteration (any problem kind) in one read of C (sinkhorn_fused.cu)
// and, with the cost recomputed from features x (B,n,d), y (B,m,d) (sinkhorn_features.cu; host side
// FeaturePasses in grounded_fast/ops/entropic_ot_features/backend_cuda.py; s, t the per-point norms of sinkhorn_cuda.h):
//   ot_feat_lse_cuda          (B,n) = LSE_j(vec_j - C_ij / eps)   (column pass: swap x, y)
//   ot_feat_row_stats_cuda    (r, pc, plp) (B,n) = sum_j P_ij, sum_j P_ij C_ij, sum_j P_ij log P_ij
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "sinkhorn_cuda.h"
#include "../../common/check.h"

namespace {

using at::Tensor;

int code(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return GF_OT_F32;
    case at::kDouble: return GF_OT_F64;
    case at::kHalf: return GF_OT_F16;
    case at::kBFloat16: return GF_OT_BF16;
    default: GF_CHECK(false, "entropic_ot (cuda): unsupported dtype ", t);
  }
}

void check(int err, const char* what) {
  GF_CHECK(err == 0, what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> ot_small_cuda(
    const Tensor& C, const Tensor& a, const Tensor& b, const Tensor& mass, const Tensor& lu0, const Tensor& lv0,
    int64_t problem, double reg, double fa, double fb, bool kl_ref, int64_t max_iter, double tol, int64_t check_every,
    int64_t hist_len, double floor) {
  GF_CHECK(C.dim() == 3, "ot_small_cuda: C must be (B, n, m)");
  GF_CHECK(C.scalar_type() == at::kFloat || C.scalar_type() == at::kDouble, "ot_small_cuda: float32 or float64");
  const int64_t B = C.size(0), n = C.size(1), m = C.size(2);
  for (const Tensor* t : {&a, &b, &mass, &lu0, &lv0})
    GF_CHECK(t->scalar_type() == C.scalar_type() && t->device() == C.device(),
             "ot_small_cuda: all tensors must share C's dtype and device");
  c10::cuda::CUDAGuard guard(C.device());
  const Tensor Cc = C.contiguous(), ac = a.contiguous(), bc = b.contiguous(), mc = mass.contiguous(),
               u0 = lu0.contiguous(), v0 = lv0.contiguous();
  Tensor lu = at::empty({B, n}, C.options()), lv = at::empty({B, m}, C.options()), w = at::empty({B}, C.options());
  Tensor it = at::empty({B}, C.options().dtype(at::kInt)), st = at::empty({B}, it.options());
  Tensor hist = at::full({B, std::max<int64_t>(hist_len, 1)}, -1.0, C.options());
  check(gf_ot_small(Cc.data_ptr(), ac.data_ptr(), bc.data_ptr(), mc.data_ptr(), u0.data_ptr(), v0.data_ptr(),
                    code(C.scalar_type()), B, n, m, 1.0 / reg, fa, fb, int(problem), int(kl_ref), max_iter, tol,
                    floor, check_every, hist_len, lu.data_ptr(), lv.data_ptr(), w.data_ptr(), it.data_ptr<int32_t>(),
                    st.data_ptr<int32_t>(), hist.data_ptr(), stream()),
        "gf_ot_small");
  return {lu, lv, w, it.to(at::kLong), st.to(at::kLong), hist.narrow(1, 0, hist_len)};
}

at::ScalarType vector_type(const Tensor& C) { return C.scalar_type() == at::kDouble ? at::kDouble : at::kFloat; }

Tensor lse_pass(const Tensor& C, const Tensor& vec, double inv_eps, bool rows) {
  GF_CHECK(C.dim() == 3, "ot_*_lse_cuda: C must be (B, n, m)");
  const int64_t B = C.size(0), n = C.size(1), m = C.size(2);
  c10::cuda::CUDAGuard guard(C.device());
  const Tensor Cc = C.contiguous(), v = vec.to(vector_type(C)).contiguous();
  GF_CHECK(v.sizes() == (rows ? at::IntArrayRef({B, m}) : at::IntArrayRef({B, n})), "ot_*_lse_cuda: bad vector");
  Tensor out = at::empty({B, rows ? n : m}, C.options().dtype(vector_type(C)));
  const int vt = code(vector_type(C));
  check(rows ? gf_ot_row_lse(Cc.data_ptr(), code(C.scalar_type()), v.data_ptr(), out.data_ptr(), vt, B, n, m, inv_eps,
                             stream())
             : gf_ot_col_lse(Cc.data_ptr(), code(C.scalar_type()), v.data_ptr(), out.data_ptr(), vt, B, n, m, inv_eps,
                             stream()),
        rows ? "gf_ot_row_lse" : "gf_ot_col_lse");
  return out;
}

Tensor ot_row_lse_cuda(const Tensor& C, const Tensor& lv, double inv_eps) { return lse_pass(C, lv, inv_eps, true); }
Tensor ot_col_lse_cuda(const Tensor& C, const Tensor& lu, double inv_eps) { return lse_pass(C, lu, inv_eps, false); }

// C (B, n, ldc) with the problem in its first m columns (ldc: see gf_ot_fused_pass); lv (B, m),
// lu, la (B, n) float32; active (B) bool; scale, cap: see gf_ot_fused_pass. Returns (lu' (B, n), col (B, m)).
std::tuple<Tensor, Tensor> ot_fused_pass_cuda(const Tensor& C, int64_t m, const Tensor& lv, const Tensor& lu,
                                              const Tensor& la, const Tensor& active, double inv_eps, int64_t blocks,
                                              double scale, bool cap) {
  GF_CHECK(C.dim() == 3 && C.is_contiguous(), "ot_fused_pass_cuda: C must be a contiguous (B, n, ldc) tensor");
  const int64_t B = C.size(0), n = C.size(1), ldc = C.size(2);
  const int ct = code(C.scalar_type());
  const int64_t align = gf_ot_fused_row_align(ct);
  GF_CHECK(align > 0, "ot_fused_pass_cuda: C must be float32, float16 or bfloat16, got ", C.scalar_type());
  GF_CHECK(0 < m && m <= ldc && m <= gf_ot_fused_max_m() && ldc % align == 0, "ot_fused_pass_cuda: m = ", m,
           ", ldc = ", ldc, " (need m <= ldc, m <= ", gf_ot_fused_max_m(), ", ldc a multiple of ", align, ")");
  GF_CHECK(reinterpret_cast<uintptr_t>(C.data_ptr()) % 16 == 0, "ot_fused_pass_cuda: C must be 16-byte aligned");
  GF_CHECK(1 <= blocks && blocks <= n, "ot_fused_pass_cuda: blocks must be in [1, n]");
  c10::cuda::CUDAGuard guard(C.device());
  const auto f = C.options().dtype(at::kFloat);
  const Tensor v = lv.to(f).contiguous(), u = lu.to(f).contiguous(), l = la.to(f).contiguous(),
               act = active.to(C.options().dtype(at::kBool)).contiguous();
  GF_CHECK(v.sizes() == at::IntArrayRef({B, m}) && u.sizes() == at::IntArrayRef({B, n}) && l.sizes() == u.sizes() &&
               act.sizes() == at::IntArrayRef({B}),
           "ot_fused_pass_cuda: lv must be (B, m), lu and la (B, n), active (B)");
  Tensor lu_out = at::empty({B, n}, f), col = at::empty({B, m}, f);
  Tensor pmx = at::empty({B, blocks, m}, f), psm = at::empty({B, blocks, m}, f);
  check(gf_ot_fused_pass(C.data_ptr(), ct, ldc, v.data_ptr<float>(), l.data_ptr<float>(), u.data_ptr<float>(),
                         lu_out.data_ptr<float>(), reinterpret_cast<const uint8_t*>(act.data_ptr<bool>()),
                         pmx.data_ptr<float>(), psm.data_ptr<float>(), col.data_ptr<float>(), B, n, m, blocks, inv_eps,
                         scale, cap ? 1 : 0, stream()),
        "gf_ot_fused_pass");
  return {lu_out, col};
}

// ----------------------------------------------------------------- cost recomputed from features
struct Feat {
  Tensor x, y, s, t;
  int64_t B, n, m, d;
  at::ScalarType vt;
};

Feat features(const char* what, const Tensor& x, const Tensor& y, const Tensor& s, const Tensor& t) {
  GF_CHECK(x.dim() == 3 && y.dim() == 3 && x.size(0) == y.size(0) && x.size(2) == y.size(2), what,
           ": x and y must be (B, n, d) and (B, m, d)");
  GF_CHECK(y.scalar_type() == x.scalar_type() && y.device() == x.device(), what,
           ": x and y must share dtype and device");
  Feat f{x.contiguous(), y.contiguous(), Tensor(), Tensor(), x.size(0), x.size(1), y.size(1), x.size(2),
         x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat};
  f.s = s.to(f.vt).contiguous();
  f.t = t.to(f.vt).contiguous();
  GF_CHECK(f.s.sizes() == at::IntArrayRef({f.B, f.n}) && f.t.sizes() == at::IntArrayRef({f.B, f.m}), what,
           ": s must be (B, n) and t (B, m)");
  return f;
}

Tensor ot_feat_lse_cuda(const Tensor& x, const Tensor& y, const Tensor& s, const Tensor& t, const Tensor& vec,
                        double inv_eps, int64_t cost, int64_t splits) {
  c10::cuda::CUDAGuard guard(x.device());
  const Feat f = features("ot_feat_lse_cuda", x, y, s, t);
  const Tensor v = vec.to(f.vt).contiguous();
  GF_CHECK(v.sizes() == at::IntArrayRef({f.B, f.m}), "ot_feat_lse_cuda: vec must be (B, m)");
  Tensor out = at::empty({f.B, f.n}, x.options().dtype(f.vt));
  const int64_t work_len = gf_ot_feat_lse_work(f.B, f.n, splits);
  Tensor work = at::empty({std::max<int64_t>(work_len, 1)}, out.options());
  check(gf_ot_feat_lse(f.x.data_ptr(), f.y.data_ptr(), code(x.scalar_type()), f.s.data_ptr(), f.t.data_ptr(),
                       v.data_ptr(), out.data_ptr(), work_len ? work.data_ptr() : nullptr, code(f.vt), f.B, f.n, f.m,
                       f.d, int(cost), inv_eps, splits, stream()),
        "gf_ot_feat_lse");
  return out;
}

std::tuple<Tensor, Tensor, Tensor> ot_feat_row_stats_cuda(const Tensor& x, const Tensor& y, const Tensor& s,
                                                          const Tensor& t, const Tensor& lu, const Tensor& lv,
                                                          const Tensor& w, double inv_eps, int64_t cost) {
  c10::cuda::CUDAGuard guard(x.device());
  const Feat f = features("ot_feat_row_stats_cuda", x, y, s, t);
  const Tensor u = lu.to(f.vt).contiguous(), v = lv.to(f.vt).contiguous(), ws = w.to(f.vt).contiguous();
  Tensor r = at::empty({f.B, f.n}, x.options().dtype(f.vt)), pc = at::empty_like(r), plp = at::empty_like(r);
  check(gf_ot_feat_row_stats(f.x.data_ptr(), f.y.data_ptr(), code(x.scalar_type()), f.s.data_ptr(), f.t.data_ptr(),
                             u.data_ptr(), v.data_ptr(), ws.data_ptr(), r.data_ptr(), pc.data_ptr(), plp.data_ptr(),
                             code(f.vt), f.B, f.n, f.m, f.d, int(cost), inv_eps, stream()),
        "gf_ot_feat_row_stats");
  return {r, pc, plp};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(grounded_fast, m) {
  m.def("ot_small_cuda(Tensor C, Tensor a, Tensor b, Tensor mass, Tensor log_u0, Tensor log_v0, int problem, "
        "float reg, float fa, float fb, bool kl_ref, int max_iter, float tol, int check_every, int hist_len, "
        "float floor=0.0) "
        "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("ot_row_lse_cuda(Tensor C, Tensor lv, float inv_eps) -> Tensor");
  m.def("ot_col_lse_cuda(Tensor C, Tensor lu, float inv_eps) -> Tensor");
  m.def("ot_fused_pass_cuda(Tensor C, int m, Tensor lv, Tensor lu, Tensor la, Tensor active, float inv_eps, "
        "int blocks, float scale=1.0, bool cap=False) -> (Tensor, Tensor)");
  m.def("ot_feat_lse_cuda(Tensor x, Tensor y, Tensor s, Tensor t, Tensor vec, float inv_eps, int cost, int splits) "
        "-> Tensor");
  m.def("ot_feat_row_stats_cuda(Tensor x, Tensor y, Tensor s, Tensor t, Tensor lu, Tensor lv, Tensor w, "
        "float inv_eps, int cost) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(grounded_fast, CUDA, m) {
  m.impl("ot_small_cuda", &ot_small_cuda);
  m.impl("ot_row_lse_cuda", &ot_row_lse_cuda);
  m.impl("ot_col_lse_cuda", &ot_col_lse_cuda);
  m.impl("ot_fused_pass_cuda", &ot_fused_pass_cuda);
  m.impl("ot_feat_lse_cuda", &ot_feat_lse_cuda);
  m.impl("ot_feat_row_stats_cuda", &ot_feat_row_stats_cuda);
}
