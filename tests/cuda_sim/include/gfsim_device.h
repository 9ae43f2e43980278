// cuda_sim: enough of CUDA's device side to run the kernels of csrc/**/cuda/*.cu on the CPU, so
// that CI (no GPU) executes them against the float64 reference instead of only compiling them.
// tests/cuda_sim/build.py prepends this header to each .cu, rewrites its launches
// (`k<<<grid, block, smem, stream>>>(args)` -> `gfsim::Launch(grid, block, smem, stream).run(k, args)`),
// its dynamic shared memory and its two inline-PTX instructions, and compiles it with g++.
//
// Execution model: the blocks of a launch run one after another; the threads of a block are
// fibers of one OS thread, each run until it reaches a barrier (__syncthreads, a warp
// shuffle) or returns. A barrier releases when every thread that has not returned reached it (a
// shuffle: every lane of its mask), as on sm_70 and later; if none can be released the launch
// fails ("deadlock": e.g. a warp split between a __syncthreads and a shuffle). __shared__ variables are function statics: one copy,
// reused by each block in turn. Threads run in order up to each barrier (in reverse order with
// GFSIM_REVERSE set), so a read of shared memory that another thread writes without a barrier in
// between sees a stale value whenever the writer comes later in that order, and a missing
// __syncthreads shows up as a wrong result. Not modelled: timing, memory ordering between
// blocks (blocks never overlap), the launch's register and static shared memory limits.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <math_constants.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __noinline__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))

struct alignas(8) float2 { float x, y; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) double2 { double x, y; };

namespace gfsim {

enum class State { Ready, BlockWait, WarpWait, Done };

// Context switches between fibers: the callee-saved registers and the stack pointer of the x86-64
// System V ABI (swapcontext, about 7x slower here, also makes a system call for the signal mask).
#if !defined(__x86_64__)
#error "cuda_sim switches fibers with x86-64 assembly"
#endif
// saves rbp, rbx, r15..r12 and the stack pointer to *from, loads them from `to` and returns there
__attribute__((naked, noinline)) static void switch_stack(void** /*from*/, void* /*to*/) {
  __asm__ volatile(
      "pushq %rbp\n pushq %rbx\n pushq %r15\n pushq %r14\n pushq %r13\n pushq %r12\n"
      "movq %rsp, (%rdi)\n movq %rsi, %rsp\n"
      "popq %r12\n popq %r13\n popq %r14\n popq %r15\n popq %rbx\n popq %rbp\n ret\n");
}
struct Context {
  void* sp = nullptr;
};
inline void switch_to(Context& from, Context& to) { switch_stack(&from.sp, to.sp); }
inline void start(Context& c, char* stack, size_t size, void (*entry)()) {
  void** sp = reinterpret_cast<void**>(reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t(15));
  *--sp = nullptr;                              // so that `entry` starts as if called (rsp = 8 mod 16)
  *--sp = reinterpret_cast<void*>(entry);       // switch_stack's `ret` goes here
  for (int r = 0; r < 6; ++r) *--sp = nullptr;  // the callee-saved registers it pops
  c.sp = sp;
}

struct Fiber {
  Context ctx;
  State state = State::Ready;
  dim3 tid;
  unsigned lane = 0, warp = 0, mask = 0, shuffles = 0;
};

constexpr size_t kStack = 128 * 1024;  // per fiber

struct Block {
  std::vector<Fiber> fibers;
  std::vector<char> stacks;
  std::vector<uint64_t> slots;  // (warps, 2, 32): the values in flight of each warp's shuffles
  Context sched;
  Fiber* cur = nullptr;
  dim3 bid, bdim, gdim;
  std::function<void()> body;
  std::vector<unsigned char> dynamic_smem;
};

inline thread_local Block* g_block = nullptr;

inline void yield() { switch_to(g_block->cur->ctx, g_block->sched); }

// A fiber's life: the kernel, then back to the scheduler for good.
inline void entry() {
  g_block->body();
  g_block->cur->state = State::Done;
  yield();
  std::abort();  // a finished fiber is never resumed
}

// Runs one block to completion; false (and the error recorded) on a deadlock.
inline bool run_block(Block& b, const char* name) {
  const unsigned nt = b.bdim.x * b.bdim.y * b.bdim.z;
  b.fibers.assign(nt, Fiber{});
  if (b.stacks.size() < nt * kStack) b.stacks.resize(nt * kStack);
  b.slots.assign(size_t((nt + 31) / 32) * 64, 0);
  for (unsigned t = 0; t < nt; ++t) {
    Fiber& f = b.fibers[t];
    f.tid = dim3(t % b.bdim.x, (t / b.bdim.x) % b.bdim.y, t / (b.bdim.x * b.bdim.y));
    f.lane = t % 32;
    f.warp = t / 32;
    start(f.ctx, b.stacks.data() + size_t(t) * kStack, kStack, entry);
  }
  static const bool reverse = std::getenv("GFSIM_REVERSE") != nullptr;
  for (;;) {
    for (unsigned k = 0; k < nt; ++k) {
      Fiber& f = b.fibers[reverse ? nt - 1 - k : k];
      if (f.state != State::Ready) continue;
      b.cur = &f;
      switch_to(b.sched, f.ctx);
    }
    b.cur = nullptr;
    bool done = true, released = false;
    for (unsigned w = 0; w * 32 < nt; ++w) {  // a warp barrier releases when every lane of its mask is there
      Fiber* lanes = &b.fibers[w * 32];
      const unsigned nl = std::min(32u, nt - w * 32);
      bool waiting = false, ready = true;
      for (unsigned l = 0; l < nl; ++l) {
        if (lanes[l].state != State::WarpWait) continue;
        waiting = true;
        for (unsigned k = 0; k < nl; ++k)
          if ((lanes[l].mask >> k & 1u) && lanes[k].state != State::WarpWait && lanes[k].state != State::Done)
            ready = false;
      }
      if (waiting && ready) {
        for (unsigned l = 0; l < nl; ++l)
          if (lanes[l].state == State::WarpWait) lanes[l].state = State::Ready;
        released = true;
      }
    }
    bool all_block = true;
    for (Fiber& f : b.fibers) {
      if (f.state != State::Done) done = false;
      if (f.state != State::Done && f.state != State::BlockWait) all_block = false;
    }
    if (done) return true;
    if (!released && all_block) {
      for (Fiber& f : b.fibers)
        if (f.state == State::BlockWait) f.state = State::Ready;
      released = true;
    }
    if (!released) {
      fail(cudaErrorLaunchFailure, std::string(name) + ": deadlock in block (" + std::to_string(b.bid.x) + ", " +
                                       std::to_string(b.bid.y) + ", " + std::to_string(b.bid.z) +
                                       "): threads wait at different barriers");
      return false;
    }
  }
}

inline Block& block_state() {
  static thread_local Block b;
  return b;
}

struct Launch {
  dim3 grid, block;
  size_t smem;
  Launch(dim3 g, dim3 b, size_t s = 0, cudaStream_t = nullptr) : grid(g), block(b), smem(s) {}

  template <typename... P, typename... A> void run(const char* name, void (*kernel)(P...), A&&... args) {
    const unsigned long long nt = 1ull * block.x * block.y * block.z;
    const auto it = smem_optin().find(reinterpret_cast<const void*>(kernel));
    const size_t limit = it == smem_optin().end() ? kDefaultDynamicSmem : size_t(it->second);
    if (nt == 0 || nt > 1024 || block.z > 64 || grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 ||
        grid.z > 65535) {
      fail(cudaErrorInvalidConfiguration, std::string(name) + ": launch of (" + std::to_string(grid.x) + ", " + std::to_string(grid.y) +
                                              ", " + std::to_string(grid.z) + ") blocks of " + std::to_string(nt) +
                                              " threads");
      return;
    }
    if (smem > limit) {
 fail(cudaErrorInvalidValue, std::string(name) + ": launch with " + std::to_string(smem) + " bytes of dynamic shared memory (limit " +
                                      std::to_string(limit) + ")");
      return;
    }
    std::tuple<std::decay_t<P>...> params(std::forward<A>(args)...);
    Block& b = block_state();
    Block* saved = g_block;
    g_block = &b;
    b.bdim = block;
    b.gdim = grid;
    b.dynamic_smem.assign(smem + 16, 0xff);  // uninitialised: float NaN
    b.body = [&] { std::apply(kernel, params); };
    for (unsigned z = 0; z < grid.z; ++z)
      for (unsigned y = 0; y < grid.y; ++y)
        for (unsigned x = 0; x < grid.x; ++x) {
          b.bid = dim3(x, y, z);
          if (!run_block(b, name)) {
            g_block = saved;
            return;
          }
        }
    g_block = saved;
  }
};

inline unsigned char* dynamic_smem() {
  auto* p = g_block->dynamic_smem.data();
  return p + (16 - reinterpret_cast<uintptr_t>(p) % 16) % 16;
}

// A warp shuffle: publish v in this generation's slot, wait for the mask's lanes, read lane src's.
template <typename T> inline T exchange(unsigned mask, T v, unsigned src) {
  static_assert(sizeof(T) <= 8, "cuda_sim shuffles values of at most 8 bytes");
  Block& b = *g_block;
  Fiber& f = *b.cur;
  uint64_t* slots = &b.slots[size_t(f.warp) * 64 + (f.shuffles++ & 1u) * 32];
  std::memcpy(&slots[f.lane], &v, sizeof(T));
  f.mask = mask;
  f.state = State::WarpWait;
  yield();
  if (!(mask >> src & 1u)) fail(cudaErrorLaunchFailure, "shuffle from a lane outside the mask");
  T r;
  std::memcpy(&r, &slots[src], sizeof(T));
  return r;
}

// ex2.approx.ftz.f32 / lg2.approx.ftz.f32: subnormal inputs and results flushed to zero
inline float flush(float x) { return std::fpclassify(x) == FP_SUBNORMAL ? std::copysign(0.0f, x) : x; }
inline float ex2_approx_ftz(float x) { return flush(std::exp2(flush(x))); }
inline float lg2_approx_ftz(float x) { return std::log2(flush(x)); }

}  // namespace gfsim

#define threadIdx (::gfsim::g_block->cur->tid)
#define blockIdx (::gfsim::g_block->bid)
#define blockDim (::gfsim::g_block->bdim)
#define gridDim (::gfsim::g_block->gdim)
#define warpSize 32

inline void __syncthreads() {
  gfsim::g_block->cur->state = gfsim::State::BlockWait;
  gfsim::yield();
}

template <typename T> inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
  const unsigned lane = gfsim::g_block->cur->lane, src = lane ^ unsigned(lane_mask);
  return gfsim::exchange(mask, v, src / width == lane / width ? src : lane);
}
template <typename T> inline T __shfl_down_sync(unsigned mask, T v, unsigned delta, int width = 32) {
  const unsigned lane = gfsim::g_block->cur->lane;
  return gfsim::exchange(mask, v, lane % width + delta < unsigned(width) ? lane + delta : lane);
}

template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T, typename U> inline T atomicAdd(T* p, U v) {
  const T old = *p;
  *p = old + T(v);
  return old;
}
template <typename T, typename U> inline T atomicOr(T* p, U v) {
  const T old = *p;
  *p = old | T(v);
  return old;
}
template <typename T, typename U> inline T atomicExch(T* p, U v) {
  const T old = *p;
  *p = T(v);
  return old;
}

inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline float __fdividef(float a, float b) { return a / b; }

// CUDA's max / min: fmax / fmin for floating point (a NaN operand gives the other), mixed types
// compared in their common type
template <typename A, typename B> inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmax(C(a), C(b));
  else return C(a) > C(b) ? C(a) : C(b);
}
template <typename A, typename B> inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  if constexpr (std::is_floating_point_v<C>) return std::fmin(C(a), C(b));
  else return C(a) < C(b) ? C(a) : C(b);
}
using std::abs;
using std::isfinite;
using std::isinf;
using std::isnan;
