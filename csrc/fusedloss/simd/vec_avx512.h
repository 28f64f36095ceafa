// AVX-512 (F, BW, DQ, VL) vectors: 16 floats / 8 doubles. Included inside
// namespace fusedloss::avx512 (kernels_avx512.cpp), after <immintrin.h> at
// global scope and simd/storage.h. Compares give k-masks; vscalefps/pd does
// p * 2^n with one correct rounding, denormals included.
#pragma once

#define FL_AVX512_VEC(V, M, KM, TT, REG, SFX, W_)                                          \
  struct M { KM k; };                                                                      \
  struct V {                                                                               \
    REG v;                                                                                 \
    using T = TT;                                                                          \
    static constexpr int W = W_;                                                           \
    static V set1(TT a) { return {_mm512_set1_##SFX(a)}; }                                 \
    static V load(const TT* p) { return {_mm512_loadu_##SFX(p)}; }                         \
    void store(TT* p) const { _mm512_storeu_##SFX(p, v); }                                 \
  };                                                                                       \
  inline V operator+(V a, V b) { return {_mm512_add_##SFX(a.v, b.v)}; }                    \
  inline V operator-(V a, V b) { return {_mm512_sub_##SFX(a.v, b.v)}; }                    \
  inline V operator*(V a, V b) { return {_mm512_mul_##SFX(a.v, b.v)}; }                    \
  inline V operator/(V a, V b) { return {_mm512_div_##SFX(a.v, b.v)}; }                    \
  inline V fmadd(V a, V b, V c) { return {_mm512_fmadd_##SFX(a.v, b.v, c.v)}; }            \
  inline V fmsub(V a, V b, V c) { return {_mm512_fmsub_##SFX(a.v, b.v, c.v)}; }            \
  /* vmaxps/vminps: the second operand wins when either is NaN. */                         \
  inline V vmax(V a, V b) { return {_mm512_max_##SFX(a.v, b.v)}; }                         \
  inline V vmin(V a, V b) { return {_mm512_min_##SFX(a.v, b.v)}; }                         \
  /* |a| and -|a|: the sign bit cleared or set, one op each (NaN stays NaN). */          \
  inline V vabs(V a) { return {_mm512_andnot_##SFX(_mm512_set1_##SFX(-0.0), a.v)}; }       \
  inline V vnegabs(V a) { return {_mm512_or_##SFX(a.v, _mm512_set1_##SFX(-0.0))}; }        \
  inline M lt(V a, V b) { return {_mm512_cmp_##SFX##_mask(a.v, b.v, _CMP_LT_OQ)}; }        \
  inline M gt(V a, V b) { return {_mm512_cmp_##SFX##_mask(a.v, b.v, _CMP_GT_OQ)}; }        \
  inline M eq(V a, V b) { return {_mm512_cmp_##SFX##_mask(a.v, b.v, _CMP_EQ_OQ)}; }        \
  inline M ge(V a, V b) { return {_mm512_cmp_##SFX##_mask(a.v, b.v, _CMP_GE_OQ)}; }        \
  inline M le(V a, V b) { return {_mm512_cmp_##SFX##_mask(a.v, b.v, _CMP_LE_OQ)}; }        \
  inline M isnan_v(V a) { return {_mm512_cmp_##SFX##_mask(a.v, a.v, _CMP_UNORD_Q)}; }      \
  /* Not greater-or-equal: true where a < b or either is NaN. */                          \
  inline M nge(V a, V b) { return {_mm512_cmp_##SFX##_mask(a.v, b.v, _CMP_NGE_UQ)}; }      \
  inline M operator|(M a, M b) { return {static_cast<KM>(a.k | b.k)}; }                    \
  inline V select(M m, V a, V b) { return {_mm512_mask_blend_##SFX(m.k, b.v, a.v)}; }      \
  inline bool any(M m) { return m.k != 0; }                                                \
  inline V ldexp_v(V p, V n) { return {_mm512_scalef_##SFX(p.v, n.v)}; }                   \
  /* x positive, normal or denormal, finite: m in [1, 2), x = m * 2^e. */                  \
  inline V frexp_v(V x, V& e) {                                                            \
    e.v = _mm512_getexp_##SFX(x.v);                                                        \
    return {_mm512_getmant_##SFX(x.v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_zero)};             \
  }                                                                                        \
  inline TT hsum(V a) { return _mm512_reduce_add_##SFX(a.v); }                             \
  inline TT hmax(V a) { return _mm512_reduce_max_##SFX(a.v); }

FL_AVX512_VEC(VF, MF, __mmask16, float, __m512, ps, 16)
FL_AVX512_VEC(VD, MD, __mmask8, double, __m512d, pd, 8)
#undef FL_AVX512_VEC

// hsum / hmax of 16 rows at once: lane j of the result is hsum(r[j]) (hmax),
// bit for bit, with each step of _mm512_reduce_add_ps / _max_ps (GCC's order
// and operand order: 256-bit halves, 128-bit halves, lanes 2 apart, then 1)
// done for all rows by in-register transposes: 31 shuffles and 15 ops for 16
// rows where one row took 8 dependent ones (cross-entropy's small rows).
template <class Op> inline VF reduce_rows(const VF* r, Op op) {
  __m512 l1[8], l2[4], l3[2];
  for (int p = 0; p < 8; ++p)  // row 2p's halves in lanes 0-7, row 2p+1's in 8-15
    l1[p] = op(_mm512_shuffle_f32x4(r[2 * p].v, r[2 * p + 1].v, 0xEE),
               _mm512_shuffle_f32x4(r[2 * p].v, r[2 * p + 1].v, 0x44));
  for (int q = 0; q < 4; ++q)  // block k: row 4q + k
    l2[q] = op(_mm512_shuffle_f32x4(l1[2 * q], l1[2 * q + 1], 0xDD),
               _mm512_shuffle_f32x4(l1[2 * q], l1[2 * q + 1], 0x88));
  for (int s = 0; s < 2; ++s)  // block k: rows 8s + k, 8s + 4 + k, two lanes each
    l3[s] = op(_mm512_shuffle_ps(l2[2 * s], l2[2 * s + 1], 0x44), _mm512_shuffle_ps(l2[2 * s], l2[2 * s + 1], 0xEE));
  const __m512 l4 = op(_mm512_shuffle_ps(l3[0], l3[1], 0x88), _mm512_shuffle_ps(l3[0], l3[1], 0xDD));
  // Lane 4k + m holds row k + 4m.
  const __m512i idx = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  return {_mm512_permutexvar_ps(idx, l4)};
}
inline VF hsum_rows(const VF* r) { return reduce_rows(r, [](__m512 a, __m512 b) { return _mm512_add_ps(a, b); }); }
inline VF hmax_rows(const VF* r) { return reduce_rows(r, [](__m512 a, __m512 b) { return _mm512_max_ps(a, b); }); }

constexpr int kVecRegisters = 32;  // zmm0-31: how many vectors a loop may keep live
constexpr bool kLdexpIsOneOp = true;  // vscalef: exact, denormals included

// float exp's table (math.h vexp_table; see vec_avx2.h for the scheme). vpermps
// reads the index's low four bits, j + 8 (k & 1): the 8 entries are doubled.
constexpr bool kHasTable8 = true;
inline VF table8(VF t, const float* table) {
  return {_mm512_permutexvar_ps(_mm512_castps_si512(t.v), _mm512_broadcast_f32x8(_mm256_loadu_ps(table)))};
}
inline VF table8_scaled(VF t, const int32_t* adj) {
  const __m512i u = _mm512_castps_si512(t.v);
  const __m512i tab = _mm512_broadcast_i32x8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(adj)));
  return {_mm512_castsi512_ps(_mm512_add_epi32(_mm512_permutexvar_epi32(u, tab), _mm512_slli_epi32(u, 20)))};
}
inline VF table8_exponent(VF t) {
  const __m512i n = _mm512_sub_epi32(_mm512_castps_si512(t.v), _mm512_set1_epi32(0x4b400000));
  return {_mm512_cvtepi32_ps(_mm512_srai_epi32(n, 3))};
}

// float log's reduction (math.h vlog_table; see vec_avx2.h): the index's
// fourth bit is k's lowest, which the doubled table ignores.
inline VF log_split(VF x, int32_t off, VF& k, VF& cell) {
  const __m512i u = _mm512_castps_si512(x.v);
  const __m512i t = _mm512_sub_epi32(u, _mm512_set1_epi32(off));
  const __m512i kk = _mm512_srai_epi32(t, 23);
  k.v = _mm512_cvtepi32_ps(kk);
  cell.v = _mm512_castsi512_ps(_mm512_srli_epi32(t, 20));
  return {_mm512_castsi512_ps(_mm512_sub_epi32(u, _mm512_slli_epi32(kk, 23)))};
}

inline float lane0(VF a) { return _mm512_cvtss_f32(a.v); }
inline double lane0(VD a) { return _mm512_cvtsd_f64(a.v); }

inline VF vload(const float* p) { return VF::load(p); }
inline VD vload(const double* p) { return VD::load(p); }
inline VF vload(const Half* p) { return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))}; }
inline VF vload(const BF16* p) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
}
inline void vstore(float* p, VF v) { v.store(p); }
inline void vstore(double* p, VD v) { v.store(p); }
inline void vstore(Half* p, VF v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v.v, _MM_FROUND_TO_NEAREST_INT));
}
inline void vstore(BF16* p, VF v) {
  // Round to nearest even on the bit pattern; NaN -> quiet NaN (as float_to_bf16).
  const __m512i u = _mm512_castps_si512(v.v);
  const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
  __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)), lsb), 16);
  const __m512i qnan = _mm512_or_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
  r = _mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v.v, v.v, _CMP_UNORD_Q), r, qnan);
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(r));
}

// Partial vectors: masked loads/stores (no fault on masked-off lanes).
inline __mmask16 mask16(int64_t n) { return static_cast<__mmask16>((1u << n) - 1u); }
inline VF load_part(const float* p, int64_t n, float pad) {
  return {_mm512_mask_loadu_ps(_mm512_set1_ps(pad), mask16(n), p)};
}
inline VD load_part(const double* p, int64_t n, double pad) {
  return {_mm512_mask_loadu_pd(_mm512_set1_pd(pad), static_cast<__mmask8>(mask16(n)), p)};
}
inline VF load_part(const Half* p, int64_t n, float pad) {
  const __m512 v = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(mask16(n), p));
  return {_mm512_mask_blend_ps(mask16(n), _mm512_set1_ps(pad), v)};
}
inline VF load_part(const BF16* p, int64_t n, float pad) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(mask16(n), p));
  return {_mm512_mask_blend_ps(mask16(n), _mm512_set1_ps(pad), _mm512_castsi512_ps(_mm512_slli_epi32(w, 16)))};
}
inline void store_part(float* p, int64_t n, VF v) { _mm512_mask_storeu_ps(p, mask16(n), v.v); }
inline void store_part(double* p, int64_t n, VD v) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>(mask16(n)), v.v); }
inline void store_part(Half* p, int64_t n, VF v) {
  _mm256_mask_storeu_epi16(p, mask16(n), _mm512_cvtps_ph(v.v, _MM_FROUND_TO_NEAREST_INT));
}
inline void store_part(BF16* p, int64_t n, VF v) {
  alignas(64) uint16_t b[16];
  vstore(reinterpret_cast<BF16*>(b), v);
  _mm256_mask_storeu_epi16(p, mask16(n), _mm256_load_si256(reinterpret_cast<const __m256i*>(b)));
}

// Non-temporal store of a full vector when p is aligned (big outputs only:
// skips the read-for-ownership, so writing costs one pass, not two).
// Returns false (nothing written) otherwise; 16-bit types never stream.
inline bool aligned_64(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 63u) == 0; }
inline bool vstream(float* p, VF v) { return aligned_64(p) ? (_mm512_stream_ps(p, v.v), true) : false; }
inline bool vstream(double* p, VD v) { return aligned_64(p) ? (_mm512_stream_pd(p, v.v), true) : false; }
inline bool vstream(Half*, VF) { return false; }
inline bool vstream(BF16*, VF) { return false; }
inline void stream_fence() { _mm_sfence(); }

// Streaming into a row whose vector grid is `delta` lanes off the 64-byte
// grid (NumPy's big arrays are 16-byte aligned): each aligned vector is the
// last delta lanes of the previous result and the first W - delta of the
// current one (one vpermt2ps), the row's two ends go through masked stores.
// stream_delta: delta in lanes, or -1 where this is not possible.
inline int stream_delta(const float* p) { return lanes_past_grid<64>(p); }
inline int stream_delta(const double* p) { return lanes_past_grid<64>(p); }
inline int stream_delta(const Half*) { return -1; }
inline int stream_delta(const BF16*) { return -1; }
inline void stream_join(float* aligned, VF prev, VF cur, int delta) {
  const __m512i idx = _mm512_add_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                       _mm512_set1_epi32(16 - delta));
  _mm512_stream_ps(aligned, _mm512_permutex2var_ps(prev.v, idx, cur.v));
}
inline void stream_join(double* aligned, VD prev, VD cur, int delta) {
  const __m512i idx = _mm512_add_epi64(_mm512_setr_epi64(0, 1, 2, 3, 4, 5, 6, 7), _mm512_set1_epi64(8 - delta));
  _mm512_stream_pd(aligned, _mm512_permutex2var_pd(prev.v, idx, cur.v));
}
template <class S, class V> inline void stream_join(S*, V, V, int) {}  // never called: stream_delta is -1
inline void store_lanes(float* p, VF v, int lo, int hi) {
  _mm512_mask_storeu_ps(p, static_cast<__mmask16>(mask16(hi) & ~mask16(lo)), v.v);
}
inline void store_lanes(double* p, VD v, int lo, int hi) {
  _mm512_mask_storeu_pd(p, static_cast<__mmask8>(mask16(hi) & ~mask16(lo)), v.v);
}
template <class S, class V> inline void store_lanes(S*, V, int, int) {}  // never called
