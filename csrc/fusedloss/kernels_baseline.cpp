// The baseline kernels: no ISA flags: runs on any x86-64 (or other) CPU.
// On x86-64 they use SSE2 vectors, which every such CPU has; elsewhere (or
// built with FUSEDLOSS_SCALAR_BASELINE, to test that path) one scalar lane.
//
// ODR: this translation unit is linked into one .so with the other ISA
// builds. Every inline function and template it instantiates must live in
// namespace fusedloss::baseline, or the linker could keep one ISA's copy for all.
// So system headers are included here at global scope, and the shared kernel
// headers (which include nothing) are included inside the namespace; kernel
// code calls no std:: inline functions (only std::numeric_limits constants).
#if defined(__SSE2__) && !defined(FUSEDLOSS_SCALAR_BASELINE)
#define FUSEDLOSS_SSE2_BASELINE 1
#include <emmintrin.h>
#endif
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <cstdint>
#include <limits>
#include <new>

#include "fusedloss/kernels.h"

namespace fusedloss {
namespace baseline {
// clang-format off
#include "fusedloss/simd/storage.h"
#if defined(FUSEDLOSS_SSE2_BASELINE)
#include "fusedloss/simd/vec_sse2.h"
#else
#include "fusedloss/simd/vec_scalar.h"
#endif
#include "fusedloss/simd/math.h"
#include "fusedloss/cross_entropy.h"
#include "fusedloss/regression.h"
#include "fusedloss/elementwise_math.h"
// clang-format on
}  // namespace baseline

const KernelTable& baseline_kernels() {
  static const KernelTable table{"baseline", &baseline::cross_entropy,
                                 &baseline::mse,
                                 &baseline::l1,
                                 &baseline::elementwise_math};
  return table;
}

}  // namespace fusedloss
