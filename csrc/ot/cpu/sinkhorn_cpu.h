// Batched log-domain entropic OT on the CPU (see sinkhorn_cpu.cpp for the math).
#pragma once
#include <cstdint>

namespace gf {

enum Problem : int64_t { kBalanced = 0, kUnbalanced = 1, kPartial = 2 };
// kAuto: stabilised scaling-domain iterations (matrix-vector products on an absorbed kernel) with
// log-domain iterations wherever they would underflow; kLog: log-sum-exp passes only.
enum Domain : int64_t { kAuto = 0, kLog = 1 };

// The feasibility verdict on the returned plan (Solver::verdict_fails; the definition and its measured
// basis are in grounded_fast/ops/entropic_ot/verdict.py, whose VERDICT_UNIT and MAX_ROUNDING these are).
constexpr double kVerdictUnit = 32.0;
constexpr double kMaxRounding = 1e-2;

struct SolveOptions {
  int64_t problem = kBalanced;
  double reg = 1.0;             // entropic regularisation eps (> 0)
  double fi_a = 1.0, fi_b = 1.0;  // unbalanced exponents rho / (rho + eps); 1 = hard marginal
  double reg_m_a = 0.0, reg_m_b = 0.0;  // unbalanced marginal penalties (inf = hard)
  bool kl_ref = true;           // unbalanced: reference measure a b^T (true) or 1 (false)
  int64_t max_iter = 1000;
  double tol = 1e-9;            // stop threshold (compared as POT does for each problem)
  double floor = 0.0;           // rounding floor of the stop quantity: a check with err <= floor
                                // and no smaller than the previous check's also stops
  int64_t check_every = 10;     // 0: never test, run exactly max_iter iterations
  int64_t hist_len = 0;         // length of the per-problem error history buffer (checks past
                                // its end overwrite the last entry, which holds the last check)
  int64_t domain = kAuto;       // Domain
};

// C (B,n,m) row-major; a (B,n); b (B,m); mass (B) for kPartial (else may be null).
// lu (B,n), lv (B,m) hold the initial log-scalings on entry (warm start; zeros by default) and
// the final ones on exit; lw (B) receives the global log-scale (partial; 0 otherwise), so that
// plan = exp(lu_i + lv_j + lw - C_ij / reg).
// value: regularised objective; value_linear: <P, C>; n_iter: iterations performed;
// status: 0 converged, 1 iteration limit, 2 numerical failure (state of the last good iteration,
// or a plan that fails the feasibility verdict).
template <typename T>
void solve_batch_cpu(const T* C, int64_t B, int64_t n, int64_t m, const T* a, const T* b, const T* mass,
                     const SolveOptions& o, T* plan, T* lu, T* lv, T* lw, T* value, T* value_linear,
                     int64_t* n_iter, int64_t* status, T* hist);

}  // namespace gf
