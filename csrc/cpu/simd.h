// A minimal SIMD layer for the CPU kernels: one vector type `V` of `W` fp32 lanes, a lane mask `M`, loads and stores
// of fp32/bf16/fp16 rows (converted to fp32 in registers), and a fast exp/log accurate to about 1-2 ulp.
//
// Three implementations with the same interface, picked by what the compiler targets (setup.py builds with
// -march=native):
//   - AVX-512 (F, BW, VL, DQ): W = 16.
//   - AVX2 + FMA + F16C, without that AVX-512 set: W = 8 (AMD Zen 2/3, Intel client cores).
//   - scalar: W = 1, std::exp / std::log. Correct everywhere (EM_PORTABLE_BUILD=1 builds), just not fast.
// The kernels are written once against this interface, so all give the same results up to exp/log rounding.
//
// Tails: every loop over n elements runs full vectors with plain loads/stores and at most one masked tail vector
// (`vloop`). Masked-out lanes load as -inf, the neutral element of every reduction the kernels do (max, sum exp).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define EMK_AVX512 1
#define EMK_AVX2 0
#include <immintrin.h>
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define EMK_AVX512 0
#define EMK_AVX2 1
#include <immintrin.h>
#else
#define EMK_AVX512 0
#define EMK_AVX2 0
#endif

namespace emk {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr float kPosInf = std::numeric_limits<float>::infinity();
// exp(x) for x below this underflows to 0 (we never produce denormals: they are slow on some cores and the values
// they would carry, < 1.2e-38, are far below anything the kernels can observe).
constexpr float kExpLow = -87.33654f;
// Clamp for log-probabilities before they multiply a probability: exp(kDClamp) == 0 exactly, so 0 * kDClamp == 0
// where 0 * -inf (a masked token) would be NaN.
constexpr float kDClamp = -104.0f;

// Storage tags: the row element type as stored in memory.
struct F32 { using T = float; };
struct BF16 { using T = uint16_t; };
struct F16 { using T = uint16_t; };

#if EMK_AVX512

constexpr int W = 16;
using V = __m512;
using M = __mmask16;

struct Full {};
struct Tail { M k; };

inline V set1(float x) { return _mm512_set1_ps(x); }
inline V zero() { return _mm512_setzero_ps(); }
inline V add(V a, V b) { return _mm512_add_ps(a, b); }
inline V sub(V a, V b) { return _mm512_sub_ps(a, b); }
inline V mul(V a, V b) { return _mm512_mul_ps(a, b); }
inline V div(V a, V b) { return _mm512_div_ps(a, b); }
inline V fmadd(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }  // a * b + c
inline V vsqrt(V a) { return _mm512_sqrt_ps(a); }
// max/min return the second operand when either is NaN; callers put the value that may be NaN first so that
// NaN is dropped (NaN rows are detected separately through `isnan`).
inline V vmax(V a, V b) { return _mm512_max_ps(a, b); }
inline V maskz(M k, V a) { return _mm512_maskz_mov_ps(k, a); }  // k ? a : 0
inline M lt(V a, V b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline M isnan(V a) { return _mm512_cmp_ps_mask(a, a, _CMP_UNORD_Q); }
inline V mask_add(V src, M k, V a, V b) { return _mm512_mask_add_ps(src, k, a, b); }  // k ? a + b : src
inline M mor(M a, M b) { return static_cast<M>(a | b); }
inline bool any(M k) { return k != 0; }
inline int popcount(M k) { return __builtin_popcount(static_cast<unsigned>(k)); }
inline float hmax(V a) { return _mm512_reduce_max_ps(a); }
// Horizontal sum in fp64: lane sums are fp32, their total is not rounded again to fp32.
inline double hsum(V a) {
  __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(a));
  __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(a, 1));
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

inline M tail_mask(int64_t n) { return static_cast<M>((1u << n) - 1u); }

// exp(x) for x <= 88.7 (overflow gives +inf through scalef); exactly 0 outside `keep` (no denormals).
// x = (k / 16) ln2 + r with k = round(16 x / ln2), |r| <= ln2 / 32 (Cody-Waite, two-part ln2); k/16 comes out of
// one FMA against a shifter whose ulp is 1/16, which also leaves k mod 16 in the low mantissa bits to index a
// 16-entry table of 2^(j/16) held in one register. e^r needs only a cubic there. About 1 ulp over [-87, 0], and
// 7 FMA-pipe ops: the exp is the whole cost of the memory-bound passes.
inline V vexp(V x, M keep) {
  const V tab = _mm512_setr_ps(1.0f, 1.0442737824274138f, 1.0905077326652577f, 1.1387886347566916f,
                               1.189207115002721f, 1.2418578120734840f, 1.2968395546510096f, 1.3542555469368927f,
                               1.4142135623730951f, 1.4768261459394993f, 1.5422108254079407f, 1.6104903319492543f,
                               1.6817928305074290f, 1.7562521603732995f, 1.8340080864093424f, 1.9152065613971474f);
  const V shifter = set1(786432.0f);  // 1.5 * 2^19: adding it rounds to a multiple of 1/16
  const V kb = fmadd(x, set1(1.44269504088896341f), shifter);
  const V k16 = sub(kb, shifter);  // k / 16, exact
  V r = _mm512_fnmadd_ps(k16, set1(0.693359375f), x);
  r = _mm512_fnmadd_ps(k16, set1(-2.12194440e-4f), r);
  V y = fmadd(set1(0.16666666666666666f), r, set1(0.5f));
  y = fmadd(y, r, set1(1.0f));
  const V t = _mm512_permutexvar_ps(_mm512_castps_si512(kb), tab);  // index: the low 4 bits, k mod 16
  y = fmadd(mul(t, r), y, t);                                         // t e^r = t + t r (1 + r/2 + r^2/6)
  return _mm512_maskz_scalef_ps(keep, y, k16);                        // * 2^floor(k/16)
}
// Lanes whose exp is computed: x >= kExpLow, and NaN (so that a NaN input reaches the sums it feeds).
inline M exp_keep(V x) { return _mm512_cmp_ps_mask(x, set1(kExpLow), _CMP_NLT_UQ); }
inline V vexp(V x) { return vexp(x, exp_keep(x)); }
inline V mask_fmadd(V a, V b, V c, M k) { return _mm512_mask3_fmadd_ps(a, b, c, k); }  // k ? a * b + c : c

// x = m * 2^e with m in (sqrt(1/2), sqrt(2)], e integral, for normal positive x: the split vlog needs.
inline void log_split(V x, V& e, V& m) {
  e = _mm512_getexp_ps(x);
  m = _mm512_getmant_ps(x, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src);  // x = m * 2^e, m in [1, 2)
  const M big = _mm512_cmp_ps_mask(m, set1(1.41421356237f), _CMP_GT_OQ);
  m = _mm512_mask_mul_ps(m, big, m, set1(0.5f));  // m in [sqrt(1/2), sqrt(2)): polynomial's range
  e = _mm512_mask_add_ps(e, big, e, set1(1.0f));
}

// ---- loads (masked-out tail lanes read as -inf) ----
inline V load(const float* p, Full) { return _mm512_loadu_ps(p); }
inline V load(const float* p, Tail t) { return _mm512_mask_loadu_ps(set1(kNegInf), t.k, p); }

inline V bf16_to_f32(__m256i h) { return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)); }
inline V load(const BF16::T* p, Full, BF16) {
  return bf16_to_f32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline V load(const BF16::T* p, Tail t, BF16) {
  return _mm512_mask_mov_ps(set1(kNegInf), t.k, bf16_to_f32(_mm256_maskz_loadu_epi16(t.k, p)));
}
inline V load(const F16::T* p, Full, F16) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
}
inline V load(const F16::T* p, Tail t, F16) {
  return _mm512_mask_mov_ps(set1(kNegInf), t.k, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(t.k, p)));
}

// ---- stores (round to nearest even, as c10::BFloat16 / c10::Half conversions do) ----
inline void store(float* p, V v, Full) { _mm512_storeu_ps(p, v); }
inline void store(float* p, V v, Tail t) { _mm512_mask_storeu_ps(p, t.k, v); }

inline __m256i f32_to_bf16(V v) {
  const __m512i bits = _mm512_castps_si512(v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(bits, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(bits, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7FFF))), 16);
  r = _mm512_mask_mov_epi32(r, isnan(v), _mm512_set1_epi32(0x7FC0));
  return _mm512_cvtepi32_epi16(r);
}
inline void store(BF16::T* p, V v, Full, BF16) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), f32_to_bf16(v));
}
inline void store(BF16::T* p, V v, Tail t, BF16) { _mm256_mask_storeu_epi16(p, t.k, f32_to_bf16(v)); }
inline void store(F16::T* p, V v, Full, F16) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
inline void store(F16::T* p, V v, Tail t, F16) {
  _mm256_mask_storeu_epi16(p, t.k, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}

#elif EMK_AVX2

constexpr int W = 8;
using V = __m256;
using M = __m256;  // all-ones / all-zeros lanes: blends and logic stay in vector registers, as the kernels use them

struct Full {};
struct Tail { M k; };

inline V set1(float x) { return _mm256_set1_ps(x); }
inline V zero() { return _mm256_setzero_ps(); }
inline V add(V a, V b) { return _mm256_add_ps(a, b); }
inline V sub(V a, V b) { return _mm256_sub_ps(a, b); }
inline V mul(V a, V b) { return _mm256_mul_ps(a, b); }
inline V div(V a, V b) { return _mm256_div_ps(a, b); }
inline V fmadd(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }  // a * b + c
inline V vsqrt(V a) { return _mm256_sqrt_ps(a); }
inline V vmax(V a, V b) { return _mm256_max_ps(a, b); }  // NaN in either yields b, as the AVX-512 version
inline V maskz(M k, V a) { return _mm256_and_ps(k, a); }
inline M lt(V a, V b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
inline M isnan(V a) { return _mm256_cmp_ps(a, a, _CMP_UNORD_Q); }
inline V mask_add(V src, M k, V a, V b) { return _mm256_blendv_ps(src, _mm256_add_ps(a, b), k); }
inline M mor(M a, M b) { return _mm256_or_ps(a, b); }
inline int bitmask(M k) { return _mm256_movemask_ps(k); }
inline bool any(M k) { return bitmask(k) != 0; }
inline int popcount(M k) { return __builtin_popcount(static_cast<unsigned>(bitmask(k))); }
inline float hmax(V a) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  m = _mm_max_ss(m, _mm_movehdup_ps(m));
  return _mm_cvtss_f32(m);
}
// Horizontal sum in fp64: lane sums are fp32, their total is not rounded again to fp32.
inline double hsum(V a) {
  const __m256d lo = _mm256_cvtps_pd(_mm256_castps256_ps128(a));
  const __m256d s = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_extractf128_ps(a, 1)));
  const __m128d h = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));
  return _mm_cvtsd_f64(_mm_add_sd(h, _mm_unpackhi_pd(h, h)));
}

inline M tail_mask(int64_t n) {
  return _mm256_castsi256_ps(
      _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
}

// exp(x), overflowing to +inf; exactly 0 outside `keep` (no denormals).
// The AVX-512 scheme with an 8-entry table: AVX2's one-register lookup (permutevar8x32) holds 2^(j/8), so
// x = (k / 8) ln2 + r with |r| <= ln2 / 16 and e^r needs a quartic (one FMA more than AVX-512's cubic, cheaper than
// a second lookup and a blend). About 1 ulp over [-87, 88.7]. scalef becomes a multiply by 2^floor(k/8), whose
// exponent field the shifter leaves ready in kb: exact, and NaN stays NaN. k/8 is capped at 127.875 so that
// 2^floor(k/8) always encodes: above x = 88.68 the cap leaves a larger r, which the quartic still follows to ~1 ulp
// up to the overflow at 88.72, and past it e^r itself grows to +inf. Below kExpLow (floor(k/8) < -126, no
// encoding) `keep` clears the lane; from kExpLow up the result is normal.
inline V vexp(V x, M keep) {
  const V tab = _mm256_setr_ps(1.0f, 1.0905077326652577f, 1.189207115002721f, 1.2968395546510096f,
                               1.4142135623730951f, 1.5422108254079407f, 1.6817928305074290f, 1.8340080864093424f);
  // 1.5 * 2^20 + 127: adding it rounds to a multiple of 1/8, and leaves k + 8 * 127 in the low mantissa bits
  const V shifter = set1(1572991.0f);
  const V kb = _mm256_min_ps(fmadd(x, set1(1.44269504088896341f), shifter), set1(1572991.0f + 127.875f));
  const V k8 = sub(kb, shifter);  // k / 8, exact
  V r = _mm256_fnmadd_ps(k8, set1(0.693359375f), x);
  r = _mm256_fnmadd_ps(k8, set1(-2.12194440e-4f), r);
  V y = fmadd(set1(0.041666666666666664f), r, set1(0.16666666666666666f));
  y = fmadd(y, r, set1(0.5f));
  y = fmadd(y, r, set1(1.0f));
  const __m256i kbits = _mm256_castps_si256(kb);
  const V t = _mm256_permutevar8x32_ps(tab, kbits);  // index: the low 3 bits, k mod 8
  y = fmadd(mul(t, r), y, t);                         // t e^r = t + t r (1 + r/2 + r^2/6 + r^3/24)
  // 2^floor(k/8): bits 3-11 of kb hold floor(k/8) + 127, the biased exponent
  const V scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_srli_epi32(kbits, 3), 23));
  return _mm256_and_ps(keep, mul(y, scale));
}
// Lanes whose exp is computed: x >= kExpLow, and NaN (so that a NaN input reaches the sums it feeds).
inline M exp_keep(V x) { return _mm256_cmp_ps(x, set1(kExpLow), _CMP_NLT_UQ); }
inline V vexp(V x) { return vexp(x, exp_keep(x)); }
inline V mask_fmadd(V a, V b, V c, M k) { return _mm256_blendv_ps(c, fmadd(a, b, c), k); }  // k ? a * b + c : c

// x = m * 2^e with m in (sqrt(1/2), sqrt(2)], e integral, for normal positive x: getexp/getmant and the halving
// of the AVX-512 version in integer arithmetic. Offsetting the bits by those of the range's low end (just above
// sqrt(1/2)) makes the exponent field's carry do the halving.
inline void log_split(V x, V& e, V& m) {
  const __m256i lo = _mm256_set1_epi32(0x3F3504F4);  // the float after sqrt(1/2)
  const __m256i ix = _mm256_sub_epi32(_mm256_castps_si256(x), lo);
  e = _mm256_cvtepi32_ps(_mm256_srai_epi32(ix, 23));
  m = _mm256_castsi256_ps(_mm256_add_epi32(_mm256_and_si256(ix, _mm256_set1_epi32(0x007FFFFF)), lo));
}

// ---- loads (masked-out tail lanes read as -inf) ----
// 16-bit rows have no masked load below AVX-512: their tail (at most once per row) goes through a small buffer.
inline int tail_len(Tail t) { return __builtin_popcount(static_cast<unsigned>(bitmask(t.k))); }

inline V load(const float* p, Full) { return _mm256_loadu_ps(p); }
inline V load(const float* p, Tail t) {
  return _mm256_blendv_ps(set1(kNegInf), _mm256_maskload_ps(p, _mm256_castps_si256(t.k)), t.k);
}

inline __m128i load8(const uint16_t* p) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p)); }
inline __m128i load8(const uint16_t* p, Tail t) {
  uint16_t buf[8] = {};
  std::memcpy(buf, p, sizeof(uint16_t) * tail_len(t));
  return load8(buf);
}
inline V bf16_to_f32(__m128i h) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)); }
inline V load(const BF16::T* p, Full, BF16) { return bf16_to_f32(load8(p)); }
inline V load(const BF16::T* p, Tail t, BF16) {
  return _mm256_blendv_ps(set1(kNegInf), bf16_to_f32(load8(p, t)), t.k);
}
inline V load(const F16::T* p, Full, F16) { return _mm256_cvtph_ps(load8(p)); }
inline V load(const F16::T* p, Tail t, F16) {
  return _mm256_blendv_ps(set1(kNegInf), _mm256_cvtph_ps(load8(p, t)), t.k);
}

// ---- stores (round to nearest even, as c10::BFloat16 / c10::Half conversions do) ----
inline void store(float* p, V v, Full) { _mm256_storeu_ps(p, v); }
inline void store(float* p, V v, Tail t) { _mm256_maskstore_ps(p, _mm256_castps_si256(t.k), v); }

inline void store8(uint16_t* p, __m128i h) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), h); }
inline void store8(uint16_t* p, __m128i h, Tail t) {
  uint16_t buf[8];
  store8(buf, h);
  std::memcpy(p, buf, sizeof(uint16_t) * tail_len(t));
}
inline __m128i f32_to_bf16(V v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(bits, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF))), 16);
  r = _mm256_castps_si256(
      _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(_mm256_set1_epi32(0x7FC0)), isnan(v)));
  // every lane is in [0, 0xFFFF]: the unsigned-saturating pack is exact
  return _mm_packus_epi32(_mm256_castsi256_si128(r), _mm256_extracti128_si256(r, 1));
}
inline __m128i f32_to_f16(V v) { return _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline void store(BF16::T* p, V v, Full, BF16) { store8(p, f32_to_bf16(v)); }
inline void store(BF16::T* p, V v, Tail t, BF16) { store8(p, f32_to_bf16(v), t); }
inline void store(F16::T* p, V v, Full, F16) { store8(p, f32_to_f16(v)); }
inline void store(F16::T* p, V v, Tail t, F16) { store8(p, f32_to_f16(v), t); }

#else  // scalar fallback

constexpr int W = 1;
using V = float;
using M = bool;

struct Full {};
struct Tail { M k; };

inline V set1(float x) { return x; }
inline V zero() { return 0.0f; }
inline V add(V a, V b) { return a + b; }
inline V sub(V a, V b) { return a - b; }
inline V mul(V a, V b) { return a * b; }
inline V div(V a, V b) { return a / b; }
inline V fmadd(V a, V b, V c) { return std::fma(a, b, c); }
inline V vsqrt(V a) { return std::sqrt(a); }
inline V vmax(V a, V b) { return a > b ? a : b; }  // NaN in a yields b, as the AVX-512 version
inline V maskz(M k, V a) { return k ? a : 0.0f; }
inline M lt(V a, V b) { return a < b; }
inline M isnan(V a) { return a != a; }
inline V mask_add(V src, M k, V a, V b) { return k ? a + b : src; }
inline M mor(M a, M b) { return a || b; }
inline bool any(M k) { return k; }
inline int popcount(M k) { return k ? 1 : 0; }
inline float hmax(V a) { return a; }
inline double hsum(V a) { return a; }
inline M tail_mask(int64_t) { return true; }

inline M exp_keep(V x) { return !(x < kExpLow); }
inline V vexp(V x, M keep) { return keep ? std::exp(x) : 0.0f; }
inline V vexp(V x) { return vexp(x, exp_keep(x)); }
inline V mask_fmadd(V a, V b, V c, M k) { return k ? std::fma(a, b, c) : c; }
inline V vlog(V x) { return std::log(x); }

inline V load(const float* p, Full) { return *p; }
inline V load(const float* p, Tail) { return *p; }
inline V load(const uint16_t* p, Full, BF16) { return static_cast<float>(c10::BFloat16(*p, c10::BFloat16::from_bits())); }
inline V load(const uint16_t* p, Tail, BF16) { return load(p, Full{}, BF16{}); }
inline V load(const uint16_t* p, Full, F16) { return static_cast<float>(c10::Half(*p, c10::Half::from_bits())); }
inline V load(const uint16_t* p, Tail, F16) { return load(p, Full{}, F16{}); }

inline void store(float* p, V v, Full) { *p = v; }
inline void store(float* p, V v, Tail) { *p = v; }
inline void store(uint16_t* p, V v, Full, BF16) { *p = c10::BFloat16(v).x; }
inline void store(uint16_t* p, V v, Tail, BF16) { *p = c10::BFloat16(v).x; }
inline void store(uint16_t* p, V v, Full, F16) { *p = c10::Half(v).x; }
inline void store(uint16_t* p, V v, Tail, F16) { *p = c10::Half(v).x; }

#endif

#if EMK_AVX512 || EMK_AVX2
// log(x) for normal positive x, Cephes' logf polynomial (about 1 ulp) on log_split's reduction.
inline V vlog(V x) {
  V e, m;
  log_split(x, e, m);
  const V f = sub(m, set1(1.0f));
  const V z = mul(f, f);
  V y = set1(7.0376836292e-2f);
  y = fmadd(y, f, set1(-1.1514610310e-1f));
  y = fmadd(y, f, set1(1.1676998740e-1f));
  y = fmadd(y, f, set1(-1.2420140846e-1f));
  y = fmadd(y, f, set1(1.4249322787e-1f));
  y = fmadd(y, f, set1(-1.6668057665e-1f));
  y = fmadd(y, f, set1(2.0000714765e-1f));
  y = fmadd(y, f, set1(-2.4999993993e-1f));
  y = fmadd(y, f, set1(3.3333331174e-1f));
  y = mul(mul(y, f), z);
  y = fmadd(e, set1(-2.12194440e-4f), y);
  y = fmadd(z, set1(-0.5f), y);
  return fmadd(e, set1(0.693359375f), add(f, y));
}
#endif

// Typed load/store through the storage tag (fp32 rows need no tag argument above).
template <class S, class Tag>
inline V ld(const typename S::T* p, Tag t) {
  if constexpr (std::is_same_v<S, F32>) return load(p, t); else return load(p, t, S{});
}
template <class S, class Tag>
inline void st(typename S::T* p, V v, Tag t) {
  if constexpr (std::is_same_v<S, F32>) store(p, v, t); else store(p, v, t, S{});
}

// Calls f(i, Full{}) for each full vector and f(i, Tail{...}) once for the remainder.
template <class F>
inline void vloop(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + W <= n; i += W) f(i, Full{});
  if (i < n) f(i, Tail{tail_mask(n - i)});
}

}  // namespace emk
