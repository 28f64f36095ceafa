// Losses over class indices, one pass over each row, with their gradients:
//   nll_loss           loss = -w[t] * x[t] (x: log-probabilities), on an
//                      outer x C x inner view as cross-entropy; ignore_index.
//   multi_margin_loss  the multi-class hinge: sum over j != t of
//                      max(0, margin - x[t] + x[j])^p * w[t] / C, p in {1, 2},
//                      on rows (inner == 1).
// Storage float32 / float64 / float16 / bfloat16, arithmetic in acc_t<S>;
// every ISA through the simd/ vector types.
//
// Included inside a per-ISA namespace (kernels_isa.cpp) after simd/math.h and
// common.h. Targets are checked before anything is written. Each position's
// loss and gradient come from one thread, by code fixed by the shape; the
// reductions add the per-position losses with ordered_sum: the same bits for
// any thread count.
#pragma once

constexpr int64_t kClassSerialWork = 1 << 15;  // below this many elements: no parallel region

// The first flat position whose target is outside [0, classes) and (where
// can_ignore) not `ignore`; -1 when every target is valid.
inline int64_t first_bad_target(const int64_t* tgt, int64_t n, int64_t classes, bool can_ignore, int64_t ignore) {
  int64_t bad = 0;  // branch-free first (vectorises); the position only on failure
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = tgt[i];
    const bool kept = !(can_ignore && t == ignore);
    bad |= int64_t(kept & ((t < 0) | (t >= classes)));
  }
  if (bad)
    for (int64_t i = 0; i < n; ++i) {
      const int64_t t = tgt[i];
      if (!(can_ignore && t == ignore) && (t < 0 || t >= classes)) return i;
    }
  return -1;
}

// fn(u0, u1) over [0, units), one contiguous range per thread; no parallel
// region when `work` (elements touched) is small. fn must not throw.
template <class F> void split_units(int64_t units, int64_t work, int threads, const F& fn) {
  const int nt = work < kClassSerialWork ? 1 : int(kMin(threads, units));
  if (nt <= 1) return fn(int64_t(0), units);
#pragma omp parallel num_threads(nt)
  {
    const int64_t k = omp_get_thread_num(), n = omp_get_num_threads();
    fn(units * k / n, units * (k + 1) / n);
  }
}

// Lanes 0, 1, ..., W - 1: compared with an offset, the mask of one lane.
template <class V> V lane_index() {
  alignas(64) typename V::T lanes[V::W];
  for (int k = 0; k < V::W; ++k) lanes[k] = static_cast<typename V::T>(k);
  return V::load(lanes);
}

// Where a position's loss goes, and the upstream gradient it is scaled by.
template <class A> struct PositionOut {
  const A* go_arr;    // per-position upstream gradient (reduction none), or nullptr
  double go_scalar;   // otherwise: grad_output, already / denominator for mean
  A* loss_out;        // per-position loss (reduction none), or nullptr
  double* pos_loss;   // per-position loss for the reduction, or nullptr
  double go(int64_t i) const { return go_arr ? double(go_arr[i]) : go_scalar; }
  void store(int64_t i, double l) const {
    if (loss_out) loss_out[i] = static_cast<A>(l);
    if (pos_loss) pos_loss[i] = l;
  }
};

// ---- nll_loss ----
template <class S> struct Nll {
  using A = acc_t<S>;
  using V = vec_t<S>;
  static constexpr int64_t W = V::W;
  static constexpr bool kIgnores = true;
  // Inner positions per column tile (inner > 1): the tile's C segments stay in
  // cache between their zero fill and the patches.
  static constexpr int64_t kTile = 64;

  const S* x;
  const int64_t* tgt;
  const A* w;
  S* g;
  int64_t N, C, I, ignore;
  bool stream;  // gradient far bigger than the caches: non-temporal stores
  PositionOut<A> out;

  Nll(const ClassLossProblem& pr, const PositionOut<A>& o)
      : x(static_cast<const S*>(pr.input)), tgt(pr.target), w(static_cast<const A*>(pr.weight)),
        g(static_cast<S*>(pr.grad_input)), N(pr.outer), C(pr.classes), I(pr.inner), ignore(pr.ignore_index),
        stream(g && N * C * I * int64_t(sizeof(S)) >= kStreamBytes), out(o) {}

  // The mean divides by the weight of the targets that count (their number
  // without weights): 0/0 = NaN when nothing is weighed, +-inf where negative
  // weights cancel, as torch.
  static double denominator(const ClassLossProblem& pr, int64_t npos) {
    const int64_t* tgt = pr.target;
    const A* w = static_cast<const A*>(pr.weight);
    const int64_t ignore = pr.ignore_index;
    return pairwise_sum(0, npos, [tgt, w, ignore](int64_t i) {
      return tgt[i] == ignore ? 0.0 : w ? double(w[tgt[i]]) : 1.0;
    });
  }

  // Position i, whose class c sits at x[base + c * I]: stores its loss;
  // false when ignored, else gval is its gradient at the target.
  bool position(int64_t i, int64_t base, A& gval) const {
    const int64_t t = tgt[i];
    if (t == ignore) {
      out.store(i, 0.0);
      return false;
    }
    const double wt = w ? double(w[t]) : 1.0;
    out.store(i, -wt * double(to_acc(x[base + t * I])));
    gval = static_cast<A>(-wt * out.go(i));
    return true;
  }

  void forward(int64_t i0, int64_t i1) const {
    A unused = 0;
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t o = I == 1 ? i : i / I;
      position(i, o * C * I + (i - o * I), unused);
    }
  }

  // Rows [r0, r1) with the gradient (inner == 1). Their gradient is one flat
  // run of zeros but for one value per non-ignored row. Big outputs are swept
  // once in vectors, each built with its values in place, so that no element
  // is written twice and the stores can stream; a row's input element is read
  // before the vector holding it is stored (in-place safe). Others: rows_filled.
  void rows(int64_t r0, int64_t r1) const {
    if (!stream) return rows_filled(r0, r1);
    S* const gp = g;
    const int64_t lo = r0 * C, hi = r1 * C;
    const int delta = lanes_past_grid<int(W * sizeof(S))>(gp + lo);
    const bool st = delta >= 0;
    const int64_t first = delta > 0 ? W - delta : W;  // a partial first vector reaches the aligned grid
    const V iota = lane_index<V>(), zero = V::set1(0);
    int64_t r = r0, pos = hi;
    A val = 0;
    const auto next = [&] {  // pos, val: the next non-ignored row's target and gradient
      for (; r < r1; ++r)
        if (position(r, r * C, val)) {
          pos = r * C + tgt[r];
          ++r;
          return;
        }
      pos = hi;
    };
    next();
    for (int64_t i = lo, n = kMin(first, hi - lo); i < hi; i += n, n = kMin(W, hi - i)) {
      V v = zero;
      for (; pos < i + n; next()) v = select(eq(iota, V::set1(A(pos - i))), V::set1(val), v);
      if (n < W) store_n(gp + i, n, v);
      else if (!(st && vstream(gp + i, v))) vstore(gp + i, v);
    }
    if (st) stream_fence();
  }

  // rows() below the streaming size: blocks of rows zeroed by the C library's
  // fill, then one value written per non-ignored row (read first: in-place
  // safe). The library's fill ("rep stosb" on x86) writes whole cache lines
  // without reading them first, where AVX2's 32-byte stores read each line they
  // write (fwd+grad 4096x1000 float32, 2 threads: 479 -> 364 us on AVX2, 400 -> 359 us
  // on AVX-512; 256x100 0.62x / 0.80x).
  void rows_filled(int64_t r0, int64_t r1) const {
    constexpr int64_t kBlock = 256;
    A vals[kBlock];
    int64_t at[kBlock];
    for (int64_t b0 = r0; b0 < r1; b0 += kBlock) {
      const int64_t b1 = kMin(r1, b0 + kBlock);
      int64_t m = 0;
      for (int64_t r = b0; r < b1; ++r)
        if (position(r, r * C, vals[m])) at[m++] = r * C + tgt[r];
      memset(static_cast<void*>(g + b0 * C), 0, size_t((b1 - b0) * C) * sizeof(S));
      for (int64_t k = 0; k < m; ++k) put(g + at[k], vals[k]);
    }
  }

  // Inner positions [j0, j1) of outer o with the gradient (inner > 1): their
  // input elements read first, the tile's C segments zeroed, then one value
  // written per non-ignored position, into the tile still in cache.
  void tile(int64_t o, int64_t j0, int64_t j1) const {
    A vals[kTile];
    int64_t cls[kTile];
    const int64_t base = o * C * I, n = j1 - j0;
    for (int64_t k = 0; k < n; ++k) cls[k] = position(o * I + j0 + k, base + j0 + k, vals[k]) ? tgt[o * I + j0 + k] : -1;
    const V zero = V::set1(0);
    for (int64_t c = 0; c < C; ++c) {
      S* seg = g + base + c * I + j0;
      for (int64_t k = 0; k < n; k += W) {
        if (n - k >= W) vstore(seg + k, zero);
        else store_n(seg + k, n - k, zero);
      }
    }
    for (int64_t k = 0; k < n; ++k)
      if (cls[k] >= 0) put(g + base + cls[k] * I + j0 + k, vals[k]);
  }

  void run(int threads) const {
    const int64_t npos = N * I;
    if (!g) return split_units(npos, npos, threads, [this](int64_t a, int64_t b) { forward(a, b); });
    if (I == 1) return split_units(N, N * C, threads, [this](int64_t a, int64_t b) { rows(a, b); });
    const int64_t per = (I + kTile - 1) / kTile;
    split_units(N * per, N * C * I, threads, [this, per](int64_t a, int64_t b) {
      for (int64_t u = a; u < b; ++u) {
        const int64_t o = u / per, j0 = (u % per) * kTile;
        tile(o, j0, kMin(I, j0 + kTile));
      }
    });
  }
};

// ---- multi_margin_loss ----
template <class S> struct MultiMargin {
  using A = acc_t<S>;
  using V = vec_t<S>;
  static constexpr int64_t W = V::W;
  static constexpr bool kIgnores = false;
  static constexpr int64_t kStep = 4 * W;
  // A row's float sums go into double every kFlushSteps steps (16 terms per
  // accumulator lane): the row sums stay within a few float ULP for any C.
  static constexpr int64_t kFlushSteps = 16;

  const S* x;
  const int64_t* tgt;
  const A* w;
  S* g;
  int64_t N, C;
  A margin;
  int p;
  bool stream;
  PositionOut<A> out;

  MultiMargin(const ClassLossProblem& pr, const PositionOut<A>& o)
      : x(static_cast<const S*>(pr.input)), tgt(pr.target), w(static_cast<const A*>(pr.weight)),
        g(static_cast<S*>(pr.grad_input)), N(pr.outer), C(pr.classes), margin(static_cast<A>(pr.margin)), p(pr.p),
        stream(g && stream_rows(N, C * int64_t(sizeof(S)))), out(o) {}

  static double denominator(const ClassLossProblem& pr, int64_t) { return double(pr.outer); }

  // The terms of [c, c + n) of a row with target t: z = (margin - x_t) + x_j,
  // formed as torch does; a NaN z is not positive (torch's z > 0), so it adds
  // nothing. s1 += z+, s2 += [z > 0] (p = 1) or z+^2 (p = 2); the gradient
  // coef (p = 1) or coef * z+ (p = 2, coef holding the 2) is written.
  template <int P, bool kGrad>
  void terms(const S* xr, S* gr, int64_t c, int64_t n, int64_t t, V a, V coef, V iota, V& s1, V& s2) const {
    const V zero = V::set1(0);
    V z = a + (n >= W ? vload(xr + c) : load_n(xr + c, n, -std::numeric_limits<A>::infinity()));
    if (uint64_t(t - c) < uint64_t(n)) z = select(eq(iota, V::set1(A(t - c))), zero, z);  // j == t: no term
    const auto positive = gt(z, zero);
    const V zp = select(positive, z, zero);
    s1 = s1 + zp;
    s2 = P == 1 ? s2 + select(positive, V::set1(1), zero) : fmadd(zp, zp, s2);
    if (kGrad) {
      const V gv = P == 1 ? select(positive, coef, zero) : coef * zp;
      if (n < W) store_n(gr + c, n, gv);
      else if (!(stream && vstream(gr + c, gv))) vstore(gr + c, gv);
    }
  }

  template <int P, bool kGrad> void row(int64_t r, V iota) const {
    const S* xr = x + r * C;
    S* gr = kGrad ? g + r * C : nullptr;
    const int64_t t = tgt[r];
    const A xt = to_acc(xr[t]);  // before anything is written (in place)
    const double wt = w ? double(w[t]) : 1.0;
    const double coef = out.go(r) * wt / double(C);  // d(loss)/d(z+) for p = 1, upstream gradient included
    const V a = V::set1(margin - xt), cv = V::set1(static_cast<A>(P == 1 ? coef : 2 * coef));
    V s1[4], s2[4];
    for (int k = 0; k < 4; ++k) s1[k] = s2[k] = V::set1(0);
    double d1 = 0, d2 = 0;
    const auto flush = [&] {
      d1 += double(hsum((s1[0] + s1[1]) + (s1[2] + s1[3])));
      d2 += double(hsum((s2[0] + s2[1]) + (s2[2] + s2[3])));
      for (int k = 0; k < 4; ++k) s1[k] = s2[k] = V::set1(0);
    };
    int64_t c = 0;
    if (kGrad && stream) {  // a partial first vector puts the rest on the aligned grid
      const int delta = lanes_past_grid<int(W * sizeof(S))>(gr);
      if (delta > 0) {
        c = kMin(W - delta, C);
        terms<P, kGrad>(xr, gr, 0, c, t, a, cv, iota, s1[0], s2[0]);
      }
    }
    for (int64_t steps = 1; c + kStep <= C; c += kStep, ++steps) {
      for (int k = 0; k < 4; ++k) terms<P, kGrad>(xr, gr, c + k * W, W, t, a, cv, iota, s1[k], s2[k]);
      if (steps % kFlushSteps == 0) flush();
    }
    for (; c < C; c += W) terms<P, kGrad>(xr, gr, c, kMin(W, C - c), t, a, cv, iota, s1[0], s2[0]);
    flush();
    out.store(r, (P == 1 ? d1 : d2) * wt / double(C));
    // The target's gradient: minus the others' (0 - ..., as torch: +0 when none is positive).
    if (kGrad) put(gr + t, static_cast<A>(0.0 - (P == 1 ? coef * d2 : 2 * coef * d1)));
  }

  template <int P, bool kGrad> void rows(int threads) const {
    split_units(N, N * C, threads, [this](int64_t r0, int64_t r1) {
      const V iota = lane_index<V>();
      for (int64_t r = r0; r < r1; ++r) row<P, kGrad>(r, iota);
      if (kGrad && stream) stream_fence();
    });
  }

  void run(int threads) const {
    if (p == 2) return g ? rows<2, true>(threads) : rows<2, false>(threads);
    return g ? rows<1, true>(threads) : rows<1, false>(threads);
  }
};

// ---- entry points ----

// Check the targets, run Loss<S> over every position, reduce.
template <template <class> class Loss, class S>
CrossEntropyResult class_loss_typed(const ClassLossProblem& pr, int threads) {
  using A = acc_t<S>;
  const int64_t npos = pr.outer * pr.inner;
  const int64_t bad = first_bad_target(pr.target, npos, pr.classes, Loss<S>::kIgnores, pr.ignore_index);
  if (bad >= 0) return {0.0, bad};
  const bool none = pr.reduction == Reduction::None;
  const double denom = Loss<S>::denominator(pr, npos);
  Scratch<double> pos(none ? 0 : npos);
  PositionOut<A> out{};
  out.go_arr = none ? static_cast<const A*>(pr.grad_output) : nullptr;
  out.go_scalar = pr.reduction == Reduction::Mean ? pr.grad_output_scalar / denom : pr.grad_output_scalar;
  out.loss_out = static_cast<A*>(pr.loss);
  out.pos_loss = none ? nullptr : pos.p;
  Loss<S>(pr, out).run(threads);
  CrossEntropyResult res{0.0, -1};
  if (!none) {
    const double total = ordered_sum(pos.p, npos);
    res.loss = pr.reduction == Reduction::Sum ? total : total / denom;  // mean over nothing: 0/0 = NaN
  }
  return res;
}

template <template <class> class Loss> CrossEntropyResult class_loss(const ClassLossProblem& pr, int threads) {
  switch (pr.dtype) {
    case DType::Float64: return class_loss_typed<Loss, double>(pr, threads);
    case DType::Float16: return class_loss_typed<Loss, Half>(pr, threads);
    case DType::BFloat16: return class_loss_typed<Loss, BF16>(pr, threads);
    default: return class_loss_typed<Loss, float>(pr, threads);
  }
}

inline CrossEntropyResult nll(const ClassLossProblem& pr, int threads) { return class_loss<Nll>(pr, threads); }
inline CrossEntropyResult multi_margin(const ClassLossProblem& pr, int threads) {
  return class_loss<MultiMargin>(pr, threads);
}
