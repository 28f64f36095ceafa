// Helpers every loss family shares: heap scratch, fixed-order sums, the
// streaming-store thresholds and writer.
//
// Included inside a per-ISA namespace (kernels_isa.cpp) after simd/math.h,
// before the loss headers; includes nothing itself.
#pragma once

// Elementwise losses and nll_loss (one contiguous run of stores a thread):
// outputs this big bypass the caches.
constexpr int64_t kStreamBytes = int64_t(64) << 20;

// Row kernels (cross-entropy and kl_div_with_logits rows, multi_margin_loss):
// a gradient of kStreamRowsBytes or more bypasses the caches when its rows hold
// at least kStreamRowMinBytes. A row's run of streaming stores begins and ends
// inside a cache line (and cross-entropy's breaks around the target's step;
// multi_margin_loss writes the target's value after it), and a partly written
// line leaves the write-combining buffer as a partial write; in short rows they
// come often enough that streaming measured slower than cached stores.
// Measured (cross-entropy fwd+grad, float32, AVX2 Zen 3 with a 32 MiB L3, 2
// threads, streamed against cached stores): C = 256, 600, 1000, 1500 at 37-125
// MiB 1.3-1.9x the time; C = 2000-8192 at 31-32 MiB 0.8-0.95x; C = 2048 at 16
// MiB 0.93-1.4x (logits and gradient fit in L3 together), hence 24 MiB.
constexpr int64_t kStreamRowsBytes = int64_t(24) << 20;
constexpr int64_t kStreamRowMinBytes = int64_t(6) << 10;
inline bool stream_rows(int64_t rows, int64_t row_bytes) {
  return row_bytes >= kStreamRowMinBytes && rows * row_bytes >= kStreamRowsBytes;
}

// Column kernels (cross-entropy over (N, C, d1..dk)): a gradient of
// kStreamColumnsBytes or more bypasses the caches, its tiles shifted onto the
// 64-byte grid so that every streamed line is written whole (a line written in
// parts leaves the write-combining buffer as partial writes, slower than cached
// stores; cached stores read each line before writing it). Only where it can
// be: float or double, each class's row a whole number of lines, and a tile
// (tile_bytes) at least a line, so the first tile's lanes before the grid fit
// in it (not on the scalar baseline, whose tile of 8 lanes is shorter).
// Measured (fwd+grad, float32, AVX2 Zen 3, 1 and 2 threads, median of 30
// alternating pairs, the same bits): 8x21x16384 (11 MB) 0.81-0.87x the time,
// 4x150x4096 (9.8 MB) 0.80-0.86x; 2x21x16384 (2.75 MB) 0.98-1.04x, 1x21x16384
// (1.4 MB, in L2 + L3) 1.36-1.45x, hence 4 MiB.
constexpr int64_t kStreamColumnsBytes = int64_t(4) << 20;
template <class S> inline bool stream_columns(const S* g, int64_t total, int64_t inner, int64_t tile_bytes) {
  return sizeof(S) >= 4 && tile_bytes >= 64 && total * int64_t(sizeof(S)) >= kStreamColumnsBytes &&
         inner * int64_t(sizeof(S)) % 64 == 0 && lanes_past_grid<64>(g) >= 0;
}

// Heap scratch without std:: templates ([Note ODR across ISA builds], kernels_isa.cpp),
// from the calling thread's kept blocks where one fits (scratch_pool.cpp).
// Allocation failure throws std::bad_alloc (MemoryError in Python), so it is
// never constructed inside a parallel region, where an exception cannot leave.
template <class T> struct Scratch {
  size_t capacity = 0;  // (before p: p's initialiser sets it)
  T* p;
  explicit Scratch(int64_t n)
      : p(static_cast<T*>(::fusedloss::scratch_acquire(sizeof(T) * static_cast<size_t>(n > 0 ? n : 1), capacity))) {
    if (!p) throw std::bad_alloc();
  }
  ~Scratch() { ::fusedloss::scratch_release(p, capacity); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T& operator[](int64_t i) { return p[i]; }
};

// Writes a run of contiguous full vectors, bypassing the caches when
// `stream`: a vector on the 64-byte grid goes out as it is; a run whose
// vectors sit `delta` lanes off the grid (NumPy's big arrays are 16-byte
// aligned) has each result wait one vector and go out joined with the next
// (stream_join), the run's two ends through masked stores; Half / BF16, or
// stream off: plain stores. Call flush() before any other store into the run,
// at its end, and before the run skips ahead; stream_fence() once the
// thread's streaming is done.
template <class S> struct StreamWriter {
  using V = vec_t<S>;
  static constexpr int W = int(V::W);
  bool stream;
  int delta;  // lanes off the grid, or -1: no joined streaming
  bool pend = false;
  V prev = V::set1(0);
  S* prev_p = nullptr;

  StreamWriter(bool stream_, const S* start) : stream(stream_), delta(stream_ && start ? stream_delta(start) : -1) {}
  void put(S* p, V v) {
    if (delta > 0) {
      if (pend) stream_join(p - delta, prev, v, delta);
      else store_lanes(p, v, 0, W - delta);
      prev = v, prev_p = p, pend = true;
    } else if (!(stream && vstream(p, v))) {
      vstore(p, v);
    }
  }
  void flush() {
    if (pend) store_lanes(prev_p, prev, W - delta, W);
    pend = false;
  }
  // body(put) with put(p, v) the one store form this writer's mode needs
  // (stores; streaming stores on the grid; shifted joins), the state in a
  // local copy, written back after: in a loop the stores cannot alias it.
  template <class Body> void with_put(Body&& body) {
    StreamWriter w = *this;
    if (w.delta > 0) body([&w](S* at, V v) { w.put(at, v); });
    else if (w.stream && w.delta == 0) body([](S* at, V v) { vstream(at, v); });
    else body([](S* at, V v) { vstore(at, v); });
    *this = w;
  }
};

inline int64_t kMin(int64_t a, int64_t b) { return a < b ? a : b; }

// Lanes [0, n) of a V (n < W: a tail vector's real lanes, before its pads).
template <class V> inline auto first_lanes(int64_t n) {
  using A = typename V::T;
  alignas(64) A lane[V::W];
  for (int64_t k = 0; k < V::W; ++k) lane[k] = A(k);
  return lt(V::load(lane), V::set1(A(n)));
}

// e^a (a <= 0 or NaN) for a vector whose lanes from n on are pads (-inf
// included): they read 0, so that exp keeps its fast path, and come out 0. A
// -inf pad sent each row's last vector through the slow path, whose underflow
// to 0 takes a microcode assist on Intel (rows of 100 classes on AVX2 ran at
// 3.7x the AVX-512 path's time).
template <class V> inline V vexp_nonpos_first(V a, int64_t n) {
  if (n >= V::W) return vexp_nonpos(a);
  const auto real = first_lanes<V>(n);
  return select(real, vexp_nonpos(select(real, a, V::set1(0))), V::set1(0));
}

// Sum of at(i) over [lo, hi) in a fixed order (it depends on the range only):
// halves down to blocks of at most 128, each summed with four interleaved
// accumulators. The error grows with log2(n), not n: float64 per-position
// losses over 1e6 positions and weighted-mean denominators, where one running
// sum was 1e-14 / 1e-11 off, come to torch's ~1e-16.
template <class F> double pairwise_sum(int64_t lo, int64_t hi, const F& at) {
  if (hi - lo > 128) {
    const int64_t mid = lo + (hi - lo) / 2;
    return pairwise_sum(lo, mid, at) + pairwise_sum(mid, hi, at);
  }
  double s[4] = {0, 0, 0, 0};
  int64_t i = lo;
  for (; i + 4 <= hi; i += 4)
    for (int k = 0; k < 4; ++k) s[k] += at(i + k);
  for (; i < hi; ++i) s[0] += at(i);
  return (s[0] + s[1]) + (s[2] + s[3]);
}
inline double ordered_sum(const double* v, int64_t n) {
  return pairwise_sum(0, n, [v](int64_t i) { return v[i]; });
}

