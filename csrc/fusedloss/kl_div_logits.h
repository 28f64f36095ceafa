// Distillation KL divergence on raw logits, loss and gradient in one pass
// over memory. Per row (C classes), with p = softmax(t / T) (target, the
// teacher) and q = softmax(x / T) (input, the student):
//   loss = T^2 sum_j p_j (log p_j - log q_j),   d loss / d x = T (q - p).
// float32 / float64, float16 / bfloat16 storage (float math); every ISA.
//
// Included inside a per-ISA namespace after simd/math.h, common.h and
// cross_entropy.h (kSerialWork). A row
// is cut into chunks of kChunk classes, as cross-entropy rows are
// (cross_entropy.h). Pass 1 reads a chunk of x and of t from memory and finds
// both maxima m, then (both chunks in L1) a = x/T - mx and b = t/T - mt, the
// exps of both, their sums s, and B = sum_j e^b_j (b_j - a_j); it may keep the
// exps in scratch. As log p_j - log q_j = (b_j - a_j) + c with one c per
// chunk, the loss needs no second pass:
//   loss = T^2 sum_k Ft_k (B_k + st_k c_k),  Ft_k = e^(mt_k - Mt) / St,
//   c_k = (mt_k - Mt) - (mx_k - Mx) + log Sx - log St
// (M, S: the row's maxima and exp-sums). a and b are formed as torch's
// log_softmax forms x - max (no FMA), so a shift common to both rows cancels
// exactly, and one class gives exactly 0. Pass 2 (only
// for the gradient) writes T g (q_j - p_j), with the exps read back from
// scratch or recomputed from x and t (the same bits either way); it runs
// interleaved, chunk by chunk, with pass 1 of the next row, so that memory is
// read and written at once (as cross-entropy's rows_pipelined), and bypasses
// the caches when the gradient is far bigger than them. Partials are
// combined in chunk order in double and rows summed pairwise: results depend
// on the shape only, never on the thread count.
#pragma once

template <class S> struct KLDivLogits {
  using A = acc_t<S>;
  using V = vec_t<S>;
  static constexpr int64_t W = V::W;
  static constexpr int64_t kStep = 2 * W;  // two vectors of each array
  // 128 steps (as cross-entropy's chunks): the chunks of x and t fit in L1
  // together (16 KiB each, AVX-512 float).
  static constexpr int64_t kChunk = 128 * kStep;
  // The float sums go to double every kFlushSteps steps (16 terms a lane): every
  // 32 put a row's largest gradient error at 3.9x torch's float32 at C = 2049
  // (a dominant logit's 1 in the exp-sum's lane, then many roundings at its
  // scale); every 8 made it 1.2x, for 1.04-1.08x the time (AVX2, 1024x32000).
  static constexpr int64_t kFlushSteps = 8;
  // Pass 1's prefetch distance, in classes: half a chunk (fwd+grad, 2 threads:
  // 1024x1001 0.89x (AVX2) / 0.91x (AVX-512), 128x8192 0.91x / 0.95x, 1024x32000
  // 0.93x / 0.99x; a whole chunk made the last 1.07x on AVX-512, a quarter gained less).
  static constexpr int64_t kAhead = kChunk / 2;

  const S* x;
  const S* t;
  S* g;                  // gradient, or nullptr
  bool stream;           // gradient far bigger than the caches: non-temporal stores
  int64_t N, C;
  A inv_t;               // 1 / T
  double T;
  const A* go_arr;       // per-row upstream gradient (Reduction::None), or nullptr
  double go_scalar;      // upstream gradient, already / N for the mean
  A* loss_out;           // per-row loss, or nullptr
  double* row_loss;      // per-row loss for the reduction, or nullptr

  // One chunk: maxima of x/T and t/T, exp-sums relative to them, B.
  struct Part { A mx, mt; double sx, st, b; };

  static V ld(const S* p, int64_t n, A pad) { return n >= W ? vload(p) : load_n(p, n, pad); }
  static A floor_max(A m) {  // all -inf: e = 0, not exp(-inf - -inf) = NaN
    return m == -std::numeric_limits<A>::infinity() ? std::numeric_limits<A>::lowest() : m;
  }
  // v / T - m (a or b; pads, -inf, give -inf), the product rounded before the
  // subtraction as m was (fused into an FMA, the row's max gave T^2 eps, not 0).
  V shifted(V v, V m) const { return rounded(v * V::set1(inv_t)) - m; }
  // b - a as B's factor of f = e^b: 0 where f is 0, so that a class the teacher
  // rules out (t = -inf: a masked or top-k teacher; pad lanes) adds p log p = 0
  // to the sum, not 0 * inf = NaN; a NaN stays NaN (f is NaN there).
  static V log_ratio(V f, V b, V a) { return select(eq(f, V::set1(0)), V::set1(0), b - a); }

  int64_t chunks() const { return (C + kChunk - 1) / kChunk; }
  int64_t chunk_end(int64_t c0) const { return c0 + kMin(kChunk, C - c0); }
  // Scratch for both rows' exps: while x, t and it stay in L2 together.
  bool use_scratch() const { return g && C * int64_t(sizeof(A)) <= (int64_t(1) << 17); }
  int64_t padded() const { return (C + kStep - 1) / kStep * kStep; }

  // Pass 1 over [c0, c1); ex, et: optional scratch for the exps (absolute index).
  Part stats(const S* xr, const S* tr, int64_t c0, int64_t c1, A* ex, A* et) const {
    const A inf = std::numeric_limits<A>::infinity();
    V ax[2] = {V::set1(-inf), V::set1(-inf)}, at[2] = {ax[0], ax[1]};
    V lo = V::set1(inf);  // the full steps' minimum of x and t together (see below)
    const int64_t full_end = c0 + (c1 - c0) / kStep * kStep;
    for (int64_t c = c0; c < full_end; c += kStep) {
      const V x0 = vload(xr + c), x1 = vload(xr + c + W), t0 = vload(tr + c), t1 = vload(tr + c + W);
      ax[0] = vmax(ax[0], x0), ax[1] = vmax(ax[1], x1), at[0] = vmax(at[0], t0), at[1] = vmax(at[1], t1);
      lo = vmin(vmin(vmin(x0, x1), vmin(t0, t1)), lo);
    }
    for (int64_t c = full_end; c < c1; c += kStep)
      for (int k = 0; k < 2; ++k) {
        ax[k] = vmax(ax[k], ld(xr + c + k * W, c1 - c - k * W, -inf));
        at[k] = vmax(at[k], ld(tr + c + k * W, c1 - c - k * W, -inf));
      }
    Part pt;
    // max(x_j / T) = max(x_j) / T: rounding is monotonic.
    pt.mx = floor_max(hmax(vmax(ax[0], ax[1])) * inv_t);
    pt.mt = floor_max(hmax(vmax(at[0], at[1])) * inv_t);
    const V mx = V::set1(pt.mx), mt = V::set1(pt.mt);
    // Every a and b of the full steps within exp's normal range (a = x/T - mx
    // rounds monotonically in x, and x, t >= lo): then their exps take exp's
    // fast path without testing each vector, the same bits (as cross-entropy's
    // chunk_stats; AVX2 fwd+grad 128x8192 0.94x, 1024x1001 0.96x). A NaN, which
    // may escape lo, makes the row's results NaN on either path.
    const bool in_range = exp_args_in_range(shifted(lo, mx)) && exp_args_in_range(shifted(lo, mt));
    // One accumulator per sum, each step's two vectors added first: with six
    // (one per vector) the loop's live vectors outnumbered AVX2's 16 registers
    // and the sums went through memory every step (in-process A/B, AVX2,
    // 1024x32000 and 64x8192: forward only 0.64-0.70x the time, fwd+grad
    // 0.91-1.01x). Each goes into double every kFlushSteps steps; flush()
    // inlined keeps them in registers.
    V sx = V::set1(0), st = sx, bv = sx;
    double sxd = 0, std_ = 0, bd = 0;
    const auto flush = [&](V& s1, V& s2, V& s3) FUSEDLOSS_ALWAYS_INLINE_LAMBDA {
      sxd += double(hsum(s1)), std_ += double(hsum(s2)), bd += double(hsum(s3));
      s1 = s2 = s3 = V::set1(0);
    };
    int64_t c = c0;
    // The full steps in a loop of their own, without the pad lanes' tests and
    // with the scratch store chosen once (the partial step below adds its
    // terms the same way).
    const auto full = [&](auto store, auto exp, auto tested_lanes) {
      V sx_ = sx, st_ = st, b_ = bv;  // locals: the scratch stores cannot alias them
      for (; c < full_end; c += kStep) {
        // While the exps run, memory would idle: ask for what follows (this row,
        // or the next row's start; prefetches never fault) into L2.
        for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(xr + c + kAhead) + b, 0, 2);
          __builtin_prefetch(reinterpret_cast<const char*>(tr + c + kAhead) + b, 0, 2);
        }
        const V a0 = shifted(vload(xr + c), mx), a1 = shifted(vload(xr + c + W), mx);
        const V d0 = shifted(vload(tr + c), mt), d1 = shifted(vload(tr + c + W), mt);
        const V e0 = exp(a0), e1 = exp(a1), f0 = exp(d0), f1 = exp(d1);
        sx_ = sx_ + (e0 + e1), st_ = st_ + (f0 + f1);
        if constexpr (decltype(tested_lanes)::value) {  // some a or b outside exp's range: -inf there?
          b_ = b_ + fmadd(f0, log_ratio(f0, d0, a0), f1 * log_ratio(f1, d1, a1));
        } else {
          b_ = b_ + fmadd(f0, d0 - a0, f1 * (d1 - a1));
        }
        store(c, e0, f0), store(c + W, e1, f1);
        if ((c - c0) / kStep % kFlushSteps == kFlushSteps - 1) flush(sx_, st_, b_);
      }
      sx = sx_, st = st_, bv = b_;
    };
    const auto keep = [ex, et](int64_t off, V e, V f) { e.store(ex + off), f.store(et + off); };
    const auto drop = [](int64_t, V, V) {};
    const auto fast = [](V v) FUSEDLOSS_ALWAYS_INLINE_LAMBDA { return vexp_in_range(v); };
    const auto tested = [](V v) FUSEDLOSS_ALWAYS_INLINE_LAMBDA { return vexp_nonpos(v); };
    if (ex && in_range) full(keep, fast, std::false_type{});
    else if (ex) full(keep, tested, std::true_type{});
    else if (in_range) full(drop, fast, std::false_type{});
    else full(drop, tested, std::true_type{});
    // The partial step: its two vectors' terms (0 in lanes past c1) in the same order.
    if (c < c1) {
      V e[2], f[2], bt[2];
      for (int k = 0; k < 2; ++k) {
        const int64_t off = c + k * W, n = c1 - off;
        const V a = shifted(ld(xr + off, n, -inf), mx), b = shifted(ld(tr + off, n, -inf), mt);
        e[k] = vexp_nonpos_first(a, n), f[k] = vexp_nonpos_first(b, n);
        bt[k] = log_ratio(f[k], b, a);  // pad lanes: f = 0
        if (ex && n > 0) e[k].store(ex + off), f[k].store(et + off);
      }
      sx = sx + (e[0] + e[1]), st = st + (f[0] + f[1]);
      bv = bv + fmadd(f[0], bt[0], f[1] * bt[1]);
    }
    flush(sx, st, bv);
    pt.sx = sxd, pt.st = std_, pt.b = bd;
    return pt;
  }

  // A row's totals from its chunks, in chunk order.
  struct Row { A Mx, Mt; double Sx, St; };
  Row combine(const Part* parts, int64_t nch, double& loss) const {
    Row rw{parts[0].mx, parts[0].mt, 0, 0};
    for (int64_t k = 1; k < nch; ++k) {
      rw.Mx = parts[k].mx > rw.Mx ? parts[k].mx : rw.Mx;
      rw.Mt = parts[k].mt > rw.Mt ? parts[k].mt : rw.Mt;
    }
    for (int64_t k = 0; k < nch; ++k) {
      rw.Sx += parts[k].sx * ::exp(double(parts[k].mx) - double(rw.Mx));
      rw.St += parts[k].st * ::exp(double(parts[k].mt) - double(rw.Mt));
    }
    const double ls = ::log(rw.Sx) - ::log(rw.St);
    double acc = 0;
    for (int64_t k = 0; k < nch; ++k) {
      const double dt = double(parts[k].mt) - double(rw.Mt), dx = double(parts[k].mx) - double(rw.Mx);
      acc += ::exp(dt) / rw.St * (parts[k].b + parts[k].st * ((dt - dx) + ls));
    }
    loss = T * T * acc;
    return rw;
  }

  double go_of(int64_t r) const { return go_arr ? double(go_arr[r]) : go_scalar; }

  // Pass 2 over [c0, c1): g = T go (q - p). pfx, pft: the next row's x and t,
  // whose pass 1 over this chunk comes next, to prefetch, or nullptr.
  void grad(const S* xr, const S* tr, S* gr, int64_t c0, int64_t c1, const Part& pt, const Row& rw, double go,
            const A* ex, const A* et, const S* pfx, const S* pft) const {
    const double G = go * T;
    const V gx = V::set1(static_cast<A>(G * ::exp(double(pt.mx) - double(rw.Mx)) / rw.Sx));
    const V gt = V::set1(static_cast<A>(G * ::exp(double(pt.mt) - double(rw.Mt)) / rw.St));
    const V mx = V::set1(pt.mx), mt = V::set1(pt.mt);
    const A inf = std::numeric_limits<A>::infinity();
    StreamWriter<S> out(stream, gr + c0);
    const auto ask_next = [pfx, pft](int64_t c) {  // the next row's step at c, when given
      if (pfx)
        for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64) {
          __builtin_prefetch(reinterpret_cast<const char*>(pfx + c) + b, 0, 2);
          __builtin_prefetch(reinterpret_cast<const char*>(pft + c) + b, 0, 2);
        }
    };
    int64_t c = c0;
    if (ex)  // full steps from scratch: a loop of its own (as cross-entropy's grad_run)
      out.with_put([&](auto put) {
        for (const int64_t e = c0 + (c1 - c0) / kStep * kStep; c < e; c += kStep) {
          ask_next(c);
          for (int k = 0; k < 2; ++k) {
            const int64_t off = c + k * W;
            put(gr + off, fmsub(V::load(ex + off), gx, V::load(et + off) * gt));
          }
        }
      });
    for (; c < c1; c += kStep) {
      ask_next(c);
      for (int k = 0; k < 2; ++k) {
        const int64_t off = c + k * W, n = c1 - off;
        if (n <= 0) break;
        V e, f;
        if (ex) {
          e = V::load(ex + off), f = V::load(et + off);
        } else {
          e = vexp_nonpos_first(shifted(ld(xr + off, n, -inf), mx), n);
          f = vexp_nonpos_first(shifted(ld(tr + off, n, -inf), mt), n);
        }
        const V gv = fmsub(e, gx, f * gt);
        if (n >= W) {
          out.put(gr + off, gv);
        } else {
          out.flush();
          store_n(gr + off, n, gv);
        }
      }
    }
    out.flush();
  }

  void store_row(int64_t r, double l) const {
    if (loss_out) loss_out[r] = static_cast<A>(l);
    if (row_loss) row_loss[r] = l;
  }

  // Rows [r0, r1): the gradient pass of row r interleaved chunk by chunk
  // with pass 1 of row r + 1 (the same chunk math, hence the same bits).
  // pbuf: 2 x chunks() parts; sbuf: 2 rows' exps of x and t (4 x padded()),
  // or nullptr (the exps are recomputed).
  void rows(int64_t r0, int64_t r1, Part* pbuf, A* sbuf) const {
    if (r0 >= r1) return;
    const int64_t nch = chunks(), len = padded();
    Part* parts[2] = {pbuf, pbuf + nch};
    const auto ex = [&](int b) { return sbuf ? sbuf + 2 * b * len : nullptr; };
    const auto et = [&](int b) { return sbuf ? sbuf + (2 * b + 1) * len : nullptr; };
    const auto stats_of = [&](int64_t r, int b, int64_t k) {
      parts[b][k] = stats(x + r * C, t + r * C, k * kChunk, chunk_end(k * kChunk), ex(b), et(b));
    };
    int cur = 0;
    for (int64_t k = 0; k < nch; ++k) stats_of(r0, cur, k);
    for (int64_t r = r0; r < r1; ++r) {
      double l;
      const Row rw = combine(parts[cur], nch, l);
      store_row(r, l);
      const bool more = r + 1 < r1;
      for (int64_t k = 0; k < nch; ++k) {
        if (g)
          grad(x + r * C, t + r * C, g + r * C, k * kChunk, chunk_end(k * kChunk), parts[cur][k], rw, go_of(r),
               ex(cur), et(cur), more ? x + (r + 1) * C : nullptr, more ? t + (r + 1) * C : nullptr);
        if (more) stats_of(r + 1, 1 - cur, k);
      }
      cur = 1 - cur;
    }
    stream_fence();
  }

  // Few rows, many chunks: threads share each row chunk by chunk (the same
  // chunk math and combine order, hence the same bits).
  void rows_chunked(int nt) const {
    const int64_t nch = chunks(), items = N * nch;
    Scratch<Part> parts(items);
    Scratch<Row> rws(N);
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
      for (int64_t it = 0; it < items; ++it) {
        const int64_t r = it / nch, c0 = (it % nch) * kChunk;
        parts[it] = stats(x + r * C, t + r * C, c0, chunk_end(c0), nullptr, nullptr);
      }
#pragma omp single
      for (int64_t r = 0; r < N; ++r) {
        double l;
        rws[r] = combine(parts.p + r * nch, nch, l);
        store_row(r, l);
      }
      if (g) {
#pragma omp for schedule(static)
        for (int64_t it = 0; it < items; ++it) {
          const int64_t r = it / nch, c0 = (it % nch) * kChunk;
          grad(x + r * C, t + r * C, g + r * C, c0, chunk_end(c0), parts[it], rws[r], go_of(r), nullptr, nullptr,
               nullptr, nullptr);
        }
        stream_fence();
      }
    }
  }

  void run(int threads) {
    const int nt = N * C < kSerialWork ? 1 : threads;
    const int64_t nch = chunks();
    if (nt > 1 && nch > 1 && N < 4 * int64_t(nt)) return rows_chunked(nt);
    // Per-thread scratch, allocated before the parallel region (a failure
    // throws here, not in a thread).
    const int64_t len = use_scratch() ? 4 * padded() : 0;  // two rows' exps of x and t
    Scratch<Part> parts(int64_t(nt) * 2 * nch);
    Scratch<A> es(int64_t(nt) * len);
    const auto run_rows = [&](int64_t th, int64_t r0, int64_t r1) {
      rows(r0, r1, parts.p + th * 2 * nch, len ? es.p + th * len : nullptr);
    };
    if (nt <= 1) return run_rows(0, 0, N);
#pragma omp parallel num_threads(nt)
    {
      const int64_t th = omp_get_thread_num(), n = omp_get_num_threads();
      run_rows(th, N * th / n, N * (th + 1) / n);
    }
  }
};

template <class S> double kl_div_logits_typed(const KLDivLogitsProblem& pr, int threads) {
  using A = acc_t<S>;
  const int64_t N = pr.rows;
  if (N == 0) return pr.reduction == Reduction::Mean ? std::numeric_limits<double>::quiet_NaN() : 0.0;
  const bool mean = pr.reduction == Reduction::Mean;
  if (pr.classes == 0) {  // a sum over no classes: every row's loss is 0
    if (pr.loss)
      for (int64_t r = 0; r < N; ++r) static_cast<A*>(pr.loss)[r] = A(0);
    return 0.0;
  }
  KLDivLogits<S> k{};
  k.x = static_cast<const S*>(pr.input);
  k.t = static_cast<const S*>(pr.target);
  k.g = static_cast<S*>(pr.grad_input);
  k.stream = pr.grad_input && stream_rows(N, pr.classes * int64_t(sizeof(S)));
  k.N = N;
  k.C = pr.classes;
  k.T = pr.temperature;
  k.inv_t = static_cast<A>(1.0 / pr.temperature);
  k.go_arr = pr.reduction == Reduction::None ? static_cast<const A*>(pr.grad_output) : nullptr;
  k.go_scalar = mean ? pr.grad_output_scalar / double(N) : pr.grad_output_scalar;
  k.loss_out = static_cast<A*>(pr.loss);
  Scratch<double> rl(pr.reduction == Reduction::None ? 0 : N);
  k.row_loss = pr.reduction == Reduction::None ? nullptr : rl.p;
  k.run(threads);
  if (pr.reduction == Reduction::None) return 0.0;
  const double total = ordered_sum(rl.p, N);
  return mean ? total / double(N) : total;
}

inline double kl_div_logits(const KLDivLogitsProblem& pr, int threads) {
  switch (pr.dtype) {
    case DType::Float64: return kl_div_logits_typed<double>(pr, threads);
    case DType::Float16: return kl_div_logits_typed<Half>(pr, threads);
    case DType::BFloat16: return kl_div_logits_typed<BF16>(pr, threads);
    default: return kl_div_logits_typed<float>(pr, threads);
  }
}
