// All-pairs distances between M models' attention patterns, summed over attention rows.
//
// A row r is one target position of one item; model i attends with a distribution a_i over the
// S sources (restricted to the valid sources and renormalised here). For every pair i < j:
//   l2        ||a_i - a_j||_2
//   tv        1/2 ||a_i - a_j||_1                                   (in [0, 1])
//   hellinger sqrt(1/2 ||sqrt a_i - sqrt a_j||^2)                    (in [0, 1])
//   jsd       H(m) - (H(a_i) + H(a_j)) / 2,  m = (a_i + a_j) / 2     (nats, in [0, ln 2])
// accumulated as sum_r w_r d(a_ir, a_jr). Each thread copies one row of all M models into an
// (M x S_pad) buffer in the accumulation type, masked, normalised and zero-padded to whole vectors
// (zeros add nothing to any metric), precomputes per model what does not depend on the pair
// (sqrt a for hellinger, -H(a) for jsd), then runs the M(M-1)/2 pair loops on that L1-resident
// buffer, so the input is read once and the jsd costs one log per pair and source.
#include "analysis_cpu.h"

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../../common/fast_math.h"
#include "../../common/check.h"

namespace gf {
namespace {

enum Metric : int64_t { kL2 = 0, kTV = 1, kHellinger = 2, kJSD = 3 };

inline float xlogx(float x) { return x * log_fast(x); }  // log_fast(0) is finite: 0 log 0 = 0
inline double xlogx(double x) { return x > 0 ? x * std::log(x) : 0.0; }

template <typename A>
A pair_distance(int64_t metric, const A* __restrict x, const A* __restrict y, const A* __restrict sx,
                const A* __restrict sy, A nhx, A nhy, int64_t Sp) {
  A s = 0;
  switch (metric) {
    case kL2:
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < Sp; ++c) s += (x[c] - y[c]) * (x[c] - y[c]);
      return std::sqrt(s);
    case kTV:
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < Sp; ++c) s += std::abs(x[c] - y[c]);
      return A(0.5) * s;
    case kHellinger:
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < Sp; ++c) s += (sx[c] - sy[c]) * (sx[c] - sy[c]);
      return std::sqrt(A(0.5) * s);
    default:  // kJSD: (sum a log a + sum b log b) / 2 - sum m log m
#pragma omp simd reduction(+ : s)
      for (int64_t c = 0; c < Sp; ++c) s += xlogx(A(0.5) * (x[c] + y[c]));
      return std::max(A(0.5) * (nhx + nhy) - s, A(0));
  }
}

template <typename S>
void pair_sums(const at::Tensor& X, const bool* smask, const double* w, int64_t metric, double* out) {
  using A = at::opmath_type<S>;
  const int64_t M = X.size(0), R = X.size(1), Sn = X.size(2);
  const int64_t lanes = 64 / int64_t(sizeof(A));
  const int64_t Sp = (Sn + lanes - 1) / lanes * lanes;
  const S* xp = X.data_ptr<S>();
  const int nth = at::get_num_threads();
  std::vector<double> acc(size_t(nth) * M * M, 0.0);
  std::atomic<int64_t> bad_row{-1}, bad_model{-1};
  at::parallel_for(0, R, 8, [&](int64_t r0, int64_t r1) {
    FlushDenormals ftz;
    double* o = acc.data() + int64_t(at::get_thread_num()) * M * M;
    std::vector<A> buf(M * Sp, A(0)), sq(metric == kHellinger ? M * Sp : 0), nh(M, A(0));
    const A big = std::numeric_limits<A>::max();
    for (int64_t r = r0; r < r1; ++r) {
      if (w[r] == 0) continue;
      const bool* mk = smask ? smask + r * Sn : nullptr;
      for (int64_t i = 0; i < M; ++i) {
        const S* src = xp + (i * R + r) * Sn;
        A* d = buf.data() + i * Sp;
        A s = 0;
        int invalid = 0;
        for (int64_t c = 0; c < Sn; ++c) {
          const A v = (mk && !mk[c]) ? A(0) : A(src[c]);
          invalid |= int(!(v >= 0 && v <= big));
          d[c] = v;
          s += v;
        }
        if (invalid || !(s > 0) || !(s <= big)) {
          int64_t expect = -1;
          if (bad_row.compare_exchange_strong(expect, r)) bad_model = i;
          return;
        }
        const A inv = A(1) / s;
        A h = 0;
#pragma omp simd reduction(+ : h)
        for (int64_t c = 0; c < Sp; ++c) {
          d[c] *= inv;
          h += xlogx(d[c]);
        }
        nh[i] = h;
        if (metric == kHellinger)
          for (int64_t c = 0; c < Sp; ++c) sq[i * Sp + c] = std::sqrt(d[c]);
      }
      const A* sqp = metric == kHellinger ? sq.data() : buf.data();
      for (int64_t i = 0; i < M; ++i)
        for (int64_t j = i + 1; j < M; ++j)
          o[i * M + j] += w[r] * double(pair_distance<A>(metric, buf.data() + i * Sp, buf.data() + j * Sp,
                                                         sqp + i * Sp, sqp + j * Sp, nh[i], nh[j], Sp));
    }
  });
  GF_CHECK_VALUE(bad_row.load() < 0, "attention_distance: the attention of model ", bad_model.load(),
           " in row ", bad_row.load(), " is negative, non-finite or has no mass on the valid sources");
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = i + 1; j < M; ++j) {
      double s = 0;
      for (int t = 0; t < nth; ++t) s += acc[size_t(t) * M * M + i * M + j];
      out[i * M + j] = out[j * M + i] = s;
    }
}

}  // namespace

at::Tensor attention_pair_sums_cpu(const at::Tensor& attn, const at::Tensor& source_mask,
                                   const at::Tensor& row_weight, int64_t metric) {
  GF_CHECK(attn.dim() == 3, "attention_pair_sums: attn must be (M, R, S), got ", attn.sizes());
  const int64_t M = attn.size(0), R = attn.size(1), Sn = attn.size(2);
  GF_CHECK(metric >= kL2 && metric <= kJSD, "attention_pair_sums: metric must be 0..3, got ", metric);
  GF_CHECK(row_weight.dim() == 1 && row_weight.size(0) == R && row_weight.scalar_type() == at::kDouble,
           "attention_pair_sums: row_weight must be float64 of shape (R,) = (", R, ",)");
  const bool masked = source_mask.numel() > 0;
  if (masked)
    GF_CHECK(source_mask.dim() == 2 && source_mask.size(0) == R && source_mask.size(1) == Sn &&
                    source_mask.scalar_type() == at::kBool,
             "attention_pair_sums: source_mask must be bool (R, S) = (", R, ", ", Sn, ") or empty");
  at::Tensor out = at::zeros({M, M}, attn.options().dtype(at::kDouble));
  if (M < 2 || R == 0) return out;
  GF_CHECK(Sn > 0, "attention_pair_sums: the source axis S is empty");
  const at::Tensor X = attn.contiguous(), w = row_weight.contiguous();
  const at::Tensor mk = masked ? source_mask.contiguous() : source_mask;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "attention_pair_sums_cpu", [&] {
    pair_sums<scalar_t>(X, masked ? mk.data_ptr<bool>() : nullptr, w.data_ptr<double>(), metric,
                        out.data_ptr<double>());
  });
  return out;
}

}  // namespace gf
