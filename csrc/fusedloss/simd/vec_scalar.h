// Baseline "vectors" of one lane: plain scalar code for CPUs without SSE2
// (builds other than x86-64; there the baseline is vec_sse2.h). Same
// interface as vec_avx2.h / vec_avx512.h, so the kernel templates and
// simd/math.h compile unchanged for every ISA; per lane its arithmetic is
// vec_sse2.h's, so the two give the same exp/log bits.
// Included inside namespace fusedloss::baseline, after simd/storage.h.
#pragma once

#define FL_SCALAR_VEC(V, TT, UINT, MANT, BIAS)                                      \
  struct V {                                                                        \
    TT v;                                                                           \
    using T = TT;                                                                   \
    static constexpr int W = 1;                                                     \
    static V set1(TT a) { return {a}; }                                             \
    static V load(const TT* p) { return {*p}; }                                     \
    void store(TT* p) const { *p = v; }                                             \
  };                                                                                \
  inline V operator+(V a, V b) { return {a.v + b.v}; }                              \
  inline V operator-(V a, V b) { return {a.v - b.v}; }                              \
  inline V operator*(V a, V b) { return {a.v * b.v}; }                              \
  inline V operator/(V a, V b) { return {a.v / b.v}; }                              \
  /* No FMA on baseline x86-64: two roundings (exp/log bounds below allow it). */  \
  inline V fmadd(V a, V b, V c) { return {a.v * b.v + c.v}; }                       \
  inline V fmsub(V a, V b, V c) { return {a.v * b.v - c.v}; }                       \
  /* x86 max/min semantics: the second operand wins when either is NaN. */          \
  inline V vmax(V a, V b) { return {a.v > b.v ? a.v : b.v}; }                       \
  inline V vmin(V a, V b) { return {a.v < b.v ? a.v : b.v}; }                       \
  inline V vabs(V a) { return {std::fabs(a.v)}; }      /* |a| (NaN stays NaN) */    \
  inline V vnegabs(V a) { return {-std::fabs(a.v)}; }  /* -|a| (NaN stays NaN) */   \
  inline bool lt(V a, V b) { return a.v < b.v; }                                    \
  inline bool gt(V a, V b) { return a.v > b.v; }                                    \
  inline bool eq(V a, V b) { return a.v == b.v; }                                   \
  inline bool ge(V a, V b) { return a.v >= b.v; }                                   \
  inline bool le(V a, V b) { return a.v <= b.v; }                                   \
  inline bool isnan_v(V a) { return a.v != a.v; }                                   \
  inline bool nge(V a, V b) { return !(a.v >= b.v); }                               \
  inline V select(bool m, V a, V b) { return m ? a : b; }                           \
  inline TT hsum(V a) { return a.v; }                                               \
  inline TT hmax(V a) { return a.v; }                                               \
  inline TT lane0(V a) { return a.v; }                                              \
  /* p * 2^n for integer n with |n| <= 2*BIAS: two exact-range scalings, so a */    \
  /* denormal result is rounded once, correctly. */                                 \
  inline V ldexp_v(V p, V n) {                                                      \
    const long k = static_cast<long>(n.v), k1 = k >> 1, k2 = k - k1;                \
    const UINT e1 = static_cast<UINT>(k1 + BIAS) << MANT;                           \
    const UINT e2 = static_cast<UINT>(k2 + BIAS) << MANT;                           \
    TT s1, s2;                                                                      \
    memcpy(&s1, &e1, sizeof(TT));                                                   \
    memcpy(&s2, &e2, sizeof(TT));                                                   \
    return {p.v * s1 * s2};                                                         \
  }                                                                                 \
  /* 2^n from t = 1.5 * 2^MANT + BIAS + n (n in the normal exponent range): */     \
  /* the low bits of t's mantissa field shifted into the exponent field. */         \
  inline V pow2_shifted(V t) {                                                      \
    UINT u;                                                                         \
    memcpy(&u, &t.v, sizeof(TT));                                                   \
    u <<= MANT;                                                                     \
    V r;                                                                            \
    memcpy(&r.v, &u, sizeof(TT));                                                   \
    return r;                                                                       \
  }                                                                                 \
  /* x positive, normal, finite: x = m * 2^e with m in [1, 2). */                  \
  inline V frexp_v(V x, V& e) {                                                     \
    UINT u;                                                                         \
    memcpy(&u, &x.v, sizeof(TT));                                                   \
    e.v = static_cast<TT>(static_cast<long>(u >> MANT) - BIAS);                    \
    u = (u & ((UINT(1) << MANT) - 1)) | (static_cast<UINT>(BIAS) << MANT);          \
    V m;                                                                            \
    memcpy(&m.v, &u, sizeof(TT));                                                   \
    return m;                                                                       \
  }

FL_SCALAR_VEC(VF, float, uint32_t, 23, 127)
FL_SCALAR_VEC(VD, double, uint64_t, 52, 1023)
#undef FL_SCALAR_VEC

inline bool any(bool m) { return m; }
constexpr int kVecRegisters = 16;  // as many as an SSE2 machine has: how many vectors a loop may keep live
constexpr bool kLdexpIsOneOp = false;  // ldexp_v is two scalings: math.h takes pow2_shifted when it can
constexpr bool kHasTable8 = false;  // no in-register table lookup: math.h's exp uses the long polynomial

inline VF vload(const float* p) { return {*p}; }
inline VD vload(const double* p) { return {*p}; }
inline VF vload(const Half* p) { return {to_acc(*p)}; }
inline VF vload(const BF16* p) { return {to_acc(*p)}; }
template <class S, class V> inline void vstore(S* p, V v) { put(p, v.v); }

// One lane: a partial vector is a full one (n >= 1 here).
template <class S> inline auto load_part(const S* p, int64_t, decltype(to_acc(*p))) { return vload(p); }
template <class S, class V> inline void store_part(S* p, int64_t, V v) { vstore(p, v); }

// No streaming stores on the baseline path.
template <class S, class V> inline bool vstream(S*, V) { return false; }
inline void stream_fence() {}

// No shifted streaming here (see vec_avx512.h): stream_delta is always -1.
template <class S> inline int stream_delta(const S*) { return -1; }
template <class S, class V> inline void stream_join(S*, V, V, int) {}
template <class S, class V> inline void store_lanes(S*, V, int, int) {}
