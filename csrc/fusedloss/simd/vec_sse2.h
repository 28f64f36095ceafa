// SSE2 vectors: 4 floats / 2 doubles, the instruction set every x86-64 CPU
// has, so the baseline build needs no flags for them. Same interface as
// vec_avx2.h. No FMA: fmadd rounds twice, lane for lane as vec_scalar.h (the
// exp/log bounds in math.h allow it); no blendv, floor or F16C: select is
// and/andnot/or, ldexp_v halves n in integers, half floats convert per lane.
// Included inside namespace fusedloss::baseline (x86-64 builds), after
// <emmintrin.h> at global scope and simd/storage.h.
#pragma once

// Operations shared by the float and double vectors (suffix ps / pd).
#define FL_SSE2_VEC(V, M, TT, REG, SFX, W_)                                              \
  struct M { REG m; };                                                                   \
  struct V {                                                                             \
    REG v;                                                                               \
    using T = TT;                                                                        \
    static constexpr int W = W_;                                                         \
    static V set1(TT a) { return {_mm_set1_##SFX(a)}; }                                  \
    static V load(const TT* p) { return {_mm_loadu_##SFX(p)}; }                          \
    void store(TT* p) const { _mm_storeu_##SFX(p, v); }                                  \
  };                                                                                     \
  inline V operator+(V a, V b) { return {_mm_add_##SFX(a.v, b.v)}; }                     \
  inline V operator-(V a, V b) { return {_mm_sub_##SFX(a.v, b.v)}; }                     \
  inline V operator*(V a, V b) { return {_mm_mul_##SFX(a.v, b.v)}; }                     \
  inline V operator/(V a, V b) { return {_mm_div_##SFX(a.v, b.v)}; }                     \
  inline V fmadd(V a, V b, V c) { return {_mm_add_##SFX(_mm_mul_##SFX(a.v, b.v), c.v)}; } \
  inline V fmsub(V a, V b, V c) { return {_mm_sub_##SFX(_mm_mul_##SFX(a.v, b.v), c.v)}; } \
  /* maxps/minps: the second operand wins when either is NaN. */                         \
  inline V vmax(V a, V b) { return {_mm_max_##SFX(a.v, b.v)}; }                          \
  inline V vmin(V a, V b) { return {_mm_min_##SFX(a.v, b.v)}; }                          \
  /* |a| and -|a|: the sign bit cleared or set, one op each (NaN stays NaN). */        \
  inline V vabs(V a) { return {_mm_andnot_##SFX(_mm_set1_##SFX(-0.0), a.v)}; }          \
  inline V vnegabs(V a) { return {_mm_or_##SFX(a.v, _mm_set1_##SFX(-0.0))}; }           \
  inline M lt(V a, V b) { return {_mm_cmplt_##SFX(a.v, b.v)}; }                          \
  inline M gt(V a, V b) { return {_mm_cmpgt_##SFX(a.v, b.v)}; }                          \
  inline M eq(V a, V b) { return {_mm_cmpeq_##SFX(a.v, b.v)}; }                          \
  inline M ge(V a, V b) { return {_mm_cmpge_##SFX(a.v, b.v)}; }                          \
  inline M le(V a, V b) { return {_mm_cmple_##SFX(a.v, b.v)}; }                          \
  inline M isnan_v(V a) { return {_mm_cmpunord_##SFX(a.v, a.v)}; }                       \
  /* Not greater-or-equal: true where a < b or either is NaN. */                         \
  inline M nge(V a, V b) { return {_mm_cmpnge_##SFX(a.v, b.v)}; }                        \
  inline M operator|(M a, M b) { return {_mm_or_##SFX(a.m, b.m)}; }                      \
  inline V select(M m, V a, V b) {                                                       \
    return {_mm_or_##SFX(_mm_and_##SFX(m.m, a.v), _mm_andnot_##SFX(m.m, b.v))};          \
  }                                                                                      \
  inline bool any(M m) { return _mm_movemask_##SFX(m.m) != 0; }                          \
  /* p * 2^n, n integer-valued, |n| up to twice the exponent bias: two normal-range */   \
  /* factors, so a denormal result is rounded once, correctly. */                        \
  inline V ldexp_v(V p, V n) {                                                           \
    const V n1 = half_floor(n);                                                          \
    return p * pow2i(n1) * pow2i(n - n1);                                                \
  }

struct VF; struct VD;
inline VF pow2i(VF k);
inline VD pow2i(VD k);
inline VF half_floor(VF n);
inline VD half_floor(VD n);
FL_SSE2_VEC(VF, MF, float, __m128, ps, 4)
FL_SSE2_VEC(VD, MD, double, __m128d, pd, 2)
#undef FL_SSE2_VEC

constexpr int kVecRegisters = 16;  // xmm0-15: how many vectors a loop may keep live
constexpr bool kLdexpIsOneOp = false;  // ldexp_v is two scalings: math.h takes pow2_shifted when it can
constexpr bool kHasTable8 = false;  // no in-register table lookup: math.h's exp uses the long polynomial

// floor(n / 2) for integer-valued n (|n| < 2^31): an arithmetic shift.
inline VF half_floor(VF n) { return {_mm_cvtepi32_ps(_mm_srai_epi32(_mm_cvttps_epi32(n.v), 1))}; }
inline VD half_floor(VD n) { return {_mm_cvtepi32_pd(_mm_srai_epi32(_mm_cvttpd_epi32(n.v), 1))}; }

inline float lane0(VF a) { return _mm_cvtss_f32(a.v); }
inline double lane0(VD a) { return _mm_cvtsd_f64(a.v); }

inline float hsum(VF a) {
  const __m128 s = _mm_add_ps(a.v, _mm_movehl_ps(a.v, a.v));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_shuffle_ps(s, s, 1)));
}
inline float hmax(VF a) {
  const __m128 s = _mm_max_ps(a.v, _mm_movehl_ps(a.v, a.v));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_shuffle_ps(s, s, 1)));
}
inline double hsum(VD a) { return _mm_cvtsd_f64(_mm_add_sd(a.v, _mm_unpackhi_pd(a.v, a.v))); }
inline double hmax(VD a) { return _mm_cvtsd_f64(_mm_max_sd(a.v, _mm_unpackhi_pd(a.v, a.v))); }

// 2^k for integer-valued k in the normal exponent range.
inline VF pow2i(VF k) {
  const __m128i e = _mm_add_epi32(_mm_cvtps_epi32(k.v), _mm_set1_epi32(127));
  return {_mm_castsi128_ps(_mm_slli_epi32(e, 23))};
}
inline VD pow2i(VD k) {
  // k + 2^52 + 1023 holds k + 1023 in its low mantissa bits.
  const __m128d t = _mm_add_pd(k.v, _mm_set1_pd(4503599627371519.0));
  return {_mm_castsi128_pd(_mm_slli_epi64(_mm_castpd_si128(t), 52))};
}

// 2^n from t = 1.5 * 2^MANT + bias + n, n in the normal exponent range: the
// low bits of t's mantissa field (bias + n) shifted into the exponent field.
inline VF pow2_shifted(VF t) { return {_mm_castsi128_ps(_mm_slli_epi32(_mm_castps_si128(t.v), 23))}; }
inline VD pow2_shifted(VD t) { return {_mm_castsi128_pd(_mm_slli_epi64(_mm_castpd_si128(t.v), 52))}; }

// x positive, normal, finite: returns m in [1, 2) and sets e with x = m * 2^e.
inline VF frexp_v(VF x, VF& e) {
  const __m128i u = _mm_castps_si128(x.v);
  e.v = _mm_cvtepi32_ps(_mm_sub_epi32(_mm_srli_epi32(u, 23), _mm_set1_epi32(127)));
  const __m128i m = _mm_or_si128(_mm_and_si128(u, _mm_set1_epi32(0x007fffff)), _mm_set1_epi32(0x3f800000));
  return {_mm_castsi128_ps(m)};
}
inline VD frexp_v(VD x, VD& e) {
  const __m128i u = _mm_castpd_si128(x.v);
  // The biased exponent OR 2^52's bits is the double 2^52 + biased exponent.
  const __m128i be = _mm_or_si128(_mm_srli_epi64(u, 52), _mm_set1_epi64x(0x4330000000000000LL));
  e.v = _mm_sub_pd(_mm_castsi128_pd(be), _mm_set1_pd(4503599627371519.0));
  const __m128i m = _mm_or_si128(_mm_and_si128(u, _mm_set1_epi64x(0x000fffffffffffffLL)),
                                 _mm_set1_epi64x(0x3ff0000000000000LL));
  return {_mm_castsi128_pd(m)};
}

inline VF vload(const float* p) { return VF::load(p); }
inline VD vload(const double* p) { return VD::load(p); }
inline VF vload(const Half* p) { return buf_load<VF>(p, 4, 0.0f); }  // no F16C: per lane
inline VF vload(const BF16* p) {
  // bfloat16 is a float's upper half: interleave zeros below each pattern.
  const __m128i w = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return {_mm_castsi128_ps(_mm_unpacklo_epi16(_mm_setzero_si128(), w))};
}
inline void vstore(float* p, VF v) { v.store(p); }
inline void vstore(double* p, VD v) { v.store(p); }
inline void vstore(Half* p, VF v) { buf_store(p, 4, v); }
inline void vstore(BF16* p, VF v) { buf_store(p, 4, v); }

// Partial vectors: through a small buffer (SSE2 has no masked load/store).
inline VF load_part(const float* p, int64_t n, float pad) { return buf_load<VF>(p, n, pad); }
inline VD load_part(const double* p, int64_t n, double pad) { return buf_load<VD>(p, n, pad); }
inline VF load_part(const Half* p, int64_t n, float pad) { return buf_load<VF>(p, n, pad); }
inline VF load_part(const BF16* p, int64_t n, float pad) { return buf_load<VF>(p, n, pad); }
template <class S, class V> inline void store_part(S* p, int64_t n, V v) { buf_store(p, n, v); }

// Non-temporal store of a full vector when p is 16-byte aligned (big outputs
// only: skips the read-for-ownership). Returns false (nothing written)
// otherwise; 16-bit types never stream.
inline bool aligned_16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }
inline bool vstream(float* p, VF v) { return aligned_16(p) ? (_mm_stream_ps(p, v.v), true) : false; }
inline bool vstream(double* p, VD v) { return aligned_16(p) ? (_mm_stream_pd(p, v.v), true) : false; }
inline bool vstream(Half*, VF) { return false; }
inline bool vstream(BF16*, VF) { return false; }
inline void stream_fence() { _mm_sfence(); }

// No shifted streaming here (see vec_avx2.h): stream_delta is always -1, so
// rows off the 16-byte grid take ordinary stores.
template <class S> inline int stream_delta(const S*) { return -1; }
template <class S, class V> inline void stream_join(S*, V, V, int) {}
template <class S, class V> inline void store_lanes(S*, V, int, int) {}
