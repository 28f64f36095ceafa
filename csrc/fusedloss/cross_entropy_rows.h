// Cross-entropy rows (inner == 1): vectorised along C. Member definitions of
// CrossEntropy<S> (cross_entropy.h), included by it inside the per-ISA
// namespace; see there for the row scheme (chunks, pass 1 / pass 2).
#pragma once

// Pass 1 over [c0, c1) (c0 a multiple of kStep): the chunk's max m (or the
// cap, [Note fixed shift]), then e = exp(x - m) and its sum, the chunk re-read
// from L1; es: optional scratch for e, indexed by absolute class. Transformed
// logits ([Note logit transform]): z from x, t kept in tb (capped), and the
// second loop reads z back from tb instead of x.
template <class S>
typename CrossEntropy<S>::Part CrossEntropy<S>::chunk_stats(const S* xr, const S* qr, int64_t c0, int64_t c1, A* es,
                                                            A* tb) const {
  // Index-target rows of transformed logits (t kept in tb when capped, as
  // every caller gives it) take an instantiation of their own: with their
  // loops in the same function, plain rows measured 4-7% slower on AVX2
  // (GCC's register and inlining choices for it changed).
  const bool z_rows = xf && !qr && (tb || !capped);
  return z_rows ? chunk_stats_as<true>(xr, qr, c0, c1, es, tb) : chunk_stats_as<false>(xr, qr, c0, c1, es, tb);
}

// kZ: index targets, transformed logits; else any other row. Index-target
// rows run their full steps [c0, e) in loops of their own: exp_sums, and for
// kZ also max_steps (for plain logits the general loop measured faster).
template <class S>
template <bool kZ>
typename CrossEntropy<S>::Part CrossEntropy<S>::chunk_stats_as(const S* xr, const S* qr, int64_t c0, int64_t c1,
                                                               A* es, A* tb, bool exact) const {
  const A inf = std::numeric_limits<A>::infinity();
  V mk[4] = {V::set1(-inf), V::set1(-inf), V::set1(-inf), V::set1(-inf)};
  V lo = V::set1(inf);  // the full steps' minimum of z (see below)
  const bool fast = kZ || (!qr && !xf);  // index targets, and logits as they are or kZ's
  const int64_t e = fast ? c0 + (c1 - c0) / kStep * kStep : c0;
  // z at class `at` for those loops, as zof and zof_t make it, rounded as the
  // general loops and pass 2 round it; the factors held by value (the stores
  // into tb and es might alias the members).
  const V capv = V::set1(cap), zmulv = V::set1(zmul);
  const auto scaled_z = [xr, zmulv](int64_t at) { return rounded(vload(xr + at) * zmulv); };
  const auto keep_t = [xr, tb, c0, zmulv, capv](int64_t at) {  // capped, t kept in tb
    const V t = vtanh(vload(xr + at) * zmulv);
    t.store(tb + (at - c0));
    return rounded(t * capv);
  };
  const auto kept_t = [tb, c0, capv](int64_t at) { return rounded(V::load(tb + (at - c0)) * capv); };
  // [Note fixed shift]: the full steps' max comes with their exps, below,
  // shifted by the max of the first step's z.
  const bool fixed = kZ && tb && fixed_shift() && !exact && e > c0;
  A fixed_at = 0;
  if constexpr (kZ) {  // (results by value: mk and lo stay in registers below)
    if (fixed) {
      V z[4];
      for (int k = 0; k < 4; ++k) z[k] = vload(xr + c0 + k * W) * zmulv;
      vtanh_n<4>(z);  // capped_exp_sums' z
      for (int k = 0; k < 4; ++k) z[k] = rounded(z[k] * capv);
      fixed_at = hmax(max4(z));
    } else {
      const MaxMin r = tb ? max_steps(keep_t, c0, e) : max_steps(scaled_z, c0, e);
      for (int k = 0; k < 4; ++k) mk[k] = r.mx.v[k];
      lo = r.lo;
    }
  }
  for (int64_t c = kZ ? e : c0; c < c1; c += kStep) {
    V xv[4];
    if (xf) {
      V tv[4];
      load_step_z(xr, c, c1, xv, tv);
      if (tb)
        for (int k = 0; k < 4; ++k) tv[k].store(tb + (c - c0) + k * W);
    } else {
      load_step(xr, c, c1, -inf, xv);
      if (fast && c + kStep <= c1) lo = vmin(vmin(xv[0], xv[1]), vmin(vmin(xv[2], xv[3]), lo));
    }
    for (int k = 0; k < 4; ++k) mk[k] = vmax(mk[k], xv[k]);  // four chains: loads, not max latency, bound this
  }
  Part part;
  part.m = hmax(max4(mk));  // fixed: of the partial steps only, so far
  if (part.m == -inf) part.m = std::numeric_limits<A>::lowest();  // all -inf: e = 0, not exp(-inf - -inf) = NaN
  part.top = part.m;
  if (fixed) part.m = fixed_at;
  const V m = V::set1(part.m);
  // Every z - m of the full steps within exp's normal range (z - m rounds
  // monotonically; NaN fails the test, as in exp's own): then their exps
  // take exp's fast path without testing each vector, the same bits. Fixed
  // shift: |z - shift| <= 2 cap always, and a NaN z gives a NaN e there too.
  const bool in_range = fixed || (fast && exp_args_in_range(lo - m));
  // While the exps run, nothing else keeps memory busy: ask for what comes
  // next, the next chunk (rows are contiguous, so after a row's last chunk the
  // next row's first; prefetches never fault). With scratch (rows_pipelined,
  // this row is r + 1) the gradient pass of row r asks for the same chunk
  // again, but only shortly before use; asked for here too, fwd+grad
  // 1024x32000 took 0.95x the time on both paths, 2048x8192 0.95x on AVX2
  // (where only the last chunk's asked: 4096x1000 6% and 2048x8192 8-24%
  // faster than with none). Into L1 when the chunk fits in half of it beside
  // the one being read, else into L2 (forward-only 1024x32000 3-10% faster).
  const char* ahead = reinterpret_cast<const char*>(xr + c1);
  const bool near = (c1 - c0) * int64_t(sizeof(S)) <= (int64_t(1) << 14);
  Quad sum = {{V::set1(0), V::set1(0), V::set1(0), V::set1(0)}};
  double sd = 0;  // the exp-sum's flushed blocks
  V qa = V::set1(0);
  double qd = 0;
  int64_t c = c0;
  if (fast) {
    const auto run = [&](auto z) FUSEDLOSS_ALWAYS_INLINE_LAMBDA {
      if (in_range) {
        if (near) sum = exp_sums<3, true>(z, c0, c, e, m, es, sum, ahead, &sd);
        else sum = exp_sums<2, true>(z, c0, c, e, m, es, sum, ahead, &sd);
      } else {
        if (near) sum = exp_sums<3, false>(z, c0, c, e, m, es, sum, ahead, &sd);
        else sum = exp_sums<2, false>(z, c0, c, e, m, es, sum, ahead, &sd);
      }
    };
    if constexpr (kZ) {
      if (fixed) {
        V top = V::set1(part.top);
        if (near) sum = capped_exp_sums<3>(xr, c0, c, e, m, es, tb, sum, ahead, &sd, &top);
        else sum = capped_exp_sums<2>(xr, c0, c, e, m, es, tb, sum, ahead, &sd, &top);
        part.top = hmax(top);
        // Too far above the shift (or NaN): the exact way. Any exp past its
        // range has not been used for anything else yet.
        if (!(part.top - fixed_at <= kShiftLead)) return chunk_stats_as<kZ>(xr, qr, c0, c1, es, tb, true);
      } else if (tb) {
        run(kept_t);
      } else {
        run(scaled_z);
      }
    } else {
      run([xr](int64_t at) { return vload(xr + at); });
    }
    c = e;
  }
  for (; c < c1; c += kStep) {
    V xv[4];
    if (tb) {
      for (int k = 0; k < 4; ++k) xv[k] = zof_t(V::load(tb + (c - c0) + k * W));
      pad_step(c, c1, xv);
    } else if (xf) {
      load_step_z(xr, c, c1, xv, nullptr);
    } else {
      load_step(xr, c, c1, -inf, xv);
    }
    for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64) {
      const char* line = ahead + (c - c0) * int64_t(sizeof(S)) + b;
      if (near) __builtin_prefetch(line, 0, 3);
      else __builtin_prefetch(line, 0, 2);
    }
    for (int k = 0; k < 4; ++k) {
      const int64_t n = c1 - c - k * W;
      if (n <= 0) break;  // all-pad vectors would add 0
      const V e = vexp_nonpos_first(xv[k] - m, n);
      sum.v[k] = sum.v[k] + e;
      if (es) e.store(es + c + k * W);
    }
    if (last_of_flush_block(c, c0)) flush_sums(sum.v, sd);
    if (qr) {
      V qv[4];
      load_step(qr, c, c1, A(0), qv);
      for (int k = 0; k < 4; ++k) qa = fmadd(ldw(c + k * W, c1 - c - k * W), qprime(qv[k]), qa);
      if (last_of_flush_block(c, c0)) qd += double(hsum(qa)), qa = V::set1(0);
    }
  }
  part.s = sd + double(hsum((sum.v[0] + sum.v[1]) + (sum.v[2] + sum.v[3])));
  part.q = qd + double(hsum(qa));
  return part;
}

// The max of z over full steps [c0, e) (four chains, as chunk_stats' general
// loop keeps them) and its minimum; z(at) the vector of z from class at. A
// loop of its own, as exp_sums.
template <class S>
template <class Z>
typename CrossEntropy<S>::MaxMin CrossEntropy<S>::max_steps(Z z, int64_t c0, int64_t e) const {
  const A inf = std::numeric_limits<A>::infinity();
  V mx[4] = {V::set1(-inf), V::set1(-inf), V::set1(-inf), V::set1(-inf)}, mn = V::set1(inf);
  for (int64_t c = c0; c < e; c += kStep) {
    V zv[4];
    for (int k = 0; k < 4; ++k) zv[k] = z(c + k * W);
    mn = vmin(vmin(zv[0], zv[1]), vmin(vmin(zv[2], zv[3]), mn));
    for (int k = 0; k < 4; ++k) mx[k] = vmax(mx[k], zv[k]);
  }
  return {{{mx[0], mx[1], mx[2], mx[3]}}, mn};
}

// e = exp(z - m) over full steps [c, e) of index-target rows, z(at) the
// vector of z from class at, added to sum as chunk_stats' loop adds them
// (the same bits; the sums returned, each flush block's into *sd: see
// flush_sums) and stored into es when given; ahead's lines (from c0)
// asked for with locality kHint; kInRange: every z - m known to lie
// in exp's normal range (chunk_stats tests that once). A loop of its own, the
// sums and options in locals: in chunk_stats' general loop the sums lived on
// the stack and the options were tested for every vector.
template <class S>
template <int kHint, bool kInRange, class Z>
typename CrossEntropy<S>::Quad CrossEntropy<S>::exp_sums(Z z, int64_t c0, int64_t c, int64_t e, V m, A* es,
                                                        Quad sum, const char* ahead, double* sd) const {
  V s[4] = {sum.v[0], sum.v[1], sum.v[2], sum.v[3]};
  double d = *sd;
  const auto run = [&](auto store) {
    while (c < e) {
      for (const int64_t end = block_end(c0, c, e); c < end; c += kStep) {
        for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64)
          __builtin_prefetch(ahead + (c - c0) * int64_t(sizeof(S)) + b, 0, kHint);
        for (int k = 0; k < 4; ++k) {
          const V xm = z(c + k * W) - m;
          const V ev = kInRange ? vexp_in_range(xm) : vexp_nonpos(xm);
          s[k] = s[k] + ev;
          store(c + k * W, ev);
        }
      }
      if (block_done(c0, c)) flush_sums(s, d);
    }
  };
  if (es) run([es](int64_t at, V v) { v.store(es + at); });
  else run([](int64_t, V) {});
  *sd = d;
  return {{s[0], s[1], s[2], s[3]}};
}

// Pass 1 over full steps [c, e) with a shift chosen before the max ([Note
// fixed shift]): step(c, ev) gives the step's four vectors of e (and keeps
// its own max), each added to sum as exp_sums adds them and kept in es when given.
template <class S>
template <int kHint, class Step>
typename CrossEntropy<S>::Quad CrossEntropy<S>::shifted_exp_sums(Step step, int64_t c0, int64_t c, int64_t e,
                                                                A* es, Quad sum, const char* ahead, double* sd) const {
  V s[4] = {sum.v[0], sum.v[1], sum.v[2], sum.v[3]};
  double d = *sd;
  const auto run = [&](auto store) {
    while (c < e) {
      for (const int64_t end = block_end(c0, c, e); c < end; c += kStep) {
        for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64)
          __builtin_prefetch(ahead + (c - c0) * int64_t(sizeof(S)) + b, 0, kHint);
        V ev[4];
        step(c, ev);
        for (int k = 0; k < 4; ++k) {
          s[k] = s[k] + ev[k];
          store(c + k * W, ev[k]);
        }
      }
      if (block_done(c0, c)) flush_sums(s, d);
    }
  };
  if (es) run([es](int64_t at, V v) { v.store(es + at); });
  else run([](int64_t, V) {});
  *sd = d;
  return {{s[0], s[1], s[2], s[3]}};
}

// [Note fixed shift]: a step of a capped index-target row, t = tanh(zmul x)
// kept in tb, z = cap t, e = exp(z - m), and the max of z into top; the same
// bits as exp_sums over keep_t, tanh a step at a time (vtanh_n: one range test
// for four vectors, logits as models make them all within the polynomial's).
template <class S>
template <int kHint>
typename CrossEntropy<S>::Quad CrossEntropy<S>::capped_exp_sums(const S* xr, int64_t c0, int64_t c, int64_t e,
                                                               V m, A* es, A* tb, Quad sum, const char* ahead,
                                                               double* sd, V* top) const {
  const V zmulv = V::set1(zmul), capv = V::set1(cap);
  V mx = *top;
  const auto step = [&](int64_t at, V* ev) FUSEDLOSS_ALWAYS_INLINE_LAMBDA {
    V t[4];
    for (int k = 0; k < 4; ++k) t[k] = vload(xr + at + k * W) * zmulv;
    vtanh_n<4>(t);
    for (int k = 0; k < 4; ++k) {
      t[k].store(tb + (at - c0) + k * W);
      const V z = rounded(t[k] * capv);
      mx = vmax(mx, z);
      ev[k] = vexp_in_range(z - m);
    }
  };
  sum = shifted_exp_sums<kHint>(step, c0, c, e, es, sum, ahead, sd);
  *top = mx;
  return sum;
}

// Pass 2 over [c0, c1): gradient written once, and the chunk's part of the
// smoothing / probability-target loss sum_c w_c q'_c log p_c. cm: the chunk's
// shift m from pass 1; e is read from es or recomputed, the same bits either way;
// so is t (capped), from tb (indexed from c0) or recomputed.
template <class S>
template <bool kSmoothRuns>
double CrossEntropy<S>::chunk_grad(const S* xr, const S* qr, S* gr, int64_t c0, int64_t c1, const Pos& p, A cm,
                                   const A* es, const A* tb, const S* pf) const {
  const A inf = std::numeric_limits<A>::infinity();
  const V M = V::set1(p.M), cw = V::set1(p.cw), lse = V::set1(p.lse), m = V::set1(cm);
  // p = e * F * S / a. A chunk shifted by the row's max (every row of one
  // chunk, unless shifted before its max) has exp(m - M) = 1: no exp on the
  // row's chain of latencies. Else in double, rounded once (exp(m - M) may be
  // far below A's range where another chunk holds the max).
  const double f = cm == p.M ? 1.0 : ::exp(double(cm) - double(p.M));
  const auto shifted = [&](A r) { return cm == p.M ? r : static_cast<A>(f * double(r)); };
  const V F = V::set1(shifted(p.ra));
  const bool loss = smooth || qr;
  V acc = V::set1(0);
  double accd = 0;
  StreamWriter<S> out(stream, gr ? gr + c0 : nullptr);  // the common steps' full vectors
  for (int64_t c = c0; c < c1; c += kStep) {
    if (es && (kSmoothRuns || !loss)) {  // the common steps from c on: full, up to the target's step
      int64_t e = c + (c1 - c) / kStep * kStep;
      if (tgt && p.t >= c && p.t < e) e = c + (p.t - c) / kStep * kStep;
      if (e > c) {
        if constexpr (kSmoothRuns) {
          const LossSums sums =
              capped ? grad_run_smooth<true>(xr, es, tb, c0, gr, c, e, F, p, {acc, accd}, pf, out)
                     : grad_run_smooth<false>(xr, es, nullptr, c0, gr, c, e, F, p, {acc, accd}, pf, out);
          acc = sums.acc, accd = sums.accd;
        } else if (capped) grad_run<true>(es, tb, c0, gr, c, e, F, pf, out);
        else grad_run<false>(es, nullptr, c0, gr, c, e, F, pf, out);
        c = e - kStep;
        continue;
      }
    }
    out.flush();
    V e[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)}, xv[4] = {e[0], e[0], e[0], e[0]};
    V tv[4] = {e[0], e[0], e[0], e[0]};  // t (capped), pads 0
    if (es) {
      for (int k = 0; k < 4 && c + k * W < c1; ++k) e[k] = V::load(es + c + k * W);
      if (capped)
        for (int k = 0; k < 4 && c + k * W < c1; ++k) tv[k] = V::load(tb + (c - c0) + k * W);
    } else {
      if (xf) load_step_z(xr, c, c1, xv, tv);
      else load_step(xr, c, c1, -inf, xv);
      for (int k = 0; k < 4 && c + k * W < c1; ++k) {
        const int64_t n = c1 - c - k * W;
        e[k] = vexp_nonpos_first(xv[k] - m, n);
      }
    }
    const bool st = stream && !(tgt && p.t >= c && p.t < c + kStep);  // the target lane is rewritten below
    for (int k = 0; k < 4; ++k) {
      const int64_t n = c1 - c - k * W, off = c + k * W;
      if (n <= 0) break;
      V gv;
      if (loss) {
        // z with pads 0 (times weight 0 below): capped from t, else x (times s)
        V z = capped ? zof_t(tv[k]) : es || n < W ? ldx(xr + off, n, A(0)) : xv[k];
        if (xf && !capped && (es || n < W)) z = z * V::set1(zmul);
        const V d = (z - M) - lse;
        const V wq = qr ? ldw(off, n) * qprime(ldx(qr + off, n, A(0))) : ldw(off, n);
        acc = fmadd(wq, d, acc);
        gv = fmsub(e[k], F, cw * wq);
      } else {
        gv = e[k] * F;
      }
      if (capped) gv = gv * dtanh(tv[k]);
      if (gr && !(st && n >= W && vstream(gr + off, gv))) stx(gr + off, n, gv);
    }
    if (loss && last_of_flush_block(c, c0)) accd += double(hsum(acc)), acc = V::set1(0);
    if (gr && tgt && p.t >= c && p.t < c + kStep) {  // the target lane: minus b
      alignas(64) A eb[4 * W];
      for (int k = 0; k < 4 && c + k * W < c1; ++k) e[k].store(eb + k * W);
      // A target at the row's max (the only place p can near 1) takes e =
      // exp(0) = 1 and the unshifted coefficients, so e rt - b cancels as in
      // torch's p - 1: e exp(m - M) differs from 1 by ULPs where m is a shift.
      const bool at_max = p.xt == p.M;
      V gt = at_max ? target_grad(V::set1(1), V::set1(p.rt), V::set1(p.rz), V::set1(p.bt))
                    : target_grad(V::set1(eb[p.t - c]), V::set1(shifted(p.rt)), V::set1(shifted(p.rz)), V::set1(p.bt));
      if (capped) {
        alignas(64) A tt[4 * W];
        for (int k = 0; k < 4; ++k) tv[k].store(tt + k * W);
        gt = gt * dtanh(V::set1(tt[p.t - c]));
      }
      put(gr + p.t, lane0(gt));
    }
  }
  out.flush();
  return accd + double(hsum(acc));
}

// The gradient e F (times tanh' when capped) over full steps [c, e) that hold
// no target lane and add no loss term; e from scratch es (indexed by class)
// and t from tb (indexed from c0). A loop of its own, with the writer's state and
// the options in locals: in chunk_grad's step loop they were reloaded for
// every vector, as the stores might alias them.
template <class S>
template <bool kCapped>
void CrossEntropy<S>::grad_run(const A* es, const A* tb, int64_t c0, S* gr, int64_t c, int64_t e, V F,
                               const S* pf, StreamWriter<S>& out) const {
  out.with_put([&](auto put) {
    for (; c < e; c += kStep) {
      if (pf)  // the next row's pass 1 reads this right after: start its misses now
        for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(pf + c) + b, 0, 3);
      for (int k = 0; k < 4; ++k) {
        const int64_t off = c + k * W;
        V gv = V::load(es + off) * F;
        if constexpr (kCapped) gv = gv * dtanh(V::load(tb + (off - c0)));
        put(gr + off, gv);
      }
    }
  });
}

// grad_run with label smoothing (index targets): each vector also adds
// w (z - M - lse) into acc, which goes into accd at the end of each flush block:
// chunk_grad's step loop's operations in its order, so the same bits, in a loop
// without its per-step tests (label smoothing took 1.6x (AVX-512) to 2.4x (AVX2)
// the time of plain rows on that loop).
template <class S>
template <bool kCapped>
typename CrossEntropy<S>::LossSums CrossEntropy<S>::grad_run_smooth(const S* xr, const A* es, const A* tb,
                                                                   int64_t c0, S* gr, int64_t c, int64_t e, V F,
                                                                   const Pos& p, LossSums sums, const S* pf,
                                                                   StreamWriter<S>& out) const {
  const V M = V::set1(p.M), lse = V::set1(p.lse), cw = V::set1(p.cw), zm = V::set1(zmul);
  const bool scaled = xf;
  V a = sums.acc;
  double ad = sums.accd;
  out.with_put([&](auto put) {
    for (; c < e; c += kStep) {
      if (pf)
        for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64)
          __builtin_prefetch(reinterpret_cast<const char*>(pf + c) + b, 0, 3);
      for (int k = 0; k < 4; ++k) {
        const int64_t off = c + k * W;
        V z, tv;
        if constexpr (kCapped) {
          tv = V::load(tb + (off - c0));
          z = zof_t(tv);
        } else {
          z = ldx(xr + off, W, A(0));
          if (scaled) z = z * zm;
        }
        const V d = (z - M) - lse;
        const V wq = ldw(off, W);
        a = fmadd(wq, d, a);
        V gv = fmsub(V::load(es + off), F, cw * wq);
        if constexpr (kCapped) gv = gv * dtanh(tv);
        put(gr + off, gv);
      }
      if (last_of_flush_block(c, c0)) ad += double(hsum(a)), a = V::set1(0);
    }
  });
  return {a, ad};
}

// tb: a chunk of t scratch (capped), pass 1's only: pass 2 recomputes t.
template <class S>
void CrossEntropy<S>::row_serial(int64_t r, Part* parts, A* tb) const {
  const S* xr = x + r * C;
  const S* qr = q ? q + r * C : nullptr;
  S* gr = g ? g + r * C : nullptr;
  Pos p = setup(r, xr, 1);
  double acc = 0;
  if (p.valid) {
    const int64_t nch = chunks();
    for (int64_t k = 0; k < nch; ++k) parts[k] = chunk_stats(xr, qr, k * kChunk, chunk_end(k * kChunk), nullptr, tb);
    combine(p, parts, nch);
    if (need_pass2())
      for (int64_t k = 0; k < nch; ++k)
        acc += chunk_grad(xr, qr, gr, k * kChunk, chunk_end(k * kChunk), p, parts[k].m, nullptr, nullptr);
  } else if (gr) {
    zero(gr, C);
  }
  finish(r, p, acc);
}

// Rows [r0, r1) with the gradient pass of row r interleaved chunk by chunk
// with pass 1 of row r + 1: one streams its writes while the other streams
// its reads, so memory is busy both ways (the passes alone leave it idle in
// turn). Same chunk math as row_serial, so the same bits. pbuf: 2 x chunks()
// parts, sbuf: 2 x scratch_len() (two rows' e), tbuf: the same for t (capped) or nullptr.
template <class S>
void CrossEntropy<S>::rows_pipelined(int64_t r0, int64_t r1, Part* pbuf, A* sbuf, A* tbuf) const {
  const int64_t nch = chunks(), len = scratch_len();
  Part* parts[2] = {pbuf, pbuf + nch};
  A* es[2] = {sbuf, sbuf + len};
  A* ts[2] = {tbuf, tbuf ? tbuf + len : nullptr};
  const auto stats = [&](int64_t r, Pos& p, int b, int64_t k) {
    if (p.valid)
      parts[b][k] = chunk_stats(x + r * C, q ? q + r * C : nullptr, k * kChunk, chunk_end(k * kChunk), es[b],
                                ts[b] ? ts[b] + k * kChunk : nullptr);
  };
  int cur = 0;
  // Label smoothing with index targets: common steps with the loss term (chunk_grad<true>).
  const bool smooth_runs = smooth && !q;
  const auto grad = [&](auto runs, int64_t r, S* gr, int64_t k, const Pos& p, bool more) {
    const int64_t c0 = k * kChunk;
    return chunk_grad<decltype(runs)::value>(x + r * C, q ? q + r * C : nullptr, gr, c0, chunk_end(c0), p,
                                             parts[cur][k].m, es[cur], ts[cur] ? ts[cur] + c0 : nullptr,
                                             more ? x + (r + 1) * C : nullptr);
  };
  Pos p = r0 < r1 ? setup(r0, x + r0 * C, 1) : Pos{};
  for (int64_t k = 0; k < nch && r0 < r1; ++k) stats(r0, p, cur, k);
  if (r0 < r1 && p.valid) combine(p, parts[cur], nch);
  for (int64_t r = r0; r < r1; ++r) {
    const bool more = r + 1 < r1;
    Pos pn = more ? setup(r + 1, x + (r + 1) * C, 1) : Pos{};
    S* gr = g + r * C;
    double acc = 0;
    for (int64_t k = 0; k < nch; ++k) {
      const int64_t c0 = k * kChunk;
      if (!p.valid) zero(gr + c0, chunk_end(c0) - c0);
      else if (smooth_runs) acc += grad(std::true_type{}, r, gr, k, p, more);
      else acc += grad(std::false_type{}, r, gr, k, p, more);
      if (more) stats(r + 1, pn, 1 - cur, k);
    }
    finish(r, p, acc);
    if (more && pn.valid) combine(pn, parts[1 - cur], nch);
    p = pn;
    cur = 1 - cur;
  }
  stream_fence();
}

template <class S>
template <int NV, bool kPlain>
void CrossEntropy<S>::rows_small(int64_t r0, int64_t r1) const {
  constexpr A inf = std::numeric_limits<A>::infinity();
  // Exp-sums: one accumulator up to 4 vectors; rows of 5-8 vectors sum vector k
  // into accumulator k % 4 and combine them as chunk_stats does.
  constexpr int kSums = NV > 4 ? 4 : 1;
  Pos pos[kPlain ? 1 : kRowBlock];
  // kPlain: per-row state in arrays, as Pos would hold it with eps = 0, w = 1.
  alignas(64) A eb[kRowBlock][NV * W];
  alignas(64) A Ms[kRowBlock], sums[kRowBlock], lses[kRowBlock], ras[kRowBlock], xts[kRowBlock];
  // Transformed logits ([Note logit transform]): z and t per row, pads 0.
  constexpr int kZRows = kPlain ? 1 : kRowBlock;
  alignas(64) A zb[kZRows][NV * W], tz[kZRows][NV * W];
  bool ok[kRowBlock];
  // Rows of up to 4 vectors reduce their max and exp-sum vectors for the whole
  // block at once (hmax_rows, hsum_rows: the bits of hmax / hsum row by row;
  // 64x10 8% faster); longer rows, where the exps dominate, one by one (4-7%
  // slower batched on AVX-512). Rows without a loss keep M = 0 and S = 1.
  constexpr bool kBatchReduce = NV <= 4;
  V mxs[kRowBlock], svs[kRowBlock];  // kBatchReduce; svs's lane 0 alone 1 for S = 1
  alignas(64) A one_lane[W] = {A(1)};
  const int64_t nb = r1 - r0;
  // The last vector's lanes past C: pads.
  const auto real = first_lanes<V>(C - (NV - 1) * W);
  // Two sweeps over the block (max, then exp-sum), each ending in one reduction
  // for all its rows: a row's chain (reduction, exp, reduction) is long, so
  // rows are kept independent rather than one row's whole chain after another's.
  for (int64_t j = 0; j < kRowBlock; ++j) {
    Ms[j] = A(0), sums[j] = A(1), ok[j] = false;
    mxs[j] = V::set1(0), svs[j] = V::load(one_lane);
    if (j >= nb) continue;
    const int64_t r = r0 + j;
    const S* xr = x + r * C;
    if constexpr (kPlain) {
      ok[j] = tgt[r] != ignore;
      if (ok[j]) xts[j] = to_acc(xr[tgt[r]]);  // read before anything is written (in-place safe)
    } else {
      pos[j] = setup(r, xr, 1);
      ok[j] = pos[j].valid;
    }
    if (!ok[j]) continue;
    V mx;
    if (!kPlain && xf) {
      mx = V::set1(-inf);
      for (int k = 0; k < NV; ++k) {
        V t = V::set1(0);
        const V z = zof(ldx(xr + k * W, C - k * W, A(0)), t);
        z.store(zb[j] + k * W), t.store(tz[j] + k * W);
        mx = vmax(mx, k == NV - 1 ? select(real, z, V::set1(-inf)) : z);
      }
    } else {
      mx = ldx(xr, C, -inf);
      for (int k = 1; k < NV; ++k) mx = vmax(mx, ldx(xr + k * W, C - k * W, -inf));
    }
    if constexpr (kBatchReduce) mxs[j] = mx;
    else Ms[j] = hmax(mx);
  }
  if constexpr (kBatchReduce)
    for (int v = 0; v < kRowBlock; v += int(W)) hmax_rows(mxs + v).store(Ms + v);
  // The last vector's pad lanes read the row max (e = 1, then zeroed), not
  // -inf: exp's fast path needs every lane in its normal range.
  for (int64_t j = 0; j < nb; ++j) {
    if (!ok[j]) continue;
    const int64_t r = r0 + j;
    const S* xr = x + r * C;
    const V mj = V::set1(Ms[j]);
    V es[kSums];
    for (int k = 0; k < kSums; ++k) es[k] = V::set1(0);
    for (int k = 0; k < NV; ++k) {
      V xk;
      if (!kPlain && xf) {
        xk = V::load(zb[j] + k * W);
        if (k == NV - 1) xk = select(real, xk, mj);
      } else {
        xk = ldx(xr + k * W, C - k * W, Ms[j]);
      }
      V e = vexp_nonpos(xk - mj);
      if (k == NV - 1) e = select(real, e, V::set1(0));
      es[k % kSums] = es[k % kSums] + e;
      e.store(eb[j] + k * W);
    }
    const V sv = kSums == 1 ? es[0] : (es[0] + es[1]) + (es[2 % kSums] + es[3 % kSums]);
    if constexpr (kBatchReduce) svs[j] = sv;
    else sums[j] = hsum(sv);
    if (!kPlain && q) {
      V qs = V::set1(0);
      for (int k = 0; k < NV; ++k) qs = fmadd(ldw(k * W, C - k * W), qprime(ldx(q + r * C + k * W, C - k * W, A(0))), qs);
      pos[j].Q = double(hsum(qs));
    }
  }
  for (int v = 0; v < kRowBlock; v += int(W)) {
    if constexpr (kBatchReduce) hsum_rows(svs + v).store(sums + v);
    vlog(V::load(sums + v)).store(lses + v);
  }
  // ra = a / S: a in double as coefs() forms it; up to 4 vectors the division
  // by S in A, one vector for the block; longer rows divide in double, as the
  // chunk path does (with its sum order above, the gradient's bits are the
  // chunk path's, which took these rows before).
  constexpr bool kDoubleRatio = kSums > 1;
  if constexpr (kPlain) {
    for (int64_t j = 0; j < kRowBlock; ++j)
      ras[j] = kDoubleRatio ? static_cast<A>(go_scalar / double(sums[j])) : static_cast<A>(go_scalar);
  } else {
    for (int64_t j = 0; j < kRowBlock; ++j) {
      ras[j] = A(0);
      if (!ok[j]) continue;
      pos[j].M = Ms[j], pos[j].lse = lses[j];
      coefs(pos[j], kDoubleRatio ? double(sums[j]) : 1.0);  // else ra = a here (sum 1)
      ras[j] = pos[j].ra;
    }
  }
  if constexpr (!kDoubleRatio)
    for (int v = 0; v < kRowBlock; v += int(W)) (V::load(ras + v) / V::load(sums + v)).store(ras + v);
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t r = r0 + j;
    const S* xr = x + r * C;
    S* gr = g ? g + r * C : nullptr;
    if (!ok[j]) {
      if (gr) zero(gr, C);
      if constexpr (kPlain) store_loss(r, 0.0);
      else finish(r, pos[j], 0.0);
      continue;
    }
    const V ra = V::set1(ras[j]);
    if constexpr (kPlain) {
      if (gr) {
        for (int k = 0; k < NV; ++k) stx(gr + k * W, C - k * W, V::load(eb[j] + k * W) * ra);
        const A b = static_cast<A>(go_scalar);
        put(gr + tgt[r], lane0(fmsub(V::set1(eb[j][tgt[r]]), ra, V::set1(b))));
      }
      store_loss(r, double(lses[j]) - double(xts[j] - Ms[j]));  // finish() with eps = 0, w = 1
      continue;
    }
    Pos& p = pos[j];
    p.ra = ras[j];
    const V cw = V::set1(p.cw), lse = V::set1(p.lse);
    V la = V::set1(0);
    for (int k = 0; k < NV; ++k) {
      const V e = V::load(eb[j] + k * W);
      V gv = e * ra;
      if (smooth || q) {
        const V wq = q ? ldw(k * W, C - k * W) * qprime(ldx(q + r * C + k * W, C - k * W, A(0))) : ldw(k * W, C - k * W);
        const V z = xf ? V::load(zb[j] + k * W) : ldx(xr + k * W, C - k * W, A(0));
        la = fmadd(wq, (z - V::set1(p.M)) - lse, la);
        gv = fmsub(e, ra, cw * wq);
      }
      if (capped) gv = gv * dtanh(V::load(tz[j] + k * W));
      if (gr) stx(gr + k * W, C - k * W, gv);
    }
    const double acc = smooth || q ? double(hsum(la)) : 0.0;  // else la is 0
    if (gr && tgt) {
      const A S1 = kDoubleRatio ? A(1) : sums[j];  // as ras: divided above where not in coefs()
      V gt = target_grad(V::set1(eb[j][p.t]), V::set1(p.rt / S1), V::set1(p.rz / S1), V::set1(p.bt));
      if (capped) gt = gt * dtanh(V::set1(tz[j][p.t]));
      put(gr + p.t, lane0(gt));
    }
    finish(r, p, acc);
  }
}

// Rows [r0, r1) of medium_rows(), at most medium_block(): per row its max (and
// min, for exp's range), then e = exp(x - M) summed as chunk_stats sums a
// chunk (step vector k into accumulator k, into double by flush_sums every
// kFlushSteps steps: once a chunk, the gradient of a row whose max holds p =
// 0.96 was 4.4 ULP off at C = 1000, 3.2x torch's float32 error) and kept
// in eb; the logs and the divisions for the whole block; then each row's
// gradient from eb. The row's max is the shift, so its e is exactly 1 (as
// combine() counts it).
template <class S>
void CrossEntropy<S>::rows_medium(int64_t r0, int64_t r1, A* eb) const {
  constexpr A inf = std::numeric_limits<A>::infinity();
  const int64_t C = this->C, full = C / kStep * kStep, len = padded(), nb = r1 - r0;
  Pos pos[kRowBlock];  // setup()'s, then coefs()'s: the chunk path's per-row arithmetic
  alignas(64) A sums[kRowBlock], lses[kRowBlock];
  double sumd[kRowBlock];  // the exp-sum in double, for coefs() (sums: rounded to A, for the log)
  for (int64_t j = 0; j < kRowBlock; ++j) {
    sums[j] = A(1), sumd[j] = 1;
    if (j >= nb) continue;
    const int64_t r = r0 + j;
    const S* xr = x + r * C;
    pos[j] = setup(r, xr, 1);  // the target logit read before anything is written (in-place safe)
    if (!pos[j].valid) continue;
    V mk[4] = {V::set1(-inf), V::set1(-inf), V::set1(-inf), V::set1(-inf)};
    V lo = V::set1(inf);
    int64_t c = 0;
    for (; c < full; c += kStep)
      for (int k = 0; k < 4; ++k) {
        const V xv = vload(xr + c + k * W);
        mk[k] = vmax(mk[k], xv), lo = vmin(lo, xv);
      }
    for (; c < C; c += W) {
      mk[0] = vmax(mk[0], ldx(xr + c, C - c, -inf));
      lo = vmin(lo, ldx(xr + c, C - c, inf));
    }
    A M = hmax(max4(mk));
    if (M == -inf) M = std::numeric_limits<A>::lowest();  // all -inf: e = 0, as chunk_stats
    pos[j].M = M;
    const V m = V::set1(M);
    A* e = g ? eb + j * len : nullptr;
    V sum[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)};
    double sd = 0;
    // While the exps run, nothing else keeps memory busy: ask for the next
    // row (rows are contiguous; prefetches never fault), as chunk_stats does
    // (without it 4096x1000 and 2048x2048 took 1.12-1.26x the chunk path's time).
    const char* ahead = reinterpret_cast<const char*>(xr + C);
    const auto full_steps = [&](auto in_range) FUSEDLOSS_ALWAYS_INLINE_LAMBDA {
      for (int64_t at = 0; at < full;) {
        for (const int64_t end = block_end(0, at, full); at < end; at += kStep) {
          for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64)
            __builtin_prefetch(ahead + at * int64_t(sizeof(S)) + b, 0, 3);
          for (int k = 0; k < 4; ++k) {
            const V d = vload(xr + at + k * W) - m;
            const V ek = decltype(in_range)::value ? vexp_in_range(d) : vexp_nonpos(d);
            sum[k] = sum[k] + ek;
            if (e) ek.store(e + at + k * W);
          }
        }
        if (block_done(0, at)) flush_sums(sum, sd);
      }
    };
    if (exp_args_in_range(lo - m)) full_steps(std::true_type{});
    else full_steps(std::false_type{});
    for (int64_t at = full, k = 0; at < C; at += W, ++k) {  // the partial step
      const V ek = vexp_nonpos_first(ldx(xr + at, C - at, A(0)) - m, C - at);
      sum[k] = sum[k] + ek;
      if (e) ek.store(e + at);
    }
    flush_sums(sum, sd);
    sumd[j] = sd;
    sums[j] = static_cast<A>(sd);
  }
  for (int v = 0; v < kRowBlock; v += int(W)) vlog(V::load(sums + v)).store(lses + v);
  for (int64_t j = 0; j < nb; ++j) {
    const int64_t r = r0 + j;
    S* gr = g ? g + r * C : nullptr;
    Pos& p = pos[j];
    if (!p.valid) {
      if (gr) zero(gr, C);
      finish(r, p, 0.0);
      continue;
    }
    p.lse = lses[j];
    coefs(p, sumd[j]);
    const A* e = gr ? eb + j * len : nullptr;  // (no scratch without a gradient)
    double acc = 0;
    if (smooth) {
      acc = medium_smooth_row(x + r * C, e, gr, p);
    } else if (gr) {
      const V ra = V::set1(p.ra);
      int64_t c = 0;
      for (; c < full; c += kStep)
        for (int k = 0; k < 4; ++k) vstore(gr + c + k * W, V::load(e + c + k * W) * ra);
      for (; c < C; c += W) stx(gr + c, C - c, V::load(e + c) * ra);
    }
    if (gr) put(gr + p.t, lane0(target_grad(V::set1(e[p.t]), V::set1(p.rt), V::set1(p.rz), V::set1(p.bt))));
    finish(r, p, acc);
  }
}

// A medium row's label smoothing: its loss term sum_c w_c log p_c, as
// sum_c w_c ((x_c - M) - lse) (chunk_grad's form; one accumulator per step
// vector, into double by flush_sums), and with a gradient (gr) each
// element's e ra - cw w_c; the target lane is rewritten after. x is read
// before its gradient is written (in place safe); pads weigh 0.
template <class S>
double CrossEntropy<S>::medium_smooth_row(const S* xr, const A* e, S* gr, const Pos& p) const {
  const int64_t C = this->C, full = C / kStep * kStep;
  const V M = V::set1(p.M), lse = V::set1(p.lse), cw = V::set1(p.cw), ra = V::set1(p.ra);
  V acc[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)};
  double accd = 0;
  int64_t c = 0;
  while (c < full) {
    for (const int64_t end = block_end(0, c, full); c < end; c += kStep)
      for (int k = 0; k < 4; ++k) {
        const int64_t off = c + k * W;
        const V wq = ldw(off, W);
        acc[k] = fmadd(wq, (vload(xr + off) - M) - lse, acc[k]);
        if (gr) vstore(gr + off, fmsub(V::load(e + off), ra, cw * wq));
      }
    if (block_done(0, c)) flush_sums(acc, accd);
  }
  for (int k = 0; c < C; c += W, ++k) {  // the partial step
    const int64_t n = C - c;
    const V wq = ldw(c, n);
    acc[k] = fmadd(wq, (ldx(xr + c, n, A(0)) - M) - lse, acc[k]);
    if (gr) stx(gr + c, n, fmsub(V::load(e + c), ra, cw * wq));
  }
  flush_sums(acc, accd);
  return accd;
}

// Few rows, many chunks: threads share each row chunk by chunk. Same chunk
// math and combine order as row_serial, hence the same bits.
template <class S>
void CrossEntropy<S>::rows_chunked(int nt) {
  const int64_t nch = chunks(), items = N * nch;
  Scratch<Pos> pos(N);
  Scratch<Part> parts(items);
  Scratch<double> accs(items);
  Scratch<A> tbuf(capped ? int64_t(nt) * kChunk : 0);  // pass 1's t, a chunk per thread
  for (int64_t r = 0; r < N; ++r) pos[r] = setup(r, x + r * C, 1);  // before any write
#pragma omp parallel num_threads(nt)
  {
    A* tb = capped ? tbuf.p + omp_get_thread_num() * kChunk : nullptr;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t r = it / nch, c0 = (it % nch) * kChunk;
      if (pos[r].valid) parts[it] = chunk_stats(x + r * C, q ? q + r * C : nullptr, c0, chunk_end(c0), nullptr, tb);
    }
#pragma omp single
    for (int64_t r = 0; r < N; ++r)
      if (pos[r].valid) combine(pos[r], parts.p + r * nch, nch);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < items; ++it) {
      const int64_t r = it / nch, c0 = (it % nch) * kChunk, n = kMin(kChunk, C - c0);
      S* gr = g ? g + r * C : nullptr;
      const Pos& p = pos[r];
      accs[it] = 0;
      if (!p.valid) {
        if (gr) zero(gr + c0, n);
        continue;
      }
      if (need_pass2())
        accs[it] = chunk_grad(x + r * C, q ? q + r * C : nullptr, gr, c0, c0 + n, p, parts[it].m, nullptr, nullptr);
    }
    stream_fence();
  }
  for (int64_t r = 0; r < N; ++r) {
    double acc = 0;
    for (int64_t k = 0; k < nch; ++k) acc += accs[r * nch + k];
    finish(r, pos[r], acc);
  }
}

template <class S>
void CrossEntropy<S>::rows(int nt) {
  if (C <= kSmallVectors * W) {
    const int64_t nv = (C - 1) / W;
    const auto vectors = std::make_integer_sequence<int, kSmallVectors>{};
    const SmallRows fn = plain_rows() ? small_rows<true>(nv, vectors) : small_rows<false>(nv, vectors);
    const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
    if (nt <= 1) {
      for (int64_t b = 0; b < blocks; ++b) (this->*fn)(b * kRowBlock, kMin(N, (b + 1) * kRowBlock));
      return;
    }
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t b = 0; b < blocks; ++b) (this->*fn)(b * kRowBlock, kMin(N, (b + 1) * kRowBlock));
    return;
  }
  if (medium_rows()) {
    const int64_t nb = medium_block(), blocks = (N + nb - 1) / nb, each = g ? nb * padded() : 0;
    Scratch<A> eb(int64_t(nt) * each);
    if (nt <= 1) {
      for (int64_t b = 0; b < blocks; ++b) rows_medium(b * nb, kMin(N, (b + 1) * nb), eb.p);
      return;
    }
#pragma omp parallel num_threads(nt)
    {
      A* mine = eb.p + omp_get_thread_num() * each;
#pragma omp for schedule(static)
      for (int64_t b = 0; b < blocks; ++b) rows_medium(b * nb, kMin(N, (b + 1) * nb), mine);
    }
    return;
  }
  const int64_t nch = chunks();
  if (nt > 1 && nch > 1 && N < 4 * int64_t(nt)) return rows_chunked(nt);
  // Per-thread scratch, allocated before the parallel region: a failure
  // throws here, not in a thread.
  if (use_scratch()) {  // gradient wanted and a row fits in L2 with its scratch
    const int64_t len = 2 * scratch_len();  // a thread's two rows
    Scratch<Part> pbuf(int64_t(nt) * 2 * nch);
    Scratch<A> sbuf(int64_t(nt) * len);
    Scratch<A> tbuf(capped ? int64_t(nt) * len : 0);
    const auto tb = [&](int64_t t) { return capped ? tbuf.p + t * len : nullptr; };
    if (nt <= 1) return rows_pipelined(0, N, pbuf.p, sbuf.p, tb(0));
#pragma omp parallel num_threads(nt)
    {
      const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
      rows_pipelined(N * t / T, N * (t + 1) / T, pbuf.p + t * 2 * nch, sbuf.p + t * len, tb(t));
    }
    return;
  }
  Scratch<Part> parts(int64_t(nt) * nch);
  Scratch<A> tbuf(capped ? int64_t(nt) * kChunk : 0);  // pass 1's t, a chunk per thread
  const auto tb = [&](int64_t t) { return capped ? tbuf.p + t * kChunk : nullptr; };
  if (nt <= 1) {
    for (int64_t r = 0; r < N; ++r) row_serial(r, parts.p, tb(0));
    return stream_fence();
  }
#pragma omp parallel num_threads(nt)
  {
    const int t = omp_get_thread_num();
    Part* mine = parts.p + t * nch;
#pragma omp for schedule(static) nowait
    for (int64_t r = 0; r < N; ++r) row_serial(r, mine, tb(t));
    stream_fence();
  }
}
