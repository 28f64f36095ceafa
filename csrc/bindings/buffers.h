// Buffer checks shared by the loss bindings.
//
// The Python layer (_api.py) already validated everything a user can get
// wrong and produced the user-facing messages; these checks are the last line
// of defence so that a mistaken caller of the private _core module gets an
// exception instead of a kernel reading memory it was not given.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <utility>
#include <vector>

#include "fusedloss/kernels.h"

namespace fusedloss::bindings {

namespace py = pybind11;

// Below this many elements a kernel runs in about a microsecond: releasing
// and re-taking the GIL would add a tenth of that, and no other thread could
// do much in the gap.
constexpr int64_t kKeepGilBelow = 4096;

// One cross-entropy kernel call (the GIL kept below kKeepGilBelow elements):
// the reduced loss, or IndexError naming target for an index out of range
// (nothing written then). losses.cpp; small_call.cpp takes it too.
double run_cross_entropy(const CrossEntropyProblem& problem);

// One elementwise kernel call (the GIL kept as above): the kernel's result,
// domain counts included (the caller raises, or leaves it to the general route).
ElementwiseResult run_elementwise(const ElementwiseProblem& problem);

// The op of a code from the Python layer's table; ValueError for an unknown one.
ElementwiseOp to_elementwise_op(int code);

// The storage dtype of `array`; bf16 arrives as uint16 with bfloat16=true.
DType storage_dtype(const py::array& array, bool bfloat16, const char* name);

// float32 or float64: the dtype weights, grad_output and losses use.
DType accumulation_dtype(DType storage);

// Raises unless `array` is C-contiguous, holds `dtype` elements (complex
// doubles the element count check via `complex_input`) and has `shape`.
void require_buffer(const py::array& array, DType dtype, const std::vector<int64_t>& shape,
                    const char* name, bool complex_input = false);

// Raises unless `array` is C-contiguous with the element count of `shape`.
void require_layout(const py::array& array, const std::vector<int64_t>& shape, const char* name);

// As require_buffer, and the array must be writeable.
void require_output(const py::array& array, DType dtype, const std::vector<int64_t>& shape,
                    const char* name, bool complex_input = false);

Reduction to_reduction(int reduction);

// The (outer, C, inner) view of a class-indexed loss's input: as given, or,
// when outer < 0, the extents of a 3-d input.
void resolve_geometry(const py::array& input, int64_t& outer, int64_t& classes, int64_t& inner);

// The gradient is written while the operands are read: raises ValueError
// unless `grad` (C-contiguous, like every buffer here) is exactly `input` (in
// place) or disjoint from it, and disjoint from each other operand given
// (None skipped). Messages use the caller's names: out=, or input in place.
void require_no_aliasing(const py::array& grad, const py::array& input,
                         std::initializer_list<std::pair<const char*, const py::object*>> others);


// Optional accumulation-type buffers shared by all losses.
struct OptionalBuffers {
  const void* grad_output = nullptr;
  void* loss = nullptr;
  void* grad_input = nullptr;
};

// Checks loss_out (required for reduction none), grad_input (like the input)
// and grad_output (reduction none only) and returns their data pointers.
OptionalBuffers check_optional_buffers(const py::object& loss_out, const py::object& grad_input,
                                       const py::object& grad_output, Reduction reduction,
                                       DType dtype, const std::vector<int64_t>& loss_shape,
                                       const std::vector<int64_t>& input_shape,
                                       bool complex_input);

// nullptr for None, else the array's data pointer (after the caller's checks).
inline const void* data_or_null(const py::object& obj) {
  return obj.is_none() ? nullptr : py::reinterpret_borrow<py::array>(obj).data();
}
inline void* mutable_data_or_null(const py::object& obj) {
  return obj.is_none() ? nullptr : py::reinterpret_borrow<py::array>(obj).mutable_data();
}

}  // namespace fusedloss::bindings
