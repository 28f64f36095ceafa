// Fused softmax cross-entropy: loss and gradient in one pass over memory.
//
// Included inside a per-ISA namespace after simd/math.h. The input is viewed
// as outer x C x inner. inner == 1: a row per sample, vectorised along C
// (rows). inner > 1: vectorised along inner, looping over C on a tile of
// positions that stays in cache (columns); no transpose copy.
//
// Row math is fixed by shape alone, never by the thread count: a row is cut
// into kChunk-element chunks, each giving a partial (max, exp-sum) and a
// partial loss; partials are combined in chunk order in double. Threads only
// decide who computes which chunk or row, so results are bitwise identical
// for any thread count.
#pragma once

constexpr int64_t kSerialWork = 1 << 15;  // below this many elements: no parallel region
constexpr int64_t kTile = 64;             // positions per column tile (inner > 1)
constexpr int64_t kStreamBytes = int64_t(64) << 20;  // outputs this big bypass the caches

// Heap scratch without std:: templates (see kernels_*.cpp on the ODR trap).
template <class T> struct Scratch {
  T* p = nullptr;
  explicit Scratch(int64_t n) : p(static_cast<T*>(malloc(sizeof(T) * static_cast<size_t>(n > 0 ? n : 1)))) {}
  ~Scratch() { free(p); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T& operator[](int64_t i) { return p[i]; }
};

inline int64_t kMin(int64_t a, int64_t b) { return a < b ? a : b; }

// Fixed-order sum with four interleaved accumulators (depends on n only).
inline double ordered_sum(const double* v, int64_t n) {
  double s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int k = 0; k < 4; ++k) s[k] += v[i + k];
  for (; i < n; ++i) s[0] += v[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

template <class S> struct CrossEntropy {
  using A = acc_t<S>;
  using V = vec_t<S>;
  static constexpr int64_t W = V::W;

  const S* x;
  const S* q;               // probability targets, or nullptr
  const int64_t* tgt;       // index targets, or nullptr
  const A* w;               // weights, or nullptr
  S* g;                     // gradient, or nullptr (forward only)
  int64_t N, C, I, ignore;
  A one_m_eps, eps_c;       // 1 - eps, eps / C
  double eps_c_d, wsum;     // eps / C and sum of weights, in double
  bool smooth;              // eps > 0
  Reduction red;
  const A* go_arr;          // per-position upstream gradient (None), or nullptr
  double go_scalar;         // upstream gradient, already / D for Mean
  bool stream;              // gradient far bigger than the caches: non-temporal stores
  A* loss_out;              // per-position loss, or nullptr
  double* pos_loss;         // per-position loss for the reduction, or nullptr

  // What a row/position needs between the passes.
  struct Pos {
    bool valid;
    int64_t t;
    // log p_c = (x_c - M) - lse: formed from the max-shifted logit, as torch
    // does, so the rounding is that of small numbers, not of |M| (~1000).
    A xt, wt, lse, a, cw, b;  // lse here is log(sum exp(x - M)); grad = p*a - cw*w_c*(q'_c) - b*[c == t]
    A M, ra;                  // rows: row max, a / S (p*a = exp(x - M) * ra)
    double go, Q;
  };

  A wc(int64_t c) const { return w ? w[c] : A(1); }

  // Reads the target logit before anything is written (in-place safe).
  Pos setup(int64_t i, const S* xbase, int64_t stride) const {
    Pos p{};
    p.valid = true;
    if (tgt) {
      p.t = tgt[i];
      p.valid = p.t != ignore;
      if (!p.valid) return p;
      p.xt = to_acc(xbase[p.t * stride]);
      p.wt = wc(p.t);
    }
    p.go = red == Reduction::None && go_arr ? double(go_arr[i]) : go_scalar;
    return p;
  }

  // Gradient coefficients once the sums (and Q for probability targets) are known.
  void coefs(Pos& p, double sum = 1) const {
    if (tgt) {
      const double a = p.go * (double(one_m_eps) * p.wt + eps_c_d * wsum);
      p.a = static_cast<A>(a);
      p.ra = static_cast<A>(a / sum);
      p.b = static_cast<A>(p.go * double(one_m_eps) * p.wt);
      p.cw = static_cast<A>(p.go * eps_c_d);
    } else {
      p.a = static_cast<A>(p.go * p.Q);
      p.ra = static_cast<A>(p.go * p.Q / sum);
      p.cw = static_cast<A>(p.go);
    }
  }

  V qprime(V qv) const { return fmadd(qv, V::set1(one_m_eps), V::set1(eps_c)); }

  void finish(int64_t i, const Pos& p, double acc) const {
    double l = 0;
    if (p.valid) {
      if (tgt) {
        l = double(one_m_eps) * p.wt * (double(p.lse) - double(p.xt - p.M));
        if (smooth) l -= eps_c_d * acc;
      } else {
        l = -acc;
      }
    }
    if (loss_out) loss_out[i] = static_cast<A>(l);
    if (pos_loss) pos_loss[i] = l;
  }

  V ldx(const S* p, int64_t n, A pad) const { return n >= W ? vload(p) : load_n(p, n, pad); }
  V ldw(int64_t c, int64_t n) const {  // weights; lanes past n are 0 (masks tails)
    if (w) return n >= W ? V::load(w + c) : load_n(w + c, n, A(0));
    if (n >= W) return V::set1(1);
    alignas(64) A ones[W];
    for (int64_t k = 0; k < W; ++k) ones[k] = k < n ? A(1) : A(0);
    return V::load(ones);
  }
  static void stx(S* p, int64_t n, V v) {
    if (n >= W) vstore(p, v);
    else store_n(p, n, v);
  }
  static void zero(S* p, int64_t n) {
    for (int64_t c = 0; c < n; c += W) stx(p + c, n - c, V::set1(0));
  }

  // ---- rows (inner == 1): vectorised along C ----
  // A row is swept in steps of 4 vectors. Pass 1 keeps a per-lane running max
  // m and exp-sum (rescaled when m grows) and may store e = exp(x - m) and the
  // step's m in scratch; pass 2 writes grad = e * exp(m - M) * a/S - ...
  // reading e back from cache: one exp per element plus one per step. Without
  // scratch (huge rows, chunk-parallel mode) pass 2 replays the same max
  // recurrence and recomputes the very same e, so both give the same bits.
  static constexpr int64_t kStep = 4 * W;
  // Elements of a row reduced as one unit: 128 terms per float accumulator
  // lane keeps the exp-sum within ~1e-6 even on the one-lane baseline path;
  // chunks are combined in double.
  static constexpr int64_t kChunk = 128 * kStep;
  struct Part { A m, s; double q; };  // one chunk's max, exp-sum (rel. to m), sum w q'

  // Loads [c, c + kStep); lanes at or past c1 read as pad.
  void load_step(const S* p, int64_t c, int64_t c1, A pad, V* v) const {
    if (c + kStep <= c1) {
      for (int k = 0; k < 4; ++k) v[k] = vload(p + c + k * W);
    } else {
      for (int k = 0; k < 4; ++k) v[k] = ldx(p + c + k * W, c1 - c - k * W, pad);
    }
  }
  static V max4(const V* v) { return vmax(vmax(v[0], v[1]), vmax(v[2], v[3])); }

  // Pass 1 over [c0, c1) (c0 a multiple of kStep); es/ms: optional scratch,
  // indexed by absolute class (e) and step (m, W values per step).
  Part chunk_stats(const S* xr, const S* qr, int64_t c0, int64_t c1, A* es, A* ms) const {
    const A inf = std::numeric_limits<A>::infinity();
    V m = V::set1(std::numeric_limits<A>::lowest());  // not -inf: exp(-inf - -inf) is NaN
    V sum[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)}, qa = V::set1(0);
    for (int64_t c = c0; c < c1; c += kStep) {
      V xv[4];
      load_step(xr, c, c1, -inf, xv);
      const V mn = vmax(m, max4(xv));
      if (c != c0 && any(gt(mn, m))) {  // (first step: the sums are still 0)
        const V f = vexp(m - mn);
        for (V& sk : sum) sk = sk * f;
      }
      m = mn;
      if (c + kStep <= c1) {  // full step: constant trip count, stays in registers
        for (int k = 0; k < 4; ++k) {
          const V e = vexp(xv[k] - m);
          sum[k] = sum[k] + e;
          if (es) e.store(es + c + k * W);
        }
      } else {
        for (int k = 0; k < 4; ++k) {
          if (c + k * W >= c1) break;  // all-pad vectors would add 0
          const V e = vexp(xv[k] - m);
          sum[k] = sum[k] + e;
          if (es) e.store(es + c + k * W);
        }
      }
      if (ms) m.store(ms + (c / kStep) * W);
      if (qr) {
        V qv[4];
        load_step(qr, c, c1, A(0), qv);
        for (int k = 0; k < 4; ++k) qa = fmadd(ldw(c + k * W, c1 - c - k * W), qprime(qv[k]), qa);
      }
    }
    Part part;
    part.m = hmax(m);
    part.s = hsum(((sum[0] + sum[1]) + (sum[2] + sum[3])) * vexp(m - V::set1(part.m)));
    part.q = double(hsum(qa));
    return part;
  }

  // Pass 2 over [c0, c1): gradient written once, and the chunk's part of the
  // smoothing / probability-target loss sum_c w_c q'_c log p_c.
  double chunk_grad(const S* xr, const S* qr, S* gr, int64_t c0, int64_t c1, const Pos& p, const A* es,
                    const A* ms, const S* pf = nullptr) const {
    const A inf = std::numeric_limits<A>::infinity();
    const V M = V::set1(p.M), ra = V::set1(p.ra), cw = V::set1(p.cw), lse = V::set1(p.lse);
    const bool loss = smooth || qr;
    V acc = V::set1(0), m = V::set1(std::numeric_limits<A>::lowest());
    // Streaming stores off the 64-byte grid: results wait one vector (prev).
    const int delta = stream && gr ? stream_delta(gr + c0) : -1;
    bool pend = false;
    V prev = V::set1(0);
    int64_t prev_off = 0;
    const auto flush = [&] {
      if (pend) store_lanes(gr + prev_off, prev, int(W) - delta, int(W));
      pend = false;
    };
    for (int64_t c = c0; c < c1; c += kStep) {
      if (es && !loss && c + kStep <= c1 && !(tgt && p.t >= c && p.t < c + kStep)) {  // the common step
        if (pf)  // the next row's pass 1 reads this right after: start its misses now
          for (int64_t b = 0; b < kStep * int64_t(sizeof(S)); b += 64)
            __builtin_prefetch(reinterpret_cast<const char*>(pf + c) + b, 0, 3);
        const V F = vexp(V::load(ms + (c / kStep) * W) - M) * ra;
        for (int k = 0; k < 4; ++k) {
          const int64_t off = c + k * W;
          const V gv = V::load(es + off) * F;
          if (delta > 0) {
            if (pend) stream_join(gr + off - delta, prev, gv, delta);
            else store_lanes(gr + off, gv, 0, int(W) - delta);
            prev = gv, prev_off = off, pend = true;
          } else if (!(stream && vstream(gr + off, gv))) {
            vstore(gr + off, gv);
          }
        }
        continue;
      }
      flush();
      V F, e[4] = {V::set1(0), V::set1(0), V::set1(0), V::set1(0)}, xv[4] = {e[0], e[0], e[0], e[0]};
      if (es) {
        for (int k = 0; k < 4 && c + k * W < c1; ++k) e[k] = V::load(es + c + k * W);
        F = vexp(V::load(ms + (c / kStep) * W) - M) * ra;
      } else {
        load_step(xr, c, c1, -inf, xv);
        m = vmax(m, max4(xv));
        for (int k = 0; k < 4 && c + k * W < c1; ++k) e[k] = vexp(xv[k] - m);
        F = vexp(m - M) * ra;
      }
      const bool st = stream && !(tgt && p.t >= c && p.t < c + kStep);  // the target lane is rewritten below
      for (int k = 0; k < 4; ++k) {
        const int64_t n = c1 - c - k * W, off = c + k * W;
        if (n <= 0) break;
        V gv;
        if (loss) {
          const V d = ((es || n < W ? ldx(xr + off, n, A(0)) : xv[k]) - M) - lse;
          const V wq = qr ? ldw(off, n) * qprime(ldx(qr + off, n, A(0))) : ldw(off, n);
          acc = fmadd(wq, d, acc);
          gv = fmsub(e[k], F, cw * wq);
        } else {
          gv = e[k] * F;
        }
        if (gr && !(st && n >= W && vstream(gr + off, gv))) stx(gr + off, n, gv);
      }
      if (gr && tgt && p.t >= c && p.t < c + kStep) {  // the target lane: minus b
        alignas(64) A eb[4 * W], fb[W];
        for (int k = 0; k < 4 && c + k * W < c1; ++k) e[k].store(eb + k * W);
        F.store(fb);
        const A cww = smooth ? p.cw * p.wt : A(0);
        const int64_t j = p.t - c;
        put(gr + p.t, lane0(fmsub(V::set1(eb[j]), V::set1(fb[j % W]), V::set1(cww + p.b))));
      }
    }
    flush();
    return double(hsum(acc));
  }

  void combine(Pos& p, const Part* parts, int64_t nch) const {
    A mx = parts[0].m;
    for (int64_t k = 1; k < nch; ++k) mx = parts[k].m > mx ? parts[k].m : mx;
    double s = 0, qs = 0;
    for (int64_t k = 0; k < nch; ++k) {
      s += parts[k].m == mx ? double(parts[k].s) : double(parts[k].s) * ::exp(double(parts[k].m) - double(mx));
      qs += parts[k].q;
    }
    p.M = mx;
    p.lse = static_cast<A>(::log(s));
    p.Q = qs;
    coefs(p, s);
  }

  int64_t chunks() const { return (C + kChunk - 1) / kChunk; }
  bool need_pass2() const { return g || smooth || q; }

  // Scratch for e and the step maxima: only while it stays in L2 with the row.
  bool use_scratch() const { return g && C * int64_t(sizeof(A)) <= (int64_t(1) << 18); }
  int64_t padded() const { return (C + kStep - 1) / kStep * kStep; }
  int64_t scratch_len() const { return use_scratch() ? padded() + padded() / kStep * W : 0; }
  int64_t chunk_end(int64_t c0) const { return c0 + kMin(kChunk, C - c0); }

  void row_serial(int64_t r, Part* parts) const {
    const S* xr = x + r * C;
    const S* qr = q ? q + r * C : nullptr;
    S* gr = g ? g + r * C : nullptr;
    Pos p = setup(r, xr, 1);
    double acc = 0;
    if (p.valid) {
      const int64_t nch = chunks();
      for (int64_t k = 0; k < nch; ++k) parts[k] = chunk_stats(xr, qr, k * kChunk, chunk_end(k * kChunk), nullptr, nullptr);
      combine(p, parts, nch);
      if (need_pass2())
        for (int64_t k = 0; k < nch; ++k) acc += chunk_grad(xr, qr, gr, k * kChunk, chunk_end(k * kChunk), p, nullptr, nullptr);
    } else if (gr) {
      zero(gr, C);
    }
    finish(r, p, acc);
  }

  // Rows [r0, r1) with the gradient pass of row r interleaved chunk by chunk
  // with pass 1 of row r + 1: one streams its writes while the other streams
  // its reads, so memory is busy both ways (the passes alone leave it idle in
  // turn). Same chunk math as row_serial, so the same bits.
  void rows_pipelined(int64_t r0, int64_t r1) const {
    const int64_t nch = chunks(), len = scratch_len();
    Scratch<Part> pbuf(2 * nch);
    Scratch<A> sbuf(2 * len);
    Part* parts[2] = {pbuf.p, pbuf.p + nch};
    A* es[2] = {sbuf.p, sbuf.p + len};
    const auto stats = [&](int64_t r, Pos& p, int b, int64_t k) {
      if (p.valid) parts[b][k] = chunk_stats(x + r * C, q ? q + r * C : nullptr, k * kChunk, chunk_end(k * kChunk), es[b], es[b] + padded());
    };
    int cur = 0;
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
        else
          acc += chunk_grad(x + r * C, q ? q + r * C : nullptr, gr, c0, chunk_end(c0), p, es[cur], es[cur] + padded(),
                            more ? x + (r + 1) * C : nullptr);
        if (more) stats(r + 1, pn, 1 - cur, k);
      }
      finish(r, p, acc);
      if (more && pn.valid) combine(pn, parts[1 - cur], nch);
      p = pn;
      cur = 1 - cur;
    }
    stream_fence();
  }

  // C <= kStep: a row is at most 4 vectors, kept in registers, no chunk or
  // step bookkeeping. Tiny problems are latency-bound, so rows go in blocks
  // of kRowBlock: per-row work is independent straight-line code the CPU
  // overlaps, and the long-latency steps (log, division) run once per block
  // as vectors. Chosen by shape alone.
  static constexpr int kRowBlock = 16;
  template <int NV> void rows_small(int64_t r0, int64_t r1) const {
    Pos pos[kRowBlock];
    alignas(64) A eb[kRowBlock][NV * W];
    alignas(64) A Ms[kRowBlock], sums[kRowBlock], lses[kRowBlock], ras[kRowBlock];
    const int64_t nb = r1 - r0;
    for (int64_t j = 0; j < kRowBlock; ++j) {
      Ms[j] = A(0), sums[j] = A(1);
      if (j >= nb) continue;
      const int64_t r = r0 + j;
      const S* xr = x + r * C;
      pos[j] = setup(r, xr, 1);
      if (!pos[j].valid) continue;
      V xv[NV], mx, es = V::set1(0);
      for (int k = 0; k < NV; ++k) xv[k] = ldx(xr + k * W, C - k * W, -std::numeric_limits<A>::infinity());
      mx = xv[0];
      for (int k = 1; k < NV; ++k) mx = vmax(mx, xv[k]);
      Ms[j] = hmax(mx);
      for (int k = 0; k < NV; ++k) {
        const V e = vexp(xv[k] - V::set1(Ms[j]));
        es = es + e;
        e.store(eb[j] + k * W);
      }
      sums[j] = hsum(es);
      if (q) {
        V qs = V::set1(0);
        for (int k = 0; k < NV; ++k) qs = fmadd(ldw(k * W, C - k * W), qprime(ldx(q + r * C + k * W, C - k * W, A(0))), qs);
        pos[j].Q = double(hsum(qs));
      }
    }
    for (int v = 0; v < kRowBlock; v += int(W)) vlog(V::load(sums + v)).store(lses + v);
    for (int64_t j = 0; j < kRowBlock; ++j) {
      ras[j] = A(0);
      if (j >= nb || !pos[j].valid) continue;
      pos[j].M = Ms[j], pos[j].lse = lses[j];
      coefs(pos[j]);  // ra = a here; divided by the sums below
      ras[j] = pos[j].ra;
    }
    for (int v = 0; v < kRowBlock; v += int(W)) (V::load(ras + v) / V::load(sums + v)).store(ras + v);
    for (int64_t j = 0; j < nb; ++j) {
      const int64_t r = r0 + j;
      const S* xr = x + r * C;
      S* gr = g ? g + r * C : nullptr;
      Pos& p = pos[j];
      double acc = 0;
      if (!p.valid) {
        if (gr) zero(gr, C);
        finish(r, p, acc);
        continue;
      }
      p.ra = ras[j];
      const V ra = V::set1(p.ra), cw = V::set1(p.cw), lse = V::set1(p.lse);
      V la = V::set1(0);
      for (int k = 0; k < NV; ++k) {
        const V e = V::load(eb[j] + k * W);
        V gv = e * ra;
        if (smooth || q) {
          const V wq = q ? ldw(k * W, C - k * W) * qprime(ldx(q + r * C + k * W, C - k * W, A(0))) : ldw(k * W, C - k * W);
          la = fmadd(wq, (ldx(xr + k * W, C - k * W, A(0)) - V::set1(p.M)) - lse, la);
          gv = fmsub(e, ra, cw * wq);
        }
        if (gr) stx(gr + k * W, C - k * W, gv);
      }
      acc = double(hsum(la));
      if (gr && tgt) {
        const A cww = smooth ? p.cw * p.wt : A(0);
        put(gr + p.t, lane0(fmsub(V::set1(eb[j][p.t]), ra, V::set1(cww + p.b))));
      }
      finish(r, p, acc);
    }
  }

  // Few rows, many chunks: threads share each row chunk by chunk. Same chunk
  // math and combine order as row_serial, hence the same bits.
  void rows_chunked(int nt) {
    const int64_t nch = chunks(), items = N * nch;
    Scratch<Pos> pos(N);
    Scratch<Part> parts(items);
    Scratch<double> accs(items);
    for (int64_t r = 0; r < N; ++r) pos[r] = setup(r, x + r * C, 1);  // before any write
#pragma omp parallel num_threads(nt)
    {
#pragma omp for schedule(static)
      for (int64_t it = 0; it < items; ++it) {
        const int64_t r = it / nch, c0 = (it % nch) * kChunk;
        if (pos[r].valid) parts[it] = chunk_stats(x + r * C, q ? q + r * C : nullptr, c0, chunk_end(c0), nullptr, nullptr);
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
        if (need_pass2()) accs[it] = chunk_grad(x + r * C, q ? q + r * C : nullptr, gr, c0, c0 + n, p, nullptr, nullptr);
      }
      stream_fence();
    }
    for (int64_t r = 0; r < N; ++r) {
      double acc = 0;
      for (int64_t k = 0; k < nch; ++k) acc += accs[r * nch + k];
      finish(r, pos[r], acc);
    }
  }

  void rows(int nt) {
    if (C <= kStep) {
      using Fn = void (CrossEntropy::*)(int64_t, int64_t) const;
      const Fn fns[4] = {&CrossEntropy::rows_small<1>, &CrossEntropy::rows_small<2>, &CrossEntropy::rows_small<3>,
                         &CrossEntropy::rows_small<4>};
      const Fn fn = fns[(C - 1) / W];
      const int64_t blocks = (N + kRowBlock - 1) / kRowBlock;
      if (nt <= 1) {
        for (int64_t b = 0; b < blocks; ++b) (this->*fn)(b * kRowBlock, kMin(N, (b + 1) * kRowBlock));
        return;
      }
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t b = 0; b < blocks; ++b) (this->*fn)(b * kRowBlock, kMin(N, (b + 1) * kRowBlock));
      return;
    }
    const int64_t nch = chunks();
    if (nt > 1 && nch > 1 && N < 4 * int64_t(nt)) return rows_chunked(nt);
    if (use_scratch()) {  // gradient wanted and a row fits in L2 with its scratch
      if (nt <= 1) return rows_pipelined(0, N);
#pragma omp parallel num_threads(nt)
      {
        const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        rows_pipelined(N * t / T, N * (t + 1) / T);
      }
      return;
    }
    if (nt <= 1) {
      Scratch<Part> parts(nch);
      for (int64_t r = 0; r < N; ++r) row_serial(r, parts.p);
      return stream_fence();
    }
#pragma omp parallel num_threads(nt)
    {
      Scratch<Part> parts(nch);
#pragma omp for schedule(static) nowait
      for (int64_t r = 0; r < N; ++r) row_serial(r, parts.p);
      stream_fence();
    }
  }

  // ---- columns (inner > 1): vectorised along inner, looping over C ----
  // A tile is kTile positions x C classes; each position's math depends on
  // nothing else, so tiling and threading cannot change results.
  // es: scratch for e = exp(x - max) of the tile (C x kTile), so the gradient
  // pass reads e back from cache instead of computing exp a second time.
  // Full: kTile positions, a compile-time trip count (registers, no tails).
  template <bool Full> void tile(int64_t o, int64_t j0, A* es) const {
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
    for (int64_t c = 0; c < C; ++c) {
      const V wv = V::set1(wc(c));
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

  void tile_at(int64_t it, int64_t per, A* es) const {
    const int64_t o = it / per, j0 = (it % per) * kTile;
    if (I - j0 >= kTile) tile<true>(o, j0, es);
    else tile<false>(o, j0, es);
  }

  void columns(int nt) {
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

  double run(int threads) {
    const int64_t work = N * C * I;
    const int nt = work < kSerialWork ? 1 : threads;
    if (I == 1) {
      rows(nt);
    } else {
      columns(nt);
    }
    return pos_loss ? ordered_sum(pos_loss, N * I) : 0.0;
  }
};

template <class S>
CrossEntropyResult cross_entropy_typed(const CrossEntropyProblem& pr, int threads) {
  using A = acc_t<S>;
  CrossEntropyResult res{0.0, -1};
  const int64_t npos = pr.outer * pr.inner;
  const A* w = static_cast<const A*>(pr.weight);
  const int64_t* tgt = pr.target_index;
  // Pre-pass over targets: first invalid one, and the mean's denominator.
  double denom = double(npos);
  if (tgt) {
    denom = 0;
    for (int64_t i = 0; i < npos; ++i) {
      const int64_t t = tgt[i];
      if (t == pr.ignore_index) continue;
      if (t < 0 || t >= pr.classes) {
        res.bad_target_position = i;
        return res;
      }
      denom += w ? double(w[t]) : 1.0;
    }
  }
  CrossEntropy<S> k{};
  k.x = static_cast<const S*>(pr.input);
  k.q = static_cast<const S*>(pr.target_prob);
  k.tgt = tgt;
  k.w = w;
  k.g = static_cast<S*>(pr.grad_input);
  k.N = pr.outer;
  k.C = pr.classes;
  k.I = pr.inner;
  k.ignore = pr.ignore_index;
  const double eps = pr.label_smoothing;
  k.one_m_eps = static_cast<A>(1.0 - eps);
  k.eps_c_d = pr.classes > 0 ? eps / double(pr.classes) : 0.0;
  k.eps_c = static_cast<A>(k.eps_c_d);
  k.smooth = eps > 0;
  k.wsum = double(pr.classes);
  if (w) {
    k.wsum = 0;
    for (int64_t c = 0; c < pr.classes; ++c) k.wsum += double(w[c]);
  }
  k.red = pr.reduction;
  k.go_arr = static_cast<const A*>(pr.grad_output);
  k.go_scalar = pr.reduction == Reduction::Mean ? pr.grad_output_scalar / denom : pr.grad_output_scalar;
  // Weighted mean over zero total weight: torch's loss and gradient are NaN
  // (0/0) on every row that is not ignored.
  if (pr.reduction == Reduction::Mean && denom == 0) k.go_scalar = std::numeric_limits<double>::quiet_NaN();
  k.stream = pr.grad_input && pr.outer * pr.classes * pr.inner * int64_t(sizeof(S)) >= kStreamBytes;
  k.loss_out = static_cast<A*>(pr.loss);
  Scratch<double> pos(pr.reduction == Reduction::None ? 0 : npos);
  k.pos_loss = pr.reduction == Reduction::None ? nullptr : pos.p;
  if (npos > 0 && pr.classes > 0) {
    const double total = k.run(threads);
    if (pr.reduction == Reduction::Sum) res.loss = total;
    if (pr.reduction == Reduction::Mean) res.loss = denom == 0 ? std::numeric_limits<double>::quiet_NaN() : total / denom;
  } else if (pr.reduction == Reduction::Mean) {
    res.loss = 0.0 / denom;  // NaN: mean over nothing
  }
  return res;
}

inline CrossEntropyResult cross_entropy(const CrossEntropyProblem& pr, int threads) {
  switch (pr.dtype) {
    case DType::Float64: return cross_entropy_typed<double>(pr, threads);
    case DType::Float16: return cross_entropy_typed<Half>(pr, threads);
    case DType::BFloat16: return cross_entropy_typed<BF16>(pr, threads);
    default: return cross_entropy_typed<float>(pr, threads);
  }
}
