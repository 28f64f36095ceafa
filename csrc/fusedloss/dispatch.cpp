// Picks the kernel table once for the running CPU: cpuid says what the CPU
// has, xgetbv says whether the OS saves the wider registers on a context
// switch (without that, AVX code faults or corrupts state).
#include "fusedloss/dispatch.h"

#include <omp.h>
#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#if defined(FUSEDLOSS_X86)
#include <cpuid.h>
#endif

namespace fusedloss {

namespace {

enum Level { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };

// The best level whose kernels were built (CMakeLists.txt: FUSEDLOSS_MAX_ISA
// may stop a development build short); by default every level of the target.
#if !defined(FUSEDLOSS_TOP_LEVEL)
#if defined(FUSEDLOSS_X86)
#define FUSEDLOSS_TOP_LEVEL 2
#else
#define FUSEDLOSS_TOP_LEVEL 0
#endif
#endif

#if defined(FUSEDLOSS_X86)
uint64_t xgetbv0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (uint64_t(edx) << 32) | eax;
}

Level detect() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return kBaseline;
  const bool osxsave = c & (1u << 27), avx = c & (1u << 28), fma = c & (1u << 12), f16c = c & (1u << 29);
  if (!(osxsave && avx && fma && f16c)) return kBaseline;
  const uint64_t xcr0 = xgetbv0();
  if ((xcr0 & 0x6) != 0x6) return kBaseline;  // XMM and YMM state
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return kBaseline;
  if (!(b & (1u << 5))) return kBaseline;  // AVX2
  const bool avx512 = (b & (1u << 16)) && (b & (1u << 17)) && (b & (1u << 30)) && (b & (1u << 31));  // F DQ BW VL
  if (avx512 && (xcr0 & 0xe6) == 0xe6) return kAvx512;  // + opmask, ZMM_Hi256, Hi16_ZMM state
  return kAvx2;
}
#else
Level detect() { return kBaseline; }
#endif

// What this CPU supports and this build has.
Level max_level() {
  static const Level level = std::min(detect(), static_cast<Level>(FUSEDLOSS_TOP_LEVEL));
  return level;
}

const KernelTable* table_for(Level level) {
#if FUSEDLOSS_TOP_LEVEL >= 2
  if (level == kAvx512) return &avx512_kernels();
#endif
#if FUSEDLOSS_TOP_LEVEL >= 1
  if (level == kAvx2) return &avx2_kernels();
#endif
  (void)level;
  return &baseline_kernels();
}

int level_of(const std::string& name) {
  if (name == "baseline") return kBaseline;
  if (name == "avx2") return kAvx2;
  if (name == "avx512") return kAvx512;
  return -1;
}

// The best supported level, or the one FUSEDLOSS_CPU_CAPABILITY names when
// this machine supports it (an unknown or unsupported value is ignored).
const KernelTable* initial_table() {
  Level level = max_level();
  if (const char* env = std::getenv("FUSEDLOSS_CPU_CAPABILITY")) {
    const int wanted = level_of(env);
    if (wanted >= 0 && wanted <= max_level()) level = static_cast<Level>(wanted);
  }
  return table_for(level);
}

std::atomic<const KernelTable*>& active() {
  static std::atomic<const KernelTable*> table{initial_table()};  // thread-safe static init
  return table;
}

// OMP_NUM_THREADS, else the cores this process may run on. Not
// omp_get_max_threads(): torch.set_num_threads() changes that process-wide
// libgomp setting, and fusedloss's default must not follow it.
int default_threads() {
  if (const char* env = std::getenv("OMP_NUM_THREADS")) {
    char* end = nullptr;
    const long n = std::strtol(env, &end, 10);
    if (end != env && n > 0) return n > 1024 ? 1024 : static_cast<int>(n);
  }
  const int procs = omp_get_num_procs();
  return procs > 0 ? procs : 1;
}

std::atomic<int>& threads();

// libgomp's thread pool does not survive fork(): a parallel region in the
// child waits forever for threads that were not copied. A forked child runs
// the kernels on one thread (no parallel region) unless it asks for more.
void after_fork_in_child() { threads().store(1, std::memory_order_relaxed); }

std::atomic<int>& threads() {
  static std::atomic<int> n{[] {
    pthread_atfork(nullptr, nullptr, &after_fork_in_child);
    return default_threads();
  }()};
  return n;
}

// Read the defaults at load time, before anything else can touch libgomp.
const int kThreadsAtLoad = threads().load();

}  // namespace

const KernelTable& active_kernels() { return *active().load(std::memory_order_acquire); }

std::vector<std::string> supported_capabilities() {
  std::vector<std::string> names{"baseline"};
  if (max_level() >= kAvx2) names.emplace_back("avx2");
  if (max_level() >= kAvx512) names.emplace_back("avx512");
  return names;
}

bool set_capability(const std::string& name) {
  const int level = level_of(name);
  if (level < 0 || level > max_level()) return false;
  active().store(table_for(static_cast<Level>(level)), std::memory_order_release);
  return true;
}

int get_num_threads() { return threads().load(std::memory_order_relaxed); }

void set_num_threads(int n) { threads().store(n >= 1 ? n : 1, std::memory_order_relaxed); }

}  // namespace fusedloss
