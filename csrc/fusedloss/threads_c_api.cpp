// The kernels' thread count as plain C functions exported from the module, so
// that threadpoolctl finds and limits it (src/fusedloss/_threadpoolctl.py).
// fusedloss keeps its own count apart from the OpenMP runtime's (dispatch.cpp),
// so the runtime's omp_set_num_threads(), which threadpoolctl also calls, does
// not reach it.
#include "fusedloss/dispatch.h"

#define FUSEDLOSS_C_API extern "C" __attribute__((visibility("default")))

FUSEDLOSS_C_API int fusedloss_get_num_threads(void) { return fusedloss::get_num_threads(); }

FUSEDLOSS_C_API void fusedloss_set_num_threads(int n) { fusedloss::set_num_threads(n); }
