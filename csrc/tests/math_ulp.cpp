// Max ULP error of simd/math.h's vexp / vlog / vtanh (and the float-only
// vlog1p_unit, vlog1p_neg_half) against long-double expl/logl/tanhl/log1pl
// (64-bit mantissa: an exact-enough reference for float and double).
// Not built by the package. Build and run each ISA (from the repo root):
//   g++ -O2 -std=c++17 -Icsrc csrc/tests/math_ulp.cpp -o /tmp/ulp_base && /tmp/ulp_base
//   g++ -O2 -std=c++17 -Icsrc -DISA_SCALAR csrc/tests/math_ulp.cpp -o /tmp/ulp_scalar
//   g++ -O2 -std=c++17 -Icsrc -DISA_AVX2 -mavx2 -mfma -mf16c csrc/tests/math_ulp.cpp -o /tmp/ulp_avx2
//   g++ -O2 -std=c++17 -Icsrc -DISA_AVX512 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c
//       csrc/tests/math_ulp.cpp -o /tmp/ulp_avx512
#if defined(ISA_AVX2) || defined(ISA_AVX512)
#include <immintrin.h>
#elif defined(__SSE2__) && !defined(ISA_SCALAR)
#include <emmintrin.h>
#define ISA_SSE2 1
#endif
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cstdint>
#include <limits>
#include <random>

namespace isa {
#include "fusedloss/simd/storage.h"
#if defined(ISA_AVX512)
#include "fusedloss/simd/vec_avx512.h"
#elif defined(ISA_AVX2)
#include "fusedloss/simd/vec_avx2.h"
#elif defined(ISA_SSE2)
#include "fusedloss/simd/vec_sse2.h"  // the baseline path on x86-64
#else
#include "fusedloss/simd/vec_scalar.h"
#endif
#include "fusedloss/simd/math.h"
}  // namespace isa

template <class T> long double ulp_err(T got, long double ref) {
  if (got != got || ref != ref) return (got != got && ref != ref) ? 0 : 1e30L;
  const T ref_t = static_cast<T>(ref);  // overflows to inf exactly when the true result does
  if (isinf(ref_t) || isinf(got)) return got == ref_t ? 0 : 1e30L;
  int e;
  frexpl(ref, &e);
  const int mant = std::numeric_limits<T>::digits;              // 24 / 53
  const int emin = std::numeric_limits<T>::min_exponent - mant;  // -149 / -1074
  const int ulp_exp = e - mant > emin ? e - mant : emin;
  return fabsl(static_cast<long double>(got) - ref) / ldexpl(1.0L, ulp_exp);
}

enum Fn { kExp, kLog, kTanh, kLog1pUnit, kLog1pNegHalf };
template <class V, class T> struct Worst {
  long double err = 0;
  T at = 0;
  Fn fn;
  V apply(V v) const {
    if constexpr (sizeof(T) == 4) {
      if (fn == kLog1pUnit) return isa::vlog1p_unit(v);
      if (fn == kLog1pNegHalf) return isa::vlog1p_neg_half(v);
    }
    return fn == kLog ? isa::vlog(v) : fn == kExp ? isa::vexp(v) : isa::vtanh(v);
  }
  void check(const T* xs, int n) {
    alignas(64) T in[V::W], out[V::W];
    for (int i = 0; i < n; i += V::W) {
      for (int k = 0; k < V::W; ++k) in[k] = xs[i + k < n ? i + k : i];
      const V v = V::load(in);
      apply(v).store(out);
      for (int k = 0; k < V::W && i + k < n; ++k) {
        const long double xl = static_cast<long double>(in[k]);
        const long double ref = fn == kLog ? logl(xl) : fn == kExp ? expl(xl) : fn == kTanh ? tanhl(xl) : log1pl(xl);
        const long double e = ulp_err(out[k], ref);
        if (e > err) err = e, at = in[k];
      }
    }
  }
};

int main() {
  using isa::VD;
  using isa::VF;
  Worst<VF, float> fe{0, 0, kExp}, fl{0, 0, kLog}, ft{0, 0, kTanh};
  static float buf[1 << 16];
  int n = 0;
  auto flush = [&](Worst<VF, float>& w) { w.check(buf, n); n = 0; };
  // exp: every 64th pattern of [-110, 90], all patterns of the denormal band.
  for (uint32_t u = 0; u <= 0x42dc0000u; u += 64) {
    const float f = isa::bits_float(u), g = -f;
    if (f <= 90.0f) buf[n++] = f;
    buf[n++] = g;
    if (n > (1 << 16) - 4) flush(fe);
  }
  for (uint32_t u = 0xc2aea000u; u <= 0xc2d00000u; ++u) {
    buf[n++] = isa::bits_float(u);
    if (n > (1 << 16) - 4) flush(fe);
  }
  flush(fe);
  // log: every 64th positive pattern (denormals included), plus 0, inf, NaN, -1.
  for (uint32_t u = 1; u < 0x7f800000u; u += 64) {
    buf[n++] = isa::bits_float(u);
    if (n > (1 << 16) - 4) flush(fl);
  }
  flush(fl);
  // tanh: every 4th pattern of [-10, 10] (1 from 9.02 on), every pattern of [0.5, 0.75].
  for (uint32_t u = 0; u <= 0x41200000u; u += 4) {
    buf[n++] = isa::bits_float(u), buf[n++] = -isa::bits_float(u);
    if (n > (1 << 16) - 4) flush(ft);
  }
  for (uint32_t u = 0x3f000000u; u <= 0x3f400000u; ++u) {
    buf[n++] = isa::bits_float(u);
    if (n > (1 << 16) - 4) flush(ft);
  }
  flush(ft);
  // log1p_unit: every pattern of [0, 1] (softplus's e = exp(-|x|)).
  Worst<VF, float> fp{0, 0, kLog1pUnit};
  for (uint32_t u = 0; u <= 0x3f800000u; ++u) {
    buf[n++] = isa::bits_float(u);
    if (n > (1 << 16) - 4) flush(fp);
  }
  flush(fp);
  printf("float log1p_unit: max %.3Lf ulp at %.9g\n", fp.err, double(fp.at));
  // log1p_neg_half: every pattern of [-0.5, 0] (binary cross-entropy's exact arguments).
  Worst<VF, float> fh{0, 0, kLog1pNegHalf};
  for (uint32_t u = 0x80000000u; u <= 0xbf000000u; ++u) {
    buf[n++] = isa::bits_float(u);
    if (n > (1 << 16) - 4) flush(fh);
  }
  flush(fh);
  printf("float log1p_neg_half: max %.3Lf ulp at %.9g\n", fh.err, double(fh.at));
  printf("float exp: max %.3Lf ulp at %.9g\nfloat log: max %.3Lf ulp at %.9g\n", fe.err, double(fe.at), fl.err,
         double(fl.at));
  printf("float tanh: max %.3Lf ulp at %.9g\n", ft.err, double(ft.at));

  Worst<VD, double> de{0, 0, kExp}, dl{0, 0, kLog}, dt{0, 0, kTanh};
  std::mt19937_64 rng(1);
  std::uniform_real_distribution<double> ux(-746.0, 710.0), um(0.5, 2.0), ue(-1074.0, 1024.0), ut(-20.0, 20.0),
      ul(-40.0, 2.0);
  static double dbuf[4096];
  for (int rep = 0; rep < 2000; ++rep) {
    for (double& v : dbuf) v = ux(rng);
    if (rep % 4 == 0)
      for (double& v : dbuf) v = -708.4 - (v + 746.0) * (37.0 / 1456.0);  // denormal band
    de.check(dbuf, 4096);
    for (double& v : dbuf) v = rep % 2 ? um(rng) : ldexp(um(rng), static_cast<int>(ue(rng)));
    dl.check(dbuf, 4096);
    for (double& v : dbuf) v = rep % 2 ? ut(rng) : ldexp(1.0, static_cast<int>(ul(rng))) * um(rng) * (v > 0 ? 1 : -1);
    dt.check(dbuf, 4096);
  }
  printf("double tanh: max %.3Lf ulp at %.17g\n", dt.err, dt.at);
  printf("double exp: max %.3Lf ulp at %.17g\ndouble log: max %.3Lf ulp at %.17g\n", de.err, de.at, dl.err, dl.at);
  const float sp[8] = {0.0f, -0.0f, -1.0f, std::numeric_limits<float>::infinity(),
                       std::numeric_limits<float>::quiet_NaN(), -std::numeric_limits<float>::infinity(), 1.0f, 1e-45f};
  for (float v : sp) {
    alignas(64) float in[VF::W], o1[VF::W], o2[VF::W];
    for (float& i : in) i = v;
    isa::vlog(VF::load(in)).store(o1);
    isa::vexp(VF::load(in)).store(o2);
    printf("x=%g log=%g exp=%g\n", double(v), double(o1[0]), double(o2[0]));
  }
  return 0;
}
