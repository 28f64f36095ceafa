// The project's vector exp/log/tanh (and float log1p polynomials) applied
// elementwise, so the tests can hold the exact functions the kernels use
// against a float64 reference on every ISA path (tests/test_math.py). Included inside each per-ISA namespace after
// simd/math.h; not used by the losses themselves.
#pragma once

template <class V> V math_op(MathOp op, V x) {
  if constexpr (sizeof(typename V::T) == 4) {  // (the binding sends these in float only)
    if (op == MathOp::Log1pUnit) return vlog1p_unit(x);
    if (op == MathOp::Log1pNegHalf) return vlog1p_neg_half(x);
  }
  return op == MathOp::Exp ? vexp(x) : op == MathOp::Log ? vlog(x) : vtanh(x);
}

template <class T>
void apply_math(MathOp op, const T* in, T* out, int64_t n) {
  using V = vec_t<T>;
  for (int64_t i = 0; i < n; i += V::W) {
    const int64_t left = n - i;
    const V x = left >= V::W ? V::load(in + i) : load_n(in + i, left, T(1));
    const V y = math_op(op, x);
    if (left >= V::W) {
      y.store(out + i);
    } else {
      store_n(out + i, left, y);
    }
  }
}

inline void elementwise_math(MathOp op, DType dtype, const void* in, void* out, int64_t n) {
  if (dtype == DType::Float64) {
    apply_math(op, static_cast<const double*>(in), static_cast<double*>(out), n);
  } else {
    apply_math(op, static_cast<const float*>(in), static_cast<float*>(out), n);
  }
}
