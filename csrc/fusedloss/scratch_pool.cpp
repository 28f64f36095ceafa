// The kernels' heap scratch (scratch_pool.h), kept per calling thread between
// calls.
//
// Why: a kernel's scratch (a few rows of exps or tanh, partial sums) is often
// large enough that malloc takes it from fresh pages (an mmap, or heap memory
// that the last free() gave back to the system), and the page faults of first
// touching them can cost more than the kernel itself. Measured on a KVM VM
// (AMD EPYC Zen 3, AVX2, 2 threads): cross-entropy with softcap over 8 x 32000
// float32, whose t and e scratch take 512 KiB a thread, faulted 218 times a
// call and took 4.8 ns an element, against 1.0 with the pages kept (glibc
// MALLOC_TRIM_THRESHOLD_ raised); about 4 us a fault. Whether free() returns
// the pages depends on glibc's dynamic thresholds, i.e. on what the process
// allocated before, so the same call was fast in one process and slow in
// another.
//
// So blocks of kPoolMinBytes or more go back to a small per-thread list
// instead of to free(), and the next call takes the smallest one that fits (at
// most twice the size asked for, so a small request does not pin a big block).
// A thread keeps at most kPoolMaxBlocks blocks and kPoolMaxBytes in all (the
// oldest go first), and frees them when it ends. Smaller requests go straight
// to malloc, whose bins serve them without faults. Under AddressSanitizer every
// request goes to malloc, so that each block keeps its exact bounds.
#include "fusedloss/scratch_pool.h"

#include <cstdlib>

namespace fusedloss {

namespace {

#if defined(__SANITIZE_ADDRESS__)
constexpr bool kPool = false;
#else
constexpr bool kPool = true;
#endif
constexpr size_t kPoolMinBytes = size_t(64) << 10;
constexpr size_t kPoolMaxBytes = size_t(32) << 20;
constexpr int kPoolMaxBlocks = 8;

struct Block {
  void* p;
  size_t bytes;
};

struct Pool {
  Block blocks[kPoolMaxBlocks];  // oldest first
  int count = 0;
  size_t bytes = 0;

  Block take(int i) {
    const Block b = blocks[i];
    for (int j = i + 1; j < count; ++j) blocks[j - 1] = blocks[j];
    --count;
    bytes -= b.bytes;
    return b;
  }
  ~Pool() {
    for (int i = 0; i < count; ++i) std::free(blocks[i].p);
  }
};

thread_local Pool pool;

}  // namespace

void* scratch_acquire(size_t bytes, size_t& capacity) noexcept {
  capacity = bytes;
  if (kPool && bytes >= kPoolMinBytes) {
    int best = -1;
    for (int i = 0; i < pool.count; ++i) {
      const size_t have = pool.blocks[i].bytes;
      if (have >= bytes && have / 2 <= bytes && (best < 0 || have < pool.blocks[best].bytes)) best = i;
    }
    if (best >= 0) {
      const Block b = pool.take(best);
      capacity = b.bytes;
      return b.p;
    }
  }
  return std::malloc(bytes);
}

void scratch_release(void* block, size_t capacity) noexcept {
  if (!block) return;
  if (!kPool || capacity < kPoolMinBytes || capacity > kPoolMaxBytes) {
    std::free(block);
    return;
  }
  while (pool.count > 0 && (pool.count == kPoolMaxBlocks || pool.bytes + capacity > kPoolMaxBytes))
    std::free(pool.take(0).p);
  pool.blocks[pool.count++] = {block, capacity};
  pool.bytes += capacity;
}

}  // namespace fusedloss
