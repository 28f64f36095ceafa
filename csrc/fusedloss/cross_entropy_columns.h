// Cross-entropy columns (inner > 1): vectorised along inner, looping over C
// on tiles of kTile positions, no transpose copy. Member definitions of
// CrossEntropy<S> (cross_entropy.h), included by it inside the per-ISA namespace.
#pragma once

// ---- columns (inner > 1): vectorised along inner, looping over C ----
// A tile is kTile positions x C classes; each position's math depends on
// nothing else, so tiling and threading cannot change results.
// es: scratch for e = exp(x - max) of the tile (C x kTile), so the gradient
// pass reads e back from cache instead of computing exp a second time.
// Full: kTile positions, a compile-time trip count (registers, no tails).
template <class S>
template <bool Full>
void CrossEntropy<S>::tile(int64_t o, int64_t j0, A* es) const {
  constexpr int64_t NV = kTile / W;
  const int64_t nb = Full ? kTile : kMin(kTile, I - j0), nv = Full ? NV : (nb + W - 1) / W, base = o * C * I + j0;
  const S* xo = x + base;
  const S* qo = q ? q + base : nullptr;
  S* gt_ = g ? g + base : nullptr;
  Pos pos[kTile];
  alignas(64) A buf[kTile];
  for (int64_t j = 0; j < nb; ++j) pos[j] = setup(o * I + j0 + j, xo + j, I);
  V mv[NV], sv[NV], qv[NV], lv[NV], av[NV], cwv[NV], okv[NV];
  for (int64_t v = 0; v < nv; ++v) mv[v] = V::set1(std::numeric_limits<A>::lowest()), sv[v] = qv[v] = V::set1(0);
  // The next tile's rows: C strided streams are more than the hardware
  // prefetchers follow, so ask for them one tile ahead.
  const bool ahead = j0 + 2 * kTile <= I;
  for (int64_t c = 0; c < C; ++c) {
    const V wv = V::set1(wc(c));
    if (ahead)
      for (int64_t b = 0; b < kTile * int64_t(sizeof(S)); b += 64)
        __builtin_prefetch(reinterpret_cast<const char*>(xo + c * I + kTile) + b, 0, 3);
    for (int64_t v = 0; v < nv; ++v) {
      mv[v] = vmax(mv[v], ldx(xo + c * I + v * W, nb - v * W, A(0)));
      if (qo) qv[v] = fmadd(wv, qprime(ldx(qo + c * I + v * W, nb - v * W, A(0))), qv[v]);
    }
  }
  for (int64_t c = 0; c < C; ++c)
    for (int64_t v = 0; v < nv; ++v) {
      const V e = vexp(ldx(xo + c * I + v * W, nb - v * W, A(0)) - mv[v]);
      sv[v] = sv[v] + e;
      e.store(es + c * kTile + v * W);
    }
  alignas(64) A sums[kTile];
  for (int64_t v = 0; v < nv; ++v) {
    sv[v].store(sums + v * W);
    lv[v] = vlog(sv[v]);
    lv[v].store(buf + v * W);
    for (int64_t k = 0; k < W && v * W + k < nb; ++k) pos[v * W + k].lse = buf[v * W + k];
    mv[v].store(buf + v * W);
    for (int64_t k = 0; k < W && v * W + k < nb; ++k) pos[v * W + k].M = buf[v * W + k];
    qv[v].store(buf + v * W);
    for (int64_t k = 0; k < W && v * W + k < nb; ++k) pos[v * W + k].Q = double(buf[v * W + k]);
  }
  alignas(64) A ab[kTile] = {}, cwb[kTile] = {}, okb[kTile] = {};
  for (int64_t j = 0; j < nb; ++j) {
    if (!pos[j].valid) continue;
    coefs(pos[j], double(sums[j]));
    ab[j] = pos[j].ra, cwb[j] = pos[j].cw, okb[j] = A(1);
  }
  alignas(64) A accb[kTile] = {};
  if (need_pass2()) {
    for (int64_t v = 0; v < nv; ++v) {
      av[v] = V::load(ab + v * W), cwv[v] = V::load(cwb + v * W), okv[v] = V::load(okb + v * W);
      sv[v] = V::set1(0);  // now the loss accumulator
    }
    for (int64_t c = 0; c < C; ++c) {
      const V wv = V::set1(wc(c));
      for (int64_t v = 0; v < nv; ++v) {
        const int64_t n = nb - v * W, off = c * I + v * W;
        const V e = V::load(es + c * kTile + v * W);
        V gv = e * av[v];
        if (qo || smooth) {
          const V d = (ldx(xo + off, n, A(0)) - mv[v]) - lv[v];
          const V wq = qo ? wv * qprime(ldx(qo + off, n, A(0))) : wv;
          sv[v] = fmadd(wq, d, sv[v]);
          gv = fmsub(e, av[v], cwv[v] * wq);
        }
        if (gt_) stx(gt_ + off, n, select(eq(okv[v], V::set1(0)), V::set1(0), gv));
      }
    }
    for (int64_t v = 0; v < nv; ++v) sv[v].store(accb + v * W);
  }
  for (int64_t j = 0; j < nb; ++j) {
    if (gt_ && tgt && pos[j].valid) {
      const Pos& p = pos[j];
      const A cww = smooth ? p.cw * p.wt : A(0);
      put(gt_ + p.t * I + j, lane0(fmsub(V::set1(es[p.t * kTile + j]), V::set1(p.ra), V::set1(cww + p.b))));
    }
    finish(o * I + j0 + j, pos[j], double(accb[j]));
  }
}

template <class S>
void CrossEntropy<S>::columns(int nt) {
  const int64_t per = (I + kTile - 1) / kTile, tiles = N * per;
  if (nt <= 1) {
    Scratch<A> es(C * kTile);
    for (int64_t it = 0; it < tiles; ++it) tile_at(it, per, es.p);
    return;
  }
#pragma omp parallel num_threads(nt)
  {
    Scratch<A> es(C * kTile);
#pragma omp for schedule(static)
    for (int64_t it = 0; it < tiles; ++it) tile_at(it, per, es.p);
  }
}
