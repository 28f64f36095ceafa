// Storage element types and their scalar conversions to the accumulation type.
//
// Included INSIDE a per-ISA namespace (fusedloss::baseline / avx2 / avx512) by
// kernels_*.cpp, after <cstdint>/<cstring> at global scope: every inline
// function here gets one copy per ISA, so the linker can never hand the
// baseline path a copy compiled with AVX-512 flags.
#pragma once

// Half types are 16-bit patterns; the tags only select overloads.
struct Half { uint16_t bits; };
struct BF16 { uint16_t bits; };

// Accumulation type: double for double storage, float for everything else.
template <class S> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <class S> using acc_t = typename AccOf<S>::type;

inline uint32_t float_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
inline float bits_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }

// IEEE binary16 -> float, exact (denormals included).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu, man = h & 0x3ffu;
  if (exp == 0x1f) return bits_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {  // zero or denormal: man * 2^-24 is exact in float
    const float mag = static_cast<float>(man) * 5.9604644775390625e-08f;
    return bits_float(sign | float_bits(mag));
  }
  return bits_float(sign | ((exp + 112u) << 23) | (man << 13));
}

// float -> binary16, round to nearest even; NaN stays a quiet NaN (the same
// bits F16C's vcvtps2ph produces, so vector bodies and scalar tails agree).
inline uint16_t float_to_half(float f) {
  uint32_t x = float_bits(f);
  const uint32_t sign = (x >> 16) & 0x8000u;
  x &= 0x7fffffffu;
  if (x >= 0x7f800000u)  // inf or NaN
    return static_cast<uint16_t>(sign | 0x7c00u | (x > 0x7f800000u ? 0x200u | ((x >> 13) & 0x3ffu) : 0u));
  if (x >= 0x477ff000u) return static_cast<uint16_t>(sign | 0x7c00u);  // rounds to inf
  if (x < 0x38800000u) {
    // Below the smallest normal half: adding 0.5 (ulp 2^-24 = denormal half
    // unit) rounds to nearest even in hardware; the low bits are the result.
    const float r = bits_float(x) + 0.5f;
    return static_cast<uint16_t>(sign | (float_bits(r) - 0x3f000000u));
  }
  const uint32_t odd = (x >> 13) & 1u;
  x += 0xc8000fffu + odd;  // rebias exponent (127 -> 15) and round half to even
  return static_cast<uint16_t>(sign | (x >> 13));
}

inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }

inline uint16_t float_to_bf16(float f) {
  const uint32_t x = float_bits(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((x >> 16) | 0x40u);  // quiet NaN
  return static_cast<uint16_t>((x + 0x7fffu + ((x >> 16) & 1u)) >> 16);
}

inline float to_acc(float v) { return v; }
inline double to_acc(double v) { return v; }
inline float to_acc(Half v) { return half_to_float(v.bits); }
inline float to_acc(BF16 v) { return bf16_to_float(v.bits); }

inline void put(float* p, float v) { *p = v; }
inline void put(double* p, double v) { *p = v; }
inline void put(Half* p, float v) { p->bits = float_to_half(v); }
inline void put(BF16* p, float v) { p->bits = float_to_bf16(v); }

// Partial vectors (0 < n < W lanes) through a small buffer: the portable
// fallback where an ISA has no masked load/store for the type.
template <class V, class S> inline V buf_load(const S* p, int64_t n, typename V::T pad) {
  alignas(64) typename V::T b[V::W];
  for (int64_t i = 0; i < V::W; ++i) b[i] = i < n ? to_acc(p[i]) : pad;
  return V::load(b);
}
template <class V, class S> inline void buf_store(S* p, int64_t n, V v) {
  alignas(64) typename V::T b[V::W];
  v.store(b);
  for (int64_t i = 0; i < n; ++i) put(p + i, b[i]);
}

// Lanes of T by which p sits past a kBytes-aligned address, or -1 where p is
// not even T-aligned: the `delta` of shifted streaming (vec_avx2/avx512.h).
template <int kBytes, class T> inline int lanes_past_grid(const T* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  return a % sizeof(T) ? -1 : int((a % kBytes) / sizeof(T));
}
