// pybind11 bindings of the loss kernels: buffers in, one kernel call with the
// GIL released, the reduced loss out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "buffers.h"
#include "fusedloss/dispatch.h"

namespace fusedloss::bindings {

namespace {

// Below this many elements a kernel runs in about a microsecond: releasing
// and re-taking the GIL would add a tenth of that, and no other thread could
// do much in the gap.
constexpr int64_t kKeepGilBelow = 4096;

// Optional accumulation-type buffers shared by all losses.
struct OptionalBuffers {
  const void* grad_output = nullptr;
  void* loss = nullptr;
  void* grad_input = nullptr;
};

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

double cross_entropy(const py::array& input, const py::array& target, const py::object& weight,
                     int64_t ignore_index, double label_smoothing, int reduction_code,
                     const py::object& loss_out, const py::object& grad_input,
                     const py::object& grad_output, double grad_output_scalar, bool bfloat16,
                     int64_t outer, int64_t classes, int64_t inner) {
  const DType dtype = storage_dtype(input, bfloat16, "input");
  if (outer < 0) {  // no geometry given: input is the (outer, C, inner) array itself
    if (input.ndim() != 3) throw py::value_error("input: expected a 3-d (outer, C, inner) array");
    outer = input.shape(0);
    classes = input.shape(1);
    inner = input.shape(2);
  } else if (classes < 0 || inner < 0) {
    throw py::value_error("input: negative extent in (outer, C, inner)");
  }
  const std::vector<int64_t> input_shape{outer, classes, inner}, loss_shape{outer, inner};
  require_buffer(input, dtype, input_shape, "input");
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) {
    throw py::value_error("label_smoothing: expected a value in [0, 1]");
  }
  const Reduction reduction = to_reduction(reduction_code);

  CrossEntropyProblem problem{};
  problem.dtype = dtype;
  problem.input = input.data();
  problem.outer = outer;
  problem.classes = classes;
  problem.inner = inner;
  problem.ignore_index = ignore_index;
  problem.label_smoothing = label_smoothing;
  problem.reduction = reduction;
  problem.grad_output_scalar = grad_output_scalar;

  if (target.dtype().equal(py::dtype::of<int64_t>())) {
    require_layout(target, loss_shape, "target");
    problem.target_index = static_cast<const int64_t*>(target.data());
  } else {
    require_buffer(target, dtype, input_shape, "target");
    problem.target_prob = target.data();
  }
  if (!weight.is_none()) {
    require_buffer(py::reinterpret_borrow<py::array>(weight), accumulation_dtype(dtype),
                   {classes}, "weight");
    problem.weight = data_or_null(weight);
  }
  const OptionalBuffers buffers = check_optional_buffers(
      loss_out, grad_input, grad_output, reduction, dtype, loss_shape, input_shape, false);
  if (!grad_input.is_none()) {
    const py::object target_obj = target;
    require_no_aliasing(py::reinterpret_borrow<py::array>(grad_input), input,
                        {{"target", &target_obj}, {"weight", &weight}, {"grad_output", &grad_output},
                         {"loss_out", &loss_out}});
  }
  problem.grad_output = buffers.grad_output;
  problem.loss = buffers.loss;
  problem.grad_input = buffers.grad_input;

  const KernelTable& kernels = active_kernels();
  const int threads = get_num_threads();
  CrossEntropyResult result;
  if (outer * classes * inner < kKeepGilBelow) {
    result = kernels.cross_entropy(problem, threads);
  } else {
    py::gil_scoped_release release;
    result = kernels.cross_entropy(problem, threads);
  }
  if (result.bad_target_position >= 0) {
    const int64_t value = problem.target_index[result.bad_target_position];
    throw py::index_error("target: class index " + std::to_string(value) + " at flat position " +
                          std::to_string(result.bad_target_position) + " is out of range [0, " +
                          std::to_string(classes) + ") and is not ignore_index (" +
                          std::to_string(ignore_index) + ")");
  }
  return result.loss;
}

double regression(RegressionFn kernel, const py::array& input, const py::array& target,
                  int reduction_code, const py::object& loss_out, const py::object& grad_input,
                  const py::object& grad_output, double grad_output_scalar, bool bfloat16,
                  bool allow_complex) {
  const DType dtype = storage_dtype(input, bfloat16, "input");
  const bool complex_input = input.dtype().kind() == 'c';
  if (complex_input && !allow_complex) {
    throw py::type_error("input: complex input is not supported by this loss");
  }
  const int64_t n = static_cast<int64_t>(input.size());
  const std::vector<int64_t> shape{n};
  require_buffer(input, dtype, shape, "input", complex_input);
  require_buffer(target, dtype, shape, "target", complex_input);
  const Reduction reduction = to_reduction(reduction_code);

  RegressionProblem problem{};
  problem.dtype = dtype;
  problem.complex_input = complex_input;
  problem.input = input.data();
  problem.target = target.data();
  problem.n = n;
  problem.reduction = reduction;
  problem.grad_output_scalar = grad_output_scalar;
  const OptionalBuffers buffers = check_optional_buffers(
      loss_out, grad_input, grad_output, reduction, dtype, shape, shape, complex_input);
  if (!grad_input.is_none()) {
    const py::object target_obj = target;
    require_no_aliasing(py::reinterpret_borrow<py::array>(grad_input), input,
                        {{"target", &target_obj}, {"grad_output", &grad_output}, {"loss_out", &loss_out}});
  }
  problem.grad_output = buffers.grad_output;
  problem.loss = buffers.loss;
  problem.grad_input = buffers.grad_input;

  const int threads = get_num_threads();
  if (n < kKeepGilBelow) return kernel(problem, threads);
  py::gil_scoped_release release;
  return kernel(problem, threads);
}

// Binds one elementwise loss; the kernel is read from the active table at each
// call, so forcing a capability (tests) takes effect at once.
template <RegressionFn KernelTable::*kernel, bool allow_complex>
void def_regression(py::module_& m, const char* name, const char* doc) {
  m.def(
      name,
      [](const py::array& input, const py::array& target, int reduction,
         const py::object& loss_out, const py::object& grad_input,
         const py::object& grad_output, double grad_output_scalar, bool bfloat16) {
        return regression(active_kernels().*kernel, input, target, reduction, loss_out,
                          grad_input, grad_output, grad_output_scalar, bfloat16, allow_complex);
      },
      py::arg("input"), py::arg("target"), py::arg("reduction"), py::arg("loss_out"),
      py::arg("grad_input"), py::arg("grad_output"), py::arg("grad_output_scalar") = 1.0,
      py::arg("bfloat16") = false, doc);
}

}  // namespace

void register_losses(py::module_& m) {
  m.def("cross_entropy", &cross_entropy, py::arg("input"), py::arg("target"), py::arg("weight"),
        py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("reduction"),
        py::arg("loss_out"), py::arg("grad_input"), py::arg("grad_output"),
        py::arg("grad_output_scalar") = 1.0, py::arg("bfloat16") = false, py::arg("outer") = -1,
        py::arg("classes") = -1, py::arg("inner") = -1,
        "Fused softmax cross-entropy (+ gradient) over (outer, C, inner) buffers. Without\n"
        "outer/classes/inner the input must be 3-d; with them, any C-contiguous array of\n"
        "outer * classes * inner elements (targets and outputs likewise by element count).");
  def_regression<&KernelTable::mse, false>(m, "mse",
                                            "Mean squared error (+ gradient) over flat buffers.");
  def_regression<&KernelTable::l1, true>(
      m, "l1", "L1 loss (+ gradient), real or complex, over flat buffers.");
}

}  // namespace fusedloss::bindings
