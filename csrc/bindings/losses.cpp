// pybind11 bindings of the loss kernels: buffers in, one kernel call with the
// GIL released, the reduced loss out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <string>

#include "buffers.h"
#include "fusedloss/dispatch.h"

namespace fusedloss::bindings {

double run_cross_entropy(const CrossEntropyProblem& problem) {
  const KernelTable& kernels = active_kernels();
  const int threads = get_num_threads();
  CrossEntropyResult result;
  if (problem.outer * problem.classes * problem.inner < kKeepGilBelow) {
    result = kernels.cross_entropy(problem, threads);
  } else {
    py::gil_scoped_release release;
    result = kernels.cross_entropy(problem, threads);
  }
  if (result.bad_target_position >= 0) {
    const int64_t value = problem.target_index[result.bad_target_position];
    throw py::index_error("target: class index " + std::to_string(value) + " at flat position " +
                          std::to_string(result.bad_target_position) + " is out of range [0, " +
                          std::to_string(problem.classes) + ") and is not ignore_index (" +
                          std::to_string(problem.ignore_index) + ")");
  }
  return result.loss;
}

ElementwiseResult run_elementwise(const ElementwiseProblem& problem) {
  const KernelTable& kernels = active_kernels();
  const int threads = get_num_threads();
  if (problem.n < kKeepGilBelow) return kernels.elementwise(problem, threads);
  py::gil_scoped_release release;
  return kernels.elementwise(problem, threads);
}

ElementwiseOp to_elementwise_op(int code) {
  switch (code) {
#define FUSEDLOSS_OP_CODE_CHECK(name, op, py) case static_cast<int>(ElementwiseOp::name):
    FUSEDLOSS_ELEMENTWISE_OPS(FUSEDLOSS_OP_CODE_CHECK)
#undef FUSEDLOSS_OP_CODE_CHECK
    return static_cast<ElementwiseOp>(code);
  }
  throw py::value_error("op: unknown elementwise op code " + std::to_string(code));
}

namespace {

double cross_entropy(const py::array& input, const py::array& target, const py::object& weight,
                     int64_t ignore_index, double label_smoothing, int reduction_code,
                     const py::object& loss_out, const py::object& grad_input,
                     const py::object& grad_output, double grad_output_scalar, bool bfloat16,
                     int64_t outer, int64_t classes, int64_t inner, double logit_scale, double softcap,
                     double lse_square_scale, const py::object& lse_out) {
  const DType dtype = storage_dtype(input, bfloat16, "input");
  resolve_geometry(input, outer, classes, inner);
  const std::vector<int64_t> input_shape{outer, classes, inner}, loss_shape{outer, inner};
  require_buffer(input, dtype, input_shape, "input");
  if (!(label_smoothing >= 0.0 && label_smoothing <= 1.0)) {
    throw py::value_error("label_smoothing: expected a value in [0, 1]");
  }
  if (!std::isfinite(logit_scale)) throw py::value_error("logit_scale: expected a finite number");
  if (!(std::isfinite(softcap) && softcap >= 0.0)) {
    throw py::value_error("softcap: expected a finite number > 0 (0: no cap)");
  }
  if (!(std::isfinite(lse_square_scale) && lse_square_scale >= 0.0)) {
    throw py::value_error("lse_square_scale: expected a finite number >= 0");
  }
  const Reduction reduction = to_reduction(reduction_code);

  CrossEntropyProblem problem{};
  problem.logit_scale = logit_scale;
  problem.softcap = softcap;
  problem.lse_square_scale = lse_square_scale;
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
  if (!lse_out.is_none()) {
    require_output(py::reinterpret_borrow<py::array>(lse_out), accumulation_dtype(dtype), loss_shape,
                   "lse_out");
    problem.lse_out = mutable_data_or_null(lse_out);
  }
  if (!grad_input.is_none()) {
    const py::object target_obj = target;
    require_no_aliasing(py::reinterpret_borrow<py::array>(grad_input), input,
                        {{"target", &target_obj}, {"weight", &weight}, {"grad_output", &grad_output},
                         {"loss_out", &loss_out}, {"lse_out", &lse_out}});
  }
  problem.grad_output = buffers.grad_output;
  problem.loss = buffers.loss;
  problem.grad_input = buffers.grad_input;

  return run_cross_entropy(problem);
}

// A weight-like factor: None, or an accumulation-dtype array of `period`
// values read as values[(i / repeat) % period] for element i of n.
Broadcast check_broadcast(const py::object& values, int64_t period, int64_t repeat, int64_t n,
                          DType accum, const char* name) {
  Broadcast b;
  if (values.is_none()) return b;
  if (period < 1 || repeat < 1 || (n > 0 && period > n)) {
    throw py::value_error(std::string(name) + ": invalid broadcast period/repeat");
  }
  require_buffer(py::reinterpret_borrow<py::array>(values), accum, {period}, name);
  b.values = data_or_null(values);
  b.period = period;
  b.repeat = repeat;
  return b;
}

double elementwise(int op_code, const py::array& input, const py::object& target,
                   int reduction_code, const py::object& loss_out, const py::object& grad_input,
                   const py::object& grad_output, double grad_output_scalar, bool bfloat16,
                   double target_scalar, double param, double scale, const py::object& weight,
                   int64_t weight_period, int64_t weight_repeat, const py::object& pos_weight,
                   int64_t pos_weight_period, int64_t pos_weight_repeat, double mean_denominator,
                   const py::object& grad_target) {
  const ElementwiseOp op = to_elementwise_op(op_code);
  const DType dtype = storage_dtype(input, bfloat16, "input");
  const bool complex_input = input.dtype().kind() == 'c';
  if (complex_input && op != ElementwiseOp::L1) {
    throw py::type_error("input: complex input is only supported by the L1 loss");
  }
  const int64_t n = static_cast<int64_t>(input.size());
  const std::vector<int64_t> shape{n};
  require_buffer(input, dtype, shape, "input", complex_input);
  if (!target.is_none()) {
    require_buffer(py::reinterpret_borrow<py::array>(target), dtype, shape, "target", complex_input);
  }
  const Reduction reduction = to_reduction(reduction_code);
  const DType accum = accumulation_dtype(dtype);

  ElementwiseProblem problem{};
  problem.op = op;
  problem.dtype = dtype;
  problem.complex_input = complex_input;
  problem.input = input.data();
  problem.target = data_or_null(target);
  problem.target_scalar = target_scalar;
  problem.n = n;
  problem.param = param;
  problem.scale = scale;
  problem.weight = check_broadcast(weight, weight_period, weight_repeat, n, accum, "weight");
  problem.pos_weight =
      check_broadcast(pos_weight, pos_weight_period, pos_weight_repeat, n, accum, "pos_weight");
  if (complex_input &&
      (problem.weight.values || !grad_target.is_none() || target.is_none() || scale != 1.0)) {
    throw py::value_error(
        "input: complex L1 takes a target array and no weight, scale or grad_target");
  }
  problem.reduction = reduction;
  problem.mean_denominator = mean_denominator;
  problem.grad_output_scalar = grad_output_scalar;
  const OptionalBuffers buffers = check_optional_buffers(
      loss_out, grad_input, grad_output, reduction, dtype, shape, shape, complex_input);
  if (!grad_target.is_none()) {
    require_output(py::reinterpret_borrow<py::array>(grad_target), dtype, shape, "grad_target");
  }
  for (const py::object* grad : {&grad_input, &grad_target}) {
    if (grad->is_none()) continue;
    require_no_aliasing(py::reinterpret_borrow<py::array>(*grad), input,
                        {{"target", &target}, {"weight", &weight}, {"pos_weight", &pos_weight},
                         {"grad_output", &grad_output}, {"loss_out", &loss_out}});
  }
  if (!grad_input.is_none() && !grad_target.is_none() &&
      data_or_null(grad_input) == data_or_null(grad_target) && n > 0) {
    throw py::value_error("grad_target: must not be the same buffer as grad_input");
  }
  problem.grad_output = buffers.grad_output;
  problem.loss = buffers.loss;
  problem.grad_input = buffers.grad_input;
  problem.grad_target = mutable_data_or_null(grad_target);

  const ElementwiseResult result = run_elementwise(problem);
  for (const auto& [name, count] : {std::pair{"input", result.input_out_of_domain},
                                     std::pair{"target", result.target_out_of_domain}}) {
    if (count > 0) {
      throw py::value_error(std::string(name) + ": all elements of " + name +
                            " should be between 0 and 1 (" + std::to_string(count) + " are not)");
    }
  }
  return result.loss;
}

}  // namespace

void register_losses(py::module_& m) {
  m.def("cross_entropy", &cross_entropy, py::arg("input"), py::arg("target"), py::arg("weight"),
        py::arg("ignore_index"), py::arg("label_smoothing"), py::arg("reduction"),
        py::arg("loss_out"), py::arg("grad_input"), py::arg("grad_output"),
        py::arg("grad_output_scalar") = 1.0, py::arg("bfloat16") = false, py::arg("outer") = -1,
        py::arg("classes") = -1, py::arg("inner") = -1, py::arg("logit_scale") = 1.0,
        py::arg("softcap") = 0.0, py::arg("lse_square_scale") = 0.0, py::arg("lse_out") = py::none(),
        "Fused softmax cross-entropy (+ gradient) over (outer, C, inner) buffers. Without\n"
        "outer/classes/inner the input must be 3-d; with them, any C-contiguous array of\n"
        "outer * classes * inner elements (targets and outputs likewise by element count).\n"
        "The softmax runs on z = logit_scale * x, then softcap * tanh(z / softcap) when\n"
        "softcap > 0; lse_square_scale adds lse_square_scale * logsumexp(z)^2 per position\n"
        "that is not ignored; lse_out (accumulation dtype, (outer, inner)) receives\n"
        "logsumexp(z) per position, NaN where the target is ignored.");
  // The callers pass every argument by position: pybind11 matches keyword
  // arguments by name, which cost about 1.2 us for the first and 2 us for
  // eight (a 64-element call takes 0.4 us without any).
  m.def("elementwise", &elementwise, py::arg("op"), py::arg("input"), py::arg("target"),
        py::arg("reduction"), py::arg("loss_out"), py::arg("grad_input"), py::arg("grad_output"),
        py::arg("grad_output_scalar") = 1.0, py::arg("bfloat16") = false,
        py::arg("target_scalar") = 0.0, py::arg("param") = 0.0, py::arg("scale") = 1.0,
        py::arg("weight") = py::none(), py::arg("weight_period") = 1, py::arg("weight_repeat") = 1,
        py::arg("pos_weight") = py::none(), py::arg("pos_weight_period") = 1,
        py::arg("pos_weight_repeat") = 1, py::arg("mean_denominator") = 0.0,
        py::arg("grad_target") = py::none(),
        "An elementwise loss (op code from ELEMENTWISE_OPS) with its gradients over flat buffers.");
  py::dict ops;
#define FUSEDLOSS_OP_CODE(name, op, py_name) ops[py_name] = static_cast<int>(ElementwiseOp::name);
  FUSEDLOSS_ELEMENTWISE_OPS(FUSEDLOSS_OP_CODE)
#undef FUSEDLOSS_OP_CODE
  m.attr("ELEMENTWISE_OPS") = ops;
}

}  // namespace fusedloss::bindings
