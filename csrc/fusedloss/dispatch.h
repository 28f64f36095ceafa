// Chooses the kernel table for the running CPU, once.
#pragma once

#include <string>
#include <vector>

#include "kernels.h"

namespace fusedloss {

// The table in use. On first call it picks the best ISA the CPU and OS
// support, or the one named by FUSEDLOSS_CPU_CAPABILITY (baseline|avx2|avx512)
// when that is supported.
const KernelTable& active_kernels();

// ISAs this CPU and OS can run and this build has, best last (always starts
// with "baseline").
std::vector<std::string> supported_capabilities();

// Switch the active table (tests force every path this way). Returns false if
// `name` is unknown or unsupported here; the active table is then unchanged.
bool set_capability(const std::string& name);

// Thread count the kernels use (>= 1). Defaults to omp_get_max_threads().
int get_num_threads();
void set_num_threads(int threads);

}  // namespace fusedloss
