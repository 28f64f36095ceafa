// The avx512 kernels: compiled with -mavx512f/bw/dq/vl -mavx2 -mfma -mf16c (CMakeLists.txt).
//
// ODR: this translation unit is linked into one .so with the other ISA
// builds. Every inline function and template it instantiates must live in
// namespace fusedloss::avx512, or the linker could keep one ISA's copy for all.
// So system headers are included here at global scope, and the shared kernel
// headers (which include nothing) are included inside the namespace; kernel
// code calls no std:: inline functions (only std::numeric_limits constants).
// GCC 12's AVX-512 intrinsics build their "undefined" pass-through operand
// from a self-initialised variable (__m512 __Y = __Y), which -Wuninitialized
// reports at every inlined use; the value is never read.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include <cstdint>
#include <limits>
#include <new>

#include "fusedloss/kernels.h"

namespace fusedloss {
namespace avx512 {
// clang-format off
#include "fusedloss/simd/storage.h"
#include "fusedloss/simd/vec_avx512.h"
#include "fusedloss/simd/math.h"
#include "fusedloss/cross_entropy.h"
#include "fusedloss/regression.h"
#include "fusedloss/elementwise_math.h"
// clang-format on
}  // namespace avx512

const KernelTable& avx512_kernels() {
  static const KernelTable table{"avx512", &avx512::cross_entropy,
                                 &avx512::mse,
                                 &avx512::l1,
                                 &avx512::elementwise_math};
  return table;
}

}  // namespace fusedloss
