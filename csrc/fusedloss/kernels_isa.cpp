// The kernels, compiled once per instruction set (CMakeLists.txt builds this
// one source three times): FUSEDLOSS_ISA is baseline, avx2 or avx512, with
// that ISA's compiler flags (as ATen compiles native/cpu once per capability).
//
// baseline has no ISA flags: it runs on any x86-64 (or other) CPU, with SSE2
// vectors on x86-64, which every such CPU has; elsewhere (or built with
// FUSEDLOSS_SCALAR_BASELINE, to test that path) one scalar lane.
//
// [Note ODR across ISA builds]: the three objects are linked into one .so.
// Every inline function and template a build instantiates must live in
// namespace fusedloss::FUSEDLOSS_ISA, or the linker could keep one ISA's copy
// for all. So system headers are included here at global scope, and the
// shared kernel headers (which include nothing) inside the namespace; kernel
// code calls no std:: inline functions (only std::numeric_limits constants).
#if !defined(FUSEDLOSS_ISA)
#error "FUSEDLOSS_ISA must name the instruction set this build is for"
#endif
#define FUSEDLOSS_ISA_NAME_(isa) #isa
#define FUSEDLOSS_ISA_NAME(isa) FUSEDLOSS_ISA_NAME_(isa)
#define FUSEDLOSS_ISA_TABLE_(isa) isa##_kernels
#define FUSEDLOSS_ISA_TABLE(isa) FUSEDLOSS_ISA_TABLE_(isa)

#if defined(FUSEDLOSS_ISA_AVX512)
// GCC 12's AVX-512 intrinsics build their "undefined" pass-through operand
// from a self-initialised variable (__m512 __Y = __Y), which -Wuninitialized
// reports at every inlined use; the value is never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#if defined(FUSEDLOSS_ISA_AVX2) || defined(FUSEDLOSS_ISA_AVX512)
#include <immintrin.h>
#elif defined(__SSE2__) && !defined(FUSEDLOSS_SCALAR_BASELINE)
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
#include <type_traits>
#include <utility>

#include "fusedloss/kernels.h"
#include "fusedloss/scratch_pool.h"

namespace fusedloss {
namespace FUSEDLOSS_ISA {
// clang-format off
#include "fusedloss/simd/storage.h"
#if defined(FUSEDLOSS_ISA_AVX512)
#include "fusedloss/simd/vec_avx512.h"
#elif defined(FUSEDLOSS_ISA_AVX2)
#include "fusedloss/simd/vec_avx2.h"
#elif defined(FUSEDLOSS_SSE2_BASELINE)
#include "fusedloss/simd/vec_sse2.h"
#else
#include "fusedloss/simd/vec_scalar.h"
#endif
#include "fusedloss/simd/math.h"
#include "fusedloss/common.h"
#include "fusedloss/class_losses.h"
#include "fusedloss/cross_entropy.h"
#include "fusedloss/elementwise_ops.h"
#include "fusedloss/elementwise.h"
#include "fusedloss/kl_div_logits.h"
#include "fusedloss/elementwise_math.h"
// clang-format on
}  // namespace FUSEDLOSS_ISA

const KernelTable& FUSEDLOSS_ISA_TABLE(FUSEDLOSS_ISA)() {
  namespace k = FUSEDLOSS_ISA;
  static const KernelTable table{FUSEDLOSS_ISA_NAME(FUSEDLOSS_ISA), &k::cross_entropy, &k::elementwise,
                                 &k::elementwise_math, &k::nll, &k::multi_margin, &k::kl_div_logits};
  return table;
}

}  // namespace fusedloss
