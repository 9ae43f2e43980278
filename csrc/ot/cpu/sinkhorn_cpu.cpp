// Batched, log-stable entropic optimal transport on the CPU: balanced, unbalanced (KL) and partial.
//
// Every solver keeps O(n + m) state per problem and represents the plan implicitly as
//     P_ij = exp(lu_i + lv_j + w - C_ij / eps)                                            (1)
// Two ways to iterate, computing the same iterates up to rounding:
//  * log domain: each half-iteration is a log-sum-exp pass over C (one exp per entry); never
//    overflows or underflows;
//  * stabilised scaling domain (default, see "stabilised scaling domain" below): K = exp of (1) is
//    materialised once and an iteration is one fused sweep of multiply-adds over it, with the
//    scalings folded back into (lu, lv, w) whenever they leave a safe range; if a row or column
//    of K underflows entirely, that iteration is redone in the log domain, which carries on for a
//    few iterations before handing back (see "drivers").
// The updates below are written in the log domain.
//
// Balanced (POT `sinkhorn_log`, same update order: v first, then u):
//     lv_j = log b_j - LSE_i(lu_i - C_ij/eps);   lu_i = log a_i - LSE_j(lv_j - C_ij/eps).
//   Stop test every `check_every` iterations: || P^T 1 - b ||_2 < tol. The column sums of the
//   plan after iteration t are exactly what the column pass of iteration t+1 computes, so the
//   test costs no extra pass.
//
// Unbalanced with KL marginal penalties (POT `sinkhorn_knopp_unbalanced`, u first, then v). POT
// iterates u <- (a / K v)^fa with K = exp(-C/eps) * c and c = a b^T (reg_type 'kl') or 1
// ('entropy'), fa = rho_a / (rho_a + eps). With lu = log u + s_a (s_a = log a or 0):
//     lu_i = (1 - fa) s_a_i + fa (log a_i - LSE_j(lv_j - C_ij/eps)), and symmetrically for lv.
//   Stop test every iteration, POT's: mean of max|u - u'| / max(|u|, |u'|, 1) over u and v,
//   computed from log u, log u' shifted by S = max(0, max log u, max log u'), which makes the
//   denominator exactly 1: max_i |exp(log u_i - S) - exp(log u'_i - S)| (u itself overflows
//   float32 once the potentials pass ~88).
//
// Partial (POT `entropic_partial_wasserstein`): Dykstra's algorithm over three convex sets
// {P 1 <= a}, {P^T 1 <= b}, {sum P = m} starting from K = exp(-C/eps) m / sum(exp(-C/eps)).
// POT keeps K and three n x m correction matrices q1, q2, q3. Each projection scales rows,
// columns or the whole matrix, so q1 = 1/diag(row scale), q2 = 1/diag(col scale), q3 = scalar:
// the corrections are vectors p (n), s (m) and a scalar t in the log domain, and one iteration is
//     lu -= p;  p_i = min(log a_i - log rowsum_i, 0);  lu += p          (row pass)
//     lv -= s;  s_j = min(log b_j - log colsum_j, 0);  lv += s          (column pass)
//     w  -= t;  t = log m - log total;                 w  += t          (O(m): from colsums)
//   which reproduces POT's iterates exactly (up to rounding) with O(n + m) state instead of 4 n*m
//   matrices, and never overflows. Stop test every `check_every` iterations: the change of the
//   log plan over the iteration, ||log P_after - log P_before||_F (POT's
//   `entropic_partial_wasserstein_logscale` criterion). log P_ij changes by du_i + dv_j + dw, so
//   the norm costs O(n + m) (see log_plan_change). The change of P itself (POT's exp-domain
//   criterion) is not used: where exp(-C/eps) underflows it reads exactly 0 long before the
//   plan is feasible (the small entries still have to grow by orders of magnitude).
//
// Every kind also stops at the rounding floor of its stop quantity: a check with err <= `floor`
// (computed by the caller from the dtype and the problem's scale) and no smaller than at the
// previous check. So a tolerance below what rounding can resolve (POT's stopThr = 1e-100 for
// partial OT) stops where the iterates stop changing, instead of running to max_iter.
//
// Zero weights (padding) are masked: their potentials hold a large finite negative sentinel in
// the passes and the plan's rows/columns are written as exact zeros.
#include "sinkhorn_cpu.h"

#include <ATen/Parallel.h>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif
#include <type_traits>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../../common/fast_math.h"

namespace gf {
namespace {

template <typename T>
constexpr T kNeg = T(-1e30);  // sentinel potential of a masked (zero-weight) row or column

template <typename T>
static inline T exp_or_zero(T x) {
  // exp that underflows to exactly zero (used when writing the plan).
  const T e = exp_fast(x);
  return x < T(sizeof(T) == 4 ? -87 : -708) ? T(0) : e;
}

// LSE_j (pot_j - c_j * inv_eps) over one contiguous row.
template <typename T>
static inline T row_lse(const T* __restrict c, const T* __restrict pot, int64_t m, T inv_eps) {
  T mx = kNeg<T>;
#pragma omp simd reduction(max : mx)
  for (int64_t j = 0; j < m; ++j) mx = std::max(mx, pot[j] - c[j] * inv_eps);
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int64_t j = 0; j < m; ++j) s += exp_fast(pot[j] - c[j] * inv_eps - mx);
  return mx + std::log(s);
}

// out_j = LSE_i (pot_i - C_ij * inv_eps) for columns j in [j0, j1): two sweeps down the rows,
// each vectorised along the contiguous column range.
template <typename T>
static void col_lse(const T* __restrict C, const T* __restrict pot, int64_t n, int64_t m,
                    int64_t j0, int64_t j1, T inv_eps, T* __restrict out, T* __restrict scratch) {
  const int64_t w = j1 - j0;
  T* mx = scratch;
  T* s = scratch + w;
  for (int64_t j = 0; j < w; ++j) { mx[j] = kNeg<T>; s[j] = 0; }
  for (int64_t i = 0; i < n; ++i) {
    const T pi = pot[i];
    if (pi <= kNeg<T>) continue;
    const T* c = C + i * m + j0;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) mx[j] = std::max(mx[j], pi - c[j] * inv_eps);
  }
  for (int64_t i = 0; i < n; ++i) {
    const T pi = pot[i];
    if (pi <= kNeg<T>) continue;
    const T* c = C + i * m + j0;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) s[j] += exp_fast(pi - c[j] * inv_eps - mx[j]);
  }
  for (int64_t j = 0; j < w; ++j) out[j] = mx[j] + std::log(s[j]);
}

constexpr int64_t kColBlock = 256;

#if defined(__AVX512F__)
// 512-bit lanes of float / double for the explicit dot8 kernel (Solver::dot8_avx512).
template <typename V> struct Lanes;
template <> struct Lanes<float> {
  using vec = __m512;
  using mask = __mmask16;
  static constexpr int width = 16;
  static vec zero() { return _mm512_setzero_ps(); }
  static vec load(const float* p) { return _mm512_loadu_ps(p); }
  static vec load(mask mk, const float* p) { return _mm512_maskz_loadu_ps(mk, p); }
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(vec v) { return _mm512_reduce_add_ps(v); }
};
template <> struct Lanes<double> {
  using vec = __m512d;
  using mask = __mmask8;
  static constexpr int width = 8;
  static vec zero() { return _mm512_setzero_pd(); }
  static vec load(const double* p) { return _mm512_loadu_pd(p); }
  static vec load(mask mk, const double* p) { return _mm512_maskz_loadu_pd(mk, p); }
  static vec fma(vec a, vec b, vec c) { return _mm512_fmadd_pd(a, b, c); }
  static double sum(vec v) { return _mm512_reduce_add_pd(v); }
};
#endif

// One problem. `par` lets the passes split rows / column blocks across threads (used when the
// batch is smaller than the thread count).
template <typename T>
struct Solver {
  const T* C;
  int64_t n, m;
  const T* a;
  const T* b;
  const SolveOptions& o;
  bool par;
  T inv_eps;
  std::vector<T> la, lb;       // log weights (kNeg where masked)
  std::vector<char> ma, mb;    // masks: weight > 0
  std::vector<T> maf, mbf;     // masks as 1 / 0 (for branch-free loops)
  std::vector<T> rl, cl;       // row / column LSE results
  double log_w_abs = 0;        // 1 + max |log a_i| + max |log b_j| over the supports
  double stop_shape = 1;       // size factor of the stop quantity (see StopTest)

  Solver(const T* C_, int64_t n_, int64_t m_, const T* a_, const T* b_, const SolveOptions& o_,
         bool par_)
      : C(C_), n(n_), m(m_), a(a_), b(b_), o(o_), par(par_), inv_eps(T(1.0 / o_.reg)),
        la(n_), lb(m_), ma(n_), mb(m_), maf(n_), mbf(m_), rl(n_), cl(m_) {
    for (int64_t i = 0; i < n; ++i) {
      ma[i] = a[i] > 0;
      maf[i] = ma[i] ? T(1) : T(0);
      la[i] = ma[i] ? std::log(a[i]) : kNeg<T>;
    }
    for (int64_t j = 0; j < m; ++j) {
      mb[j] = b[j] > 0;
      mbf[j] = mb[j] ? T(1) : T(0);
      lb[j] = mb[j] ? std::log(b[j]) : kNeg<T>;
    }
    double amax = 0, bmax = 0, bb = 0, na = 0, nb = 0;
    for (int64_t i = 0; i < n; ++i) if (ma[i]) { amax = std::max(amax, std::abs(double(la[i]))); ++na; }
    for (int64_t j = 0; j < m; ++j)
      if (mb[j]) { bmax = std::max(bmax, std::abs(double(lb[j]))); bb += double(b[j]) * double(b[j]); ++nb; }
    log_w_abs = 1 + amax + bmax;
    stop_shape = o.problem == kPartial ? std::sqrt(na * nb) : (o.problem == kBalanced ? std::sqrt(bb) : 1.0);
  }

  // 1 + max|u_i| + max|v_j| + |w| + max|log a| + max|log b| over the supports, for the potentials
  // u(i), v(j), w of the current iterate: the magnitude of what an iteration rounds (see StopTest).
  template <class U, class V>
  double rounding_scale(U u, V v, double w) const {
    double mu = 0, mv = 0;
    for (int64_t i = 0; i < n; ++i) if (ma[i]) mu = std::max(mu, std::abs(double(u(i))));
    for (int64_t j = 0; j < m; ++j) if (mb[j]) mv = std::max(mv, std::abs(double(v(j))));
    return log_w_abs + mu + mv + std::abs(w);
  }

  // Splitting one problem across threads costs a fork/join per pass, so it only pays for large
  // problems: exp passes from 2^16 entries, multiply-add sweeps (scaling domain) from 2^18
  // (measured on the 2-core machine: docs/PERFORMANCE.md, "Threads and vector width").
  bool par_exp() const { return par && n * m >= (int64_t(1) << 16); }
  bool par_fma() const { return par && n * m >= (int64_t(1) << 18); }

  // f(begin, end) over [0, len): across ATen's threads (each with denormals flushed) when split,
  // else in one call on this thread.
  template <class F>
  static void split_for(int64_t len, int64_t grain, bool split, F&& f) {
    if (split) {
      at::parallel_for(0, len, grain, [&](int64_t b0, int64_t b1) {
        FlushDenormals ftz;
        f(b0, b1);
      });
    } else {
      f(0, len);
    }
  }
  template <class F>
  void for_rows(F&& f, bool split) const { split_for(n, 16, split, f); }
  template <class F>
  void for_rows(F&& f) const { for_rows(f, par_exp()); }

  // rl_i = LSE_j(lv_j - C_ij/eps) for unmasked rows.
  void row_pass(const T* lv) {
    for_rows([&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i)
        if (ma[i]) rl[i] = row_lse(C + i * m, lv, m, inv_eps);
    });
  }

  // cl_j = LSE_i(lu_i - C_ij/eps).
  void col_pass(const T* lu) {
    const int64_t nblk = (m + kColBlock - 1) / kColBlock;
    auto body = [&](int64_t b0, int64_t b1) {
      std::vector<T> s(2 * kColBlock);
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t j0 = blk * kColBlock, j1 = std::min(m, j0 + kColBlock);
        col_lse(C, lu, n, m, j0, j1, inv_eps, cl.data() + j0, s.data());
      }
    };
    split_for(nblk, 1, par_exp() && nblk > 1, body);
  }

  // The stop test of one problem: records err (the last history entry keeps the latest check once
  // the buffer is full) and says whether to stop: err below tol (at or below for partial OT, as
  // POT compares), or at the rounding floor: err <= o.floor x L x shape (L the rounding_scale of
  // the iterate, shape the stop quantity's size: partial sqrt(n' m') entries of the log plan,
  // balanced ||b||_2, unbalanced 1) and no smaller than at the previous check, i.e. the iteration
  // has stopped making progress that rounding can resolve.
  struct StopTest {
    const SolveOptions& o;
    T* hist;
    double shape;
    int64_t k = 0;
    T prev = std::numeric_limits<T>::infinity();
    bool operator()(T err, double L) {
      if (o.hist_len > 0) hist[std::min(k, o.hist_len - 1)] = err;
      ++k;
      const bool below = o.problem == kPartial ? err <= T(o.tol) : err < T(o.tol);
      const bool floor = double(err) <= o.floor * L * shape && err >= prev;
      prev = err;
      return below || floor;
    }
  };

  // Writes the plan (1) and returns <P, C>; r / c receive the plan's marginals.
  T write_plan(const T* lu, const T* lv, T w, T* plan, std::vector<T>& r, std::vector<T>& c) {
    r.assign(n, T(0));
    c.assign(m, T(0));
    std::vector<double> lin_rows(n, 0.0);
    for_rows([&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* p = plan + i * m;
        if (!ma[i]) { std::fill(p, p + m, T(0)); continue; }
        T lin;
        r[i] = plan_row(C + i * m, lv, lu[i] + w, m, inv_eps, p, lin);
        lin_rows[i] = lin;
      }
    });
    for (int64_t i = 0; i < n; ++i) {
      const T* __restrict p = plan + i * m;
      T* __restrict cc = c.data();
#pragma omp simd
      for (int64_t j = 0; j < m; ++j) cc[j] += p[j];
    }
    double lin = 0;
    for (double x : lin_rows) lin += x;
    return T(lin);
  }

  // p_j = exp(base + lv_j - c_j/eps) (masked columns have lv = kNeg -> 0); returns sum_j p_j.
  static T plan_row(const T* __restrict c, const T* __restrict lv, T base, int64_t m, T inv_eps,
                    T* __restrict p, T& lin_out) {
    T rs = 0, lin = 0;
#pragma omp simd reduction(+ : rs, lin)
    for (int64_t j = 0; j < m; ++j) {
      const T x = exp_or_zero(base + lv[j] - c[j] * inv_eps);
      p[j] = x;
      rs += x;
      lin += x * c[j];
    }
    lin_out = lin;
    return rs;
  }

  // ------------------------------------------------------------------ drivers
  // Each problem runs iterations it = 0, 1, ... in one of two domains that compute the same
  // iterates. With domain kAuto the scaling domain runs first; an iteration that meets a zero or
  // non-finite sum there (part of K underflowed, far from the solution at small eps) restores the
  // state of its start and is redone in the log domain, which continues for kLogStretch
  // iterations before the scaling domain is tried again (after kMaxFailures failures the problem
  // stays in the log domain).
  static constexpr int64_t kLogStretch = 10;
  static constexpr int kMaxFailures = 3;
  enum class Step { kNext, kConverged, kFailed, kNumerical };

  struct DomainSwitch {
    bool scaled;
    int failures = 0;
    int64_t log_until = 0;
    // After a failed scaled iteration `it`.
    void failed(int64_t it) { scaled = false; ++failures; log_until = it + kLogStretch; }
    // Whether to go back to the scaling domain before iteration it + 1.
    bool retry(int64_t it, const SolveOptions& o) const {
      return !scaled && o.domain == kAuto && failures < kMaxFailures && it + 1 >= log_until;
    }
  };

  bool check_due(int64_t it) const { return o.check_every > 0 && it % o.check_every == 0; }

  // ---------------------------------------------------------------- balanced
  // Stop test (POT's sinkhorn_log): ||P^T 1 - b|| for the state after iteration it-1, computed from
  // the column sums that iteration it needs anyway; so a problem that converges at the start of
  // iteration it has performed it iterations.
  void balanced(T* lu, T* lv, T* K, int64_t& it_out, int64_t& status, T* hist) {
    std::vector<T> x(n), y(m), xn(n), yn(m), cs(m), plu(n), plv(m);
    T w = 0, z = 1;
    int64_t it = 0;
    StopTest stop{o, hist, stop_shape};
    bool pending = false, converged = false, numerical = false;
    DomainSwitch dom{o.domain == kAuto};
    auto enter = [&]() {  // scaling domain: K = exp(lu + lv - C/eps), x = y = 1, cs = K^T x
      for (int64_t i = 0; i < n; ++i) x[i] = xn[i] = ma[i] ? T(1) : T(0);
      for (int64_t j = 0; j < m; ++j) y[j] = yn[j] = mb[j] ? T(1) : T(0);
      absorb(lu, lv, w, K);
      k_col_axpy(K, x.data(), cs.data());
    };
    auto err_from = [&](auto colsum) {
      double e = 0;
      for (int64_t j = 0; j < m; ++j) {
        const double d = colsum(j) - double(b[j]);
        e += d * d;
      }
      return T(std::sqrt(e));
    };
    auto log_scale = [&]() { return rounding_scale([&](int64_t i) { return lu[i]; }, [&](int64_t j) { return lv[j]; }, 0.0); };
    auto scaled_scale = [&]() {
      return rounding_scale([&](int64_t i) { return double(lu[i]) + std::log(double(x[i])); },
                            [&](int64_t j) { return double(lv[j]) + std::log(double(y[j])); },
                            double(w) + std::log(double(z)));
    };
    auto log_iter = [&]() -> Step {
      col_pass(lu);
      if (pending) {
        const T err = err_from([&](int64_t j) { return mb[j] ? std::exp(double(cl[j]) + double(lv[j])) : 0.0; });
        if (stop(err, log_scale())) return Step::kConverged;
      }
      std::copy(lu, lu + n, plu.begin());
      std::copy(lv, lv + m, plv.begin());
      for (int64_t j = 0; j < m; ++j) lv[j] = mb[j] ? lb[j] - cl[j] : kNeg<T>;
      row_pass(lv);
      for (int64_t i = 0; i < n; ++i) lu[i] = ma[i] ? la[i] - rl[i] : kNeg<T>;
      if (!finite_state(lu, lv)) {
        std::copy(plu.begin(), plu.end(), lu);
        std::copy(plv.begin(), plv.end(), lv);
        return Step::kNumerical;
      }
      return Step::kNext;
    };
    auto row_update = [&](int64_t i0, const T* rs, int cnt) {  // x_i = a_i / (K y)_i
      const T* __restrict on = maf.data() + i0;
      const T* __restrict aw = a + i0;
      T* __restrict xo = xn.data() + i0;
      const T inf = std::numeric_limits<T>::infinity();
      int bad = 0;
#pragma omp simd reduction(| : bad)
      for (int q = 0; q < cnt; ++q) {
        const bool live = on[q] != T(0);
        bad |= int(live & !((rs[q] > T(0)) & (rs[q] < inf)));
        xo[q] = live ? aw[q] / rs[q] : T(0);
      }
      return !bad;
    };
    LogBackup backup;
    auto scaled_iter = [&]() -> Step {  // on entry cs = K^T x
      for (int64_t j = 0; j < m; ++j)
        if (mb[j] && !positive_finite(cs[j])) return Step::kFailed;
      if (pending) {
        const T err = err_from([&](int64_t j) { return double(y[j]) * double(cs[j]); });
        if (stop(err, scaled_scale())) return Step::kConverged;
      }
      backup.saved = false;
      for (int64_t j = 0; j < m; ++j) if (mb[j]) yn[j] = b[j] / cs[j];
      if (!in_range(yn, mb)) { backup.save(lu, lv, w, n, m); fold_vec(lv, yn, mb); absorb(lu, lv, w, K); }
      if (!sweep(K, yn.data(), xn.data(), cs.data(), row_update)) {
        backup.restore(lu, lv, w);
        return Step::kFailed;
      }
      if (!in_range(xn, ma)) {
        backup.save(lu, lv, w, n, m);
        fold_vec(lu, xn, ma);
        absorb(lu, lv, w, K);
        k_col_axpy(K, xn.data(), cs.data());
      }
      std::swap(x, xn);
      std::swap(y, yn);
      return Step::kNext;
    };
    if (dom.scaled) enter();
    for (it = 0; it < o.max_iter; ++it) {
      Step r = dom.scaled ? scaled_iter() : log_iter();
      if (r == Step::kFailed) {
        fold(lu, lv, w, x, y, z);  // the state of the start of `it`, in the log domain
        dom.failed(it);
        r = log_iter();
      }
      if (r == Step::kConverged) { converged = true; break; }
      if (r == Step::kNumerical) { numerical = true; break; }
      pending = check_due(it);
      if (dom.retry(it, o)) { enter(); dom.scaled = true; }
    }
    if (!converged && !numerical && pending) {  // the test of the last iteration
      bool scaled_ok = dom.scaled;
      for (int64_t j = 0; scaled_ok && j < m; ++j) scaled_ok = !mb[j] || positive_finite(cs[j]);
      if (dom.scaled && !scaled_ok) { fold(lu, lv, w, x, y, z); dom.scaled = false; }
      T err;
      double L;
      if (dom.scaled) {
        err = err_from([&](int64_t j) { return double(y[j]) * double(cs[j]); });
        L = scaled_scale();
      } else {
        col_pass(lu);
        err = err_from([&](int64_t j) { return mb[j] ? std::exp(double(cl[j]) + double(lv[j])) : 0.0; });
        L = log_scale();
      }
      converged = stop(err, L);
    }
    if (dom.scaled) fold(lu, lv, w, x, y, z);
    status = numerical ? 2 : (converged ? 0 : 1);
    it_out = it;
  }

  // -------------------------------------------------------------- unbalanced
  // Scaling domain: with K absorbed from (lu, lv), the log update
  //   lu_i = (1 - fa) s_a_i + fa (log a_i - LSE_j(lv_j - C_ij/eps)),  LSE = log (K y)_i - lu_i
  // becomes x_i = g_i (a_i / (K y)_i)^fa with g_i = exp((1 - fa)(s_a_i - lu_i)) fixed between
  // absorptions; POT's log u_i = LU_i - s_a_i = log x_i + lu_i - s_a_i.
  // Stop test every `check_every` iterations after the update (POT: every iteration).
  void unbalanced(T* lu, T* lv, T* K, int64_t& it_out, int64_t& status, T* hist) {
    const T fa = T(o.fi_a), fb = T(o.fi_b);
    std::vector<T> sa(n, T(0)), sb(m, T(0));
    if (o.kl_ref) { sa = la; sb = lb; }
    // On entry lu, lv hold POT's log u, log v (warm start, 0 by default): shift by s_a, s_b.
    for (int64_t i = 0; i < n; ++i) if (ma[i]) lu[i] += sa[i];
    for (int64_t j = 0; j < m; ++j) if (mb[j]) lv[j] += sb[j];
    std::vector<T> x(n), y(m), xn(n), yn(m), cs(m), ga(n), gb(m), pu(n), pv(m), plu(n), plv(m);
    T w = 0, z = 1;
    int64_t it = 0;
    StopTest stop{o, hist, stop_shape};
    bool converged = false, numerical = false;
    DomainSwitch dom{o.domain == kAuto};
    auto refresh = [&]() {
      absorb(lu, lv, w, K);
      for (int64_t i = 0; i < n; ++i)
        if (ma[i]) ga[i] = std::exp((T(1) - fa) * (sa[i] - lu[i]));
      for (int64_t j = 0; j < m; ++j)
        if (mb[j]) gb[j] = std::exp((T(1) - fb) * (sb[j] - lv[j]));
    };
    auto enter = [&]() {
      for (int64_t i = 0; i < n; ++i) x[i] = xn[i] = ma[i] ? T(1) : T(0);
      for (int64_t j = 0; j < m; ++j) y[j] = yn[j] = mb[j] ? T(1) : T(0);
      refresh();
    };
    // max |u - u'| / max(|u|, |u'|, 1) over unmasked entries, from log u, log u' given by accessors
    // (shifted by S = max(0, max log u, max log u'), so that the denominator is exactly 1).
    auto rel = [](int64_t len, const std::vector<char>& msk, auto now, auto before) {
      double S = 0;
      for (int64_t i = 0; i < len; ++i) if (msk[i]) S = std::max({S, double(now(i)), double(before(i))});
      double dmax = 0;
      for (int64_t i = 0; i < len; ++i)
        if (msk[i]) dmax = std::max(dmax, std::abs(std::exp(double(now(i)) - S) - std::exp(double(before(i)) - S)));
      return dmax;
    };
    auto log_iter = [&](int64_t it) -> Step {
      std::copy(lu, lu + n, plu.begin());
      std::copy(lv, lv + m, plv.begin());
      row_pass(lv);
      for (int64_t i = 0; i < n; ++i) lu[i] = ma[i] ? (T(1) - fa) * sa[i] + fa * (la[i] - rl[i]) : kNeg<T>;
      col_pass(lu);
      for (int64_t j = 0; j < m; ++j) lv[j] = mb[j] ? (T(1) - fb) * sb[j] + fb * (lb[j] - cl[j]) : kNeg<T>;
      if (!finite_state(lu, lv)) {
        std::copy(plu.begin(), plu.end(), lu);
        std::copy(plv.begin(), plv.end(), lv);
        return Step::kNumerical;
      }
      if (check_due(it)) {
        const T err = T(0.5 * (rel(n, ma, [&](int64_t i) { return double(lu[i]) - double(sa[i]); },
                                   [&](int64_t i) { return double(plu[i]) - double(sa[i]); }) +
                               rel(m, mb, [&](int64_t j) { return double(lv[j]) - double(sb[j]); },
                                   [&](int64_t j) { return double(plv[j]) - double(sb[j]); })));
        if (stop(err, rounding_scale([&](int64_t i) { return lu[i]; }, [&](int64_t j) { return lv[j]; }, 0.0)))
          return Step::kConverged;
      }
      return Step::kNext;
    };
    LogBackup backup;
    auto scaled_iter = [&](int64_t it) -> Step {
      const bool check = check_due(it);
      if (check) {  // POT's log u, log v at the start of the iteration
        for (int64_t i = 0; i < n; ++i) if (ma[i]) pu[i] = std::log(x[i]) + lu[i] - sa[i];
        for (int64_t j = 0; j < m; ++j) if (mb[j]) pv[j] = std::log(y[j]) + lv[j] - sb[j];
      }
      backup.saved = false;
      const bool ok = sweep(K, y.data(), xn.data(), cs.data(), [&](int64_t i0, const T* rs, int cnt) {
        for (int q = 0; q < cnt; ++q) {
          const int64_t i = i0 + q;
          if (!ma[i]) continue;
          if (!positive_finite(rs[q])) return false;
          xn[i] = ga[i] * (fa == T(1) ? a[i] / rs[q] : std::pow(a[i] / rs[q], fa));
        }
        return true;
      });
      if (!ok) return Step::kFailed;
      if (!in_range(xn, ma)) {
        backup.save(lu, lv, w, n, m);
        fold_vec(lu, xn, ma);
        refresh();
        k_col_axpy(K, xn.data(), cs.data());
      }
      for (int64_t j = 0; j < m; ++j) {
        if (!mb[j]) continue;
        if (!positive_finite(cs[j])) { backup.restore(lu, lv, w); return Step::kFailed; }
        yn[j] = gb[j] * (fb == T(1) ? b[j] / cs[j] : std::pow(b[j] / cs[j], fb));
      }
      if (!in_range(yn, mb)) { backup.save(lu, lv, w, n, m); fold_vec(lv, yn, mb); refresh(); }
      std::swap(x, xn);
      std::swap(y, yn);
      if (check) {
        const T err = T(0.5 * (rel(n, ma, [&](int64_t i) { return std::log(double(x[i])) + double(lu[i]) - double(sa[i]); },
                                   [&](int64_t i) { return double(pu[i]); }) +
                               rel(m, mb, [&](int64_t j) { return std::log(double(y[j])) + double(lv[j]) - double(sb[j]); },
                                   [&](int64_t j) { return double(pv[j]); })));
        const double L = rounding_scale([&](int64_t i) { return double(lu[i]) + std::log(double(x[i])); },
                                        [&](int64_t j) { return double(lv[j]) + std::log(double(y[j])); },
                                        double(w) + std::log(double(z)));
        if (stop(err, L)) return Step::kConverged;
      }
      return Step::kNext;
    };
    if (dom.scaled) enter();
    for (it = 0; it < o.max_iter; ++it) {
      Step r = dom.scaled ? scaled_iter(it) : log_iter(it);
      if (r == Step::kFailed) {
        fold(lu, lv, w, x, y, z);
        dom.failed(it);
        r = log_iter(it);
      }
      if (r == Step::kConverged) { converged = true; ++it; break; }
      if (r == Step::kNumerical) { numerical = true; break; }
      if (dom.retry(it, o)) { enter(); dom.scaled = true; }
    }
    if (dom.scaled) fold(lu, lv, w, x, y, z);
    status = numerical ? 2 : (converged ? 0 : 1);
    it_out = it;
  }

  // ----------------------------------------------------------------- partial
  // Log domain: p, s, t (row / column / mass corrections); scaling domain: their exponentials
  // P, S, Tm, which the absorptions leave untouched. Stop test: ||log P_after - log P_before||_F
  // every `check_every` iterations, counted as performed.
  // Partial OT column step, branch-free (masked columns keep y = 0, S = 1):
  //   y_j / S_j -> colsum_j = (y_j / S_j) z cs_j;  S'_j = min(b_j / colsum_j, 1);  y'_j = (y_j / S_j) S'_j
  // and tot = sum_j colsum_j S'_j. False if an unmasked column sum is zero or not finite.
  bool column_projection(const T* __restrict y, const T* __restrict S, const T* __restrict cs, T z,
                         T* __restrict yn, T* __restrict Sn, double& tot) const {
    const T* __restrict bw = b;
    const T* __restrict live = mbf.data();
    const T inf = std::numeric_limits<T>::infinity();
    int bad = 0;
    T acc = 0;
#pragma omp simd reduction(| : bad) reduction(+ : acc)
    for (int64_t j = 0; j < m; ++j) {
      const T yj = y[j] / S[j];
      const T colsum = yj * z * cs[j];
      const bool on = live[j] != T(0);
      bad |= int(on & !((colsum > T(0)) & (colsum < inf)));
      const T sj = on ? std::min(bw[j] / colsum, T(1)) : T(1);
      Sn[j] = sj;
      yn[j] = yj * sj;
      acc += on ? colsum * sj : T(0);
    }
    tot = double(acc);
    return !bad;
  }

  void partial(T mass, T* lu, T* lv, T& w, T* K, int64_t& it_out, int64_t& status, T* hist) {
    w = partial_init(mass, lu, lv);
    std::vector<T> p(n, T(0)), s(m, T(0)), x(n), y(m), cs(m), P(n, T(1)), S(m, T(1));
    std::vector<T> xn(n), yn(m), Pn(n, T(1)), Sn(m, T(1)), plu(n), plv(m), pp(n), ps(m);
    T t = 0, z = 1, Tm = 1, pw = 0, pt = 0;
    const T lmass = std::log(mass);
    int64_t it = 0;
    StopTest stop{o, hist, stop_shape};
    bool converged = false, numerical = false;
    DomainSwitch dom{o.domain == kAuto};
    auto enter = [&]() {
      absorb(lu, lv, w, K);
      for (int64_t i = 0; i < n; ++i) { x[i] = xn[i] = ma[i] ? T(1) : T(0); P[i] = Pn[i] = ma[i] ? std::exp(p[i]) : T(1); }
      for (int64_t j = 0; j < m; ++j) { y[j] = yn[j] = mb[j] ? T(1) : T(0); S[j] = Sn[j] = mb[j] ? std::exp(s[j]) : T(1); }
      z = 1;
      Tm = std::exp(t);
    };
    auto leave = [&]() {
      fold(lu, lv, w, x, y, z);
      for (int64_t i = 0; i < n; ++i) p[i] = ma[i] ? std::log(P[i]) : T(0);
      for (int64_t j = 0; j < m; ++j) s[j] = mb[j] ? std::log(S[j]) : T(0);
      t = std::log(Tm);
    };
    auto save = [&]() {
      std::copy(lu, lu + n, plu.begin());
      std::copy(lv, lv + m, plv.begin());
      pw = w;
    };
    auto log_iter = [&](int64_t it) -> Step {
      save();
      pp = p; ps = s; pt = t;
      // rows: log rowsum_i = lu_i + w + LSE_j(lv_j - C_ij/eps)
      for (int64_t i = 0; i < n; ++i) if (ma[i]) lu[i] -= p[i];
      row_pass(lv);
      for (int64_t i = 0; i < n; ++i) {
        if (!ma[i]) continue;
        p[i] = std::min(la[i] - (lu[i] + w + rl[i]), T(0));
        lu[i] += p[i];
      }
      // columns: log colsum_j = lv_j + w + LSE_i(lu_i - C_ij/eps)
      for (int64_t j = 0; j < m; ++j) if (mb[j]) lv[j] -= s[j];
      col_pass(lu);
      T mx = kNeg<T>;
      for (int64_t j = 0; j < m; ++j) {
        if (!mb[j]) continue;
        const T lc = lv[j] + w + cl[j];
        s[j] = std::min(lb[j] - lc, T(0));
        lv[j] += s[j];
        cl[j] = lc + s[j];  // log colsum after the column projection
        mx = std::max(mx, cl[j]);
      }
      // total mass: sum_j colsum_j, then undo the previous correction and project.
      double acc = 0;
      for (int64_t j = 0; j < m; ++j) if (mb[j]) acc += std::exp(double(cl[j] - mx));
      const T total = mx + T(std::log(acc)) - t;
      w -= t;
      t = lmass - total;
      w += t;
      if (!finite_state(lu, lv) || !std::isfinite(w)) {
        std::copy(plu.begin(), plu.end(), lu);
        std::copy(plv.begin(), plv.end(), lv);
        w = pw; p = pp; s = ps; t = pt;
        return Step::kNumerical;
      }
      if (check_due(it)) {
        const T err = log_plan_change([&](int64_t i) { return double(lu[i]) - double(plu[i]); },
                                      [&](int64_t j) { return double(lv[j]) - double(plv[j]); },
                                      double(w) - double(pw));
        if (stop(err, rounding_scale([&](int64_t i) { return lu[i]; }, [&](int64_t j) { return lv[j]; }, w)))
          return Step::kConverged;
      }
      return Step::kNext;
    };
    LogBackup backup;
    auto scaled_iter = [&](int64_t it) -> Step {
      backup.saved = false;
      bool absorbed = false;
      // rows: undo the previous row correction, project onto {P 1 <= a} (new values in xn, Pn);
      // the sweep also leaves cs = K^T xn for the column step.
      const T inf = std::numeric_limits<T>::infinity();
      if (!sweep(K, y.data(), xn.data(), cs.data(), [&](int64_t i0, const T* rs, int cnt) {
            // masked rows keep x = 0, P = 1
            const T* __restrict on = maf.data() + i0;
            const T* __restrict aw = a + i0;
            const T* __restrict xi0 = x.data() + i0;
            const T* __restrict Pi0 = P.data() + i0;
            T* __restrict xo = xn.data() + i0;
            T* __restrict Po = Pn.data() + i0;
            int bad = 0;
#pragma omp simd reduction(| : bad)
            for (int q = 0; q < cnt; ++q) {
              const bool live = on[q] != T(0);
              const T xi = xi0[q] / Pi0[q];
              const T rowsum = xi * z * rs[q];
              bad |= int(live & !((rowsum > T(0)) & (rowsum < inf)));
              const T pn = live ? std::min(aw[q] / rowsum, T(1)) : T(1);
              Po[q] = pn;
              xo[q] = xi * pn;
            }
            return !bad;
          }))
        return Step::kFailed;
      if (!in_range(xn, ma)) {
        backup.save(lu, lv, w, n, m);
        fold_vec(lu, xn, ma);
        absorb(lu, lv, w, K);
        k_col_axpy(K, xn.data(), cs.data());
        absorbed = true;
      }
      // columns: project onto {P^T 1 <= b} (new values in yn, Sn)
      double tot;
      if (!column_projection(y.data(), S.data(), cs.data(), z, yn.data(), Sn.data(), tot)) {
        backup.restore(lu, lv, w);
        return Step::kFailed;
      }
      // total mass: undo the previous correction, project onto {sum P = m}
      const T total = T(tot) / Tm;
      const T Tmn = mass / total;
      T zn = z / Tm * Tmn;
      if (!positive_finite(zn) || !positive_finite(Tmn)) { backup.restore(lu, lv, w); return Step::kFailed; }
      if (!in_range(yn, mb) || !(zn < kBig && zn > T(1) / kBig)) {
        backup.save(lu, lv, w, n, m);
        fold_vec(lv, yn, mb);
        w += std::log(zn);
        zn = 1;
        absorb(lu, lv, w, K);
        absorbed = true;
      }
      const bool check = check_due(it);
      T err = 0;
      if (check) {  // log P = lu + log x + lv + log y + w + log z - C/eps, before and after
        if (!absorbed) {
          err = log_plan_change([&](int64_t i) { return std::log(double(xn[i]) / double(x[i])); },
                                [&](int64_t j) { return std::log(double(yn[j]) / double(y[j])); },
                                std::log(double(zn) / double(z)));
        } else {
          err = log_plan_change(
              [&](int64_t i) { return double(lu[i]) - double(backup.lu[i]) + std::log(double(xn[i]) / double(x[i])); },
              [&](int64_t j) { return double(lv[j]) - double(backup.lv[j]) + std::log(double(yn[j]) / double(y[j])); },
              double(w) - double(backup.w) + std::log(double(zn) / double(z)));
        }
      }
      std::swap(x, xn); std::swap(P, Pn); std::swap(y, yn); std::swap(S, Sn);
      z = zn;
      Tm = Tmn;
      if (check) {
        const double L = rounding_scale([&](int64_t i) { return double(lu[i]) + std::log(double(x[i])); },
                                        [&](int64_t j) { return double(lv[j]) + std::log(double(y[j])); },
                                        double(w) + std::log(double(z)));
        if (stop(err, L)) return Step::kConverged;
      }
      return Step::kNext;
    };
    if (dom.scaled) enter();
    for (it = 0; it < o.max_iter; ++it) {
      Step r = dom.scaled ? scaled_iter(it) : log_iter(it);
      if (r == Step::kFailed) {
        leave();
        dom.failed(it);
        r = log_iter(it);
      }
      if (r == Step::kConverged) { converged = true; ++it; break; }
      if (r == Step::kNumerical) { numerical = true; break; }
      if (dom.retry(it, o)) { enter(); dom.scaled = true; }
    }
    if (dom.scaled) leave();
    status = numerical ? 2 : (converged ? 0 : 1);
    it_out = it;
  }

  // The feasibility verdict of grounded_fast/ops/entropic_ot/verdict.py (see there) on the returned plan,
  // whose row and column sums are r, c: whether it fails (not finite; the constraint the last update
  // enforces exactly missed beyond rounding; or reported converged with the others missed beyond
  // the tolerance).
  bool verdict_fails(const std::vector<T>& r, const std::vector<T>& c, const T* lu, const T* lv, T w, T mass,
                     int64_t status) const {
    double tot = 0, ctot = 0, sa = 0, sb = 0, rows = 0, rows_over = 0, cols = 0, cols_over = 0;
    for (int64_t i = 0; i < n; ++i) {
      if (!ma[i]) continue;
      const double d = double(r[i]) - double(a[i]);
      tot += r[i]; sa += a[i]; rows += std::abs(d); rows_over += std::max(d, 0.0);
    }
    for (int64_t j = 0; j < m; ++j) {
      if (!mb[j]) continue;
      const double d = double(c[j]) - double(b[j]);
      ctot += c[j]; sb += b[j]; cols += std::abs(d); cols_over += std::max(d, 0.0);
    }
    if (!std::isfinite(tot) || !std::isfinite(ctot)) return true;
    if (o.problem == kUnbalanced) return false;
    const double L = rounding_scale([&](int64_t i) { return lu[i]; }, [&](int64_t j) { return lv[j]; },
                                    o.problem == kPartial ? double(w) : 0.0);
    const double tau = std::min(kVerdictUnit * double(std::numeric_limits<T>::epsilon()) * L, kMaxRounding);
    double e_exact, e_rest, slack;
    if (o.problem == kBalanced) {
      e_exact = rows / sa;
      e_rest = cols / sb;
      slack = std::max(tau, 2 * std::sqrt(double(m)) * o.tol / sb);  // ||.||_1 <= sqrt(m) ||.||_2
    } else {
      e_exact = std::abs(tot - double(mass)) / double(mass);
      e_rest = (rows_over + cols_over) / double(mass);
      slack = std::max(tau, 2 * o.tol);
    }
    return e_exact > tau || (status == 0 && e_rest > slack);
  }

  bool finite_state(const T* lu, const T* lv) const {
    for (int64_t i = 0; i < n; ++i) if (!std::isfinite(lu[i])) return false;
    for (int64_t j = 0; j < m; ++j) if (!std::isfinite(lv[j])) return false;
    return true;
  }

  // Partial OT starts from K = exp(-C/eps) * m / sum(exp(-C/eps)): lu = lv = 0 and
  // w = log m - LSE_ij(-C_ij/eps) over the unmasked entries.
  T partial_init(T mass, T* lu, T* lv) {
    for (int64_t i = 0; i < n; ++i) lu[i] = ma[i] ? T(0) : kNeg<T>;
    for (int64_t j = 0; j < m; ++j) lv[j] = mb[j] ? T(0) : kNeg<T>;
    row_pass(lv);
    T mx = kNeg<T>;
    for (int64_t i = 0; i < n; ++i) if (ma[i]) mx = std::max(mx, rl[i]);
    double acc = 0;
    for (int64_t i = 0; i < n; ++i) if (ma[i]) acc += std::exp(double(rl[i] - mx));
    return std::log(mass) - (mx + T(std::log(acc)));
  }

  // ------------------------------------------------- stabilised scaling domain
  // The same iterations with the plan written as P_ij = x_i z K_ij y_j, where
  // K_ij = exp(lu_i + lv_j + w - C_ij/eps) is materialised once ("absorbed") and the iteration
  // only updates the scalings x, y, z: each pass is a matrix-vector product (one FMA per entry)
  // instead of a log-sum-exp (one exp per entry). Whenever a scaling leaves [1/kBig, kBig] its
  // log is folded into (lu, lv, w) and K is recomputed (Schmitzer 2016, "absorption"); entries of
  // K below the underflow threshold then stay below ~exp(-87 + 2 log kBig) of the plan until the
  // next absorption. A zero / non-finite sum (all of a row or column underflowed, typically at
  // small eps far from the solution) hands the iteration to the log domain (see "drivers").
  static constexpr T kBig = sizeof(T) == 4 ? T(1e13) : T(1e40);

  // k_j = exp(base + lv_j - c_j/eps); masked columns (lv = kNeg) give exactly 0.
  static void kernel_row(const T* __restrict c, const T* __restrict lv, T base, int64_t m, T inv_eps,
                         T* __restrict k) {
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) k[j] = exp_or_zero(base + lv[j] - c[j] * inv_eps);
  }

  void absorb(const T* lu, const T* lv, T w, T* K) {
    for_rows([&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) {
        T* k = K + i * m;
        if (!ma[i]) { std::fill(k, k + m, T(0)); continue; }
        kernel_row(C + i * m, lv, lu[i] + w, m, inv_eps, k);
      }
    });
  }

  // Inner loops live in free functions with restrict-qualified arguments: inside the lambdas
  // handed to parallel_for the compiler loses the no-alias facts and (for double) stops vectorising.
  static T dot(const T* __restrict k, const T* __restrict y, int64_t m) {
    T acc = 0;
#pragma omp simd reduction(+ : acc)
    for (int64_t j = 0; j < m; ++j) acc += k[j] * y[j];
    return acc;
  }
  static void axpy(T* __restrict out, T xi, const T* __restrict k, int64_t w) {
#pragma omp simd
    for (int64_t j = 0; j < w; ++j) out[j] += xi * k[j];
  }

  // dot8: rs_q = sum_j K_qj y_j for eight rows; axpy8: out_j += sum_q x_q K_qj. Eight rows at a
  // time: each load of y (resp. of the output block) serves eight FMAs, and the eight
  // independent accumulators hide the FMA latency.
  static void dot8(const T* __restrict k, int64_t m, const T* __restrict y, T* out) {
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) {
      dot8_avx512(k, m, y, out);
      return;
    }
#endif
    const T* __restrict k0 = k;
    const T* __restrict k1 = k + m;
    const T* __restrict k2 = k + 2 * m;
    const T* __restrict k3 = k + 3 * m;
    const T* __restrict k4 = k + 4 * m;
    const T* __restrict k5 = k + 5 * m;
    const T* __restrict k6 = k + 6 * m;
    const T* __restrict k7 = k + 7 * m;
    T s0 = 0, s1 = 0, s2 = 0, s3 = 0, s4 = 0, s5 = 0, s6 = 0, s7 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3, s4, s5, s6, s7)
    for (int64_t j = 0; j < m; ++j) {
      const T yj = y[j];
      s0 += k0[j] * yj;
      s1 += k1[j] * yj;
      s2 += k2[j] * yj;
      s3 += k3[j] * yj;
      s4 += k4[j] * yj;
      s5 += k5[j] * yj;
      s6 += k6[j] * yj;
      s7 += k7[j] * yj;
    }
    out[0] = s0; out[1] = s1; out[2] = s2; out[3] = s3;
    out[4] = s4; out[5] = s5; out[6] = s6; out[7] = s7;
  }
#if defined(__AVX512F__)
  // dot8 with explicit 512-bit accumulators: the same FMAs, then one horizontal sum per row in
  // registers. The omp simd reduction summed the lanes through the stack one at a time; this
  // measured faster on the 512 x 512 partial solve (docs/PERFORMANCE.md, "One 512 x 512 problem").
  static void dot8_avx512(const T* __restrict k, int64_t m, const T* __restrict y, T* out) {
    using L = Lanes<T>;
    const T *k0 = k, *k1 = k + m, *k2 = k + 2 * m, *k3 = k + 3 * m, *k4 = k + 4 * m, *k5 = k + 5 * m,
            *k6 = k + 6 * m, *k7 = k + 7 * m;
    auto s0 = L::zero(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
    int64_t j = 0;
    for (; j + L::width <= m; j += L::width) {
      const auto yj = L::load(y + j);
      s0 = L::fma(L::load(k0 + j), yj, s0);
      s1 = L::fma(L::load(k1 + j), yj, s1);
      s2 = L::fma(L::load(k2 + j), yj, s2);
      s3 = L::fma(L::load(k3 + j), yj, s3);
      s4 = L::fma(L::load(k4 + j), yj, s4);
      s5 = L::fma(L::load(k5 + j), yj, s5);
      s6 = L::fma(L::load(k6 + j), yj, s6);
      s7 = L::fma(L::load(k7 + j), yj, s7);
    }
    if (j < m) {  // the last partial vector, masked
      const auto mk = typename L::mask((1u << (m - j)) - 1u);
      const auto yj = L::load(mk, y + j);
      s0 = L::fma(L::load(mk, k0 + j), yj, s0);
      s1 = L::fma(L::load(mk, k1 + j), yj, s1);
      s2 = L::fma(L::load(mk, k2 + j), yj, s2);
      s3 = L::fma(L::load(mk, k3 + j), yj, s3);
      s4 = L::fma(L::load(mk, k4 + j), yj, s4);
      s5 = L::fma(L::load(mk, k5 + j), yj, s5);
      s6 = L::fma(L::load(mk, k6 + j), yj, s6);
      s7 = L::fma(L::load(mk, k7 + j), yj, s7);
    }
    out[0] = L::sum(s0); out[1] = L::sum(s1); out[2] = L::sum(s2); out[3] = L::sum(s3);
    out[4] = L::sum(s4); out[5] = L::sum(s5); out[6] = L::sum(s6); out[7] = L::sum(s7);
  }
#endif
  static void axpy8(T* __restrict out, const T* x, const T* __restrict k, int64_t ld, int64_t w) {
    const T x0 = x[0], x1 = x[1], x2 = x[2], x3 = x[3], x4 = x[4], x5 = x[5], x6 = x[6], x7 = x[7];
    const T* __restrict k0 = k;
    const T* __restrict k1 = k + ld;
    const T* __restrict k2 = k + 2 * ld;
    const T* __restrict k3 = k + 3 * ld;
    const T* __restrict k4 = k + 4 * ld;
    const T* __restrict k5 = k + 5 * ld;
    const T* __restrict k6 = k + 6 * ld;
    const T* __restrict k7 = k + 7 * ld;
#pragma omp simd
    for (int64_t j = 0; j < w; ++j)
      out[j] += ((x0 * k0[j] + x1 * k1[j]) + (x2 * k2[j] + x3 * k3[j])) +
                ((x4 * k4[j] + x5 * k5[j]) + (x6 * k6[j] + x7 * k7[j]));
  }

  // cs_j = sum_i x_i K_ij, streaming rows, vectorised along j (column blocks across threads).
  void k_col_axpy(const T* K, const T* x, T* cs) {
    const int64_t nblk = (m + kColBlock - 1) / kColBlock;
    auto body = [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        const int64_t j0 = blk * kColBlock, j1 = std::min(m, j0 + kColBlock), w = j1 - j0;
        T* out = cs + j0;
        for (int64_t j = 0; j < w; ++j) out[j] = 0;
        const T* Kb = K + j0;
        int64_t i = 0;
        for (; i + 8 <= n; i += 8) axpy8(out, x + i, Kb + i * m, m, w);
        for (; i < n; ++i) axpy(out, x[i], Kb + i * m, w);
      }
    };
    split_for(nblk, 1, par_fma() && nblk > 1, body);
  }

  // One pass over K serving two half-iterations: rs_i = (K y)_i for each row, then the rows' new
  // scalings x_i (update(i0, rs, count) for rows i0 .. i0+count-1, a block of eight or a single
  // row) while the rows are still in cache, then cs = K^T x. Every scaling iteration needs K y
  // followed by K^T x(K y), so it reads K once instead of twice (the bandwidth-bound regime of
  // large problems). update returns false on a zero / non-finite sum of an unmasked row and must
  // leave x = 0 on masked rows.
  // Large problems split rows across threads, each accumulating its own cs, summed at the end.
  template <class U>
  bool sweep(const T* K, const T* y, T* x, T* cs, U&& update) {
    auto rows = [&](int64_t i0, int64_t i1, T* acc) -> bool {
      std::fill(acc, acc + m, T(0));
      int64_t i = i0;
      T r[8];
      for (; i + 8 <= i1; i += 8) {
        const T* k = K + i * m;
        dot8(k, m, y, r);
        if (!update(i, r, 8)) return false;
        axpy8(acc, x + i, k, m, m);
      }
      for (; i < i1; ++i) {
        if (!ma[i]) continue;
        r[0] = dot(K + i * m, y, m);
        if (!update(i, r, 1)) return false;
        axpy(acc, x[i], K + i * m, m);
      }
      return true;
    };
    if (!par_fma()) return rows(0, n, cs);
    // Raw OpenMP with buffers kept across iterations: at::parallel_for's bookkeeping and two
    // allocations per sweep cost several microseconds per iteration at 512 x 512.
    const int chunks = int(std::min<int64_t>(at::get_num_threads(), (n + 63) / 64));
    parts_.resize(size_t(std::max(chunks - 1, 0)) * m);
    ok_.assign(chunks, 1);
#pragma omp parallel for num_threads(chunks) schedule(static, 1)
    for (int c = 0; c < chunks; ++c) {
      FlushDenormals ftz;
      ok_[c] = rows(n * c / chunks, n * (c + 1) / chunks, c == 0 ? cs : parts_.data() + (c - 1) * m);
    }
    for (int c = 0; c < chunks; ++c) if (!ok_[c]) return false;
    for (int c = 1; c < chunks; ++c) axpy(cs, T(1), parts_.data() + (c - 1) * m, m);
    return true;
  }
  std::vector<T> parts_;  // per-thread column sums of a split sweep
  std::vector<char> ok_;

  // Scalings of masked entries are exactly 0 and pass; the others must lie in (1/kBig, kBig).
  static bool in_range(const std::vector<T>& v, const std::vector<char>&) {
    const T* p = v.data();
    const int64_t len = int64_t(v.size());
    const T lo = T(1) / kBig, hi = kBig;
    const T inf = std::numeric_limits<T>::infinity();
    T mx = 0, mn = inf;
    int nan = 0;
#pragma omp simd reduction(max : mx) reduction(min : mn) reduction(| : nan)
    for (int64_t i = 0; i < len; ++i) {
      const T v = p[i];
      mx = std::max(mx, v);
      mn = std::min(mn, v == T(0) ? inf : v);
      nan |= int(v != v);
    }
    return !nan && mx < hi && mn > lo;
  }

  static bool positive_finite(T v) { return v > T(0) && v < std::numeric_limits<T>::infinity(); }

  // Folds the scalings into the log potentials and re-materialises K.
  void fold(T* lu, T* lv, T& w, std::vector<T>& x, std::vector<T>& y, T& z) {
    fold_vec(lu, x, ma);
    fold_vec(lv, y, mb);
    w += std::log(z);
    z = 1;
  }
  // Folds one side only: K changes by diag(x) on that side, the other scalings stay valid.
  static void fold_vec(T* l, std::vector<T>& x, const std::vector<char>& msk) {
    for (size_t i = 0; i < x.size(); ++i) if (msk[i]) { l[i] += std::log(x[i]); x[i] = 1; }
  }

  // Within a scaling-domain iteration the new scalings go to second buffers (swapped in at the
  // end), so an iteration that fails leaves the state of its start; only a fold inside the
  // iteration changes (lu, lv, w), which LogBackup saves the first time.
  struct LogBackup {
    std::vector<T> lu, lv;
    T w = 0;
    bool saved = false;
    void save(const T* u, const T* v, T w_, int64_t n, int64_t m) {
      if (saved) return;
      lu.assign(u, u + n);
      lv.assign(v, v + m);
      w = w_;
      saved = true;
    }
    void restore(T* u, T* v, T& w_) const {
      if (!saved) return;
      std::copy(lu.begin(), lu.end(), u);
      std::copy(lv.begin(), lv.end(), v);
      w_ = w;
    }
  };

  // ||log P' - log P||_F over the support, where log P'_ij - log P_ij = du_i + dv_j + dw (du, dv
  // given by accessors over the unmasked rows / columns): O(n + m) from the centred changes,
  //   sum_ij (du_i + dv_j + dw)^2 = m' sum_i (du_i - mean du)^2 + n' sum_j (dv_j - mean dv)^2
  //                                 + n' m' (mean du + mean dv + dw)^2,
  // n', m' the support sizes (no cancellation when du and dv move in opposite directions).
  template <class DU, class DV>
  T log_plan_change(DU du, DV dv, double dw) const {
    double su = 0, sv = 0, cu = 0, cv = 0;
    for (int64_t i = 0; i < n; ++i) if (ma[i]) { su += du(i); ++cu; }
    for (int64_t j = 0; j < m; ++j) if (mb[j]) { sv += dv(j); ++cv; }
    if (cu == 0 || cv == 0) return T(0);
    const double ubar = su / cu, vbar = sv / cv;
    double qu = 0, qv = 0;
    for (int64_t i = 0; i < n; ++i) if (ma[i]) { const double d = du(i) - ubar; qu += d * d; }
    for (int64_t j = 0; j < m; ++j) if (mb[j]) { const double d = dv(j) - vbar; qv += d * d; }
    const double c = ubar + vbar + dw;
    return T(std::sqrt(cv * qu + cu * qv + cu * cv * c * c));
  }
};

template <typename T>
static double xlogy_sum(const std::vector<T>& x, const T* y, int64_t len) {
  // sum_i x_i log(x_i / y_i) - x_i + y_i  (generalised KL, 0 log 0 = 0)
  double s = 0;
  for (int64_t i = 0; i < len; ++i) {
    const double xi = x[i], yi = y[i];
    if (xi > 0) s += xi * std::log(xi / yi);
    s += yi - xi;
  }
  return s;
}

template <typename T>
void solve_one(const T* C, int64_t n, int64_t m, const T* a, const T* b, T mass, const SolveOptions& o,
               bool par, T* plan, T* lu, T* lv, T* lw, T* value, T* value_linear, int64_t* n_iter,
               int64_t* status, T* hist) {
  FlushDenormals ftz;
  Solver<T> s(C, n, m, a, b, o, par);
  for (int64_t k = 0; k < o.hist_len; ++k) hist[k] = T(-1);  // -1: no check at this slot
  for (int64_t i = 0; i < n; ++i) if (!s.ma[i]) lu[i] = kNeg<T>;
  for (int64_t j = 0; j < m; ++j) if (!s.mb[j]) lv[j] = kNeg<T>;
  T w = 0;
  bool empty = std::none_of(s.ma.begin(), s.ma.end(), [](char x) { return x; }) ||
               std::none_of(s.mb.begin(), s.mb.end(), [](char x) { return x; });
  if (o.problem == kPartial) empty = empty || !(mass > 0);
  if (empty) {
    std::fill(plan, plan + n * m, T(0));
    for (int64_t i = 0; i < n; ++i) lu[i] = -std::numeric_limits<T>::infinity();
    for (int64_t j = 0; j < m; ++j) lv[j] = -std::numeric_limits<T>::infinity();
    *lw = 0; *value = 0; *value_linear = 0; *n_iter = 0; *status = 0;
    return;
  }
  // The kernel K of the scaling domain lives in the plan's buffer until the plan is written.
  if (o.problem == kBalanced) s.balanced(lu, lv, plan, *n_iter, *status, hist);
  else if (o.problem == kUnbalanced) s.unbalanced(lu, lv, plan, *n_iter, *status, hist);
  else s.partial(mass, lu, lv, w, plan, *n_iter, *status, hist);

  std::vector<T> r, c;
  const T lin = s.write_plan(lu, lv, w, plan, r, c);
  const T ninf = -std::numeric_limits<T>::infinity();
  *value_linear = lin;
  *lw = w;
  // Regularised objective at the returned plan, using log P = lu + lv + w - C/eps:
  //   eps * sum P log P = eps * (<r, lu> + <c, lv> + w * sum P) - <P, C>.
  const double eps = o.reg;
  double ru = 0, cv = 0, tot = 0;
  for (int64_t i = 0; i < n; ++i) if (s.ma[i]) { ru += double(r[i]) * (double(lu[i]) - (o.problem == kUnbalanced && o.kl_ref ? double(s.la[i]) : 0.0)); tot += r[i]; }
  for (int64_t j = 0; j < m; ++j) if (s.mb[j]) cv += double(c[j]) * (double(lv[j]) - (o.problem == kUnbalanced && o.kl_ref ? double(s.lb[j]) : 0.0));
  double val = eps * (ru + cv + double(w) * tot);  // = <P,C> + eps * sum P log(P / ref)
  if (o.problem == kUnbalanced) {
    // value = <P,C> + eps KL(P | ref) + rho_a KL(P1 | a) + rho_b KL(P^T 1 | b), generalised KL.
    double sa = 0, sb = 0;
    for (int64_t i = 0; i < n; ++i) sa += a[i];
    for (int64_t j = 0; j < m; ++j) sb += b[j];
    const double ref_mass = o.kl_ref ? sa * sb : double(n) * double(m);
    val += eps * (ref_mass - tot);
    if (std::isfinite(o.reg_m_a)) val += o.reg_m_a * xlogy_sum(r, a, n);
    if (std::isfinite(o.reg_m_b)) val += o.reg_m_b * xlogy_sum(c, b, m);
  }
  *value = T(val);
  if (*status != 2 && s.verdict_fails(r, c, lu, lv, w, mass, *status)) *status = 2;
  for (int64_t i = 0; i < n; ++i) if (!s.ma[i]) lu[i] = ninf;  // masked potentials: -inf, as log 0
  for (int64_t j = 0; j < m; ++j) if (!s.mb[j]) lv[j] = ninf;
}

}  // namespace

template <typename T>
void solve_batch_cpu(const T* C, int64_t B, int64_t n, int64_t m, const T* a, const T* b, const T* mass,
                     const SolveOptions& o, T* plan, T* lu, T* lv, T* lw, T* value, T* value_linear,
                     int64_t* n_iter, int64_t* status, T* hist) {
  const int threads = at::get_num_threads();
  const bool inner = B < threads;
  auto one = [&](int64_t k) {
    solve_one<T>(C + k * n * m, n, m, a + k * n, b + k * m, mass ? mass[k] : T(0), o, inner,
                 plan + k * n * m, lu + k * n, lv + k * m, lw + k, value + k, value_linear + k,
                 n_iter + k, status + k, hist + k * o.hist_len);
  };
  if (inner) {
    for (int64_t k = 0; k < B; ++k) one(k);
  } else {
    at::parallel_for(0, B, 1, [&](int64_t k0, int64_t k1) {
      for (int64_t k = k0; k < k1; ++k) one(k);
    });
  }
}

template void solve_batch_cpu<float>(const float*, int64_t, int64_t, int64_t, const float*, const float*,
                                     const float*, const SolveOptions&, float*, float*, float*, float*,
                                     float*, float*, int64_t*, int64_t*, float*);
template void solve_batch_cpu<double>(const double*, int64_t, int64_t, int64_t, const double*,
                                      const double*, const double*, const SolveOptions&, double*, double*,
                                      double*, double*, double*, double*, int64_t*, int64_t*, double*);

}  // namespace gf
