// CPU kernels of the public ops (kernels/ops.py): entropy, EM-INF and adaptive temperature.
//
// Each op is exactly the per-row computation of kernels/reference.py, organised as a per-row state machine of
// passes over vocabulary blocks (rowpass.h). Reads are in the input dtype, all maths in fp32 (row-level scalars in
// fp64), outputs in the input dtype. Invalid rows (NaN, +inf, or nothing finite) come back unchanged, flagged.
#include <torch/extension.h>

#include <cstring>
#include <tuple>
#include <vector>

#include "rowpass.h"
#include "simd.h"

namespace emk {
namespace {

template <class S>
struct RowIO {
  using T = typename S::T;
  const T* in = nullptr;
  T* out = nullptr;
  int64_t n = 0;
  bool in_place = false;  // out is the input row itself
  void copy_through() const {
    if (!in_place) std::memcpy(out, in, sizeof(T) * n);
  }
  int64_t block_len(int64_t b) const { return std::min(kBlock, n - b * kBlock); }
};

// ------------------------------------------------------------------------------------------------ entropy
template <class S>
struct EntropyTask {
  RowIO<S> io;
  float* result = nullptr;
  std::vector<Partial> part;
  bool finished = false;

  bool done() const { return finished; }
  void bind(float*) {}
  // Prefetching past the row's end is harmless (the next row, or nothing: prefetches do not fault).
  void block(int64_t b) { part[b] = block_stats<S>(io.in + b * kBlock, io.block_len(b), io.in + (b + 1) * kBlock); }
  void advance() {
    const RowStats r = merge(part.data(), static_cast<int64_t>(part.size()));
    *result = r.valid ? static_cast<float>(r.h) : std::numeric_limits<float>::quiet_NaN();
    finished = true;
  }
};

// ------------------------------------------------------------------------------------------------ EM-INF
// Per row: z0 = x, p0 = softmax(z0); up to `steps` Adam steps (torch.optim.Adam defaults, bias-corrected) on
// loss = H(q) + kl_weight * KL(p0 || q), q = softmax(z), stopping before a step when H(q) < threshold.
// Gradient in closed form: dKL/dz = q - p0 and, for the authors' H = -sum q log(q + eps), eps = 1e-12,
//   dH/dz_j = -q_j (a_j - sum_i q_i a_i),  a_j = log(q_j + eps) + q_j / (q_j + eps)
//           = -q_j (log q_j + H + c_j),     c_j = log(q_j + eps) - log q_j - eps / (q_j + eps),
// up to sum_i q_i c_i <= V eps (~1.5e-7 for V = 152k), which is dropped. c_j matters only in the tail, q_j < 1e-8
// (below it, c_j < 5e-9 and is left out): there Adam's step is ~lr g / 1e-8, proportional to g, and the eps
// changes g by 5-30%. log q + H = z - sum q z is evaluated as d - sum q d with d = z - max: on a flat row both
// log q and -H are ~log V and their sum would cancel to a relative error ~1e-3 in fp32 (which Adam's normalisation
// does not forgive after its first step). The threshold is checked on the exact-form H, which differs from the
// authors' by at most V eps.
// One pass per step: it applies the update from the row scalars (max, log sum exp(z - max), sum q d) of the
// current z and, in the same pass, collects the block statistics of the new z that give the next step's scalars.
// State: z (the fp32 output itself, or scratch for bf16/fp16), m, v. In place (out is the input), the steps after
// the first still need z0 (for p0), which the output overwrites: the stats pass copies it to scratch, block by block,
// and the update passes read it there.
struct EmInfParams {
  float lr;
  int64_t steps;
  float kl_weight;
  double threshold;
};

template <class S>
struct EmInfTask {
  static constexpr bool kF32 = std::is_same_v<S, F32>;
  RowIO<S> io;
  EmInfParams prm;
  bool* valid = nullptr;
  std::vector<Partial> part;

  float* z = nullptr;  // current logits (fp32)
  float* m = nullptr;  // Adam first moment
  float* v = nullptr;  // Adam second moment
  enum Phase { kInit, kUpdate, kDone } phase = kInit;
  int64_t k = 0;       // index of the step the next update pass applies
  float max0 = 0.0f, log_sum0 = 0.0f;           // of z0, for p0
  float max = 0.0f, log_sum = 0.0f, dbar = 0.0f;  // of the current z

  typename S::T* z0_copy = nullptr;  // in place: z0, copied by the stats pass

  // Scratch arrays: m, v, z (bf16/fp16 only), z0's copy (in place only), scratch_stride(n) floats apart.
  static int64_t arrays(bool in_place) { return (kF32 ? 2 : 3) + (in_place ? 1 : 0); }
  static int64_t scratch_floats(int64_t n, bool in_place) {
    return (arrays(in_place) - 1) * scratch_stride(n) + n + kScratchSlack;
  }
  bool done() const { return phase == kDone; }
  void bind(float* scratch) {
    const int64_t stride = scratch_stride(io.n);
    float* base = place_scratch(scratch, stride, arrays(io.in_place), {io.in, io.out});
    m = base;
    v = base + stride;
    if constexpr (kF32) z = io.out; else z = base + 2 * stride;
    if (io.in_place) z0_copy = reinterpret_cast<typename S::T*>(base + (kF32 ? 2 : 3) * stride);
  }

  void block(int64_t b) {
    const int64_t i0 = b * kBlock, n = io.block_len(b);
    if (phase == kInit) {
      part[b] = block_stats<S>(io.in + i0, n, io.in + i0 + kBlock);
      if (io.in_place) std::memcpy(z0_copy + i0, io.in + i0, sizeof(typename S::T) * n);
      return;
    }
    const float bm = update_block(i0, n);
    if (k + 1 < prm.steps) {  // the next step's scalars; none needed after the last step
      part[b].m = bm;
      part[b].nan = false;
      shifted_sums<F32, false>(z + i0, n, bm, 1.0f, part[b]);
    }
  }

  // One Adam step on elements [i0, i0 + n), as torch's single-tensor Adam does it in fp32:
  // m.lerp_(g, 1 - b1); v.mul_(b2).addcmul_(g, g, 1 - b2); z.addcdiv_(m, sqrt(v) / sqrt(bc2) + eps, -lr / bc1).
  // Returns the max of the updated z over the block.
  float update_block(int64_t i0, int64_t n) {
    const int64_t t = k + 1;
    const double bc1 = 1.0 - std::pow(0.9, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(0.999, static_cast<double>(t));
    const V neg_step = set1(static_cast<float>(-(static_cast<double>(prm.lr) / bc1)));
    const V bc2_sqrt = set1(static_cast<float>(std::sqrt(bc2)));
    const V eps = set1(1e-8f), w1 = set1(static_cast<float>(1.0 - 0.9)), b2 = set1(0.999f);
    const V w2 = set1(static_cast<float>(1.0 - 0.999));
    const V vmx = set1(max), vls = set1(log_sum), vdbar = set1(dbar), kw = set1(prm.kl_weight);
    const V vmx0 = set1(max0), vls0 = set1(log_sum0), clamp = set1(kDClamp), eps12 = set1(1e-12f);
    const bool first = k == 0;
    const typename S::T* x0 = io.in + i0;
    float* zb = z + i0;
    float* mb = m + i0;
    float* vb = v + i0;
    V bm = set1(kNegInf);
    vloop(n, [&](int64_t i, auto tag) {
      const V z0 = ld<S>(x0 + i, tag);
      const V zc = first ? z0 : ld<F32>(zb + i, tag);
      // d clamped: a masked token (-inf) has q = 0 and must give g = 0, not 0 * -inf
      const V d = vmax(sub(zc, vmx), clamp);
      const V lq = sub(d, vls);
      const V q = vexp(lq);
      V a = sub(d, vdbar);  // log q + H
      const M tail = lt(q, set1(1e-8f));
      if (any(tail)) {
        const V qe = add(q, eps12);
        a = add(a, maskz(tail, sub(sub(vlog(qe), lq), div(eps12, qe))));
      }
      const V p0 = first ? q : vexp(sub(sub(z0, vmx0), vls0));
      const V g = fmadd(kw, sub(q, p0), mul(mul(q, set1(-1.0f)), a));
      V mc = first ? zero() : ld<F32>(mb + i, tag);
      V vc = first ? zero() : ld<F32>(vb + i, tag);
      mc = fmadd(w1, sub(g, mc), mc);
      vc = fmadd(mul(w2, g), g, mul(vc, b2));
      const V denom = add(div(vsqrt(vc), bc2_sqrt), eps);
      const V zn = fmadd(neg_step, div(mc, denom), zc);
      st<F32>(mb + i, mc, tag);
      st<F32>(vb + i, vc, tag);
      st<F32>(zb + i, zn, tag);
      if constexpr (!kF32) st<S>(io.out + i0 + i, zn, tag);
      bm = vmax(zn, bm);
    });
    return hmax(bm);
  }

  void advance() {
    if (phase == kInit) {
      const RowStats r = merge(part.data(), static_cast<int64_t>(part.size()));
      *valid = r.valid;
      // The entropy check is on fp32 H, as the reference compares its fp32 tensor with the threshold.
      if (!r.valid || prm.steps == 0 || static_cast<double>(static_cast<float>(r.h)) < prm.threshold) {
        io.copy_through();
        phase = kDone;
        return;
      }
      if (io.in_place) io.in = z0_copy;  // the update passes read z0 from the copy
      max0 = max = r.max;
      log_sum0 = log_sum = static_cast<float>(r.log_sum);
      dbar = static_cast<float>(r.dbar);
      k = 0;
      phase = kUpdate;
      return;
    }
    ++k;
    if (k == prm.steps) {
      phase = kDone;
      return;
    }
    const RowStats r = merge(part.data(), static_cast<int64_t>(part.size()));
    max = r.max;
    log_sum = static_cast<float>(r.log_sum);
    dbar = static_cast<float>(r.dbar);
    if (!r.valid || static_cast<double>(static_cast<float>(r.h)) < prm.threshold) phase = kDone;
  }
};

// ------------------------------------------------------------------------------------------------ adaptive T
// The reference bisection per row (em_pt_semantics.md section 2) with H_eps(T) = -sum p log(p + 1e-9), p =
// softmax(z / T). Every H_eps the reference computes decides one of three outcomes by comparing it with
// target - tol, target and target + tol. One pass gives the exact-form entropy H of z / T, and
// H - 1e-9 * V <= H_eps <= H (since 0 <= p log(1 + eps / p) <= eps). When that bracket, widened by our rounding,
// holds none of the three boundaries the outcome is known; otherwise (rarely) a second pass computes H_eps itself.
// H(T=1) is bracketed the same way: the stats sweep already gives its exact-form H, so the threshold test and the
// target (an interval until then) need H_eps(1) itself only when a decision falls inside that interval's reach;
// then one eps sweep at T = 1 makes the target exact and the pending decision is taken again.
struct AdaptiveParams {
  double tmin, tmax;
  int64_t max_iter;
  double tol, target_ratio, threshold;
};

template <class S>
struct AdaptiveTask {
  RowIO<S> io;
  AdaptiveParams prm;
  float* temp = nullptr;
  bool* valid = nullptr;
  std::vector<Partial> part;

  enum Phase { kStats, kEps0, kBracket, kExact, kOutput, kDone } phase = kStats;
  float zmax = 0.0f;
  float inv_t = 1.0f;    // 1 / midpoint, for the entropy passes
  float inv_sum = 1.0f;  // 1 / sum exp((z - zmax) / T) of the current midpoint, for the exact H_eps pass
  double target = 0.0, lo = 0.0, hi = 0.0, mid = 1.0, t_result = 1.0;
  double target_hi = 0.0;   // target lies in [target, target_hi] until H_eps(1) is known exactly
  bool target_exact = false;
  double sum1 = 1.0;        // sum exp(z - zmax): the T = 1 normaliser, for an eps sweep at T = 1
  bool pending = false;     // an eps sweep at T = 1 was started for a midpoint's decision, whose sums are kept:
  double pending_h = 0.0, pending_total = 0.0;
  int64_t iter = 0;

  bool done() const { return phase == kDone; }
  void bind(float*) {}

  void block(int64_t b) {
    const int64_t i0 = b * kBlock, n = io.block_len(b);
    const typename S::T* x = io.in + i0;
    switch (phase) {
      case kStats: part[b] = block_stats<S>(x, n, x + kBlock); break;
      case kBracket: shifted_sums<S, true>(x, n, zmax, inv_t, part[b]); break;
      case kEps0:
      case kExact: part[b].s = eps_block(x, n); break;
      case kOutput: output_block(i0, n); break;
      case kDone: break;
    }
  }

  // sum over the block of p log(p + 1e-9), p = exp((z - zmax) / T) / sum.
  double eps_block(const typename S::T* x, int64_t n) const {
    const V vref = set1(zmax), vscale = set1(inv_t), vinv = set1(inv_sum);
    const V eps = set1(1e-9f);
    V acc = zero();
    vloop(n, [&](int64_t i, auto tag) {
      const V p = mul(vexp(mul(sub(ld<S>(x + i, tag), vref), vscale)), vinv);  // masked tokens: p = 0
      acc = fmadd(p, vlog(add(p, eps)), acc);
    });
    return hsum(acc);
  }

  // out = z / float(T), the fp32 division the reference does before casting to the input dtype.
  void output_block(int64_t i0, int64_t n) {
    const V vt = set1(static_cast<float>(t_result));
    vloop(n, [&](int64_t i, auto tag) { st<S>(io.out + i0 + i, div(ld<S>(io.in + i0 + i, tag), vt), tag); });
  }

  double sum_c() const {
    double c = 0.0;
    for (const Partial& p : part) c += p.c;
    return c;
  }
  double sum_s() const {
    double s = 0.0;
    for (const Partial& p : part) s += p.s;
    return s;
  }
  double sum_t() const {
    double t = 0.0;
    for (const Partial& p : part) t += p.t;
    return t;
  }

  // The reference's fixed point (kernels/reference.py): a midpoint equal to lo or hi is every later midpoint too,
  // and the reference returns it whatever its entropy and whatever max_iter is left, so it is the result, unswept.
  void start_midpoint() {
    mid = (lo + hi) / 2;
    if (mid == lo || mid == hi) return finish(mid);
    inv_t = static_cast<float>(1.0 / mid);
    phase = kBracket;
  }

  void finish(double t) {
    t_result = t;
    *temp = static_cast<float>(t);
    if (static_cast<float>(t) == 1.0f) {  // z / 1 == z: the output is the input
      io.copy_through();
      phase = kDone;
    } else {
      phase = kOutput;
    }
  }

  // [lo, hi] holding the H_eps that the reference computes where our exact-form entropy is h. Our rounding (fp32
  // lane sums, ~1-ulp exp) is far below this margin.
  void bracket(double h, double& lo_b, double& hi_b) const {
    const double err = 2e-5 * (1.0 + std::abs(h));
    lo_b = h - 1e-9 * static_cast<double>(io.n) - err;
    hi_b = h + err;
  }

  void eps_sweep_at_one(bool for_pending) {
    pending = for_pending;
    inv_t = 1.0f;
    inv_sum = static_cast<float>(1.0 / sum1);
    phase = kEps0;
  }

  void start_bisection() {
    lo = prm.tmin;
    hi = prm.tmax;
    iter = 0;
    start_midpoint();
  }

  // The midpoint's outcome from its exact-form entropy h when the brackets of H_eps and of the target settle every
  // comparison (then any point of them decides alike: h and the target's low end); otherwise first the exact
  // target, then the exact H_eps (the normaliser `total` is that of z / mid).
  void judge(double h, double total) {
    double lo_b, hi_b;
    bracket(h, lo_b, hi_b);
    bool ambiguous = false;
    for (double shift : {-prm.tol, 0.0, prm.tol})
      ambiguous = ambiguous || (lo_b <= target_hi + shift && target + shift <= hi_b);
    if (!ambiguous) return decide(h);
    if (!target_exact) {
      pending_h = h;
      pending_total = total;
      return eps_sweep_at_one(true);
    }
    inv_sum = static_cast<float>(1.0 / total);
    phase = kExact;
  }

  // One reference iteration's outcome from its entropy h (already rounded to fp32 as the reference's is).
  void decide(double h) {
    ++iter;
    if (std::abs(h - target) < prm.tol) return finish(mid);
    if (h < target) lo = mid; else hi = mid;
    if (iter == prm.max_iter) return finish(mid);  // not converged: the last midpoint
    start_midpoint();
  }

  void advance() {
    switch (phase) {
      case kStats: {
        const RowStats r = merge(part.data(), static_cast<int64_t>(part.size()));
        *valid = r.valid;
        if (!r.valid) {
          *temp = 1.0f;
          io.copy_through();
          phase = kDone;
          return;
        }
        zmax = r.max;
        sum1 = r.sum;
        if (prm.max_iter == 0) return finish(1.0);
        double h0_lo, h0_hi;
        bracket(r.h, h0_lo, h0_hi);
        if (h0_hi <= prm.threshold) return finish(1.0);  // !(H_eps(1) > threshold) for sure
        if (!(h0_lo > prm.threshold)) return eps_sweep_at_one(false);  // the threshold test needs H_eps(1)
        target = std::max(prm.threshold, prm.target_ratio * h0_lo);
        target_hi = std::max(prm.threshold, prm.target_ratio * h0_hi);
        target_exact = false;
        return start_bisection();
      }
      case kEps0: {
        const double h0 = static_cast<float>(-sum_s());
        if (!pending && !(h0 > prm.threshold)) return finish(1.0);
        target = target_hi = std::max(prm.threshold, prm.target_ratio * h0);
        target_exact = true;
        if (!pending) return start_bisection();
        pending = false;
        inv_t = static_cast<float>(1.0 / mid);
        return judge(pending_h, pending_total);
      }
      case kBracket: {
        const double c = sum_c(), s = sum_s();
        return judge(entropy_of(c, s, sum_t()), c + s);  // exact-form entropy of z / mid, and its normaliser
      }
      case kExact: return decide(static_cast<float>(-sum_s()));
      case kOutput: phase = kDone; return;
      case kDone: return;
    }
  }
};

// ------------------------------------------------------------------------------------------------ dispatch
void check_logits(const at::Tensor& x) {
  TORCH_CHECK(x.device().is_cpu(), "kernels._C: logits must be a CPU tensor");
  TORCH_CHECK(x.dim() == 2, "kernels._C: logits must have shape [B, V], got ", x.sizes());
  TORCH_CHECK(x.is_contiguous(), "kernels._C: logits must be contiguous");
  TORCH_CHECK(x.size(1) > 0 || x.size(0) == 0, "kernels._C: logits must have V > 0");
  const auto dt = x.scalar_type();
  TORCH_CHECK(dt == at::kFloat || dt == at::kBFloat16 || dt == at::kHalf,
              "kernels._C: logits must be float32, bfloat16 or float16, got ", dt);
}

template <class F>
void dispatch_storage(at::ScalarType dt, F&& f) {
  switch (dt) {
    case at::kFloat: f(F32{}); break;
    case at::kBFloat16: f(BF16{}); break;
    case at::kHalf: f(F16{}); break;
    default: TORCH_CHECK(false, "kernels._C: unsupported dtype ", dt);
  }
}

template <class S>
RowIO<S> row_io(const at::Tensor& in, at::Tensor* out, int64_t r) {
  using T = typename S::T;
  const int64_t n = in.size(1);
  RowIO<S> io;
  io.in = static_cast<const T*>(in.const_data_ptr()) + r * n;
  io.out = out ? static_cast<T*>(out->mutable_data_ptr()) + r * out->stride(0) : nullptr;
  io.n = n;
  io.in_place = io.out != nullptr && static_cast<const void*>(io.out) == static_cast<const void*>(io.in);
  return io;
}

// A hyper-parameter: one value for every row, or a [B] tensor of per-row values (float32/float64, or int32/int64
// for the integer ones). Per-row values are read as they are; integers are clamped to [lo, hi] (the schema's range
// and the caller's bound), so that no value can run a loop away; NaN floats give a garbage row, never a hang.
struct RowParam {
  double value = 0.0;
  const void* data = nullptr;
  at::ScalarType dtype = at::kDouble;

  RowParam(double v, const c10::optional<at::Tensor>& t, int64_t batch, const char* name) : value(v) {
    if (!t.has_value()) return;
    const at::Tensor& x = *t;
    TORCH_CHECK(x.device().is_cpu() && x.dim() == 1 && x.size(0) == batch && x.is_contiguous(), "kernels._C: ",
                name, " must be a contiguous CPU tensor of shape [", batch, "]");
    dtype = x.scalar_type();
    TORCH_CHECK(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kInt || dtype == at::kLong,
                "kernels._C: ", name, " must be float32, float64, int32 or int64, got ", dtype);
    data = x.const_data_ptr();
  }
  double at(int64_t r) const {
    if (!data) return value;
    switch (dtype) {
      case at::kFloat: return static_cast<const float*>(data)[r];
      case at::kDouble: return static_cast<const double*>(data)[r];
      case at::kInt: return static_cast<const int32_t*>(data)[r];
      default: return static_cast<double>(static_cast<const int64_t*>(data)[r]);
    }
  }
  int64_t at_int(int64_t r, int64_t lo, int64_t hi) const {
    if (data && dtype == at::kLong) return std::clamp(static_cast<const int64_t*>(data)[r], lo, hi);
    const double x = at(r);
    if (!(x >= static_cast<double>(lo))) return lo;  // NaN too (float tensors are refused above for ints)
    return x >= static_cast<double>(hi) ? hi : static_cast<int64_t>(x);
  }
};

// The outputs and the rows to process: `out` given (maybe the input itself) or a new tensor, and `rows` an optional
// [B] bool mask. Rows it leaves out are not written when out was given, copied through otherwise.
const bool* row_mask(const c10::optional<at::Tensor>& rows, int64_t batch) {
  if (!rows.has_value()) return nullptr;
  TORCH_CHECK(rows->device().is_cpu() && rows->scalar_type() == at::kBool && rows->dim() == 1 &&
                  rows->size(0) == batch && rows->is_contiguous(),
              "kernels._C: rows must be a contiguous CPU bool tensor of shape [", batch, "]");
  return rows->const_data_ptr<bool>();
}

// A new output starts half a page after the input's page offset (4K aliasing, rowpass.h): rows of equal length keep
// that distance row by row. It is a view of a buffer up to a page longer, contiguous like the input.
at::Tensor output_for(const at::Tensor& logits, const c10::optional<at::Tensor>& out) {
  if (!out.has_value()) {
    const int64_t item = logits.element_size(), numel = logits.numel();
    at::Tensor buf = at::empty({numel + kPageBytes / item}, logits.options());
    const int64_t want = (page_offset(logits.const_data_ptr()) + kPageBytes / 2) % kPageBytes;
    const int64_t shift = ((want - page_offset(buf.const_data_ptr())) % kPageBytes + kPageBytes) % kPageBytes;
    return buf.narrow(0, shift / item, numel).view(logits.sizes());
  }
  const at::Tensor& o = *out;
  TORCH_CHECK(o.device().is_cpu() && o.scalar_type() == logits.scalar_type() && o.sizes() == logits.sizes(),
              "kernels._C: out must be a CPU tensor of the logits' shape and dtype");
  TORCH_CHECK(o.size(0) <= 1 || (o.stride(1) == 1 && o.stride(0) >= o.size(1)) || o.size(1) <= 1,
              "kernels._C: out must have unit stride along V and non-overlapping rows");
  return o;
}

template <class S>
void copy_skipped(const at::Tensor& in, at::Tensor& out, const bool* mask, bool out_given) {
  if (!mask || out_given) return;
  for (int64_t r = 0; r < in.size(0); ++r)
    if (!mask[r]) row_io<S>(in, &out, r).copy_through();
}

// Grain of the blocks mode: about 16k elements of exp-heavy work before a second thread is worth waking.
constexpr int64_t kGrainBlocks = 8;

at::Tensor entropy(const at::Tensor& logits) {
  check_logits(logits);
  const int64_t B = logits.size(0), n = logits.size(1);
  at::Tensor h = at::empty({B}, logits.options().dtype(at::kFloat));
  if (B == 0) return h;
  const int64_t nb = num_blocks(n);
  dispatch_storage(logits.scalar_type(), [&](auto s) {
    using S = decltype(s);
    std::vector<EntropyTask<S>> tasks(B);
    for (int64_t r = 0; r < B; ++r) {
      tasks[r].io = row_io<S>(logits, nullptr, r);
      tasks[r].result = h.data_ptr<float>() + r;
      tasks[r].part.resize(nb);
    }
    drive(tasks, nb, 0, 2 * kGrainBlocks);  // a read-bound pass: larger grain
  });
  return h;
}

std::tuple<at::Tensor, at::Tensor> em_inf(const at::Tensor& logits, double lr, const c10::optional<at::Tensor>& lr_t,
                                          int64_t steps, const c10::optional<at::Tensor>& steps_t, double kl_weight,
                                          const c10::optional<at::Tensor>& kl_weight_t, double threshold,
                                          const c10::optional<at::Tensor>& threshold_t,
                                          const c10::optional<at::Tensor>& rows, const c10::optional<at::Tensor>& out_,
                                          int64_t steps_high) {
  check_logits(logits);
  TORCH_CHECK(steps >= 0 && steps_high >= 0, "kernels._C.em_inf: steps must be >= 0");
  const int64_t B = logits.size(0), n = logits.size(1);
  at::Tensor out = output_for(logits, out_);
  at::Tensor valid = at::zeros({B}, logits.options().dtype(at::kBool));
  if (B == 0) return {out, valid};
  const RowParam p_lr(lr, lr_t, B, "lr"), p_steps(static_cast<double>(steps), steps_t, B, "steps");
  const RowParam p_kl(kl_weight, kl_weight_t, B, "kl_weight"), p_thr(threshold, threshold_t, B, "threshold");
  const bool* mask = row_mask(rows, B);
  const int64_t nb = num_blocks(n);
  const bool in_place = out.const_data_ptr() == logits.const_data_ptr();
  dispatch_storage(logits.scalar_type(), [&](auto s) {
    using S = decltype(s);
    copy_skipped<S>(logits, out, mask, out_.has_value());
    std::vector<EmInfTask<S>> tasks;
    tasks.reserve(B);
    for (int64_t r = 0; r < B; ++r) {
      if (mask && !mask[r]) {
        valid.data_ptr<bool>()[r] = true;
        continue;
      }
      EmInfTask<S>& task = tasks.emplace_back();
      task.io = row_io<S>(logits, &out, r);
      task.prm = EmInfParams{static_cast<float>(p_lr.at(r)), p_steps.at_int(r, 0, steps_high),
                             static_cast<float>(p_kl.at(r)), p_thr.at(r)};
      task.valid = valid.data_ptr<bool>() + r;
      task.part.resize(nb);
    }
    drive(tasks, nb, EmInfTask<S>::scratch_floats(n, in_place), kGrainBlocks);
  });
  return {out, valid};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_temperature(
    const at::Tensor& logits, double tmin, const c10::optional<at::Tensor>& tmin_t, double tmax,
    const c10::optional<at::Tensor>& tmax_t, int64_t max_iter, const c10::optional<at::Tensor>& max_iter_t,
    double tol, const c10::optional<at::Tensor>& tol_t, double target_ratio,
    const c10::optional<at::Tensor>& target_ratio_t, double threshold, const c10::optional<at::Tensor>& threshold_t,
    const c10::optional<at::Tensor>& rows, const c10::optional<at::Tensor>& out_, int64_t max_iter_high) {
  check_logits(logits);
  TORCH_CHECK(max_iter >= 0 && max_iter_high >= 0, "kernels._C.adaptive_temperature: max_iter must be >= 0");
  const int64_t B = logits.size(0), n = logits.size(1);
  at::Tensor out = output_for(logits, out_);
  at::Tensor temps = at::ones({B}, logits.options().dtype(at::kFloat));
  at::Tensor valid = at::zeros({B}, logits.options().dtype(at::kBool));
  if (B == 0) return {out, temps, valid};
  const RowParam p_tmin(tmin, tmin_t, B, "tmin"), p_tmax(tmax, tmax_t, B, "tmax");
  const RowParam p_iter(static_cast<double>(max_iter), max_iter_t, B, "max_iter"), p_tol(tol, tol_t, B, "tol");
  const RowParam p_ratio(target_ratio, target_ratio_t, B, "target_ratio");
  const RowParam p_thr(threshold, threshold_t, B, "threshold");
  const bool* mask = row_mask(rows, B);
  const int64_t nb = num_blocks(n);
  dispatch_storage(logits.scalar_type(), [&](auto s) {
    using S = decltype(s);
    copy_skipped<S>(logits, out, mask, out_.has_value());
    std::vector<AdaptiveTask<S>> tasks;
    tasks.reserve(B);
    for (int64_t r = 0; r < B; ++r) {
      if (mask && !mask[r]) {
        valid.data_ptr<bool>()[r] = true;
        continue;
      }
      AdaptiveTask<S>& task = tasks.emplace_back();
      task.io = row_io<S>(logits, &out, r);
      task.prm = AdaptiveParams{p_tmin.at(r), p_tmax.at(r), p_iter.at_int(r, 0, max_iter_high), p_tol.at(r),
                                p_ratio.at(r), p_thr.at(r)};
      task.temp = temps.data_ptr<float>() + r;
      task.valid = valid.data_ptr<bool>() + r;
      task.part.resize(nb);
    }
    drive(tasks, nb, 0, kGrainBlocks);
  });
  return {out, temps, valid};
}

}  // namespace
}  // namespace emk

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "Fused CPU kernels of kernels.ops (entropy, EM-INF, adaptive temperature); see kernels/reference.py";
  m.attr("simd_width") = emk::W;  // 16 with AVX-512, 8 with AVX2, 1 for the portable scalar build
  m.def("entropy", &emk::entropy, py::arg("logits"), py::call_guard<py::gil_scoped_release>(),
        "Entropy in nats per row of [B, V] logits -> [B] fp32 (NaN for invalid rows).");
  m.def("em_inf", &emk::em_inf, py::arg("logits"), py::arg("lr"), py::arg("lr_t"), py::arg("steps"),
        py::arg("steps_t"), py::arg("kl_weight"), py::arg("kl_weight_t"), py::arg("threshold"),
        py::arg("threshold_t"), py::arg("rows"), py::arg("out"), py::arg("steps_high"),
        py::call_guard<py::gil_scoped_release>(),
        "EM-INF Adam steps per row -> (logits' [B, V] in the input dtype, valid [B] bool). Each hyper-parameter is a "
        "scalar, or (x_t) a [B] tensor of per-row values; steps clamped to [0, steps_high]; rows: optional [B] bool "
        "mask of the rows to process; out: optional output (may be logits itself).");
  m.def("adaptive_temperature", &emk::adaptive_temperature, py::arg("logits"), py::arg("tmin"), py::arg("tmin_t"),
        py::arg("tmax"), py::arg("tmax_t"), py::arg("max_iter"), py::arg("max_iter_t"), py::arg("tol"),
        py::arg("tol_t"), py::arg("target_ratio"), py::arg("target_ratio_t"), py::arg("threshold"),
        py::arg("threshold_t"), py::arg("rows"), py::arg("out"), py::arg("max_iter_high"),
        py::call_guard<py::gil_scoped_release>(),
        "Bisection temperature per row -> (logits / T in the input dtype, T [B] fp32, valid [B] bool); per-row "
        "parameters, rows and out as for em_inf; max_iter clamped to [0, max_iter_high].");
}
