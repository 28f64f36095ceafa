#include "buffers.h"

#include <pybind11/complex.h>

#include <complex>

namespace fusedloss::bindings {

namespace {

template <typename T>
bool holds(const py::array& array) {
  return array.dtype().equal(py::dtype::of<T>());
}

bool holds_float16(const py::array& array) { return array.dtype().equal(py::dtype("float16")); }

bool has_dtype(const py::array& array, DType dtype, bool complex_input) {
  switch (dtype) {
    case DType::Float32:
      return complex_input ? holds<std::complex<float>>(array) : holds<float>(array);
    case DType::Float64:
      return complex_input ? holds<std::complex<double>>(array) : holds<double>(array);
    case DType::Float16:
      return !complex_input && holds_float16(array);
    case DType::BFloat16:
      return !complex_input && holds<uint16_t>(array);
  }
  return false;
}

// Byte range [first, last) of a C-contiguous array.
std::pair<uintptr_t, uintptr_t> byte_range(const py::array& array) {
  const auto first = reinterpret_cast<uintptr_t>(array.data());
  return {first, first + static_cast<uintptr_t>(array.nbytes())};
}

bool overlap(std::pair<uintptr_t, uintptr_t> a, std::pair<uintptr_t, uintptr_t> b) {
  return a.first < b.second && b.first < a.second;
}

const char* dtype_name(DType dtype) {
  switch (dtype) {
    case DType::Float32: return "float32";
    case DType::Float64: return "float64";
    case DType::Float16: return "float16";
    case DType::BFloat16: return "bfloat16 (as uint16)";
  }
  return "?";
}

}  // namespace

DType storage_dtype(const py::array& array, bool bfloat16, const char* name) {
  if (bfloat16) {
    if (holds<uint16_t>(array)) return DType::BFloat16;
  } else if (holds<float>(array) || holds<std::complex<float>>(array)) {
    return DType::Float32;
  } else if (holds<double>(array) || holds<std::complex<double>>(array)) {
    return DType::Float64;
  } else if (holds_float16(array)) {
    return DType::Float16;
  }
  throw py::type_error(std::string(name) + ": unsupported dtype " +
                       std::string(py::str(array.dtype())));
}

DType accumulation_dtype(DType storage) {
  return storage == DType::Float64 ? DType::Float64 : DType::Float32;
}

void require_buffer(const py::array& array, DType dtype, const std::vector<int64_t>& shape,
                    const char* name, bool complex_input) {
  if (!has_dtype(array, dtype, complex_input)) {
    throw py::type_error(std::string(name) + ": expected " + (complex_input ? "complex " : "") +
                         dtype_name(dtype) + " elements, got " +
                         std::string(py::str(array.dtype())));
  }
  require_layout(array, shape, name);
}

void require_layout(const py::array& array, const std::vector<int64_t>& shape, const char* name) {
  if (!(array.flags() & py::array::c_style)) {
    throw py::value_error(std::string(name) + ": must be C-contiguous");
  }
  int64_t expected = 1;
  for (int64_t extent : shape) {
    if (extent < 0 || __builtin_mul_overflow(expected, extent, &expected)) {
      throw py::value_error(std::string(name) + ": invalid extents");
    }
  }
  if (static_cast<int64_t>(array.size()) != expected) {
    throw py::value_error(std::string(name) + ": expected " + std::to_string(expected) +
                          " elements, got " + std::to_string(array.size()));
  }
}

void require_output(const py::array& array, DType dtype, const std::vector<int64_t>& shape,
                    const char* name, bool complex_input) {
  require_buffer(array, dtype, shape, name, complex_input);
  if (!array.writeable()) throw py::value_error(std::string(name) + ": array is read-only");
}

Reduction to_reduction(int reduction) {
  if (reduction < 0 || reduction > 2) {
    throw py::value_error("reduction: expected 0 (none), 1 (mean) or 2 (sum), got " +
                          std::to_string(reduction));
  }
  return static_cast<Reduction>(reduction);
}

OptionalBuffers check_optional_buffers(const py::object& loss_out, const py::object& grad_input,
                                       const py::object& grad_output, Reduction reduction,
                                       DType dtype, const std::vector<int64_t>& loss_shape,
                                       const std::vector<int64_t>& input_shape,
                                       bool complex_input) {
  const DType accum = accumulation_dtype(dtype);
  if (reduction == Reduction::None && loss_out.is_none()) {
    throw py::value_error("loss_out: required for reduction none");
  }
  if (!loss_out.is_none()) {
    require_output(py::reinterpret_borrow<py::array>(loss_out), accum, loss_shape, "loss_out");
  }
  if (!grad_input.is_none()) {
    require_output(py::reinterpret_borrow<py::array>(grad_input), dtype, input_shape,
                   "grad_input", complex_input);
  }
  if (!grad_output.is_none()) {
    if (reduction != Reduction::None) {
      throw py::value_error("grad_output: an array is only taken with reduction none; "
                            "pass grad_output_scalar");
    }
    require_buffer(py::reinterpret_borrow<py::array>(grad_output), accum, loss_shape,
                   "grad_output");
  }
  return {data_or_null(grad_output), mutable_data_or_null(loss_out),
          mutable_data_or_null(grad_input)};
}

void resolve_geometry(const py::array& input, int64_t& outer, int64_t& classes, int64_t& inner) {
  if (outer < 0) {
    if (input.ndim() != 3) throw py::value_error("input: expected a 3-d (outer, C, inner) array");
    outer = input.shape(0);
    classes = input.shape(1);
    inner = input.shape(2);
  } else if (classes < 0 || inner < 0) {
    throw py::value_error("input: negative extent in (outer, C, inner)");
  }
}

void require_no_aliasing(const py::array& grad, const py::array& input,
                         std::initializer_list<std::pair<const char*, const py::object*>> others) {
  const auto g = byte_range(grad);
  if (g.first == g.second) return;  // nothing written
  const bool in_place = byte_range(input) == g;
  if (!in_place && overlap(g, byte_range(input))) {
    throw py::value_error("out: overlaps input without being the same array");
  }
  for (const auto& [name, other] : others) {
    if (!other->is_none() && overlap(g, byte_range(py::reinterpret_borrow<py::array>(*other)))) {
      throw py::value_error(std::string(in_place ? "input: written in place but shares memory with "
                                                 : "out: shares memory with ") +
                            name);
    }
  }
}

}  // namespace fusedloss::bindings
