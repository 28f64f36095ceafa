// Heap scratch for the kernels, kept by the calling thread from one call to
// the next (scratch_pool.cpp says why). Compiled once, outside the per-ISA
// builds; common.h's Scratch is its only user.
#pragma once

#include <cstddef>

namespace fusedloss {

// At least `bytes` of memory aligned as malloc's, or nullptr when the heap is
// out; `capacity` receives the block's true size, for scratch_release.
void* scratch_acquire(size_t bytes, size_t& capacity) noexcept;

// Hands back a block from scratch_acquire (nullptr is ignored).
void scratch_release(void* block, size_t capacity) noexcept;

}  // namespace fusedloss
