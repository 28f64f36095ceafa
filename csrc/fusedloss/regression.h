// MSE and L1 (real and complex) losses with their gradients, elementwise.
//
// Included inside a per-ISA namespace after common.h (Scratch,
// ordered_sum, kMin). One pass: read input and target, write the gradient
// (and the per-element loss for reduction none). The reduced loss is summed
// per fixed block of kRegBlock elements (floats in vector accumulators
// flushed to double every kRegSub elements), blocks combined in order: the
// same bits for any thread count.
#pragma once

constexpr int64_t kRegBlock = 1 << 14;
constexpr int64_t kRegSub = 256;
constexpr int64_t kRegSerial = 1 << 16;  // below this many elements: no parallel region

// fn(i0, i1) -> partial sum of the block [i0, i1).
template <class F> double sum_blocks(int64_t n, int threads, F&& fn) {
  const int64_t nblk = (n + kRegBlock - 1) / kRegBlock;
  Scratch<double> part(nblk);
  const int nt = n < kRegSerial ? 1 : threads;
  if (nt <= 1) {
    for (int64_t b = 0; b < nblk; ++b) part[b] = fn(b * kRegBlock, kMin(n, (b + 1) * kRegBlock));
  } else {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < nblk; ++b) part[b] = fn(b * kRegBlock, kMin(n, (b + 1) * kRegBlock));
  }
  return ordered_sum(part.p, nblk);
}

inline double reduce_result(Reduction red, double total, int64_t n) {
  if (red == Reduction::None) return 0.0;
  if (red == Reduction::Sum) return total;
  return total / double(n);  // n == 0: 0/0 = NaN, as torch
}

// The upstream gradient every element's gradient is scaled by when no
// per-element grad_output is given (a mean divides it by n).
inline double upstream_scalar(const RegressionProblem& pr) {
  return pr.reduction == Reduction::Mean ? pr.grad_output_scalar / double(pr.n) : pr.grad_output_scalar;
}

struct MseOp {
  template <class V> static V loss(V d) { return d * d; }
  // d/dx (x-t)^2 * g = 2 d g; the 2 is folded into g (exact).
  template <class V> static V grad(V d, V g) { return d * (g + g); }
};

struct L1Op {
  template <class V> static V loss(V d) { return vmax(V::set1(0) - d, d); }  // NaN stays NaN
  template <class V> static V grad(V d, V g) {
    // sign(0) = 0 and, as torch.sign, sign(NaN) = 0 (both compares false).
    return select(gt(d, V::set1(0)), V::set1(1), select(lt(d, V::set1(0)), V::set1(-1), V::set1(0))) * g;
  }
};

template <class S, class Op> double regression_typed(const RegressionProblem& pr, int threads) {
  using A = acc_t<S>;
  using V = vec_t<S>;
  constexpr int64_t W = V::W;
  const S* x = static_cast<const S*>(pr.input);
  const S* t = static_cast<const S*>(pr.target);
  S* g = static_cast<S*>(pr.grad_input);
  A* lo = static_cast<A*>(pr.loss);
  const A* goa = pr.reduction == Reduction::None ? static_cast<const A*>(pr.grad_output) : nullptr;
  const double go_d = upstream_scalar(pr);
  const V go = V::set1(static_cast<A>(go_d));
  const bool stream = g && pr.n * int64_t(sizeof(S)) >= kStreamBytes;
  const auto ld = [](const S* p, int64_t n) { return n >= W ? vload(p) : load_n(p, n, A(0)); };
  const double total = sum_blocks(pr.n, threads, [&](int64_t i0, int64_t i1) {
    // Locals, not the captured references: the vector stores below may alias
    // anything, so each would force every captured value to be reloaded.
    const S *xp = x, *tp = t;
    S* gp = g;
    A* lp = lo;
    const A* gop = goa;
    const V gs = go;
    const bool st = stream;
    double sum = 0;
    for (int64_t s0 = i0; s0 < i1; s0 += kRegSub) {
      const int64_t s1 = kMin(i1, s0 + kRegSub);
      V acc = V::set1(0);  // memory-bound: one accumulator is enough
      for (int64_t i = s0; i < s1; i += W) {
        const int64_t n = s1 - i;
        const V d = ld(xp + i, n) - ld(tp + i, n);  // padding lanes: d = 0, loss 0
        const V l = Op::loss(d);
        if (lp) n >= W ? l.store(lp + i) : store_n(lp + i, n, l);
        if (gp) {
          const V gv = Op::grad(d, gop ? (n >= W ? V::load(gop + i) : load_n(gop + i, n, A(0))) : gs);
          if (n < W) store_n(gp + i, n, gv);
          else if (!(st && vstream(gp + i, gv))) vstore(gp + i, gv);
        }
        acc = acc + l;
      }
      sum += double(hsum(acc));
    }
    stream_fence();
    return sum;
  });
  return reduce_result(pr.reduction, total, pr.n);
}

// Complex L1 on interleaved (re, im): |d| by hypot (no overflow, < 1 ULP),
// gradient g * d / |d|, 0 where d == 0. Scalar: hypot dominates, not memory.
template <class S> double l1_complex_typed(const RegressionProblem& pr, int threads) {
  const S* x = static_cast<const S*>(pr.input);
  const S* t = static_cast<const S*>(pr.target);
  S* g = static_cast<S*>(pr.grad_input);
  S* lo = static_cast<S*>(pr.loss);
  const S* goa = pr.reduction == Reduction::None ? static_cast<const S*>(pr.grad_output) : nullptr;
  const double go = upstream_scalar(pr);
  const double total = sum_blocks(pr.n, threads, [&](int64_t i0, int64_t i1) {
    double sum = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const double dr = double(x[2 * i]) - double(t[2 * i]), di = double(x[2 * i + 1]) - double(t[2 * i + 1]);
      const S dr_s = static_cast<S>(dr), di_s = static_cast<S>(di);  // the difference in storage precision
      const double a = ::hypot(double(dr_s), double(di_s));
      const S l = static_cast<S>(a);
      if (lo) lo[i] = l;
      sum += double(l);
      if (g) {
        const double gi = goa ? double(goa[i]) : go;
        const bool z = dr_s == 0 && di_s == 0;
        g[2 * i] = z ? S(0) : static_cast<S>(gi * (double(dr_s) / a));
        g[2 * i + 1] = z ? S(0) : static_cast<S>(gi * (double(di_s) / a));
      }
    }
    return sum;
  });
  return reduce_result(pr.reduction, total, pr.n);
}

template <class Op> double regression_dispatch(const RegressionProblem& pr, int threads) {
  switch (pr.dtype) {
    case DType::Float64: return regression_typed<double, Op>(pr, threads);
    case DType::Float16: return regression_typed<Half, Op>(pr, threads);
    case DType::BFloat16: return regression_typed<BF16, Op>(pr, threads);
    default: return regression_typed<float, Op>(pr, threads);
  }
}

inline double mse(const RegressionProblem& pr, int threads) { return regression_dispatch<MseOp>(pr, threads); }

inline double l1(const RegressionProblem& pr, int threads) {
  if (pr.complex_input)
    return pr.dtype == DType::Float64 ? l1_complex_typed<double>(pr, threads) : l1_complex_typed<float>(pr, threads);
  return regression_dispatch<L1Op>(pr, threads);
}
