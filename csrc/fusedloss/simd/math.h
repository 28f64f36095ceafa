// The project's own vectorised exp and log, written once over the vector
// interface of vec_{scalar,avx2,avx512}.h, plus tail loads/stores.
// Included inside each per-ISA namespace after the vector header.
//
// Measured max error (csrc/tests/math_ulp.cpp, against long-double expl/logl;
// float: every 64th bit pattern plus the whole denormal band; double: 4M
// random arguments incl. the denormal band and all binades for log):
//   vexp float : 0.93 ULP (AVX2, AVX-512: table)  1.15 ULP baseline (no FMA)
//                (the table variant also exhaustively, every float in [-110, 90])
//   vexp double: 0.88 ULP (AVX2, AVX-512)        1.17 ULP baseline
//   vlog float : 0.57 ULP (AVX2, AVX-512: table; also exhaustively, every
//                positive float)  0.81 ULP baseline    vlog double: 0.83 ULP
//   vtanh float: 1.42 ULP (AVX2, AVX-512)  1.35 ULP baseline  (every 4th
//                pattern of [-10, 10], every pattern of [0.5, 0.75])
//   vtanh double: 1.34 ULP (AVX2, AVX-512)  1.29 ULP baseline (4M random)
//                (worst just past the polynomial's end, 0.625, where exp's
//                error enters scaled by 0.8)
// Stated bound: exp <= 1.5 ULP, log <= 1 ULP, tanh <= 2 ULP on every path; the
// float log1p polynomials vlog1p_unit <= 2 ULP, vlog1p_neg_half <= 1.5 ULP.
// exp range: x < -103.97 (float) / -745.2 (double) gives +0; the denormal
// band [-103.97, -87.34] / [-745.2, -708.4] is computed with gradual
// underflow (one rounding, no flush); x > 88.72 / 709.78 gives +inf; NaN -> NaN.
// log: log(0) = -inf, log(x < 0) = NaN, log(inf) = inf, denormals handled.
#pragma once

// The functions a loss calls once per vector of its inner loop: GCC otherwise
// calls them out of line there (they are long), which spills the loop's live
// vectors around each call and loads every constant again.
#if defined(__GNUC__)
#define FUSEDLOSS_ALWAYS_INLINE __attribute__((always_inline)) inline
#define FUSEDLOSS_ALWAYS_INLINE_LAMBDA __attribute__((always_inline))
#define FUSEDLOSS_NOINLINE __attribute__((noinline))
#else
#define FUSEDLOSS_ALWAYS_INLINE inline
#define FUSEDLOSS_ALWAYS_INLINE_LAMBDA
#define FUSEDLOSS_NOINLINE
#endif

// v as already rounded: the compiler may not fuse the operation that made v
// into an FMA with v's user. Where two loops must round a value alike (pass 1
// and pass 2 of a row, one per thread layout), the one whose shape invites
// the fusion says so with this.
template <class V> FUSEDLOSS_ALWAYS_INLINE V rounded(V v) {
#if defined(__GNUC__)
  __asm__("" : "+v"(v.v));
#endif
  return v;
}

template <class T> struct MathConsts;
template <> struct MathConsts<float> {
  static constexpr float lo = -104.0f, hi = 89.0f;  // exp clamp: beyond, 0 / inf
  static constexpr float log2e = 1.44269504088896341f;
  static constexpr float ln2_hi = 0.693145751953125f, ln2_lo = 1.42860682030941723212e-6f;
  static constexpr float min_normal = 1.17549435e-38f, denorm_scale = 16777216.0f, denorm_exp = 24.0f;
  // exp's results are normal (2^n a normal power, no NaN) for x in [normal_lo, normal_hi].
  static constexpr float normal_lo = -86.6f, normal_hi = 87.9f;
  static constexpr float round_shift = 12583039.0f;  // 1.5 * 2^23 + 127 (bias): see vexp_clamped
  // exp(r) on |r| <= ln2/2: 1 + r + c2 r^2 + ... + c6 r^6, c2..c6 minimax for
  // relative error with c0 = c1 = 1 held exact (a linear program on 4001
  // points, coefficients rounded to float): 5e-9 = 0.04 ULP of approximation
  // error, where the degree-7 Taylor polynomial this replaced had 2^-27 for one
  // FMA more. The ULP bound comes from the float rounding in Horner's rule.
  static constexpr int exp_terms = 6;
  static constexpr double exp_coef[7] = {1.0, 1.0, 0x1.fffffcp-2, 0x1.555458p-3, 0x1.555778p-5, 0x1.125cd0p-7,
                                         0x1.6bbeb4p-10};
  static constexpr int log_terms = 4;  // atanh series, |s| <= 0.1716: s^10/11 < 2^-30
  // The table variant (vexp_table): x = (8k + j) ln2/8 + r, |r| <= ln2/16.
  static constexpr float log2e_8 = 0x1.715476p+3f;  // 8 log2(e)
  // ln2/8 split: hi has 12 significant bits, so n * hi is exact for |n| < 2^11.
  static constexpr float ln2_8_hi = 0x1.62ep-4f, ln2_8_lo = 0x1.0bfbe8p-18f;
  static constexpr float table_shift = 12582912.0f;  // 1.5 * 2^23: t's low mantissa bits hold n
  // e^r - 1 on |r| <= ln2/16: r + c2 r^2 + c3 r^3 + c4 r^4, c2..c4 minimax for
  // absolute error with c1 = 1 exact (a linear program, coefficients rounded
  // to float): 1.7e-10 = 0.003 ULP of 1.
  static constexpr float table_c2 = 0x1p-1f, table_c3 = 0x1.555c78p-3f, table_c4 = 0x1.555d02p-5f;
  // 2^(j/8) rounded to float, and its bits less j << 20 (see table8_scaled).
  static constexpr float table[8] = {0x1p+0f,         0x1.172b84p+0f, 0x1.306fep+0f,  0x1.4bfdaep+0f,
                                     0x1.6a09e6p+0f, 0x1.8ace54p+0f, 0x1.ae89fap+0f, 0x1.d5818ep+0f};
  // Q of vlog1p_unit, lowest first: degree 7 fitted to (log1p(e) - e) / e^2 on
  // [0, 1] weighted for the relative error of e + e^2 Q (Lawson-iterated least
  // squares on 8000 Chebyshev nodes against mpmath, then each coefficient
  // rounded to float in turn and the rest refitted): 3.3e-8 relative error in
  // exact arithmetic, most of it from the float coefficients.
  static constexpr float log1p_unit[8] = {-0x1.ffff14p-2f, 0x1.5535dep-2f, -0x1.fd1368p-3f, 0x1.884554p-3f,
                                          -0x1.19af8ep-3f, 0x1.44707ap-4f, -0x1.eca398p-6f, 0x1.5fa0dap-8f};
  // Q of vlog1p_neg_half, lowest first: degree 8, fitted as log1p_unit's on [-0.5, 0]
  // (without the refit after rounding): 1.3e-8 relative error in exact arithmetic.
  static constexpr float log1p_neg_half[9] = {-0x1.00001ep-1f, 0x1.5542acp-2f, -0x1.01ef0ep-2f, 0x1.67d07ep-3f,
                                              -0x1.5d3a9ep-2f, -0x1.30d27ep-1f, -0x1.fa086cp+0f, -0x1.3dbbeep+1f,
                                              -0x1.bef572p+0f};
  static constexpr int32_t table_adj[8] = {0x3f800000, 0x3f7b95c2, 0x3f7837f0, 0x3f75fed7,
                                           0x3f7504f3, 0x3f75672a, 0x3f7744fd, 0x3f7ac0c7};
  // The table variant of log (vlog_table): x = 2^k z, z in [log_off, 2 log_off)
  // (log_off = 0.70833), cut into 8 cells by z's next three mantissa bits. In
  // cell c, r = z invc[c] - 1 (|r| <= 0.0567) and log z = log_c[c] + log1p(r)
  // with log_c = -log(invc) of the rounded invc, split hi + lo: hi a multiple
  // of 2^-15 like ln2_hi, so k ln2_hi + hi is exact. The cell of 1 (4) has
  // invc = 1 and log_c = 0: near x = 1, r = x - 1 exactly. log_off puts 1 where
  // that cell reaches equally far (relatively) on both sides.
  static constexpr int32_t log_off = 0x3f355556;
  static constexpr float log_invc[8] = {0x1.5a240ep+0f, 0x1.3f2b38p+0f, 0x1.2818acp+0f, 0x1.142284p+0f,
                                        0x1p+0f,        0x1.cfb2b8p-1f, 0x1.a08ad8p-1f, 0x1.7a17a2p-1f};
  static constexpr float log_c_hi[8] = {-0x1.34e8p-2f, -0x1.c3bp-3f, -0x1.2ap-3f,  -0x1.362p-4f,
                                        0.0f,          0x1.95ep-4f,  0x1.a69p-3f,  0x1.3678p-2f};
  static constexpr float log_c_lo[8] = {-0x1.11459cp-19f, 0x1.05779cp-17f, 0x1.1db3f8p-22f, 0x1.35a322p-19f,
                                        0.0f,             0x1.4e8c0ap-22f, 0x1.ddf422p-18f, -0x1.8bfedep-18f};
  // log1p(r) = r - r^2/2 + r^3 (c3 + c4 r + c5 r^2 + c6 r^3) on |r| <= 0.0567:
  // c3..c6 fitted for relative error (least squares reweighted toward minimax,
  // rounded to float): 2.1e-10, against 1.4e-8 with one term fewer.
  static constexpr float log_poly[4] = {0x1.55552ap-2f, -0x1.ffff7ep-3f, 0x1.9aeda8p-3f, -0x1.56c7f2p-3f};
  // tanh(a) = a + a^3 Q(a^2) on |a| < tanh_poly_max (see vtanh): Q's coefficients,
  // lowest first, 4e-9 relative error as rounded here.
  static constexpr int tanh_terms = 5;
  static constexpr double tanh_coef[6] = {-0x1.555556p-2, 0x1.1110eap-3, -0x1.ba08c4p-5,
                                          0x1.64a976p-6,  -0x1.116a16p-7, 0x1.2c83cp-9};
};
// 1/k!, k = 0..13, and 2/(2k+1), k = 0..10 (rounded to T where used).
constexpr double kInvFact[14] = {1.0, 1.0, 0.5, 1.0 / 6, 1.0 / 24, 1.0 / 120, 1.0 / 720, 1.0 / 5040,
                                 1.0 / 40320, 1.0 / 362880, 1.0 / 3628800, 1.0 / 39916800,
                                 1.0 / 479001600, 1.0 / 6227020800};
constexpr double kAtanh[11] = {2.0, 2.0 / 3, 2.0 / 5, 2.0 / 7, 2.0 / 9, 2.0 / 11,
                               2.0 / 13, 2.0 / 15, 2.0 / 17, 2.0 / 19, 2.0 / 21};
template <> struct MathConsts<double> {
  static constexpr double lo = -746.0, hi = 710.0;
  static constexpr double log2e = 1.44269504088896338700e+00;
  static constexpr double ln2_hi = 6.93147180369123816490e-01, ln2_lo = 1.90821492927058770002e-10;
  static constexpr double min_normal = 2.2250738585072014e-308, denorm_scale = 18014398509481984.0,
                          denorm_exp = 54.0;
  static constexpr double normal_lo = -707.0, normal_hi = 708.5;
  static constexpr double round_shift = 6755399441056767.0;  // 1.5 * 2^52 + 1023
  static constexpr int exp_terms = 13;  // Taylor, r^14/14! < 2^-58
  static constexpr const double* exp_coef = kInvFact;
  static constexpr int log_terms = 10;  // s^22/23 < 2^-60
  static constexpr int tanh_terms = 11;  // 8e-18 relative error
  static constexpr double tanh_coef[12] = {
      -0x1.5555555555555p-2, 0x1.11111111110a8p-3,  -0x1.ba1ba1ba0f126p-5, 0x1.664f487e0a749p-6,
      -0x1.226e3473dce5cp-7, 0x1.d6d39ae3905e2p-9,  -0x1.7d9f6f23e8682p-10, 0x1.3526e9ed54da1p-11,
      -0x1.f243823c8c981p-13, 0x1.8445870f6fe41p-14, -0x1.05bbdae896297p-15, 0x1.b33642a122cddp-18};
};
// Below this |x| tanh is a polynomial, above it 1 - 2 / (e^2|x| + 1).
constexpr double kTanhPolyMax = 0.625;

// e^x for x in [lo, hi]. Cody-Waite reduction x = n ln2 + r (ln2 split
// hi/lo, n*ln2_hi exact), polynomial by Horner with FMA, then p * 2^n: as
// ldexp_v (gradual underflow) or, kFast, one multiply by 2^n (results normal).
template <bool kFast, class V> inline V vexp_reduced(V x) {
  using T = typename V::T;
  using K = MathConsts<T>;
  // n = round(x log2e) by adding round_shift, where the spacing of T is 1:
  // t then holds n + bias in its low mantissa bits, which pow2_shifted moves
  // into the exponent field to make 2^n without a conversion.
  const V t = fmadd(x, V::set1(K::log2e), V::set1(K::round_shift));
  const V n = t - V::set1(K::round_shift);
  V r = fmadd(n, V::set1(-K::ln2_hi), x);
  r = fmadd(n, V::set1(-K::ln2_lo), r);
  V p = V::set1(static_cast<T>(K::exp_coef[K::exp_terms]));
  for (int k = K::exp_terms - 1; k >= 0; --k) p = fmadd(p, r, V::set1(static_cast<T>(K::exp_coef[k])));
  if constexpr (kFast) return p * pow2_shifted(t);  // exact when normal, as ldexp_v
  else return ldexp_v(p, n);
}

// float e^x where the vector header has an 8-entry in-register table lookup
// (AVX2, AVX-512): e^x = 2^k * 2^(j/8) * e^r with n = 8k + j = round(8x log2e)
// and |r| <= ln2/16, so a degree-4 polynomial stands in for the degree-6 one of
// vexp_reduced: 3 FMAs fewer for a permute and an integer add (exp-sum loop:
// AVX2 27% and AVX-512 12% faster per element). T[j] (rounded) times e^r is one
// FMA, T + T (e^r - 1), whose rounding plus T's gives the 0.93 ULP bound. kFast:
// every result normal, 2^k goes into T's exponent field; else ldexp_v.
template <bool kFast, class V> inline V vexp_table(V x) {
  using K = MathConsts<float>;
  const V t = fmadd(x, V::set1(K::log2e_8), V::set1(K::table_shift));
  const V n = t - V::set1(K::table_shift);
  V r = fmadd(n, V::set1(-K::ln2_8_hi), x);
  r = fmadd(n, V::set1(-K::ln2_8_lo), r);
  V q = fmadd(V::set1(K::table_c4), r, V::set1(K::table_c3));
  q = fmadd(q, r, V::set1(K::table_c2));
  const V expm1_r = fmadd(q, r * r, r);
  if constexpr (kFast) {
    const V T = table8_scaled(t, K::table_adj);
    return fmadd(T, expm1_r, T);
  } else {
    const V T = table8(t, K::table);
    return ldexp_v(fmadd(T, expm1_r, T), table8_exponent(t));
  }
}
// float on an ISA with table8: exp and log take their table variants.
template <class T> constexpr bool kFloatTable = false;
template <> constexpr bool kFloatTable<float> = kHasTable8;

// The table variant (float where the ISA has table8) or the long polynomial;
// kFast: every result normal, no NaN (see vexp_reduced, vexp_table).
template <bool kFast, class V> FUSEDLOSS_ALWAYS_INLINE V vexp_core(V x) {
  if constexpr (kFloatTable<typename V::T>) return vexp_table<kFast>(x);
  else return vexp_reduced<kFast>(x);
}

// e^x for x known to lie in [normal_lo, normal_hi]: vexp_any's fast path
// without its test (the same bits), for a loop that has bounded its arguments
// beforehand. Where ldexp_v is one op there is no faster form, and vexp_any's
// clamp changes nothing in this range.
template <class V> FUSEDLOSS_ALWAYS_INLINE V vexp_in_range(V x) {
  if constexpr (kLdexpIsOneOp && !kFloatTable<typename V::T>) return vexp_core<false>(x);
  else return vexp_core<true>(x);
}

// d: per lane, the least argument a loop's exps will take (the largest being
// <= 0, as x - max): whether they all lie in vexp_in_range's range, so the loop
// may take it without testing each vector. NaN fails.
template <class V> FUSEDLOSS_ALWAYS_INLINE bool exp_args_in_range(V d) {
  return !any(nge(d, V::set1(MathConsts<typename V::T>::normal_lo)));
}

// e^x; kUpper: x may exceed normal_hi (else x <= 0 or NaN). Where ldexp_v is
// one op (vscalef) the argument is clamped (keeps n in range) and that is
// all. Elsewhere ldexp_v takes a dozen ops (two scalings for gradual
// underflow), so the common case, every result normal and no NaN, is tested
// on the raw argument first: it needs neither the clamp nor ldexp_v, just a
// multiply by 2^n. Softmax rarely leaves it: only lanes e^-86 below the row
// max do. The table variant (float, AVX2 and AVX-512) takes the same test, as
// its fast path saves the clamp and the scaling on AVX-512 too. Operand order
// of the clamp keeps NaN (second operand wins).
template <bool kUpper, class V> FUSEDLOSS_ALWAYS_INLINE V vexp_any(V x) {
  using K = MathConsts<typename V::T>;
  const auto clamp = [](V v) {
    v = vmax(V::set1(K::lo), v);
    return kUpper ? vmin(V::set1(K::hi), v) : v;
  };
  if constexpr (kLdexpIsOneOp && !kFloatTable<typename V::T>) {
    return vexp_core<false>(clamp(x));
  } else {
    auto out = nge(x, V::set1(K::normal_lo));
    if constexpr (kUpper) out = out | gt(x, V::set1(K::normal_hi));
    return any(out) ? vexp_core<false>(clamp(x)) : vexp_in_range(x);
  }
}

// e^x.
template <class V> FUSEDLOSS_ALWAYS_INLINE V vexp(V x) { return vexp_any<true>(x); }

// hsum / hmax of V::W rows at once, lane j of the result from r[j], where the
// vector header has no transposed form (float on AVX2 and AVX-512 has): one
// reduction per row, the same bits.
template <class V> inline V hsum_rows(const V* r) {
  alignas(64) typename V::T s[V::W];
  for (int j = 0; j < V::W; ++j) s[j] = hsum(r[j]);
  return V::load(s);
}
template <class V> inline V hmax_rows(const V* r) {
  alignas(64) typename V::T s[V::W];
  for (int j = 0; j < V::W; ++j) s[j] = hmax(r[j]);
  return V::load(s);
}

// e^x for x <= 0 or NaN (x minus a running max): the upper clamp never binds
// there, so this is vexp without it, bit for bit, one op cheaper.
template <class V> FUSEDLOSS_ALWAYS_INLINE V vexp_nonpos(V x) { return vexp_any<false>(x); }

// log(2^e m) for m in [sqrt(1/2), sqrt(2)] (or NaN), e an integer:
// f = m - 1, s = f/(2+f), log(1+f) = f - f^2/2 + s (f^2/2 + R(s^2)),
// R = sum 2 s^2k / (2k+1) (the atanh series; fdlibm's arrangement keeps the
// error under 1 ULP), plus e log 2 in two parts.
template <class V> inline V vlog_reduced(V m, V e) {
  using T = typename V::T;
  using K = MathConsts<T>;
  const V f = m - V::set1(1);
  const V s = f / (f + V::set1(2));
  const V z = s * s;
  V R = V::set1(static_cast<T>(kAtanh[K::log_terms]));
  for (int k = K::log_terms - 1; k >= 1; --k) R = fmadd(R, z, V::set1(static_cast<T>(kAtanh[k])));
  R = R * z;
  const V hfsq = V::set1(static_cast<T>(0.5)) * f * f;
  const V corr = fmadd(s, hfsq + R, e * V::set1(K::ln2_lo));
  return fmadd(e, V::set1(K::ln2_hi), f - (hfsq - corr));
}

// float log(x) for x positive, normal and finite, with a table (see
// MathConsts<float>::log_off): no division and a degree-6 polynomial where
// vlog_general has a division and a degree-9 one, and no frexp; 0.57 ULP
// (csrc/tests/math_ulp.cpp). BCE and KL take one or two logs per element:
// forced AVX2, 1 thread, 2^16 elements in cache, KL 1.30 -> 0.88 ns and BCE
// 2.78 -> 1.84 ns per element with vlog inlined (out of line, the table alone
// measured no faster).
template <class V> FUSEDLOSS_ALWAYS_INLINE V vlog_table(V x) {
  using K = MathConsts<float>;
  V k, cell;
  const V z = log_split(x, K::log_off, k, cell);
  // z invc - 1 = r + r_lo, both exact: the rounded product less 1 (Sterbenz)
  // and the product's rounding error, by FMA. A rounded r would cost up to
  // half an ULP of the result where r and the result share a binade; r_lo
  // enters as log1p's first-order term, r_lo / (1 + r) ~ r_lo (1 - r).
  const V invc = table8(cell, K::log_invc), zi = z * invc;
  const V r_lo = fmsub(z, invc, zi), r = zi - V::set1(1);
  V q = fmadd(V::set1(K::log_poly[3]), r, V::set1(K::log_poly[2]));
  q = fmadd(q, r, V::set1(K::log_poly[1]));
  q = fmadd(q, r, V::set1(K::log_poly[0]));
  const V p = fmadd(q, r, V::set1(-0.5f));
  const V lo = fmadd(k, V::set1(K::ln2_lo), table8(cell, K::log_c_lo)) - fmsub(r, r_lo, r_lo);
  const V hi = fmadd(k, V::set1(K::ln2_hi), table8(cell, K::log_c_hi));
  // hi + r with its rounding error (Fast2Sum: |hi| >= |r| or hi = 0), so that
  // only the last addition rounds at the result's scale.
  const V s = hi + r, err = (hi - s) + r;
  return s + (err + fmadd(r * r, p, lo));
}

// log(x): x = 2^e m by frexp, m moved into [sqrt(1/2), sqrt(2)).
template <class V> inline V vlog_general(V x) {
  using T = typename V::T;
  using K = MathConsts<T>;
  const auto tiny = lt(x, V::set1(K::min_normal));
  const V xs = select(tiny, x * V::set1(K::denorm_scale), x);
  V e;
  V m = frexp_v(xs, e);
  e = e - select(tiny, V::set1(K::denorm_exp), V::set1(0));
  const auto big = gt(m, V::set1(static_cast<T>(1.41421356237309504880)));
  m = select(big, m * V::set1(static_cast<T>(0.5)), m);
  e = e + select(big, V::set1(1), V::set1(0));
  V res = vlog_reduced(m, e);
  const T inf = std::numeric_limits<T>::infinity();
  res = select(eq(x, V::set1(0)), V::set1(-inf), res);
  res = select(lt(x, V::set1(0)), V::set1(std::numeric_limits<T>::quiet_NaN()), res);
  res = select(eq(x, V::set1(inf)), x, res);
  return select(isnan_v(x), x, res);
}

// log(x). With the table: lanes outside the positive normal floats (0,
// denormals, negatives, inf, NaN) take vlog_general, each lane by its own value.
// kAtMostOne: x <= 1 or NaN (BCE's 1 - x and x), so only the lower end is tested.
template <bool kAtMostOne = false, class V> FUSEDLOSS_ALWAYS_INLINE V vlog(V x) {
  using T = typename V::T;
  if constexpr (kFloatTable<T>) {
    auto other = nge(x, V::set1(MathConsts<T>::min_normal));
    if constexpr (!kAtMostOne) other = other | gt(x, V::set1(std::numeric_limits<T>::max()));
    if (!any(other)) return vlog_table(x);
    return select(other, vlog_general(x), vlog_table(x));
  }
  return vlog_general(x);
}

// log(y) for y in [1, 2] or NaN (double softplus's log(1 + e^-|x|)), vlog_general's
// algorithm without frexp and the special cases: fewer operations there than
// vlog_table (no reduction, no lookups), and as accurate (0.81 ULP).
template <class V> inline V vlog_1to2(V y) {
  using T = typename V::T;
  const auto big = gt(y, V::set1(static_cast<T>(1.41421356237309504880)));
  return vlog_reduced(select(big, y * V::set1(static_cast<T>(0.5)), y), select(big, V::set1(1), V::set1(0)));
}

// u + u^2 Q(u), Q's float coefficients lowest first (Horner): the log1p
// polynomials below.
template <class V, int N> FUSEDLOSS_ALWAYS_INLINE V u_plus_u2_poly(V u, const float (&q)[N]) {
  static_assert(sizeof(typename V::T) == 4, "float only: double needs about twice the degree");
  V acc = V::set1(q[N - 1]);
  for (int k = N - 2; k >= 0; --k) acc = fmadd(acc, u, V::set1(q[k]));
  return fmadd(u * u, acc, u);
}

// log1p(e) for float e in [0, 1] (softplus's log(1 + e^-|x|)) or NaN: e + e^2
// Q(e). No division and no reduction, where vlog_1to2 has both: BCE with
// logits at 10^7 elements and the GAN row take 0.64x and 0.71x the time
// (forced AVX2, 2 threads). 1.47 ULP, 1.83 without FMA (csrc/tests/math_ulp.cpp,
// every float in [0, 1]). In softplus the error of exp dominates: BCE with
// logits' loss stays within 2.2 ULP (2.3 without FMA; torch's float32 1.5).
template <class V> FUSEDLOSS_ALWAYS_INLINE V vlog1p_unit(V e) {
  return u_plus_u2_poly(e, MathConsts<float>::log1p_unit);
}

// log1p(u) for float u in [-0.5, 0] or NaN: u + u^2 Q(u), Q < 0 throughout,
// so the last addition does not cancel. Binary cross-entropy's exact
// arguments (x - 1 for x >= 0.5, -x below): one of its two logs becomes this
// instead of vlog1p's log, division and correction (forced AVX2 and AVX-512,
// 2 threads, 10^7 elements: 0.90x and 0.83x the time). 0.93 ULP, 1.09 without
// FMA (csrc/tests/math_ulp.cpp, every float in [-0.5, 0]).
template <class V> FUSEDLOSS_ALWAYS_INLINE V vlog1p_neg_half(V u) {
  return u_plus_u2_poly(u, MathConsts<float>::log1p_neg_half);
}

// tanh's polynomial half, for |x| <= kTanhPolyMax: vtanh's bits there.
template <class V> FUSEDLOSS_ALWAYS_INLINE V vtanh_small(V x) {
  using T = typename V::T;
  using K = MathConsts<T>;
  const V s = x * x;
  V q = V::set1(static_cast<T>(K::tanh_coef[K::tanh_terms]));
  for (int k = K::tanh_terms - 1; k >= 0; --k) q = fmadd(q, s, V::set1(static_cast<T>(K::tanh_coef[k])));
  return fmadd(x * s, q, x);
}

// tanh(x) (the logit softcap). |x| <= 0.625: x + x^3 Q(x^2), Q a Chebyshev fit
// of (tanh(a) - a) / a^3 in a^2 (mpmath.chebyfit; float degree 5, double
// degree 11; tanh(-0) gives +0). |x| > 0.625: 1 - 2 / (e^2|x| + 1) with the
// sign put back; 2|x| past exp's overflow gives e = inf and exactly 1. The
// threshold keeps 2 / (e + 1) <= 0.45, so exp's error reaches the result
// scaled by at most 0.8. NaN -> NaN. Each half runs only when a lane needs it.
template <class V> inline V vtanh(V x) {
  using T = typename V::T;
  const V zero = V::set1(0), a = vabs(x);
  const V lim = V::set1(static_cast<T>(kTanhPolyMax));
  const auto large = nge(lim, a);  // a > lim, or NaN
  V r = zero;
  if (any(le(a, lim))) r = vtanh_small(x);
  if (any(large)) {
    const V one = V::set1(1);
    const V big = one - V::set1(2) / (vexp(a + a) + one);
    r = select(large, select(lt(x, zero), zero - big, big), r);
  }
  return r;
}

// tanh of kN vectors, in place: the polynomial alone when every lane of all
// of them is within its range (one test for all), else vtanh each; vtanh's
// bits either way. A NaN lane may pass the test (the max drops it): the
// polynomial keeps it NaN.
template <int kN, class V> FUSEDLOSS_ALWAYS_INLINE void vtanh_n(V* v) {
  V a = vabs(v[0]);
  for (int k = 1; k < kN; ++k) a = vmax(a, vabs(v[k]));
  if (!any(nge(V::set1(static_cast<typename V::T>(kTanhPolyMax)), a))) {
    for (int k = 0; k < kN; ++k) v[k] = vtanh_small(v[k]);
  } else {
    for (int k = 0; k < kN; ++k) v[k] = vtanh(v[k]);
  }
}

template <class S> struct VecOf { using type = VF; };
template <> struct VecOf<double> { using type = VD; };
template <class S> using vec_t = typename VecOf<S>::type;

// Partial vectors at row ends: lanes >= n read as pad / are not written.
template <class S> inline vec_t<S> load_n(const S* p, int64_t n, acc_t<S> pad) {
  return n <= 0 ? vec_t<S>::set1(pad) : load_part(p, n, pad);
}
template <class S> inline void store_n(S* p, int64_t n, vec_t<S> v) {
  if (n > 0) store_part(p, n, v);
}
