// Building blocks shared by the three ops: per-block softmax statistics, their exact merge, and the driver that
// runs per-row state machines over vocabulary blocks on torch's thread pool.
//
// Determinism: a row is always cut into the same fixed blocks of kBlock elements, each block's statistics are
// computed by the same code, and blocks are merged in block order. So a row's result does not depend on the batch
// it is in, on the thread count, or on whether its blocks ran on one thread or several.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <vector>

#include "simd.h"

namespace emk {

// 2048 fp32 = 8 KB: a block is read from memory once for its max and re-read from L1 for the exp pass.
constexpr int64_t kBlock = 2048;

inline int64_t num_blocks(int64_t n) { return (n + kBlock - 1) / kBlock; }

// Softmax statistics of one block relative to a reference r (the block max, or a fixed row-wide shift):
// sum exp(d) = c + s and t = sum exp(d) * d, with d = (x - r) * scale. The sum is split into the exact count c of
// the entries at the reference (d == 0, exp = 1) and the sum s of the others, and kept split up to the final
// log S = log c + log1p(s / c): a near-one-hot row keeps its tail mass (down to ~1e-13) instead of rounding it away
// against the 1.0 of its maximum, in fp32 lanes and then in fp64.
struct Partial {
  float m = kNegInf;  // block max (NaN ignored); -inf: nothing finite in the block
  bool nan = false;   // the block holds a NaN
  double c = 0.0;
  double s = 0.0;
  double t = 0.0;
};

// H = log S - t / S for shifted weights exp(d) summing to S = c + s, t = sum exp(d) d.
inline double entropy_of(double c, double s, double t) {
  return std::log(c) + std::log1p(s / c) - t / (c + s);
}

// `prefetch`, when given, is the next block: its lines are requested during this compute-bound pass so that the
// memory traffic of the next max pass overlaps this one (without it, a memory-resident row runs ~30% slower).
template <class S, bool Scaled>
inline void shifted_sums(const typename S::T* x, int64_t n, float ref, float scale, Partial& out,
                         const typename S::T* prefetch = nullptr) {
  const V vref = set1(ref), vscale = set1(scale), z0 = zero();
  V s = zero(), t = zero();
  int64_t below_ref = 0;  // counted on the integer side, leaving the vector pipes to the exp
  vloop(n, [&](int64_t i, auto tag) {
    if (prefetch) __builtin_prefetch(prefetch + i, 0, 3);
    V d = sub(ld<S>(x + i, tag), vref);
    if constexpr (Scaled) d = mul(d, vscale);
    // Masked tokens (-inf) and tail lanes fall outside `keep`: e = 0 and t is left alone (0 * -inf would be NaN).
    // A NaN input is inside `keep`, so t turns NaN and the row is flagged.
    const M keep = exp_keep(d);
    const V e = vexp(d, keep);
    const M below = lt(d, z0);
    s = mask_add(s, below, s, e);
    below_ref += popcount(below);
    t = mask_fmadd(e, d, t, keep);
  });
  // The lanes the loop ran, tail lanes included (they read -inf: below), less those below: the ones at the
  // reference (and NaN lanes, which flag the row anyway). Counting `below` spares the vector pipes a mask inversion.
  out.c = static_cast<double>((n + W - 1) / W * W - below_ref);
  out.s = hsum(s);
  out.t = hsum(t);
}

template <class S>
inline bool has_nan(const typename S::T* x, int64_t n) {
  M nan{};
  vloop(n, [&](int64_t i, auto tag) { nan = mor(nan, isnan(ld<S>(x + i, tag))); });
  return any(nan);
}

// Statistics of a block relative to its own max: max pass from memory, then the exp pass from L1.
template <class S>
inline Partial block_stats(const typename S::T* x, int64_t n, const typename S::T* prefetch = nullptr) {
  Partial p;
  V vm = set1(kNegInf);
  vloop(n, [&](int64_t i, auto tag) { vm = vmax(ld<S>(x + i, tag), vm); });  // NaN is skipped by vmax
  p.m = hmax(vm);
  if (p.m == kNegInf) {  // nothing finite: contributes nothing, unless it holds a NaN (rare: check it here)
    p.nan = has_nan<S>(x, n);
    return p;
  }
  if (p.m == kPosInf) return p;  // the merge flags the row
  shifted_sums<S, false>(x, n, p.m, 1.0f, p, prefetch);
  p.nan = std::isnan(p.t);
  return p;
}

// Row-level result of merging block statistics: lse = log sum exp(x), h = lse - sum softmax(x) * x (exact form).
struct RowStats {
  bool valid = false;
  float max = kNegInf;
  double sum = 0.0;      // sum exp(x - max)
  double log_sum = 0.0;  // log of it: lse = max + log_sum
  double dbar = 0.0;     // sum softmax(x) * (x - max); H = log_sum - dbar
  double lse = 0.0;
  double h = 0.0;
};

inline RowStats merge(const Partial* p, int64_t nb) {
  RowStats r;
  bool nan = false;
  float m = kNegInf;
  for (int64_t b = 0; b < nb; ++b) {
    nan = nan || p[b].nan;
    m = std::max(m, p[b].m);
  }
  if (nan || !std::isfinite(m)) return r;  // NaN, +inf, or no finite entry
  double c = 0.0, s = 0.0, t = 0.0;  // relative to the row max: count at it, sum of the rest, sum exp(d) d
  for (int64_t b = 0; b < nb; ++b) {
    if (p[b].m == kNegInf) continue;
    if (p[b].m == m) {
      c += p[b].c;
      s += p[b].s;
      t += p[b].t;
      continue;
    }
    const double dm = static_cast<double>(p[b].m) - m;
    const double w = std::exp(dm);
    const double sb = p[b].c + p[b].s;
    s += sb * w;
    t += (p[b].t + dm * sb) * w;
  }
  r.valid = true;
  r.max = m;
  r.sum = c + s;
  r.log_sum = std::log(c) + std::log1p(s / c);
  r.dbar = t / r.sum;
  r.lse = m + r.log_sum;
  r.h = entropy_of(c, s, t);
  return r;
}

// 4K aliasing: a core checks a load against the stores still in flight by the low 12 address bits first, so a
// load from one row that sits at the same offset within a page as a row just stored waits for that store. A pass that
// stores one array while it loads another at the same index runs slow when the two start at the same page offset:
// EM-INF [8, 151936] took 4.0 ms against 2.9 ms when its output started at the input's page offset (Xeon, AMX; from
// 192 bytes apart on, 2.8-3.0 ms). Where arrays land is the allocator's choice, so scratch arrays are placed here:
// each array of a row's scratch starts 1 KiB further into the page than the one before (scratch_stride), and the
// first at the offset whose arrays lie furthest from the row's input and output (place_scratch).
constexpr int64_t kPageBytes = 4096;
constexpr int64_t kPageFloats = kPageBytes / static_cast<int64_t>(sizeof(float));
constexpr int64_t kLineFloats = 16;  // 64 bytes
// Scratch floats one row needs beyond its arrays: room to move its base anywhere within a page, 64-byte aligned.
constexpr int64_t kScratchSlack = kPageFloats + kLineFloats;

// Floats between consecutive scratch arrays of n floats: n rounded up to whole pages, plus a quarter page.
inline int64_t scratch_stride(int64_t n) { return (n + kPageFloats - 1) / kPageFloats * kPageFloats + kPageFloats / 4; }

inline int64_t page_offset(const void* p) { return static_cast<int64_t>(reinterpret_cast<uintptr_t>(p) % kPageBytes); }

// Circular distance of two page offsets, in bytes.
inline int64_t page_distance(int64_t a, int64_t b) {
  const int64_t d = ((a - b) % kPageBytes + kPageBytes) % kPageBytes;
  return std::min(d, kPageBytes - d);
}

// The base for `count` arrays at base + k * stride (k < count) within a slot of (count - 1) * stride + n +
// kScratchSlack floats: the 64-byte aligned point of the slot's first page whose arrays are furthest, by page offset,
// from every pointer of `avoid` (null entries ignored).
inline float* place_scratch(float* slot, int64_t stride, int64_t count, std::initializer_list<const void*> avoid) {
  float* first = slot + (kLineFloats - static_cast<int64_t>(reinterpret_cast<uintptr_t>(slot) / sizeof(float)) %
                                           kLineFloats) % kLineFloats;
  float* best = first;
  int64_t best_gap = -1;
  for (int64_t shift = 0; shift < kPageFloats; shift += kLineFloats) {
    float* base = first + shift;
    int64_t gap = kPageBytes;
    for (int64_t k = 0; k < count; ++k)
      for (const void* p : avoid)
        if (p) gap = std::min(gap, page_distance(page_offset(base + k * stride), page_offset(p)));
    if (gap > best_gap) {
      best_gap = gap;
      best = base;
    }
  }
  return best;
}

// Runs per-row state machines. A Task has: bool done() const; void block(int64_t b) (one vocabulary block of the
// current pass, any thread); void advance() (after all blocks of the pass: merge and move to the next pass);
// void bind(float* scratch) (its scratch space, `scratch_floats` floats, before the first pass; a row's scratch
// includes kScratchSlack for place_scratch).
//
// Rows mode (many rows): each thread runs whole rows one after the other, no barriers, scratch per thread.
// Blocks mode (fewer rows than a multiple of the threads): every pass of every active row is cut into its blocks,
// and all of them are spread over the threads by one at::parallel_for; scratch per row.
template <class Task>
void drive(std::vector<Task>& tasks, int64_t nblocks, int64_t scratch_floats, int64_t grain_blocks) {
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
  if (ntasks == 0) return;
  const int64_t nt = std::max<int64_t>(1, at::get_num_threads());
  const bool rows_mode = nt == 1 || at::in_parallel_region() || ntasks % nt == 0 || ntasks >= 4 * nt;
  if (rows_mode) {
    std::unique_ptr<float[]> scratch(scratch_floats > 0 ? new float[scratch_floats * nt] : nullptr);
    // A row of ~grain_blocks blocks or more is worth a thread of its own.
    const int64_t row_grain = std::max<int64_t>(1, grain_blocks / nblocks);
    at::parallel_for(0, ntasks, row_grain, [&](int64_t r0, int64_t r1) {
      float* mine = scratch ? scratch.get() + scratch_floats * at::get_thread_num() : nullptr;
      for (int64_t r = r0; r < r1; ++r) {
        Task& task = tasks[r];
        task.bind(mine);
        while (!task.done()) {
          for (int64_t b = 0; b < nblocks; ++b) task.block(b);
          task.advance();
        }
      }
    });
    return;
  }
  std::unique_ptr<float[]> scratch(scratch_floats > 0 ? new float[scratch_floats * ntasks] : nullptr);
  for (int64_t r = 0; r < ntasks; ++r) tasks[r].bind(scratch ? scratch.get() + scratch_floats * r : nullptr);
  std::vector<int64_t> active;
  for (;;) {
    active.clear();
    for (int64_t r = 0; r < ntasks; ++r)
      if (!tasks[r].done()) active.push_back(r);
    if (active.empty()) break;
    at::parallel_for(0, static_cast<int64_t>(active.size()) * nblocks, grain_blocks, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) tasks[active[i / nblocks]].block(i % nblocks);
    });
    for (int64_t r : active) tasks[r].advance();
  }
}

}  // namespace emk
