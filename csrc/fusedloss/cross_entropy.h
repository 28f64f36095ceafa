// Fused softmax cross-entropy: loss and gradient in one pass over memory.
//
// Included inside a per-ISA namespace after simd/math.h. The input is viewed
// as outer x C x inner. inner == 1: a row per sample, vectorised along C
// (rows, cross_entropy_rows.h). inner > 1: vectorised along inner, looping
// over C on a tile of positions that stays in cache (columns,
// cross_entropy_columns.h); no transpose copy. This file: the shared per-row
// state, the loss/gradient formulas, and the entry point.
//
// [Note logit transform]: with logit_scale s and softcap cap the softmax runs
// on z = s x, or z = cap tanh(x s / cap), computed where x is loaded (zof),
// never stored to memory. The gradient w.r.t. x is the one w.r.t. z times
// dz/dx = s (1 - t^2), t = tanh(x s / cap): s folds into the gradient
// coefficients (coefs(), gs), 1 - t^2 multiplies each element (dtanh). Capped,
// pass 1 keeps t in scratch (tb; the columns' tile keeps t in place of z) so
// tanh runs once per element where the row's e scratch exists, else pass 2
// recomputes it. z-loss (lse_square_scale) only changes the per-position
// coefficients: loss + lam LSE^2, p's coefficient + 2 lam LSE (LSE = M + lse).
//
// Row math is fixed by shape alone, never by the thread count: a row is cut
// into kChunk-element chunks, each giving a partial (max, exp-sum) and a
// partial loss; partials are combined in chunk order in double. Threads only
// decide who computes which chunk or row, so results are bitwise identical
// for any thread count.
#pragma once

constexpr int64_t kSerialWork = 1 << 15;  // below this many elements: no parallel region
constexpr int64_t kFlushClasses = 16;     // column tiles: classes per float partial sum

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
  double eps_c_d;           // eps / C in double
  // Smoothing's share of p's coefficient, eps / C times the weights' sum: 0
  // without smoothing whatever the weights (0 * NaN would spread a NaN or inf
  // weight of a class that no row targets to every row's gradient; torch's
  // stays finite).
  double eps_wsum;
  bool smooth;              // eps > 0
  Reduction red;
  const A* go_arr;          // per-position upstream gradient (None), or nullptr
  double go_scalar;         // upstream gradient, already / D for Mean
  bool stream;              // gradient bigger than the caches (stream_rows, stream_columns): non-temporal stores
  int64_t lead;             // columns: positions before the first whole tile (streaming: on the line grid)
  A* loss_out;              // per-position loss, or nullptr
  double* pos_loss;         // per-position loss for the reduction, or nullptr
  // [Note logit transform]
  bool xf, capped;          // any transform; softcap set
  A zmul, cap;              // x's multiplier (s, or s / cap), the cap
  double gs;                // dz/dx's constant factor (1 without a transform)
  bool zloss;               // lse_square_scale > 0
  double lam;               // lse_square_scale
  A* lse_out;               // per-position logsumexp(z), or nullptr

  // What a row/position needs between the passes.
  struct Pos {
    bool valid;
    int64_t t;
    // log p_c = (x_c - M) - lse: formed from the max-shifted logit, as torch
    // does, so the rounding is that of small numbers, not of |M| (~1000).
    // bt: the whole [c == t] coefficient, b + cw w_t, formed in double as p's
    // coefficient a is, so that one class (C = 1, or every other weight 0)
    // gives p a - bt = 0 exactly, as torch's softmax - 1 does.
    A xt, wt, lse, cw, bt;  // lse here is log(sum exp(x - M)); grad = p*a - cw*w_c*(q'_c) - bt*[c == t]
    A M, ra;                  // rows: row max, a / S (p*a = exp(x - M) * ra)
    A rt, rz;                 // ra's parts for the target lane (target_grad): without z-loss, and z-loss's
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
      if (xf) p.xt = zscalar(p.xt);
      p.wt = wc(p.t);
    }
    p.go = red == Reduction::None && go_arr ? double(go_arr[i]) : go_scalar;
    return p;
  }

  // Index targets' coefficients, in double before their cast (coefs() and the
  // column tiles): p's, go (w_t (1 - eps) + eps / C sum w), and the target
  // lane's whole term, go (w_t (1 - eps) + eps / C w_t). One class makes them
  // the same expression, hence bit for bit equal (Pos::bt).
  double p_coef(double go, double wt) const { return go * (double(one_m_eps) * wt + eps_wsum); }
  double target_coef(double go, double wt) const { return go * (double(one_m_eps) * wt + eps_c_d * wt); }

  // Gradient coefficients once the sums (and Q for probability targets) are
  // known, M and lse included: w.r.t. x, so times gs ([Note logit transform]).
  void coefs(Pos& p, double sum = 1) const {
    const double go = p.go * gs;
    double a;
    if (tgt) {
      a = p_coef(go, p.wt);
      p.bt = static_cast<A>(target_coef(go, p.wt));
      p.cw = static_cast<A>(go * eps_c_d);
    } else {
      // From go as rounded into cw: p a and cw w_c q'_c are then the same
      // product where p is 1 (C = 1, or one confident class), and cancel
      // exactly, as in torch's softmax sum(w q) - w q.
      p.cw = static_cast<A>(go);
      a = double(p.cw) * p.Q;
    }
    const PCoef r = p_over_sum(a, zloss ? zloss_coef(go, p.M, p.lse) : 0.0, sum);
    p.ra = r.ra, p.rt = r.rt, p.rz = r.rz;
  }
  // z-loss's share of p's coefficient: d(lam LSE^2)/dz = 2 lam LSE p.
  double zloss_coef(double go, A M, A lse) const { return go * (2 * lam) * (double(M) + double(lse)); }
  // p's coefficient over the exp-sum, from a and z-loss's share az (coefs()
  // and the column tiles): whole (ra, every lane) and in the target lane's two
  // parts (rt, rz: [Note z-loss target lane]).
  struct PCoef { A ra, rt, rz; };
  PCoef p_over_sum(double a, double az, double sum) const {
    const A ra = static_cast<A>((zloss ? a + az : a) / sum);  // (not a + 0.0: a -0 stays -0)
    return {ra, zloss ? static_cast<A>(a / sum) : ra, static_cast<A>(az / sum)};
  }

  // [Note z-loss target lane]: the target lane's gradient, e rt - b, plus e rz
  // with z-loss. z-loss's share of p's coefficient (rz) stays apart from the
  // rest (rt), as in torch's sum of the two gradients: folded into one float
  // coefficient it was rounded to the ulp of w_t, which then survived the
  // cancellation e rt - b where p rounds to 1 (C = 1, confident rows), an
  // absolute error of 6e-8 in float32 on a term of size 2 lam LSE. Elsewhere
  // the sum of the two (ra) is used: no cancellation there.
  V target_grad(V e, V rt, V rz, V b) const {
    const V g = fmsub(e, rt, b);
    return zloss ? fmadd(e, rz, g) : g;
  }

  // The z-loss term and lse_out of a position with log-sum-exp M + lse.
  double zloss_term(A M, A lse) const {
    const double L = double(M) + double(lse);
    return zloss ? lam * L * L : 0.0;
  }
  // An infinite max is the log-sum-exp itself, as torch.logsumexp gives it (the
  // exp-sum relative to it is inf - inf = NaN, or 0 / 0 for all -inf), unless
  // the position has a NaN, which the max skips: then NaN, found by reading the
  // logits again (such positions only; an in-place gradient has overwritten
  // them, so there NaN stays, as the loss is).
  void store_lse(int64_t i, bool valid, A M, A lse) const {
    if (!lse_out) return;
    double L = double(M) + double(lse);
    if ((M == std::numeric_limits<A>::infinity() || M == -std::numeric_limits<A>::infinity()) &&
        static_cast<const void*>(g) != static_cast<const void*>(x) && !has_nan(i))
      L = double(M);
    lse_out[i] = valid ? static_cast<A>(L) : std::numeric_limits<A>::quiet_NaN();
  }
  bool has_nan(int64_t i) const {  // position i's logits (a row, or a column I apart)
    const S* xp = x + (i / I) * C * I + i % I;
    for (int64_t c = 0; c < C; ++c)
      if (to_acc(xp[c * I]) != to_acc(xp[c * I])) return true;
    return false;
  }

  // [Note logit transform]: z (and t, when capped) from loaded logits.
  V zof(V xv, V& t) const {
    if (!capped) return xv * V::set1(zmul);
    t = vtanh(xv * V::set1(zmul));
    return t * V::set1(cap);
  }
  V zof(V xv) const {
    V t = xv;
    return zof(xv, t);
  }
  A zscalar(A xv) const { return lane0(zof(V::set1(xv))); }  // the vector path's bits
  V zof_t(V t) const { return t * V::set1(cap); }           // z from a kept t
  static V dtanh(V t) { return V::set1(1) - t * t; }        // dz/dx / s

  V qprime(V qv) const { return fmadd(qv, V::set1(one_m_eps), V::set1(eps_c)); }

  void store_loss(int64_t i, double l) const {
    if (loss_out) loss_out[i] = static_cast<A>(l);
    if (pos_loss) pos_loss[i] = l;
  }

  void finish(int64_t i, const Pos& p, double acc) const {
    double l = 0;
    if (p.valid) {
      if (tgt) {
        l = double(one_m_eps) * p.wt * (double(p.lse) - double(p.xt - p.M));
        if (smooth) l -= eps_c_d * acc;
      } else {
        l = -acc;
      }
      if (zloss) l += zloss_term(p.M, p.lse);
    }
    store_lse(i, p.valid, p.M, p.lse);
    store_loss(i, l);
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
  // A whole tile's gradient vector: streamed where the gradient streams
  // (columns() puts whole tiles on the 64-byte grid then), else stored.
  static void stg(S* p, V v, bool streamed) {
    if (!(streamed && vstream(p, v))) vstore(p, v);
  }
  static void zero(S* p, int64_t n) {
    for (int64_t c = 0; c < n; c += W) stx(p + c, n - c, V::set1(0));
  }

  // ---- rows (inner == 1): vectorised along C ----
  // A row is swept in steps of 4 vectors, chunk by chunk. Pass 1 finds the
  // chunk's max m, then (the chunk now in L1) e = exp(x - m) and its sum, and
  // may store e in scratch; pass 2 writes grad = e * exp(m - M) * a/S - ...
  // reading e back from cache: one exp per element plus one per chunk. (m may
  // instead be a shift known before the max: [Note fixed shift]; then the max
  // comes with the exps.)
  // Without scratch (huge rows, chunk-parallel mode) pass 2 recomputes the
  // very same e from x and m, so both give the same bits.
  static constexpr int64_t kStep = 4 * W;
  // Positions per column tile (inner > 1): four vectors where the ISA has 32
  // vector registers, so that a tile's per-position vectors (max, min, sums,
  // target lanes) stay in them. With 16, eight: a few of them spill, but more
  // independent vectors per class measured faster on AVX2 (Zen 3, 1 thread,
  // fwd+grad: 1x21x4096 0.92-0.97x the time of four, 4x150x16384 0.87x).
  static constexpr int64_t kTile = (kVecRegisters >= 32 ? 4 : 8) * W;
  // Elements of a row reduced as one unit (its max, the shift of its exps);
  // chunks are combined in double.
  static constexpr int64_t kChunk = 128 * kStep;
  // One chunk's shift m of its exps (its max, or a shift chosen before it:
  // [Note fixed shift]), their sum s (rel. to m), its max of z top, and sum w q'.
  struct Part { A m; double s; A top; double q; };
  // [Note fixed shift]: capped logits lie in [-cap, cap], so for a cap up to
  // kFixedShiftCap exp(z - shift) is normal for any z and any shift among them
  // (e^+-80 in float): pass 1 of an index-target row takes the max of its
  // first step's z as its shift and finds the max during the exps, with no
  // pass for the max alone (that pass was a third of a capped row's time;
  // with tanh a step at a time, fwd+grad 1024x32000 softcap 30 took
  // 0.77-0.82x the time on AVX2, 128x128256 0.82x, 4096x1000 0.90x). Accepted
  // where z - shift <= kShiftLead (below), else the exact way:
  // combine() rescales the sums to the true max in double,
  // so lse, the loss and log p keep the max-shifted forms, pass 2 multiplies
  // by exp(shift - M) <= 1 rounded once with a / S, and z - shift is exact
  // near the max (the cap itself as the shift would leave z - cap ~ -20 to
  // -60, rounded to 2e-6: p at twice torch's error at softcap 30).
  static constexpr A kFixedShiftCap = sizeof(A) == 4 ? A(40) : A(320);
  // A shift chosen before the max is accepted where every z - shift <=
  // kShiftLead (each e <= e^20, the sums far from overflow); else the chunk
  // runs again the exact way (max, then exps). A lead shift for plain rows
  // (the max of a chunk's first step, the chunk's max found during the exps)
  // saved forward-only 1024x32000 8-9% of its time on AVX2, but where the
  // chunk's max lies far above that shift, x - shift is rounded for the
  // logits near it (whose p matter): the gradient reached 4x torch's float32
  // error at C = 5000. The capped logits' fixed shift measured no less
  // accurate than the exact way (tanh's rounding dominates there).
  static constexpr A kShiftLead = A(20);
  bool fixed_shift() const { return capped && cap <= kFixedShiftCap; }
  // The single-accumulator sums of a chunk (sum w q', the smoothing / probability
  // loss) go into double every kFlushSteps steps, 32 terms per lane: running
  // over a whole chunk (512 per lane) they lost up to ~1e-5 at C = 8192.
  static constexpr int64_t kFlushSteps = 8;
  static bool last_of_flush_block(int64_t c, int64_t c0) { return (c - c0) / kStep % kFlushSteps == kFlushSteps - 1; }
  // The exp-sum's four accumulators, added into d at the end of each flush
  // block: 8 terms per lane. Kept in float over a whole chunk (128 per lane)
  // the sum was within ~1e-6, 8 ULP of p where one logit dominates (gradient
  // 1.8x torch's float32 error at C = 2049).
  FUSEDLOSS_ALWAYS_INLINE static void flush_sums(V* s, double& d) {
    d += double(hsum((s[0] + s[1]) + (s[2] + s[3])));
    for (int k = 0; k < 4; ++k) s[k] = V::set1(0);
  }
  // Loops over steps that flush: an outer loop over flush blocks (counted
  // from c0) and an inner one over a block's steps up to block_end(), then
  // flush_sums() where block_done(); a test per step took forward-only
  // 1024x32000 1.01-1.03x the time on AVX2.
  static int64_t block_end(int64_t c0, int64_t c, int64_t e) {
    constexpr int64_t kBlock = kFlushSteps * kStep;
    return kMin(e, c0 + ((c - c0) / kBlock + 1) * kBlock);
  }
  static bool block_done(int64_t c0, int64_t c) { return (c - c0) % (kFlushSteps * kStep) == 0; }

  // Loads [c, c + kStep); lanes at or past c1 read as pad.
  void load_step(const S* p, int64_t c, int64_t c1, A pad, V* v) const {
    if (c + kStep <= c1) {
      for (int k = 0; k < 4; ++k) v[k] = vload(p + c + k * W);
    } else {
      for (int k = 0; k < 4; ++k) v[k] = ldx(p + c + k * W, c1 - c - k * W, pad);
    }
  }
  // load_step of z ([Note logit transform]), t into t[] when given. x's pads
  // read as 0, so z's and t's are 0 (finite for pass 2's sums), then the
  // lanes at or past c1 of z are set to -inf (pass 1's max and exp-sum).
  // zof's bits, with tanh a step at a time (vtanh_n); t is x when not capped.
  void load_step_z(const S* p, int64_t c, int64_t c1, V* z, V* t) const {
    load_step(p, c, c1, A(0), z);
    for (int k = 0; k < 4; ++k) {
      if (t && !capped) t[k] = z[k];
      z[k] = z[k] * V::set1(zmul);
    }
    if (capped) {
      vtanh_n<4>(z);
      for (int k = 0; k < 4; ++k) {
        if (t) t[k] = z[k];
        z[k] = z[k] * V::set1(cap);
      }
    }
    pad_step(c, c1, z);
  }
  void pad_step(int64_t c, int64_t c1, V* z) const {
    if (c + kStep <= c1) return;
    const V ninf = V::set1(-std::numeric_limits<A>::infinity());
    for (int k = 0; k < 4; ++k) {
      const int64_t n = c1 - c - k * W;
      if (n < W) z[k] = n <= 0 ? ninf : select(first_lanes<V>(n), z[k], ninf);
    }
  }
  static V max4(const V* v) { return vmax(vmax(v[0], v[1]), vmax(v[2], v[3])); }

  // tb: t scratch for [c0, c1) (indexed from c0), capped only: pass 1 fills
  // it; pass 2 reads it when given (else recomputes t from x).
  Part chunk_stats(const S* xr, const S* qr, int64_t c0, int64_t c1, A* es, A* tb) const;
  template <bool kZ>
  Part chunk_stats_as(const S* xr, const S* qr, int64_t c0, int64_t c1, A* es, A* tb, bool exact = false) const;
  // Pass 1's max and exp-sums over full steps of index-target rows (see
  // chunk_stats); vectors in and out by value, so that the caller's stay in
  // registers (a pointer to them made its loops keep them in memory).
  struct Quad { V v[4]; };
  struct MaxMin { Quad mx; V lo; };
  template <class Z>
  FUSEDLOSS_NOINLINE MaxMin max_steps(Z z, int64_t c0, int64_t e) const;
  template <int kHint, bool kInRange, class Z>
  FUSEDLOSS_NOINLINE Quad exp_sums(Z z, int64_t c0, int64_t c, int64_t e, V m, A* es, Quad sum,
                                   const char* ahead, double* sd) const;
  template <int kHint, class Step>
  FUSEDLOSS_ALWAYS_INLINE Quad shifted_exp_sums(Step step, int64_t c0, int64_t c, int64_t e, A* es, Quad sum,
                                                const char* ahead, double* sd) const;
  template <int kHint>
  FUSEDLOSS_NOINLINE Quad capped_exp_sums(const S* xr, int64_t c0, int64_t c, int64_t e, V m, A* es, A* tb,
                                          Quad sum, const char* ahead, double* sd, V* top) const;

  // kSmoothRuns: rows with label smoothing and index targets, their common steps
  // by grad_run_smooth (an instantiation of their own: with that branch in the
  // plain rows' code, they measured 5-10% slower at C = 1000 on AVX-512).
  template <bool kSmoothRuns = false>
  double chunk_grad(const S* xr, const S* qr, S* gr, int64_t c0, int64_t c1, const Pos& p, A cm, const A* es,
                    const A* tb, const S* pf = nullptr) const;
  // Pass 2's common steps [c, e) with e in scratch (see chunk_grad).
  template <bool kCapped>
  void grad_run(const A* es, const A* tb, int64_t c0, S* gr, int64_t c, int64_t e, V F, const S* pf,
                StreamWriter<S>& out) const;
  // The same for index-target rows with label smoothing, adding their loss term
  // to the running sums (returned: chunk_grad's loop keeps its own in registers).
  struct LossSums { V acc; double accd; };
  template <bool kCapped>
  FUSEDLOSS_NOINLINE LossSums grad_run_smooth(const S* xr, const A* es, const A* tb, int64_t c0, S* gr, int64_t c,
                                              int64_t e, V F, const Pos& p, LossSums sums, const S* pf,
                                              StreamWriter<S>& out) const;

  void combine(Pos& p, const Part* parts, int64_t nch) const {
    A mx = parts[0].top;
    for (int64_t k = 1; k < nch; ++k) mx = parts[k].top > mx ? parts[k].top : mx;
    double s = 0, qs = 0;
    bool top_done = false;
    for (int64_t k = 0; k < nch; ++k) {
      const Part& pk = parts[k];
      if (!top_done && pk.top == mx && pk.m != mx) {
        // The (first) chunk holding the row's max, its exps shifted by m:
        // the max's own e^(top - m) e^(m - M) counts as exactly 1, as in
        // sum exp(x - M), and only the rest of the chunk's sum is rescaled.
        // Else that e's rounding (an ULP) stayed in S, hence in lse, the
        // loss and p: where one logit dominates (p near 1), 6e-8 in float
        // on a loss and a target gradient of 1e-10 (torch's sum keeps its 1).
        // et: that e as the sums took it (exp_sums' bits, vexp_nonpos's in
        // range; a shifted chunk's top - m lies in [0, kShiftLead], finite).
        const A et = lane0(vexp_nonpos(V::set1(pk.top - pk.m)));
        s += (double(pk.s) - double(et)) * ::exp(double(pk.m) - double(mx)) + 1.0;
        top_done = true;
      } else {
        s += pk.m == mx ? double(pk.s) : double(pk.s) * ::exp(double(pk.m) - double(mx));
      }
      qs += pk.q;
    }
    p.M = mx;
    p.lse = static_cast<A>(::log(s));
    p.Q = qs;
    coefs(p, s);
  }

  int64_t chunks() const { return (C + kChunk - 1) / kChunk; }
  bool need_pass2() const { return g || smooth || q; }

  // Scratch for e: only while it stays in L2 with the row.
  bool use_scratch() const { return g && C * int64_t(sizeof(A)) <= (int64_t(1) << 18); }
  int64_t padded() const { return (C + kStep - 1) / kStep * kStep; }
  int64_t scratch_len() const { return use_scratch() ? padded() : 0; }
  int64_t chunk_end(int64_t c0) const { return c0 + kMin(kChunk, C - c0); }

  void row_serial(int64_t r, Part* parts, A* tb) const;
  void rows_pipelined(int64_t r0, int64_t r1, Part* pbuf, A* sbuf, A* tbuf) const;
  // C <= kSmallVectors * W: a row is at most 16 vectors, kept in registers or
  // L1, no chunk or step bookkeeping. Such rows are latency-bound, so rows go
  // in blocks of kRowBlock: per-row work is independent straight-line code the
  // CPU overlaps, and the long-latency steps (log, division) run once per block
  // as vectors. Chosen by shape alone. (16, not 8: rows of 9-16 vectors paid the
  // chunk path's per-row chain, max -> exp-sum -> log -> gradient, one row at a
  // time, about 250 cycles a row: 256x72 float32 on AVX2 took 2.9x the time of
  // 256x64, 256x136 on AVX-512 2.5x that of 256x128.)
  static constexpr int kRowBlock = 16;
  static constexpr int kSmallVectors = 16;
  // kPlain: index targets and nothing else (no weights, smoothing or
  // per-position upstream gradient), the common case: Pos's arithmetic
  // reduces to a few lines, kept in arrays instead (same bits).
  bool plain_rows() const { return tgt && !w && !smooth && !go_arr && !xf && !zloss && !lse_out; }
  template <int NV, bool kPlain> void rows_small(int64_t r0, int64_t r1) const;
  using SmallRows = void (CrossEntropy::*)(int64_t, int64_t) const;
  // rows_small<nv + 1, kPlain>, for nv in [0, kSmallVectors).
  template <bool kPlain, int... K> static SmallRows small_rows(int64_t nv, std::integer_sequence<int, K...>) {
    static constexpr SmallRows fns[] = {&CrossEntropy::template rows_small<K + 1, kPlain>...};
    return fns[nv];
  }

  // Medium rows: index targets without transform, z-loss or lse_out (class
  // weights, label smoothing and a per-row upstream gradient allowed, so that
  // weight ones give the unweighted bits, as in the small rows, and the loss
  // alone the bits of loss and gradient together), longer than the small rows and up
  // to kMediumRowBytes of A, the gradient not streamed. The small
  // rows' scheme with the length known at run time: the row's own max as the
  // shift, the logs and divisions once per block. The chunk path paid about
  // 1300 instructions a row beyond its elements' there (callgrind, AVX2 float32,
  // C = 136 and 1000: the lead shift's tests and rescaling, the partial step's
  // general loop, combine()'s double exp and log, one row's chain at a time).
  // In-process A/B against it (AVX2 Zen 3, float32 fwd+grad, 1 and 2 threads):
  // 1927x136 0.37-0.38x the time, 1024x256 0.47-0.57x, 512x512 0.66-0.73x,
  // 256x1000 0.78-0.87x, 4096x1000 0.87-0.94x, 128x2048 0.93-1.02x; forward
  // only 256x1000 and 4096x1000 0.87-0.90x.
  static constexpr int64_t kMediumRowBytes = int64_t(8) << 10;
  bool medium_rows() const {
    return tgt && !xf && !zloss && !lse_out && !stream && C > kSmallVectors * W &&
           C * int64_t(sizeof(A)) <= kMediumRowBytes;
  }
  // Rows a block: their e within kMediumBlockBytes, so that it stays in L1 for
  // the gradient pass, up to kRowBlock (blocks of 16 rows of 1000 floats, e in
  // L2, took 4096x1000 1.12-1.18x the chunk path's time).
  static constexpr int64_t kMediumBlockBytes = int64_t(16) << 10;
  int64_t medium_block() const {
    const int64_t rows = kMediumBlockBytes / (padded() * int64_t(sizeof(A)));
    return rows < 1 ? 1 : rows > kRowBlock ? kRowBlock : rows;
  }
  // eb: this thread's scratch for e, medium_block() rows of padded() each.
  void rows_medium(int64_t r0, int64_t r1, A* eb) const;
  double medium_smooth_row(const S* xr, const A* e, S* gr, const Pos& p) const;
  void rows_chunked(int nt);
  void rows(int nt);

  template <bool Full, bool kPlain> void tile(int64_t o, int64_t j0, int64_t nb, A* es) const;
  // Index targets whose every class is exact in A and in int32: a column tile
  // finds a position's target class with one vector compare per class.
  bool onehot_targets() const { return tgt && C <= (sizeof(A) == 8 ? int64_t(INT32_MAX) : int64_t(1) << 24); }
  // A column tile's row, kTile elements from p, asked for into L2 (kWrite: for
  // the gradient's stores).
  template <int kWrite> static void prefetch_tile_row(const S* p) {
    for (int64_t b = 0; b < kTile * int64_t(sizeof(S)); b += 64)
      __builtin_prefetch(reinterpret_cast<const char*>(p) + b, kWrite, 2);
  }
  // Whole tiles of one-hot index targets without smoothing, transform, z-loss
  // or lse_out: tile_lean, which returns false (having written nothing) where
  // a sum is NaN, for tile() to redo.
  bool lean_tile() const { return onehot_targets() && !q && !smooth && !xf && !zloss && !lse_out; }
  bool tile_lean(int64_t o, int64_t j0, A* es) const;

  // Column tiles per outer index: a first tile of `lead` positions (0: none),
  // then kTile at a time, the last one short where I ends.
  int64_t tiles_per_outer() const { return (lead > 0) + (I - lead + kTile - 1) / kTile; }
  // kPlain: logits as they are, index targets, no smoothing (most calls):
  // the tile's loops compiled without the tests for the other options.
  void tile_at(int64_t it, int64_t per, A* es) const {
    const int64_t o = it / per, k = it % per - (lead > 0);
    const int64_t j0 = k < 0 ? 0 : lead + k * kTile, nb = k < 0 ? lead : kMin(kTile, I - j0);
    const bool plain = !xf && !q && !smooth;
    if (nb == kTile && lean_tile() && tile_lean(o, j0, es)) return;
    if (nb == kTile) plain ? tile<true, true>(o, j0, nb, es) : tile<true, false>(o, j0, nb, es);
    else plain ? tile<false, true>(o, j0, nb, es) : tile<false, false>(o, j0, nb, es);
  }

  void columns(int nt);

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

#include "cross_entropy_rows.h"
#include "cross_entropy_columns.h"

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
    // Branch-free first (vectorises); the exact position only on failure.
    int64_t bad = 0, cnt = 0;
    for (int64_t i = 0; i < npos; ++i) {
      const int64_t t = tgt[i];
      const bool keep = t != pr.ignore_index;
      bad |= int64_t(keep & ((t < 0) | (t >= pr.classes)));
      cnt += int64_t(keep);
    }
    if (bad) {
      for (int64_t i = 0; i < npos; ++i) {
        const int64_t t = tgt[i];
        if (t != pr.ignore_index && (t < 0 || t >= pr.classes)) {
          res.bad_target_position = i;
          return res;
        }
      }
    }
    denom = double(cnt);  // unweighted: a count, exact (as the sum of ones was)
    if (w) {
      const int64_t ignore = pr.ignore_index;
      denom = pairwise_sum(0, npos, [tgt, w, ignore](int64_t i) { return tgt[i] != ignore ? double(w[tgt[i]]) : 0.0; });
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
  const double wsum =
      w ? pairwise_sum(0, pr.classes, [w](int64_t c) { return double(w[c]); }) : double(pr.classes);
  k.eps_wsum = k.smooth ? k.eps_c_d * wsum : 0.0;
  k.red = pr.reduction;
  k.go_arr = static_cast<const A*>(pr.grad_output);
  // A mean over zero total weight. Every target weight 0 (or every target
  // ignored): torch's loss and gradient are 0/0 = NaN on every row that is not
  // ignored. Weights that cancel (negative ones): torch divides by 0, +-inf or
  // NaN, and so does this (with label smoothing torch divides its two terms
  // separately, this their sum).
  bool nothing_weighed = denom == 0;
  if (nothing_weighed && tgt && w)
    for (int64_t i = 0; i < npos && nothing_weighed; ++i)
      nothing_weighed = tgt[i] == pr.ignore_index || w[tgt[i]] == A(0);
  if (pr.reduction == Reduction::Mean && nothing_weighed) denom = std::numeric_limits<double>::quiet_NaN();
  k.go_scalar = pr.reduction == Reduction::Mean ? pr.grad_output_scalar / denom : pr.grad_output_scalar;
  if (pr.inner == 1) {
    k.stream = pr.grad_input && stream_rows(pr.outer, pr.classes * int64_t(sizeof(S)));
  } else {
    // Columns: whole tiles start where the gradient's rows cross the line grid.
    k.stream = pr.grad_input &&
               stream_columns(k.g, npos * pr.classes, pr.inner, CrossEntropy<S>::kTile * int64_t(sizeof(S)));
    const int64_t past = k.stream ? lanes_past_grid<64>(k.g) : 0;
    k.lead = past ? 64 / int64_t(sizeof(S)) - past : 0;
  }
  k.loss_out = static_cast<A*>(pr.loss);
  k.capped = pr.softcap > 0;
  k.xf = k.capped || pr.logit_scale != 1.0;
  k.zmul = static_cast<A>(k.capped ? pr.logit_scale / pr.softcap : pr.logit_scale);
  k.cap = static_cast<A>(pr.softcap);
  // dz/dx of the function computed (z = zmul x, or cap tanh(zmul x)).
  k.gs = !k.xf ? 1.0 : k.capped ? double(k.cap) * double(k.zmul) : double(k.zmul);
  k.lam = pr.lse_square_scale;
  k.zloss = k.lam > 0;
  k.lse_out = static_cast<A*>(pr.lse_out);
  Scratch<double> pos(pr.reduction == Reduction::None ? 0 : npos);
  k.pos_loss = pr.reduction == Reduction::None ? nullptr : pos.p;
  if (npos > 0 && pr.classes > 0) {
    const double total = k.run(threads);
    if (pr.reduction == Reduction::Sum) res.loss = total;
    if (pr.reduction == Reduction::Mean) res.loss = total / denom;
  } else if (pr.reduction == Reduction::Mean) {
    res.loss = std::numeric_limits<double>::quiet_NaN();  // mean over nothing
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
