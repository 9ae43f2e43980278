// Fused all-pairs agreement, KL divergence, entropy and (optional) Jensen-Shannon divergence between
// the predictive distributions of M models at the same positions.
//
// One position, model i, logits z_i (V,): log-probabilities l_i = z_i - LSE(z_i), p_i = exp(l_i).
//   KL(p_i || p_j) = sum_v p_i (l_i - l_j) = Y_ii - Y_ij   with   Y_ij = sum_v p_i(v) l_j(v),
//   H(p_i)         = -sum_v p_i l_i.
// Summed over the counted positions n, Y = sum_n P_n L_n^T = P L^T where P, L are (M x K) with the
// contraction index K = (position, vocabulary entry): the M^2 V multiply-adds per position become
// one matrix product (torch's BLAS), and exp/log run once per logit instead of once per pair.
// Positions are taken in groups whose P and L fit a bounded buffer (M x ~32K entries each), so the
// probabilities of all positions are never materialised. Y is accumulated over groups in float64
// (each group's product in the accumulation type: float32 for float32/16/bfloat16 logits).
//   JSD(p_i, p_j) = H(m) - (H(p_i) + H(p_j)) / 2,   m = (p_i + p_j) / 2,
// one log per pair and vocabulary entry (O(M^2 V) transcendental work, hence optional).
// Argmax: the first index of the maximum (torch.argmax's convention). Non-finite logits are an
// error (an infinite or NaN logit has no well-defined softmax to compare).
#include "analysis_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../common/fast_math.h"
#include "../../common/check.h"

namespace gf {
namespace {

constexpr int64_t kGroupEntries = int64_t(1) << 15;  // buffer columns per group (>= V)

inline float xlogx(float x) { return x * log_fast(x); }  // log_fast(0) is finite: 0 log 0 = 0
inline double xlogx(double x) { return x > 0 ? x * std::log(x) : 0.0; }

// Softmax of one row z (V,): writes p and l = log p, returns false on a non-finite logit.
template <typename S, typename A>
bool row_softmax(const S* __restrict z, int64_t V, A* __restrict p, A* __restrict l,
                 int64_t& argmax, A& entropy) {
  const A big = std::numeric_limits<A>::max();
  A mx = -big;
  int nonfinite = 0;
#pragma omp simd reduction(max : mx) reduction(| : nonfinite)
  for (int64_t v = 0; v < V; ++v) {
    const A x = A(z[v]);
    nonfinite |= int(!(std::abs(x) <= big));
    mx = std::max(mx, x);
  }
  if (nonfinite) return false;
  int64_t am = 0;
  while (A(z[am]) != mx) ++am;
  argmax = am;
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t v = 0; v < V; ++v) {
    const A e = exp_fast(A(z[v]) - mx);
    p[v] = e;
    s += e;
  }
  const A ls = std::log(s), inv = A(1) / s;
  A h = 0;
#pragma omp simd reduction(+ : h)
  for (int64_t v = 0; v < V; ++v) {
    const A lv = (A(z[v]) - mx) - ls;
    const A pv = p[v] * inv;
    p[v] = pv;
    l[v] = lv;
    h += pv * lv;
  }
  entropy = -h;
  return true;
}

template <typename A>
A mixture_neg_entropy(const A* __restrict pi, const A* __restrict pj, int64_t V) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t v = 0; v < V; ++v) s += xlogx(A(0.5) * (pi[v] + pj[v]));
  return s;
}

template <typename S>
void agreement(const at::Tensor& Z, const std::vector<int64_t>& pos, bool want_jsd, int64_t* agree,
               double* kl, double* entropy, double* js) {
  using A = at::opmath_type<S>;
  const int64_t M = Z.size(0), N = Z.size(1), V = Z.size(2), P = int64_t(pos.size());
  const S* zp = Z.data_ptr<S>();
  const int64_t G = std::min<int64_t>(std::max<int64_t>(1, kGroupEntries / V), P);
  const int64_t W = G * V;  // row stride of the P and L buffers
  const auto opts = at::TensorOptions().dtype(c10::CppTypeToScalarType<A>::value);
  at::Tensor Pbuf = at::empty({M, W}, opts), Lbuf = at::empty({M, W}, opts);
  A* pb = Pbuf.data_ptr<A>();
  A* lb = Lbuf.data_ptr<A>();
  std::vector<int64_t> top(M * G);
  std::vector<A> hpos(M * G);
  std::vector<char> ok(M * G);
  std::vector<double> Y(M * M, 0.0);
  const int64_t npairs = M * (M - 1) / 2;
  std::vector<int64_t> pair_i(npairs), pair_j(npairs);
  for (int64_t i = 0, q = 0; i < M; ++i)
    for (int64_t j = i + 1; j < M; ++j, ++q) { pair_i[q] = i; pair_j[q] = j; }

  for (int64_t g0 = 0; g0 < P; g0 += G) {
    const int64_t g = std::min(G, P - g0);
    at::parallel_for(0, M * g, 1, [&](int64_t t0, int64_t t1) {
      FlushDenormals ftz;
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t i = t / g, k = t % g;
        ok[i * G + k] = row_softmax(zp + (i * N + pos[g0 + k]) * V, V, pb + i * W + k * V,
                                    lb + i * W + k * V, top[i * G + k], hpos[i * G + k]);
      }
    });
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < g; ++k)
        GF_CHECK_VALUE(ok[i * G + k], "pairwise_agreement: the logits of model ", i, " at position ",
                 pos[g0 + k], " contain NaN or inf");
    const at::Tensor y = at::mm(Pbuf.narrow(1, 0, g * V), Lbuf.narrow(1, 0, g * V).t()).to(at::kDouble);
    const double* yp = y.data_ptr<double>();
    for (int64_t q = 0; q < M * M; ++q) Y[q] += yp[q];
    for (int64_t i = 0; i < M; ++i)
      for (int64_t k = 0; k < g; ++k) entropy[i] += double(hpos[i * G + k]);
    for (int64_t k = 0; k < g; ++k)
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = 0; j < M; ++j) agree[i * M + j] += top[i * G + k] == top[j * G + k];
    if (want_jsd && npairs > 0) {
      at::parallel_for(0, npairs, 1, [&](int64_t q0, int64_t q1) {
        FlushDenormals ftz;
        for (int64_t q = q0; q < q1; ++q) {
          const int64_t i = pair_i[q], j = pair_j[q];
          double acc = 0;
          for (int64_t k = 0; k < g; ++k) {
            const A hm = -mixture_neg_entropy(pb + i * W + k * V, pb + j * W + k * V, V);
            const A d = hm - A(0.5) * (hpos[i * G + k] + hpos[j * G + k]);
            acc += std::min(std::max(double(d), 0.0), M_LN2);
          }
          js[i * M + j] += acc;
          js[j * M + i] += acc;
        }
      });
    }
  }
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < M; ++j) kl[i * M + j] = i == j ? 0.0 : Y[i * M + i] - Y[i * M + j];
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> pairwise_agreement_cpu(
    const at::Tensor& logits, const at::Tensor& mask, bool jsd) {
  GF_CHECK(logits.dim() == 3, "pairwise_agreement: logits must be (M, N, V), got ", logits.sizes());
  const int64_t M = logits.size(0), N = logits.size(1), V = logits.size(2);
  GF_CHECK(mask.dim() == 1 && mask.size(0) == N && mask.scalar_type() == at::kBool,
           "pairwise_agreement: mask must be a bool tensor of shape (N,) = (", N, ",)");
  GF_CHECK(V > 0 || N == 0, "pairwise_agreement: the vocabulary axis V is empty");
  const auto f64 = logits.options().dtype(at::kDouble);
  at::Tensor agree = at::zeros({M, M}, logits.options().dtype(at::kLong));
  at::Tensor kl = at::zeros({M, M}, f64), ent = at::zeros({M}, f64), js = at::zeros({M, M}, f64);
  const at::Tensor mc = mask.contiguous();
  const bool* mp = mc.data_ptr<bool>();
  std::vector<int64_t> pos;
  for (int64_t n = 0; n < N; ++n) if (mp[n]) pos.push_back(n);
  at::Tensor count = at::scalar_tensor(int64_t(pos.size()), logits.options().dtype(at::kLong));
  if (pos.empty() || M == 0) return {agree, kl, ent, js, count};
  const at::Tensor Z = logits.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, Z.scalar_type(), "pairwise_agreement_cpu", [&] {
    agreement<scalar_t>(Z, pos, jsd, agree.data_ptr<int64_t>(), kl.data_ptr<double>(),
                        ent.data_ptr<double>(), js.data_ptr<double>());
  });
  return {agree, kl, ent, js, count};
}

}  // namespace gf
