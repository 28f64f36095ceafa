// The avx2 kernels: compiled with -mavx2 -mfma -mf16c (CMakeLists.txt).
//
// ODR: this translation unit is linked into one .so with the other ISA
// builds. Every inline function and template it instantiates must live in
// namespace fusedloss::avx2, or the linker could keep one ISA's copy for all.
// So system headers are included here at global scope, and the shared kernel
// headers (which include nothing) are included inside the namespace; kernel
// code calls no std:: inline functions (only std::numeric_limits constants).
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
namespace avx2 {
// clang-format off
#include "fusedloss/simd/storage.h"
#include "fusedloss/simd/vec_avx2.h"
#include "fusedloss/simd/math.h"
#include "fusedloss/cross_entropy.h"
#include "fusedloss/regression.h"
#include "fusedloss/elementwise_math.h"
// clang-format on
}  // namespace avx2

const KernelTable& avx2_kernels() {
  static const KernelTable table{"avx2", &avx2::cross_entropy,
                                 &avx2::mse,
                                 &avx2::l1,
                                 &avx2::elementwise_math};
  return table;
}

}  // namespace fusedloss
