// Cross-entropy columns (inner > 1): vectorised along inner, looping over C
// on tiles of kTile positions, no transpose copy. Member definitions of
// CrossEntropy<S> (cross_entropy.h), included by it inside the per-ISA namespace.
#pragma once

// ---- columns (inner > 1): vectorised along inner, looping over C ----
// A tile is kTile positions x C classes; each position's math depends on
// nothing else, so tiling and threading cannot change results.
// es: scratch for e = exp(x - max) of the tile (C x ts), so the gradient
// pass reads e back from cache instead of computing exp a second time, then
// the tile's logits (C x ts); ts, the tile's vectors, is kTile for full tiles.
// Transformed logits ([Note logit transform]): the tile keeps z, or t when
// capped (z = cap t where used, dtanh(t) for the gradient).
// Full: kTile positions, a compile-time trip count (registers, no tails).
template <class S>
template <bool Full, bool kPlain>
void CrossEntropy<S>::tile(int64_t o, int64_t j0, int64_t nb_, A* es) const {
  constexpr int64_t NV = kTile / W;
  // Members the loops use, as locals: the vector stores may alias anything, so
  // the members were loaded again after each store (I for every address).
  const int64_t I = this->I, C = this->C;
  const bool streamed = stream;
  // The options, constant false where kPlain says so.
  const bool xf_ = !kPlain && xf, capped_ = !kPlain && capped, smooth_ = !kPlain && smooth;
  const int64_t nb = Full ? kTile : nb_, nv = Full ? NV : (nb + W - 1) / W, base = o * C * I + j0;
  const int64_t ts = nv * W;
  const int64_t i0 = o * I + j0;
  const S* xo = x + base;
  const S* qo = !kPlain && q ? q + base : nullptr;
  S* gt_ = g ? g + base : nullptr;
  // xs: the tile's logits, copied by pass 1 so that x is read from memory
  // once: its C rows lie I apart (often a multiple of 4 KiB, all in the same
  // cache sets), the contiguous copy does not.
  A* xs = es + C * ts;
  // Per-position setup as arrays along inner (lanes past nb: ignored). tb:
  // the target class in A, -1 where there is none (ignored, probability
  // targets, past nb), so c == t is one vector compare per class; that needs
  // every class exact in A (float: C <= 2^24) and in int32 (setup narrows t to
  // it, which vectorises), else the scalar gather below.
  const bool onehot = onehot_targets();
  alignas(64) A tb[kTile], wtb[kTile], okb[kTile], xtb[kTile];
  alignas(64) double gob[kTile];
  for (int64_t j = nb; j < kTile; ++j) tb[j] = A(-1), wtb[j] = okb[j] = xtb[j] = A(0), gob[j] = 0;
  if (red == Reduction::None && go_arr) {
    for (int64_t j = 0; j < nb; ++j) gob[j] = double(go_arr[i0 + j]);
  } else {
    for (int64_t j = 0; j < nb; ++j) gob[j] = go_scalar;
  }
  if (tgt) {
    // Branch-free loops (they vectorise); t is in [0, C) unless ignored
    // (checked before any kernel runs).
    const int64_t* tt = tgt + i0;
    for (int64_t j = 0; j < nb; ++j) {  // as masks, without a conditional (it vectorises)
      const int64_t ok = -int64_t(tt[j] != ignore);  // all ones or zero
      okb[j] = static_cast<A>(static_cast<int32_t>(-ok));
      tb[j] = static_cast<A>(static_cast<int32_t>(tt[j] | ~ok));  // t, or -1; onehot: t < C < 2^31
      xtb[j] = A(0);
    }
    if (w) {
      for (int64_t j = 0; j < nb; ++j) wtb[j] = tt[j] != ignore ? w[tt[j]] : A(0);
    } else {
      for (int64_t j = 0; j < nb; ++j) wtb[j] = okb[j];
    }
    if (!onehot)  // reads the target logit before anything is written (in-place safe)
      for (int64_t j = 0; j < nb; ++j)
        if (okb[j] != A(0)) xtb[j] = xf_ ? zscalar(to_acc(xo[tgt[i0 + j] * I + j])) : to_acc(xo[tgt[i0 + j] * I + j]);
  } else {
    for (int64_t j = 0; j < nb; ++j) tb[j] = A(-1), okb[j] = A(1), wtb[j] = xtb[j] = A(0);
  }
  V mv[NV], sv[NV], lv[NV], tv[NV], xtv[NV], lov[NV], qv[NV];
  // Sums over C (exp-sum, sum w q', the smoothing / probability loss) run in A
  // vectors for kFlushClasses classes, then go into double per position: one
  // running float sum over all of C lost ~C/2 ULPs (label smoothing at
  // C = 32000: 1e-4 relative, torch 1e-7).
  // Each loop over C below runs in blocks of kFlushClasses, flushing after
  // each (the first block's flush sets the double sums: nothing to zero).
  alignas(64) double sd[kTile], qd[kTile], accd[kTile];
  // [Note per-position loops]: the steps per position below run over all kTile
  // lanes, a trip count the compiler knows, so every lane gets the same
  // vector code whatever the tile's length (a partial tile's lanes in a loop
  // to nb got a scalar remainder, whose contractions gave other last bits in
  // double: the same position in a whole and a partial tile differed, and
  // streaming shifts the tiles with the gradient's address). Lanes past the
  // tile hold harmless values and are never written out.
  for (int64_t j = nv * W; j < kTile; ++j) sd[j] = 1, qd[j] = accd[j] = 0;
  const auto flush = [nv](V* acc, double* to, bool first) {
    alignas(64) A part[kTile];
    for (int64_t v = 0; v < nv; ++v) acc[v].store(part + v * W), acc[v] = V::set1(0);
    if (first)
      for (int64_t j = 0; j < nv * W; ++j) to[j] = double(part[j]);
    else
      for (int64_t j = 0; j < nv * W; ++j) to[j] += double(part[j]);
  };
  for (int64_t v = 0; v < nv; ++v) {
    mv[v] = V::set1(std::numeric_limits<A>::lowest()), lov[v] = V::set1(std::numeric_limits<A>::max());
    sv[v] = qv[v] = xtv[v] = V::set1(0);
    tv[v] = V::load(tb + v * W);
  }
  // The rows of the tile after next (x, and g for writing): C strided
  // streams are more than the hardware prefetchers follow, so ask for them
  // two tiles ahead, into L2 (rows I apart share cache sets, so L1 would
  // evict them before use). g's here; x's in the exp loop below, where
  // nothing else uses memory (measured: 8x21x128x128 7-16% and 4x150x128x128
  // 12-20% faster on AVX-512 than both here, AVX2 3-4%).
  const bool ahead = j0 + 3 * kTile <= I;
  for (int64_t cb = 0; cb < C; cb += kFlushClasses) {
    for (int64_t c = cb; c < kMin(C, cb + kFlushClasses); ++c) {
      const V wv = V::set1(wc(c)), cv = V::set1(A(c));
      if (ahead && gt_ && !streamed) prefetch_tile_row<1>(gt_ + c * I + 2 * kTile);
      for (int64_t v = 0; v < nv; ++v) {
        V xv = ldx(xo + c * I + v * W, nb - v * W, A(0));
        if (xf_) {
          V t = xv;
          xv = zof(xv, t);
          (capped_ ? t : xv).store(xs + c * ts + v * W);
        } else {
          xv.store(xs + c * ts + v * W);
        }
        mv[v] = vmax(mv[v], xv);
        if (kPlain) lov[v] = vmin(lov[v], xv);
        if (onehot) xtv[v] = select(eq(tv[v], cv), xv, xtv[v]);  // the target logit, read before any write
        if (qo) qv[v] = fmadd(wv, qprime(ldx(qo + c * I + v * W, nb - v * W, A(0))), qv[v]);
      }
    }
    if (qo) flush(qv, qd, cb == 0);
  }
  // Plain tiles: when every lane's min and max lie less than exp's normal range
  // apart, no exp needs its range test (as the rows' chunk_stats). NaN fails
  // the test only where the min or max kept it; the sums below catch the rest.
  bool in_range = false;
  if constexpr (kPlain) {
    in_range = true;
    for (int64_t v = 0; v < nv; ++v) in_range = in_range && exp_args_in_range(lov[v] - mv[v]);
  }
  // e = exp(x - max) (x - max <= 0, or NaN) and its sums.
  const auto exp_pass = [&](auto in_range_tag) FUSEDLOSS_ALWAYS_INLINE_LAMBDA {
    constexpr bool kInRange = decltype(in_range_tag)::value;
    for (int64_t cb = 0; cb < C; cb += kFlushClasses) {
      for (int64_t c = cb; c < kMin(C, cb + kFlushClasses); ++c) {
        if (ahead) prefetch_tile_row<0>(xo + c * I + 2 * kTile);
        for (int64_t v = 0; v < nv; ++v) {
          const V xz = V::load(xs + c * ts + v * W);
          const V d = (capped_ ? zof_t(xz) : xz) - mv[v];
          const V e = kInRange ? vexp_in_range(d) : vexp_nonpos(d);
          sv[v] = sv[v] + e;
          e.store(es + c * ts + v * W);
        }
      }
      flush(sv, sd, cb == 0);
    }
  };
  if (in_range) exp_pass(std::true_type{});
  else exp_pass(std::false_type{});
  alignas(64) A sums[kTile], lseb[kTile], mb[kTile];
  for (int64_t j = 0; j < nv * W; ++j) sums[j] = static_cast<A>(sd[j]);
  bool nan_sum = false;
  for (int64_t v = 0; v < nv; ++v) {
    const V sum = V::load(sums + v * W);
    nan_sum = nan_sum || any(isnan_v(sum));
    lv[v] = vlog(sum);
    lv[v].store(lseb + v * W);
    mv[v].store(mb + v * W);
    if (onehot) xtv[v].store(xtb + v * W);
  }
  for (int64_t j = nv * W; j < kTile; ++j) lseb[j] = mb[j] = A(0);
  // Coefficients (in double, as coefs()): grad = e * ra - cw * w_c q'_c - bb * [c == t],
  // bb the whole [c == t] term (Pos::bt). Invalid lanes
  // may hold anything: their gradient is zeroed by okb, their loss unused.
  // rtb, rzb: the target lane's parts of rab ([Note z-loss target lane]).
  alignas(64) A rab[kTile], cwb[kTile], bb[kTile], rtb[kTile], rzb[kTile];
  if (tgt) {
    for (int64_t j = 0; j < kTile; ++j) {  // [Note per-position loops]
      const double go = gob[j] * gs;
      const double az = zloss ? zloss_coef(go, mb[j], lseb[j]) : 0.0;
      // 0 where ignored: see the lean pass
      const PCoef r = okb[j] != A(0) ? p_over_sum(p_coef(go, wtb[j]), az, sd[j]) : PCoef{A(0), A(0), A(0)};
      rab[j] = r.ra, rtb[j] = r.rt, rzb[j] = r.rz;
      cwb[j] = static_cast<A>(go * eps_c_d);
      bb[j] = static_cast<A>(target_coef(go, wtb[j]));
    }
  } else {
    for (int64_t j = 0; j < kTile; ++j) {
      const double go = gob[j] * gs;
      cwb[j] = static_cast<A>(go);
      const double az = zloss ? zloss_coef(go, mb[j], lseb[j]) : 0.0;
      rab[j] = p_over_sum(double(cwb[j]) * qd[j], az, sd[j]).ra;  // a as coefs() forms it
      bb[j] = rtb[j] = rzb[j] = A(0);
    }
  }
  for (int64_t j = nb; j < kTile; ++j) rab[j] = cwb[j] = bb[j] = rtb[j] = rzb[j] = A(0);
  // Plain tiles with every exp in range and no NaN sum: e is finite, and an
  // ignored lane's coefficient 0 makes its gradient e 0 - 0 = +0 without the
  // select of the general pass; the target's term comes in as b [c == t], an
  // FMA with 0 elsewhere (the same bits as the general pass's product).
  if (kPlain && in_range && !nan_sum && onehot && gt_ && !zloss) {  // z-loss: the target lane's own terms
    V av[NV], bv[NV];
    for (int64_t v = 0; v < nv; ++v) av[v] = V::load(rab + v * W), bv[v] = V::load(bb + v * W);
    for (int64_t c = 0; c < C; ++c) {
      const V cv = V::set1(A(c));
      for (int64_t v = 0; v < nv; ++v) {
        const V e = V::load(es + c * ts + v * W);
        const V gv = fmsub(e, av[v], select(eq(tv[v], cv), bv[v], V::set1(0)));
        if (Full) stg(gt_ + c * I + v * W, gv, streamed);
        else stx(gt_ + c * I + v * W, nb - v * W, gv);
      }
    }
  } else if (need_pass2()) {
    V av[NV], cwv[NV], okv[NV], bv[NV];
    for (int64_t v = 0; v < nv; ++v) {
      av[v] = V::load(rab + v * W), cwv[v] = V::load(cwb + v * W), okv[v] = V::load(okb + v * W);
      bv[v] = V::load(bb + v * W);
      sv[v] = V::set1(0);  // now the loss accumulator
    }
    for (int64_t cb = 0; cb < C; cb += kFlushClasses) {
      for (int64_t c = cb; c < kMin(C, cb + kFlushClasses); ++c) {
        const V wv = V::set1(wc(c)), cv = V::set1(A(c));
        for (int64_t v = 0; v < nv; ++v) {
          const int64_t n = nb - v * W, off = c * I + v * W;
          const V e = V::load(es + c * ts + v * W);
          const V xz = V::load(xs + c * ts + v * W);
          V gv = e * av[v];
          if (qo || smooth_) {
            const V d = ((capped_ ? zof_t(xz) : xz) - mv[v]) - lv[v];
            const V wq = qo ? wv * qprime(ldx(qo + off, n, A(0))) : wv;
            sv[v] = fmadd(wq, d, sv[v]);
            gv = fmsub(e, av[v], cwv[v] * wq);
          }
          if (gt_) {
            if (onehot) gv = select(eq(tv[v], cv), target_grad(e, V::load(rtb + v * W), V::load(rzb + v * W), bv[v]), gv);
            if (capped_) gv = gv * dtanh(xz);
            gv = select(eq(okv[v], V::set1(0)), V::set1(0), gv);
            if (Full) stg(gt_ + off, gv, streamed);
            else stx(gt_ + off, n, gv);
          }
        }
      }
      if (qo || smooth_) flush(sv, accd, cb == 0);
    }
  }
  if (gt_ && tgt && !onehot)
    for (int64_t j = 0; j < nb; ++j) {
      if (okb[j] == A(0)) continue;
      const int64_t t = tgt[i0 + j];
      V gt = target_grad(V::set1(es[t * ts + j]), V::set1(rtb[j]), V::set1(rzb[j]), V::set1(bb[j]));
      if (capped_) gt = gt * dtanh(V::set1(xs[t * ts + j]));
      put(gt_ + t * I + j, lane0(gt));
    }
  // Loss per position (as finish()).
  alignas(64) double lb[kTile];
  if (tgt) {
    const double ome = double(one_m_eps);
    for (int64_t j = 0; j < kTile; ++j) {  // [Note per-position loops]
      double l = ome * wtb[j] * (double(lseb[j]) - double(xtb[j] - mb[j]));
      if (smooth_) l -= eps_c_d * accd[j];  // accd is set only then
      if (zloss) l += zloss_term(mb[j], lseb[j]);
      lb[j] = okb[j] != A(0) ? l : 0.0;  // okb: not ignored
    }
  } else {
    for (int64_t j = 0; j < kTile; ++j) lb[j] = zloss ? zloss_term(mb[j], lseb[j]) - accd[j] : -accd[j];
  }
  for (int64_t j = 0; j < nb && lse_out; ++j) store_lse(i0 + j, !tgt || tgt[i0 + j] != ignore, mb[j], lseb[j]);
  if (loss_out)
    for (int64_t j = 0; j < nb; ++j) loss_out[i0 + j] = static_cast<A>(lb[j]);
  if (pos_loss)
    for (int64_t j = 0; j < nb; ++j) pos_loss[i0 + j] = lb[j];
}

// The common tile, whole and lean (lean_tile()): index targets, no smoothing,
// transform, z-loss or lse_out; weights and per-position upstream gradients
// allowed. tile()'s math and bits with less per-vector work: pass 1 keeps only
// each position's max (the target logit is read back from the tile's copy,
// and the exps' range is tested once on the tile's extremes), and the
// per-position steps are loops over arrays that vectorise. In-process A/B
// against tile() (AVX2, Zen 3, float32 fwd+grad, the same bits): 1x21x4096
// 0.88-0.90x the time, 8x21x16384 0.84-0.99x (1 and 2 threads), 4x150x4096
// 0.85-0.87x; float64 0.89-1.0x. Tried and slower at C = 21 and 150 than the
// loops here: the exp pass a vector of positions at a time down the classes
// (1.05-1.21x), or in halves of four vectors (0.98-1.12x); the gradient pass a
// cache line of positions at a time (0.99-1.21x), or a plain e * a with the
// target's term put in after (0.94-1.13x). A NaN in a sum sends the tile to
// tile() (nothing has been written yet).
template <class S>
bool CrossEntropy<S>::tile_lean(int64_t o, int64_t j0, A* es) const {
  constexpr int64_t NV = kTile / W;
  const int64_t I = this->I, C = this->C, base = o * C * I + j0, i0 = o * I + j0;
  const bool streamed = stream;
  const S* xo = x + base;
  S* gt_ = g ? g + base : nullptr;
  A* xs = es + C * kTile;
  alignas(64) A tb[kTile], wtb[kTile], xtb[kTile], mb[kTile], lseb[kTile];
  alignas(64) double sd[kTile];
  const int64_t* tt = tgt + i0;
  for (int64_t j = 0; j < kTile; ++j) {  // as masks, without a conditional (it vectorises)
    const int64_t ok = -int64_t(tt[j] != ignore);
    tb[j] = static_cast<A>(static_cast<int32_t>(tt[j] | ~ok));  // t, or -1
  }
  if (w) {
    for (int64_t j = 0; j < kTile; ++j) wtb[j] = tt[j] != ignore ? w[tt[j]] : A(0);
  } else {
    for (int64_t j = 0; j < kTile; ++j) wtb[j] = tt[j] != ignore ? A(1) : A(0);
  }
  // Pass 1: the tile's copy and each position's max; lo: the tile's least logit.
  V mv[NV], lo = V::set1(std::numeric_limits<A>::max());
  for (int64_t v = 0; v < NV; ++v) mv[v] = V::set1(std::numeric_limits<A>::lowest());
  const bool ahead = j0 + 3 * kTile <= I;  // as tile(): the rows two tiles on, into L2
  for (int64_t c = 0; c < C; ++c) {
    if (ahead && gt_ && !streamed) prefetch_tile_row<1>(gt_ + c * I + 2 * kTile);
    for (int64_t v = 0; v < NV; ++v) {
      const V xv = vload(xo + c * I + v * W);
      xv.store(xs + c * kTile + v * W);
      mv[v] = vmax(mv[v], xv);
      lo = vmin(lo, xv);
    }
  }
  V top = mv[0];
  for (int64_t v = 0; v < NV; ++v) {
    top = vmax(top, mv[v]);
    mv[v].store(mb + v * W);
  }
  // Every exp's argument x - max >= lo - top: in range for all when that is.
  const bool in_range = exp_args_in_range(V::set1(-hmax(V::set1(0) - lo)) - V::set1(hmax(top)));
  for (int64_t j = 0; j < kTile; ++j) xtb[j] = tt[j] != ignore ? xs[tt[j] * kTile + j] : A(0);
  // e = exp(x - max) and its sums: in float over kFlushClasses classes (each
  // block's sums kept in scratch), then in double, block by block as tile().
  const int64_t nblk = (C + kFlushClasses - 1) / kFlushClasses;
  A* parts = es + 2 * C * kTile;  // nblk x kTile
  const auto exp_pass = [&](auto in_range_tag) FUSEDLOSS_ALWAYS_INLINE_LAMBDA {
    constexpr bool kInRange = decltype(in_range_tag)::value;
    for (int64_t cb = 0; cb < C; cb += kFlushClasses) {
      V sv[NV];
      for (int64_t v = 0; v < NV; ++v) sv[v] = V::set1(0);
      for (int64_t c = cb; c < kMin(C, cb + kFlushClasses); ++c) {
        // x's rows two tiles on, here among the exps as in tile() (all at once
        // after pass 1 measured 1.1-1.2x the time at 8x21x16384).
        if (ahead) prefetch_tile_row<0>(xo + c * I + 2 * kTile);
        for (int64_t v = 0; v < NV; ++v) {
          const V d = V::load(xs + c * kTile + v * W) - mv[v];
          const V e = kInRange ? vexp_in_range(d) : vexp_nonpos(d);
          sv[v] = sv[v] + e;
          e.store(es + c * kTile + v * W);
        }
      }
      for (int64_t v = 0; v < NV; ++v) sv[v].store(parts + cb / kFlushClasses * kTile + v * W);
    }
  };
  if (in_range) exp_pass(std::true_type{});
  else exp_pass(std::false_type{});
  for (int64_t j = 0; j < kTile; ++j) sd[j] = double(parts[j]);
  for (int64_t k = 1; k < nblk; ++k)
    for (int64_t j = 0; j < kTile; ++j) sd[j] += double(parts[k * kTile + j]);
  alignas(64) A sums[kTile];
  for (int64_t j = 0; j < kTile; ++j) sums[j] = static_cast<A>(sd[j]);
  bool nan_sum = false;
  for (int64_t v = 0; v < NV; ++v) {
    const V sum = V::load(sums + v * W);
    nan_sum = nan_sum || any(isnan_v(sum));
    vlog(sum).store(lseb + v * W);
  }
  if (nan_sum) return false;
  if (gt_) {
    // As tile(): grad = e a / S - b [c == t], a and b 0 where ignored.
    alignas(64) A rab[kTile], bb[kTile];
    for (int64_t j = 0; j < kTile; ++j) {
      const double go = (red == Reduction::None && go_arr ? double(go_arr[i0 + j]) : go_scalar) * gs;
      const bool ok = tb[j] >= A(0);
      rab[j] = ok ? static_cast<A>(p_coef(go, wtb[j]) / sd[j]) : A(0);
      bb[j] = static_cast<A>(target_coef(go, wtb[j]));
    }
    V av[NV], bv[NV], tv[NV];
    for (int64_t v = 0; v < NV; ++v)
      av[v] = V::load(rab + v * W), bv[v] = V::load(bb + v * W), tv[v] = V::load(tb + v * W);
    for (int64_t c = 0; c < C; ++c) {
      const V cv = V::set1(A(c));
      for (int64_t v = 0; v < NV; ++v) {
        const V e = V::load(es + c * kTile + v * W);
        stg(gt_ + c * I + v * W, fmsub(e, av[v], select(eq(tv[v], cv), bv[v], V::set1(0))), streamed);
      }
    }
  }
  // Loss per position (as finish()).
  const double ome = double(one_m_eps);
  for (int64_t j = 0; j < kTile; ++j) {
    const double l = tt[j] != ignore ? ome * wtb[j] * (double(lseb[j]) - double(xtb[j] - mb[j])) : 0.0;
    if (loss_out) loss_out[i0 + j] = static_cast<A>(l);
    if (pos_loss) pos_loss[i0 + j] = l;
  }
  return true;
}

template <class S>
void CrossEntropy<S>::columns(int nt) {
  const int64_t per = tiles_per_outer(), tiles = N * per;
  // A tile's scratch: e, the logits' copy (C x its vectors each, fewer than
  // kTile's when I is small) and tile_lean's block sums.
  const int64_t each = (2 * C + (C + kFlushClasses - 1) / kFlushClasses) * kMin(kTile, (I + W - 1) / W * W);
  // Allocated before the parallel region: a failure throws here, not in a thread.
  Scratch<A> es(int64_t(nt) * each);
  if (nt <= 1) {
    for (int64_t it = 0; it < tiles; ++it) tile_at(it, per, es.p);
    if (stream) stream_fence();
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    A* mine = es.p + omp_get_thread_num() * each;
#pragma omp for schedule(static)
    for (int64_t it = 0; it < tiles; ++it) tile_at(it, per, mine);
    if (stream) stream_fence();
  }
}
