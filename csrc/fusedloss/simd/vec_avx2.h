// AVX2 + FMA + F16C vectors: 8 floats / 4 doubles. Included inside namespace
// fusedloss::avx2 (kernels_avx2.cpp, compiled with -mavx2 -mfma -mf16c), after
// <immintrin.h> at global scope and simd/storage.h.
#pragma once

// Operations shared by the float and double vectors (suffix ps / pd).
#define FL_AVX2_VEC(V, M, TT, REG, SFX, W_)                                              \
  struct M { REG m; };                                                                   \
  struct V {                                                                             \
    REG v;                                                                               \
    using T = TT;                                                                        \
    static constexpr int W = W_;                                                         \
    static V set1(TT a) { return {_mm256_set1_##SFX(a)}; }                               \
    static V load(const TT* p) { return {_mm256_loadu_##SFX(p)}; }                       \
    void store(TT* p) const { _mm256_storeu_##SFX(p, v); }                               \
  };                                                                                     \
  inline V operator+(V a, V b) { return {_mm256_add_##SFX(a.v, b.v)}; }                  \
  inline V operator-(V a, V b) { return {_mm256_sub_##SFX(a.v, b.v)}; }                  \
  inline V operator*(V a, V b) { return {_mm256_mul_##SFX(a.v, b.v)}; }                  \
  inline V operator/(V a, V b) { return {_mm256_div_##SFX(a.v, b.v)}; }                  \
  inline V fmadd(V a, V b, V c) { return {_mm256_fmadd_##SFX(a.v, b.v, c.v)}; }          \
  inline V fmsub(V a, V b, V c) { return {_mm256_fmsub_##SFX(a.v, b.v, c.v)}; }          \
  /* vmaxps/vminps: the second operand wins when either is NaN. */                       \
  inline V vmax(V a, V b) { return {_mm256_max_##SFX(a.v, b.v)}; }                       \
  inline V vmin(V a, V b) { return {_mm256_min_##SFX(a.v, b.v)}; }                       \
  /* |a| and -|a|: the sign bit cleared or set, one op each (NaN stays NaN). */        \
  inline V vabs(V a) { return {_mm256_andnot_##SFX(_mm256_set1_##SFX(-0.0), a.v)}; }     \
  inline V vnegabs(V a) { return {_mm256_or_##SFX(a.v, _mm256_set1_##SFX(-0.0))}; }      \
  inline M lt(V a, V b) { return {_mm256_cmp_##SFX(a.v, b.v, _CMP_LT_OQ)}; }             \
  inline M gt(V a, V b) { return {_mm256_cmp_##SFX(a.v, b.v, _CMP_GT_OQ)}; }             \
  inline M eq(V a, V b) { return {_mm256_cmp_##SFX(a.v, b.v, _CMP_EQ_OQ)}; }             \
  inline M ge(V a, V b) { return {_mm256_cmp_##SFX(a.v, b.v, _CMP_GE_OQ)}; }             \
  inline M le(V a, V b) { return {_mm256_cmp_##SFX(a.v, b.v, _CMP_LE_OQ)}; }             \
  inline M isnan_v(V a) { return {_mm256_cmp_##SFX(a.v, a.v, _CMP_UNORD_Q)}; }           \
  /* Not greater-or-equal: true where a < b or either is NaN. */                         \
  inline M nge(V a, V b) { return {_mm256_cmp_##SFX(a.v, b.v, _CMP_NGE_UQ)}; }            \
  inline M operator|(M a, M b) { return {_mm256_or_##SFX(a.m, b.m)}; }                   \
  inline V select(M m, V a, V b) { return {_mm256_blendv_##SFX(b.v, a.v, m.m)}; }        \
  inline bool any(M m) { return _mm256_movemask_##SFX(m.m) != 0; }                       \
  /* p * 2^n, n integer-valued, |n| up to twice the exponent bias: two normal-range */   \
  /* factors, so a denormal result is rounded once, correctly. */                        \
  inline V ldexp_v(V p, V n) {                                                           \
    const V n1 = {_mm256_floor_##SFX(_mm256_mul_##SFX(n.v, _mm256_set1_##SFX(0.5)))};    \
    return p * pow2i(n1) * pow2i(n - n1);                                                \
  }

struct VF; struct VD;
inline VF pow2i(VF k);
inline VD pow2i(VD k);
FL_AVX2_VEC(VF, MF, float, __m256, ps, 8)
FL_AVX2_VEC(VD, MD, double, __m256d, pd, 4)
#undef FL_AVX2_VEC

constexpr int kVecRegisters = 16;  // ymm0-15: how many vectors a loop may keep live
constexpr bool kLdexpIsOneOp = false;  // ldexp_v is two scalings: math.h takes pow2_shifted when it can

inline float lane0(VF a) { return _mm256_cvtss_f32(a.v); }
inline double lane0(VD a) { return _mm256_cvtsd_f64(a.v); }

inline float hsum(VF a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float hmax(VF a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline double hsum(VD a) {
  __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
inline double hmax(VD a) {
  __m128d s = _mm_max_pd(_mm256_castpd256_pd128(a.v), _mm256_extractf128_pd(a.v, 1));
  return _mm_cvtsd_f64(_mm_max_sd(s, _mm_unpackhi_pd(s, s)));
}

// hsum / hmax of 8 rows at once: lane j of the result is hsum(r[j]) (hmax),
// bit for bit, with each step above (128-bit halves, lanes 2 apart, then 1,
// in the same operand order) done for all rows by in-register transposes.
template <class Op> inline VF reduce_rows(const VF* r, Op op) {
  __m256 l1[4], l2[2];
  for (int p = 0; p < 4; ++p)  // row 2p's halves in lanes 0-3, row 2p+1's in 4-7
    l1[p] = op(_mm256_permute2f128_ps(r[2 * p].v, r[2 * p + 1].v, 0x20),
               _mm256_permute2f128_ps(r[2 * p].v, r[2 * p + 1].v, 0x31));
  for (int q = 0; q < 2; ++q)  // 128-bit lane h: rows 4q + h and 4q + 2 + h, two lanes each
    l2[q] = op(_mm256_shuffle_ps(l1[2 * q], l1[2 * q + 1], 0x44), _mm256_shuffle_ps(l1[2 * q], l1[2 * q + 1], 0xEE));
  const __m256 l3 = op(_mm256_shuffle_ps(l2[0], l2[1], 0x88), _mm256_shuffle_ps(l2[0], l2[1], 0xDD));
  // Lane 4h + m holds row h + 2m.
  return {_mm256_permutevar8x32_ps(l3, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7))};
}
inline VF hsum_rows(const VF* r) { return reduce_rows(r, [](__m256 a, __m256 b) { return _mm256_add_ps(a, b); }); }
inline VF hmax_rows(const VF* r) { return reduce_rows(r, [](__m256 a, __m256 b) { return _mm256_max_ps(a, b); }); }

// 2^k for integer-valued k in the normal exponent range.
inline VF pow2i(VF k) {
  const __m256i e = _mm256_add_epi32(_mm256_cvtps_epi32(k.v), _mm256_set1_epi32(127));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(e, 23))};
}
inline VD pow2i(VD k) {
  // k + 2^52 + 1023 holds k + 1023 in its low mantissa bits.
  const __m256d t = _mm256_add_pd(k.v, _mm256_set1_pd(4503599627371519.0));
  return {_mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(t), 52))};
}

// 2^n from t = 1.5 * 2^MANT + bias + n, n in the normal exponent range: the
// low bits of t's mantissa field (bias + n) shifted into the exponent field.
inline VF pow2_shifted(VF t) { return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(t.v), 23))}; }
inline VD pow2_shifted(VD t) { return {_mm256_castsi256_pd(_mm256_slli_epi64(_mm256_castpd_si256(t.v), 52))}; }

// float exp's table (math.h vexp_table): t = 1.5 * 2^23 + n, n = 8k + j with
// j in [0, 8), held in t's low mantissa bits; vpermps reads only the index's
// low three bits, which are j. table8: T[j]. table8_scaled: T[j] * 2^k from
// adj[j] = bits(T[j]) - (j << 20), as (n << 20) = (k << 23) + (j << 20) puts
// k into the exponent field (t's other bits shift out); normal results only.
// table8_exponent: k, as a float.
constexpr bool kHasTable8 = true;
inline VF table8(VF t, const float* table) {
  return {_mm256_permutevar8x32_ps(_mm256_loadu_ps(table), _mm256_castps_si256(t.v))};
}
inline VF table8_scaled(VF t, const int32_t* adj) {
  const __m256i u = _mm256_castps_si256(t.v);
  const __m256i a = _mm256_permutevar8x32_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(adj)), u);
  return {_mm256_castsi256_ps(_mm256_add_epi32(a, _mm256_slli_epi32(u, 20)))};
}
inline VF table8_exponent(VF t) {
  const __m256i n = _mm256_sub_epi32(_mm256_castps_si256(t.v), _mm256_set1_epi32(0x4b400000));
  return {_mm256_cvtepi32_ps(_mm256_srai_epi32(n, 3))};
}

// float log's reduction (math.h vlog_table), x positive, normal, finite:
// t = bits(x) - off splits x = 2^k z with z in [off, 2 off) (k = t >> 23, as
// a float) and holds the table cell of z (the next three bits) where table8
// reads its index; returns z.
inline VF log_split(VF x, int32_t off, VF& k, VF& cell) {
  const __m256i u = _mm256_castps_si256(x.v);
  const __m256i t = _mm256_sub_epi32(u, _mm256_set1_epi32(off));
  const __m256i kk = _mm256_srai_epi32(t, 23);
  k.v = _mm256_cvtepi32_ps(kk);
  cell.v = _mm256_castsi256_ps(_mm256_srli_epi32(t, 20));
  return {_mm256_castsi256_ps(_mm256_sub_epi32(u, _mm256_slli_epi32(kk, 23)))};
}

// x positive, normal, finite: returns m in [1, 2) and sets e with x = m * 2^e.
inline VF frexp_v(VF x, VF& e) {
  const __m256i u = _mm256_castps_si256(x.v);
  e.v = _mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(u, 23), _mm256_set1_epi32(127)));
  const __m256i m = _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi32(0x007fffff)),
                                    _mm256_set1_epi32(0x3f800000));
  return {_mm256_castsi256_ps(m)};
}
inline VD frexp_v(VD x, VD& e) {
  const __m256i u = _mm256_castpd_si256(x.v);
  // The biased exponent OR 2^52's bits is the double 2^52 + biased exponent.
  const __m256i be = _mm256_or_si256(_mm256_srli_epi64(u, 52), _mm256_set1_epi64x(0x4330000000000000LL));
  e.v = _mm256_sub_pd(_mm256_castsi256_pd(be), _mm256_set1_pd(4503599627371519.0));
  const __m256i m = _mm256_or_si256(_mm256_and_si256(u, _mm256_set1_epi64x(0x000fffffffffffffLL)),
                                    _mm256_set1_epi64x(0x3ff0000000000000LL));
  return {_mm256_castsi256_pd(m)};
}

inline VF vload(const float* p) { return VF::load(p); }
inline VD vload(const double* p) { return VD::load(p); }
inline VF vload(const Half* p) { return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))}; }
inline VF vload(const BF16* p) {
  const __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
}
inline void vstore(float* p, VF v) { v.store(p); }
inline void vstore(double* p, VD v) { v.store(p); }
inline void vstore(Half* p, VF v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v.v, _MM_FROUND_TO_NEAREST_INT));
}
inline void vstore(BF16* p, VF v) {
  // Round to nearest even on the bit pattern; NaN -> quiet NaN (as float_to_bf16).
  const __m256i u = _mm256_castps_si256(v.v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
  __m256i r = _mm256_srli_epi32(_mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb), 16);
  const __m256i qnan = _mm256_or_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(0x40));
  const __m256 nan = _mm256_cmp_ps(v.v, v.v, _CMP_UNORD_Q);
  r = _mm256_castps_si256(_mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(qnan), nan));
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

// Partial vectors: vmaskmov loads for float/double, a small buffer for 16-bit
// types and for every store (vmaskmov stores are microcoded on AMD: about 50
// cycles each on Zen 4, a third of a 64 x 10 call's kernel time).
inline __m256i lanes_below(int64_t n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline __m256i lanes_below64(int64_t n) {
  return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
}
inline VF load_part(const float* p, int64_t n, float pad) {
  const __m256i m = lanes_below(n);
  return {_mm256_blendv_ps(_mm256_set1_ps(pad), _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m))};
}
inline VD load_part(const double* p, int64_t n, double pad) {
  const __m256i m = lanes_below64(n);
  return {_mm256_blendv_pd(_mm256_set1_pd(pad), _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m))};
}
inline VF load_part(const Half* p, int64_t n, float pad) { return buf_load<VF>(p, n, pad); }
inline VF load_part(const BF16* p, int64_t n, float pad) { return buf_load<VF>(p, n, pad); }
inline void store_part(float* p, int64_t n, VF v) { buf_store(p, n, v); }
inline void store_part(double* p, int64_t n, VD v) { buf_store(p, n, v); }
inline void store_part(Half* p, int64_t n, VF v) { buf_store(p, n, v); }
inline void store_part(BF16* p, int64_t n, VF v) { buf_store(p, n, v); }

// Non-temporal store of a full vector when p is aligned (big outputs only:
// skips the read-for-ownership, so writing costs one pass, not two).
// Returns false (nothing written) otherwise; 16-bit types never stream.
inline bool aligned_32(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 31u) == 0; }
inline bool vstream(float* p, VF v) { return aligned_32(p) ? (_mm256_stream_ps(p, v.v), true) : false; }
inline bool vstream(double* p, VD v) { return aligned_32(p) ? (_mm256_stream_pd(p, v.v), true) : false; }
inline bool vstream(Half*, VF) { return false; }
inline bool vstream(BF16*, VF) { return false; }
inline void stream_fence() { _mm_sfence(); }

// Streaming into a row whose vector grid is `delta` lanes off the 32-byte
// grid (as vec_avx512.h; rows of odd length start anywhere): each aligned
// vector is the last delta lanes of the previous result and the first
// W - delta of the current one, the row's two ends go through masked stores.
// stream_delta: delta in lanes, or -1 where this is not possible.
inline int stream_delta(const float* p) { return lanes_past_grid<32>(p); }
inline int stream_delta(const double* p) { return lanes_past_grid<32>(p); }
inline int stream_delta(const Half*) { return -1; }
inline int stream_delta(const BF16*) { return -1; }
// Both vectors rotated by delta lanes with one index vector (lane i takes
// lane i - delta mod 8), then lanes below delta from prev.
inline __m256 join_lanes(__m256 prev, __m256 cur, __m256i idx, __m256i from_prev) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(cur, idx), _mm256_permutevar8x32_ps(prev, idx),
                          _mm256_castsi256_ps(from_prev));
}
inline void stream_join(float* aligned, VF prev, VF cur, int delta) {
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i idx = _mm256_and_si256(_mm256_sub_epi32(lane, _mm256_set1_epi32(delta)), _mm256_set1_epi32(7));
  _mm256_stream_ps(aligned, join_lanes(prev.v, cur.v, idx, lanes_below(delta)));
}
inline void stream_join(double* aligned, VD prev, VD cur, int delta) {
  // 64-bit lanes as pairs of 32-bit ones: lane j takes j - delta mod 4.
  const __m256i half = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3), word = _mm256_setr_epi32(0, 1, 0, 1, 0, 1, 0, 1);
  const __m256i src = _mm256_and_si256(_mm256_sub_epi32(half, _mm256_set1_epi32(delta)), _mm256_set1_epi32(3));
  const __m256i idx = _mm256_add_epi32(_mm256_add_epi32(src, src), word);
  const __m256 joined = join_lanes(_mm256_castpd_ps(prev.v), _mm256_castpd_ps(cur.v), idx,
                                   _mm256_cmpgt_epi32(_mm256_set1_epi32(delta), half));
  _mm256_stream_pd(aligned, _mm256_castps_pd(joined));
}
template <class S, class V> inline void stream_join(S*, V, V, int) {}  // never called: stream_delta is -1
// Lanes [lo, hi) of v to p: twice per streamed row, so vmaskmov's cost is moot.
inline void store_lanes(float* p, VF v, int lo, int hi) {
  _mm256_maskstore_ps(p, _mm256_andnot_si256(lanes_below(lo), lanes_below(hi)), v.v);
}
inline void store_lanes(double* p, VD v, int lo, int hi) {
  _mm256_maskstore_pd(p, _mm256_andnot_si256(lanes_below64(lo), lanes_below64(hi)), v.v);
}
template <class S, class V> inline void store_lanes(S*, V, int, int) {}  // never called
