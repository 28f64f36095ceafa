// The elementwise losses (elementwise_ops.h) with their gradients: one
// streaming pass that reads input and target (and a weight, when given) and
// writes the gradient (and the per-element loss for reduction none).
//
// Included inside a per-ISA namespace after common.h and elementwise_ops.h.
// The reduced loss is summed per fixed block of kElemBlock elements (floats
// in vector accumulators flushed to double every kElemLaneTerms vectors: 256
// elements on AVX-512, 16 on the one-lane baseline, whose float sums would
// otherwise run 16x longer), blocks combined in order: the same bits for any
// thread count.
#pragma once

constexpr int64_t kElemBlock = 1 << 14;
constexpr int64_t kElemLaneTerms = 16;  // terms a float lane sums before the flush to double
constexpr int64_t kElemSerial = 1 << 16;  // below this many elements: no parallel region
// The common loop asks for input and target this far ahead: with a long loop
// body (Huber, SmoothL1: selects, a division) the out-of-order window holds too
// few iterations to keep enough misses in flight on its own (forced AVX2, 2
// threads, 10^7 float32: Huber 1.18-1.30x -> 0.92-1.02x the floor, SmoothL1
// 1.33-1.46x -> 0.93-1.01x; 1 KiB to 8 KiB ahead measure alike).
constexpr int64_t kElemPrefetchBytes = 2048;
// Only for arrays this big: those in cache (L2, L3) arrive as fast without, and
// the prefetches cost issue slots (in-process A/B, Zen 3 AVX2, float32, against
// prefetching at every size: 10^5 elements 1 thread MSE 0.94x, L1 0.89-0.90x, Huber
// 0.64-0.67x; 10^6 2 threads 0.96-1.00x, 0.86-0.90x, 0.82-0.83x; the losses
// bound by their exps and logs alike; 3x10^6 without them measured 1.08-1.12x).
constexpr int64_t kElemReadPrefetchMin = int64_t(6) << 20;
// The gradient is asked for as far ahead, for writing, when it is at least
// this big: each store otherwise waits for its line's read for ownership, and
// loops with short bodies stall on a full store buffer (forced AVX2, 2
// threads, 10^7 float32: MSE 0.75x, L1 0.86x, Huber 0.95x the time; AVX-512
// MSE and L1 0.85x). An output that stays in L2 gains nothing (MSE at 10^5
// measured 4% slower with it); one that streams past the caches is not read.
constexpr int64_t kElemWritePrefetchMin = int64_t(1) << 20;

// fn(i0, i1) -> partial sum of the block [i0, i1).
template <class F> double sum_blocks(int64_t n, int threads, F&& fn) {
  const int64_t nblk = (n + kElemBlock - 1) / kElemBlock;
  Scratch<double> part(nblk);
  const int nt = n < kElemSerial ? 1 : threads;
  if (nt <= 1) {
    for (int64_t b = 0; b < nblk; ++b) part[b] = fn(b * kElemBlock, kMin(n, (b + 1) * kElemBlock));
  } else {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < nblk; ++b) part[b] = fn(b * kElemBlock, kMin(n, (b + 1) * kElemBlock));
  }
  return ordered_sum(part.p, nblk);
}

inline double mean_denominator(const ElementwiseProblem& pr) {
  return pr.mean_denominator > 0 ? pr.mean_denominator : double(pr.n);
}

inline double reduce_result(const ElementwiseProblem& pr, double total) {
  if (pr.reduction == Reduction::None) return 0.0;
  if (pr.reduction == Reduction::Sum) return total;
  return total / mean_denominator(pr);  // over nothing: 0/0 = NaN, as torch
}

// The upstream gradient every element's gradient is scaled by when no
// per-element grad_output is given (a mean divides it by the denominator).
// Not `scale`: the loop folds that into the weight, which multiplies both.
inline double upstream_scalar(const ElementwiseProblem& pr) {
  const double g = pr.grad_output_scalar;
  return pr.reduction == Reduction::Mean ? g / mean_denominator(pr) : g;
}

// One Broadcast factor over a run of elements [i, end): a pointer to read
// vectors from (element i at ptr[0]), or a constant. Returns the run's end:
// where the factor's layout next wraps.
template <class A> int64_t factor_run(const Broadcast& b, int64_t i, int64_t end, const A*& ptr, A& c) {
  const A* v = static_cast<const A*>(b.values);
  ptr = nullptr;
  c = A(1);
  if (!v) return end;
  if (b.period == 1) {
    c = v[0];
    return end;
  }
  if (b.repeat == 1) {
    const int64_t j = i % b.period;
    ptr = v + j;
    return kMin(end, i + b.period - j);
  }
  c = v[(i / b.repeat) % b.period];
  return kMin(end, i + b.repeat - i % b.repeat);
}

// How the common call's chunks (below) touch memory, from the arrays' size
// (the thresholds above): nothing asked for ahead; the gradient asked for;
// input, target and gradient asked for; input and target asked for and the
// gradient streamed past the caches.
enum class ElemMemory { Plain, WritesAhead, AllAhead, ReadsAheadStreamed };

// The common call (no target gradient, no per-element loss or upstream
// gradient, weight and pos_weight constant over the block; a target array, or
// one target value (the GAN objective) in arrays small enough to need no
// prefetching) over whole chunks of kElemLaneTerms vectors in [i0, i1): the
// generic loop's terms in its order (one float accumulator a chunk, flushed
// to double), so the same bits.
// Its own loop, out of line (inlined into the block's lambda, its vectors
// spilled), with the store and prefetch choices fixed at compile time, where
// the generic loop tests them per vector and sets up each run of factors.
// In-process A/B against the generic loop alone (AVX2, Zen 3, 2 threads,
// float32, fwd+grad): BCE, BCE with logits and KL at 10^7 0.84-0.96x the
// time, at 10^6 0.72-0.84x, BCE at 3x10^7 (streamed) 0.77-0.81x, the GAN
// objective at 65536 0.77-0.81x; MSE, L1, Huber, SmoothL1 0.92-1.0x.
template <class S, class Op, bool kGrad, ElemMemory kMem, bool kTargetArray = true>
FUSEDLOSS_NOINLINE double elementwise_chunks(const S* x, const S* t, vec_t<S> tc, S* gx, int64_t i0, int64_t i1,
                          vec_t<S> wconst, vec_t<S> g, vec_t<S> pw, const OpConsts<vec_t<S>>& k,
                          decltype(lt(vec_t<S>::set1(0), vec_t<S>::set1(0)))& bad) {
  using V = vec_t<S>;
  constexpr int64_t W = V::W, kChunk = kElemLaneTerms * W;
  constexpr bool kReadsAhead = kMem == ElemMemory::AllAhead || kMem == ElemMemory::ReadsAheadStreamed;
  constexpr bool kWritesAhead = kGrad && (kMem == ElemMemory::WritesAhead || kMem == ElemMemory::AllAhead);
  auto mask = bad;
  double sum = 0;
  for (int64_t s0 = i0; s0 < i1; s0 += kChunk) {
    V acc = V::set1(0);
    for (int64_t i = s0; i < s0 + kChunk; i += W) {
      if constexpr (kReadsAhead) {
        __builtin_prefetch(reinterpret_cast<const char*>(x + i) + kElemPrefetchBytes, 0, 1);
        if constexpr (kTargetArray) __builtin_prefetch(reinterpret_cast<const char*>(t + i) + kElemPrefetchBytes, 0, 1);
      }
      if constexpr (kWritesAhead) __builtin_prefetch(reinterpret_cast<char*>(gx + i) + kElemPrefetchBytes, 1, 1);
      V tv = tc;
      if constexpr (kTargetArray) tv = vload(t + i);
      const V xv = vload(x + i);
      const OpOut<V> o = Op::eval(xv, tv, pw, k);
      if constexpr (Op::kChecksDomain) mask = mask | Op::out_of_domain(xv) | Op::out_of_domain(tv);
      if constexpr (kGrad) {
        const V gv = o.gx * g;
        if (!(kMem == ElemMemory::ReadsAheadStreamed && vstream(gx + i, gv))) vstore(gx + i, gv);
      }
      acc = acc + o.loss * wconst;
    }
    sum += double(hsum(acc));
  }
  bad = mask;
  return sum;
}

template <class S, class Op> ElementwiseResult elementwise_typed(const ElementwiseProblem& pr, int threads) {
  using A = acc_t<S>;
  using V = vec_t<S>;
  constexpr int64_t W = V::W;
  const S* x = static_cast<const S*>(pr.input);
  const S* t = static_cast<const S*>(pr.target);
  S* gx = static_cast<S*>(pr.grad_input);
  S* gt = static_cast<S*>(pr.grad_target);
  A* lo = static_cast<A*>(pr.loss);
  const A* goa = pr.reduction == Reduction::None ? static_cast<const A*>(pr.grad_output) : nullptr;
  const V go = V::set1(static_cast<A>(upstream_scalar(pr) * Op::kGradScale));
  const V t_const = V::set1(static_cast<A>(pr.target_scalar));
  const A scale = static_cast<A>(pr.scale);
  const OpConsts<V> k = OpConsts<V>::make(pr.param);
  const Broadcast wb = pr.weight, pwb = pr.pos_weight;
  const bool stream = gx && pr.n * int64_t(sizeof(S)) >= kStreamBytes;
  const bool prefetch_reads = pr.n * int64_t(sizeof(S)) >= kElemReadPrefetchMin;
  const bool prefetch_g = gx && !stream && pr.n * int64_t(sizeof(S)) >= kElemWritePrefetchMin;
  alignas(64) A ones[W];
  for (int64_t j = 0; j < W; ++j) ones[j] = A(1);
  int64_t bad_x = 0, bad_t = 0;
  const auto ld = [](const S* p, int64_t n) { return n >= W ? vload(p) : load_n(p, n, A(0)); };
  const auto lda = [](const A* p, int64_t n) { return n >= W ? V::load(p) : load_n(p, n, A(0)); };
  const double total = sum_blocks(pr.n, threads, [&](int64_t i0, int64_t i1) {
    // Locals, not the captured references: the vector stores below may alias
    // anything, so each would force every captured value to be reloaded.
    const S *xp = x, *tp = t;
    S *gxp = gx, *gtp = gt;
    A* lp = lo;
    const A* gop = goa;
    const V gs = go, tc = t_const;
    const OpConsts<V> kk = k;
    const bool st = stream, pfr = prefetch_reads, pfg = prefetch_g;
    // The common case: no target gradient, no per-element loss or upstream
    // gradient (weights are checked per run). Whether x's gradient is wanted
    // does not enter: the loss's sum is contracted alike either way, so
    // forward and forward+grad give the same bits.
    const bool plain = !gtp && !lp && !gop;
    double sum = 0;
    // Ops with kChecksDomain: the lanes outside it are OR-ed into one mask as
    // the loop reads (a compare or two and an OR per operand, where counting
    // them cost a select, an add and a spilled accumulator each); a range with
    // any is counted exactly afterwards (an error is on its way).
    auto bad = lt(V::set1(0), V::set1(0));  // no lane yet
    const auto flag_bad = [&bad](V xv, V tv) {
      if constexpr (Op::kChecksDomain) bad = bad | Op::out_of_domain(xv) | Op::out_of_domain(tv);
    };
    int64_t c0 = i0;  // where the generic loop starts
    if (plain && (tp || (!pfr && !pfg))) {
      const A *wp, *pwp;
      A wc, pwc;
      const int64_t end = factor_run(pwb, i0, factor_run(wb, i0, i1, wp, wc), pwp, pwc);
      if (!wp && !pwp && end == i1) {
        const int64_t full = i0 + (i1 - i0) / (kElemLaneTerms * W) * (kElemLaneTerms * W);
        const V wconst = V::set1(wc * scale), g = wconst * gs, pw = V::set1(pwc);
        const auto chunks = [&](auto grad, auto mem) {
          return elementwise_chunks<S, Op, decltype(grad)::value, decltype(mem)::value>(
              xp, tp, tc, gxp, i0, full, wconst, g, pw, kk, bad);
        };
        using M = ElemMemory;
        using Plain = std::integral_constant<M, M::Plain>;
        using AllAhead = std::integral_constant<M, M::AllAhead>;
        if (!tp) {  // small: Plain (the condition above)
          const auto one_target = [&](auto grad) {
            return elementwise_chunks<S, Op, decltype(grad)::value, M::Plain, false>(
                xp, tp, tc, gxp, i0, full, wconst, g, pw, kk, bad);
          };
          sum = gxp ? one_target(std::true_type{}) : one_target(std::false_type{});
        } else if (!gxp) sum = pfr ? chunks(std::false_type{}, AllAhead{}) : chunks(std::false_type{}, Plain{});
        else if (st) sum = chunks(std::true_type{}, std::integral_constant<M, M::ReadsAheadStreamed>{});
        else if (pfr) sum = chunks(std::true_type{}, AllAhead{});
        else if (pfg) sum = chunks(std::true_type{}, std::integral_constant<M, M::WritesAhead>{});
        else sum = chunks(std::true_type{}, Plain{});
        c0 = full;
      }
    }
    for (int64_t s0 = c0; s0 < i1; s0 += kElemLaneTerms * W) {
      const int64_t s1 = kMin(i1, s0 + kElemLaneTerms * W);
      V acc = V::set1(0);  // memory-bound: one accumulator is enough
      for (int64_t r0 = s0; r0 < s1;) {
        // A run over which weight and pos_weight are each a vector stream or a constant.
        const A *wp, *pwp;
        A wc, pwc;
        int64_t r1 = factor_run(wb, r0, s1, wp, wc);
        r1 = factor_run(pwb, r0, r1, pwp, pwc);
        const V wconst = V::set1(wc * scale), pwconst = V::set1(pwc);
        int64_t i = r0;
        if (plain && !wp && !pwp) {  // the common case's full vectors, the branches below hoisted
          const V g = wconst * gs;
          const auto run = [&](auto with_reads) FUSEDLOSS_ALWAYS_INLINE_LAMBDA {
            for (; i + W <= r1; i += W) {
              if constexpr (decltype(with_reads)::value) {
                __builtin_prefetch(reinterpret_cast<const char*>(xp + i) + kElemPrefetchBytes, 0, 1);
                if (tp) __builtin_prefetch(reinterpret_cast<const char*>(tp + i) + kElemPrefetchBytes, 0, 1);
              }
              if (pfg) __builtin_prefetch(reinterpret_cast<char*>(gxp + i) + kElemPrefetchBytes, 1, 1);
              const V xv = vload(xp + i), tv = tp ? vload(tp + i) : tc;
              const OpOut<V> o = Op::eval(xv, tv, pwconst, kk);
              flag_bad(xv, tv);
              if (gxp) {
                const V gv = o.gx * g;
                if (!(st && vstream(gxp + i, gv))) vstore(gxp + i, gv);
              }
              acc = acc + o.loss * wconst;
            }
          };
          if (pfr) run(std::true_type{});
          else run(std::false_type{});
        }
        for (; i < r1; i += W) {
          const int64_t n = r1 - i;
          const V xv = ld(xp + i, n), tv = tp ? ld(tp + i, n) : tc;
          const V w = wp ? lda(wp + (i - r0), n) * V::set1(scale) : wconst;  // lanes past n: 0
          const V pw = pwp ? lda(pwp + (i - r0), n) : pwconst;
          const OpOut<V> o = Op::eval(xv, tv, pw, kk);
          V l = o.loss * w;
          if (n < W && !wp) l = l * load_n(ones, n, A(0));
          if (lp) n >= W ? l.store(lp + i) : store_n(lp + i, n, l);
          flag_bad(xv, tv);  // padding lanes are 0: inside
          if (gxp || gtp) {
            V g = gs;
            if (gop) {
              g = lda(gop + i, n);
              if constexpr (Op::kGradScale != 1) g = g * V::set1(static_cast<A>(Op::kGradScale));
            }
            g = w * g;
            if (gxp) {
              const V gv = o.gx * g;
              if (n < W) store_n(gxp + i, n, gv);
              else if (!(st && vstream(gxp + i, gv))) vstore(gxp + i, gv);
            }
            if (gtp) n >= W ? vstore(gtp + i, o.gt * g) : store_n(gtp + i, n, o.gt * g);
          }
          acc = acc + l;
        }
        r0 = r1;
      }
      sum += double(hsum(acc));
    }
    stream_fence();
    if constexpr (Op::kChecksDomain) {
      int64_t bx = 0, bt = 0;
      if (any(bad)) {
        const auto count = [](auto m) { return static_cast<int64_t>(hsum(select(m, V::set1(1), V::set1(0)))); };
        for (int64_t i = i0; i < i1; i += W) {
          bx += count(Op::out_of_domain(ld(x + i, i1 - i)));
          if (t) bt += count(Op::out_of_domain(ld(t + i, i1 - i)));
        }
        if (!t && any(Op::out_of_domain(t_const))) bt = i1 - i0;
      }
      if (bx) {
#pragma omp atomic
        bad_x += bx;
      }
      if (bt) {
#pragma omp atomic
        bad_t += bt;
      }
    }
    return sum;
  });
  return {reduce_result(pr, total), bad_x, bad_t};
}

// Complex L1 on interleaved (re, im): |d| by hypot (no overflow, < 1 ULP),
// gradient g * d / |d|, 0 where d == 0. Scalar: hypot dominates, not memory.
template <class S> ElementwiseResult l1_complex_typed(const ElementwiseProblem& pr, int threads) {
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
  return {reduce_result(pr, total), 0, 0};
}

template <class Op> ElementwiseResult elementwise_op(const ElementwiseProblem& pr, int threads) {
  switch (pr.dtype) {
    case DType::Float64: return elementwise_typed<double, Op>(pr, threads);
    case DType::Float16: return elementwise_typed<Half, Op>(pr, threads);
    case DType::BFloat16: return elementwise_typed<BF16, Op>(pr, threads);
    default: return elementwise_typed<float, Op>(pr, threads);
  }
}

inline ElementwiseResult elementwise(const ElementwiseProblem& pr, int threads) {
  if (pr.complex_input)  // L1 only (the binding checks)
    return pr.dtype == DType::Float64 ? l1_complex_typed<double>(pr, threads) : l1_complex_typed<float>(pr, threads);
  switch (pr.op) {
#define FUSEDLOSS_OP_CASE(name, op, py) \
  case ElementwiseOp::name: return elementwise_op<op>(pr, threads);
    FUSEDLOSS_ELEMENTWISE_OPS(FUSEDLOSS_OP_CASE)
#undef FUSEDLOSS_OP_CASE
  }
  return {std::numeric_limits<double>::quiet_NaN(), 0, 0};
}
