// Kernel timings against memory floors, side by side, without Python.
// Floors: g = 1.5 * x (read + write), sum(x) (read), g = x + t (read 2, write 1),
// each an OpenMP loop with the same thread count. Cross-entropy with the LLM
// options (scale + softcap + z-loss) is timed against plain cross-entropy,
// kl_div_logits against g = x + t. Not built by the package:
//   F="-O3 -std=c++17 -fopenmp -fno-math-errno -Icsrc -DFUSEDLOSS_X86=1"
//   K=csrc/fusedloss/kernels_isa.cpp
//   g++ $F -DFUSEDLOSS_ISA=baseline -c $K -o b.o
//   g++ $F -DFUSEDLOSS_ISA=avx2 -DFUSEDLOSS_ISA_AVX2=1 -mavx2 -mfma -mf16c -c $K -o a2.o
//   g++ $F -DFUSEDLOSS_ISA=avx512 -DFUSEDLOSS_ISA_AVX512=1 -mavx512f -mavx512bw -mavx512dq -mavx512vl -mavx2 -mfma -mf16c -c $K -o a5.o
//   g++ $F csrc/tests/bench_kernels.cpp csrc/fusedloss/dispatch.cpp b.o a2.o a5.o -o bench && ./bench
#include <omp.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "fusedloss/dispatch.h"

using namespace fusedloss;

template <class F> double best(F&& f, int reps = 9) {
  f();
  double b = 1e30;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    b = s < b ? s : b;
  }
  return b;
}

static double floor_rw(const float* x, float* g, int64_t n, int nt) {
  return best([&] {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] = 1.5f * x[i];
  });
}
static double floor_r(const float* x, int64_t n, int nt) {
  volatile float sink = 0;
  return best([&] {
    float s = 0;
#pragma omp parallel for simd num_threads(nt) schedule(static) reduction(+ : s)
    for (int64_t i = 0; i < n; ++i) s += x[i];
    sink = s;
  });
}

static double floor_r2w1(const float* x, const float* t, float* g, int64_t n, int nt) {
  return best([&] {
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int64_t i = 0; i < n; ++i) g[i] = x[i] + t[i];
  });
}

// extras: logit_scale 0.9, softcap 30, lse_square_scale 1e-4 (Gemma-2 / PaLM values).
static double ce(int64_t N, int64_t C, int64_t inner, int nt, bool grad, bool quiet = false,
                 bool extras = false) {
  const int64_t n = N * C * inner;
  std::vector<float> x(n), g(n);
  std::vector<int64_t> t(N * inner);
  std::mt19937 rng(1);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  for (auto& v : t) v = int64_t(rng() % uint32_t(C));
  CrossEntropyProblem p{};
  p.dtype = DType::Float32;
  p.input = x.data();
  p.outer = N, p.classes = C, p.inner = inner;
  p.target_index = t.data();
  p.ignore_index = -100;
  p.reduction = Reduction::Mean;
  p.grad_input = grad ? g.data() : nullptr;
  p.grad_output_scalar = 1.0;
  if (extras) p.logit_scale = 0.9, p.softcap = 30.0, p.lse_square_scale = 1e-4;
  const KernelTable& k = active_kernels();
  const double tk = best([&] { k.cross_entropy(p, nt); });
  const double tf = grad ? floor_rw(x.data(), g.data(), n, nt) : floor_r(x.data(), n, nt);
  if (!quiet)
    printf("CE%s %s %ldx%ldx%ld thr=%d %s: %.2f ms = %.2fx floor (%.2f ms)\n", extras ? "+extras" : "", k.name,
           long(N), long(C), long(inner), nt, grad ? "fwd+grad" : "fwd     ", tk * 1e3, tk / tf, tf * 1e3);
  return tk;
}

// The LLM options' cost: extras over plain, measured back to back.
static void ce_extras_ratio(int64_t N, int64_t C, int nt, bool grad) {
  const double plain = ce(N, C, 1, nt, grad), with = ce(N, C, 1, nt, grad, false, true);
  printf("  extras / plain = %.3fx\n", with / plain);
}

static void kl(int64_t N, int64_t C, int nt, bool grad) {
  const int64_t n = N * C;
  std::vector<float> x(n), t(n), g(n);
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = 3 * nd(rng);
  for (auto& v : t) v = 3 * nd(rng);
  KLDivLogitsProblem p{};
  p.dtype = DType::Float32;
  p.input = x.data(), p.target = t.data(), p.rows = N, p.classes = C;
  p.temperature = 2.0;
  p.reduction = Reduction::Mean;
  p.grad_input = grad ? g.data() : nullptr;
  p.grad_output_scalar = 1.0;
  const KernelTable& k = active_kernels();
  const double tk = best([&] { k.kl_div_logits(p, nt); });
  const double tf = floor_r2w1(x.data(), t.data(), g.data(), n, nt);
  printf("KL %s %ldx%ld thr=%d %s: %.2f ms = %.2fx floor g = x + t (%.2f ms)\n", k.name, long(N), long(C), nt,
         grad ? "fwd+grad" : "fwd     ", tk * 1e3, tk / tf, tf * 1e3);
}

static void reg(int64_t n, int nt, bool l1) {
  std::vector<float> x(n), t(n), g(n);
  std::mt19937 rng(2);
  std::normal_distribution<float> nd;
  for (auto& v : x) v = nd(rng);
  for (auto& v : t) v = nd(rng);
  RegressionProblem p{};
  p.dtype = DType::Float32;
  p.input = x.data(), p.target = t.data(), p.n = n;
  p.reduction = Reduction::Mean;
  p.grad_input = g.data();
  p.grad_output_scalar = 1.0;
  const KernelTable& k = active_kernels();
  const double tk = best([&] { (l1 ? k.l1 : k.mse)(p, nt); });
  const double tf = floor_r2w1(x.data(), t.data(), g.data(), n, nt);
  printf("%s %s n=%ld thr=%d: %.2f ms = %.2fx floor (%.2f ms)\n", l1 ? "L1 " : "MSE", k.name, long(n), nt, tk * 1e3,
         tk / tf, tf * 1e3);
}

int main(int argc, char** argv) {
  if (argc > 1) set_capability(argv[1]);
  if (argc > 2 && argv[2][0] == 'x') {  // the issue-13 cases only, at 2 threads and all
    const int counts[2] = {2, omp_get_max_threads()};
    for (int i = 0; i < (counts[1] == 2 ? 1 : 2); ++i) {
      const int nt = counts[i];
      ce_extras_ratio(1024, 32000, nt, true);
      ce_extras_ratio(1024, 32000, nt, false);
      kl(1024, 32000, nt, true);
      kl(1024, 32000, nt, false);
    }
    return 0;
  }
  const bool tiny_only = argc > 2;
  if (tiny_only) goto tiny_case;
  {
  const double one = ce(1024, 32000, 1, 1, true);
  const double two = ce(1024, 32000, 1, 2, true);
  printf("  2-thread speedup %.2fx\n", one / two);
  ce(1024, 32000, 1, 2, false);
  ce(2048, 50257, 1, 2, true);
  ce(2048, 50257, 1, 2, false);
  ce(4, 262144, 1, 2, true);
  ce(4, 262144, 1, 2, false);
  ce(8, 21, 128 * 128, 2, true);
  ce(8, 21, 128 * 128, 2, false);
  reg(10000000, 2, false);
  reg(10000000, 2, true);
  }
tiny_case:
  std::vector<float> x(640), g(640);
  std::vector<int64_t> t(64, 3);
  CrossEntropyProblem p{};
  p.dtype = DType::Float32, p.input = x.data(), p.outer = 64, p.classes = 10, p.inner = 1;
  p.target_index = t.data(), p.ignore_index = -100, p.reduction = Reduction::Mean, p.grad_input = g.data();
  p.grad_output_scalar = 1.0;
  const KernelTable& k = active_kernels();
  const auto t0 = std::chrono::steady_clock::now();
  for (int i = 0; i < 100000; ++i) k.cross_entropy(p, 2);
  printf("CE 64x10 fwd+grad: %.3f us per call\n",
         std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 100000 * 1e6);
  return 0;
}
