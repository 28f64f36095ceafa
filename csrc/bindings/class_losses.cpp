// pybind11 bindings of the losses over class indices (class_losses.h):
// nll_loss and multi_margin_loss. Buffers in, one kernel call (the GIL
// released for big inputs), the reduced loss out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>

#include "buffers.h"
#include "fusedloss/dispatch.h"

namespace fusedloss::bindings {

namespace {

struct Buffers {
  const py::array& input;
  const py::array& target;
  const py::object& weight;
  const py::object& loss_out;
  const py::object& grad_input;
  const py::object& grad_output;
};

// Checks the buffers against the problem's geometry, runs `kernel` on them and
// turns a bad target into an IndexError naming it (nothing was written then).
double run(ClassLossFn KernelTable::*kernel, ClassLossProblem& problem, const Buffers& b,
           int reduction_code, bool ignores) {
  const std::vector<int64_t> input_shape{problem.outer, problem.classes, problem.inner};
  const std::vector<int64_t> loss_shape{problem.outer, problem.inner};
  require_buffer(b.input, problem.dtype, input_shape, "input");
  if (!b.target.dtype().equal(py::dtype::of<int64_t>())) {
    throw py::type_error("target: expected int64 class indices, got " +
                         std::string(py::str(b.target.dtype())));
  }
  require_layout(b.target, loss_shape, "target");
  problem.reduction = to_reduction(reduction_code);
  problem.input = b.input.data();
  problem.target = static_cast<const int64_t*>(b.target.data());
  if (!b.weight.is_none()) {
    require_buffer(py::reinterpret_borrow<py::array>(b.weight), accumulation_dtype(problem.dtype),
                   {problem.classes}, "weight");
    problem.weight = data_or_null(b.weight);
  }
  const OptionalBuffers out = check_optional_buffers(b.loss_out, b.grad_input, b.grad_output,
                                                     problem.reduction, problem.dtype, loss_shape,
                                                     input_shape, false);
  if (!b.grad_input.is_none()) {
    const py::object target_obj = b.target;
    require_no_aliasing(py::reinterpret_borrow<py::array>(b.grad_input), b.input,
                        {{"target", &target_obj}, {"weight", &b.weight},
                         {"grad_output", &b.grad_output}, {"loss_out", &b.loss_out}});
  }
  problem.grad_output = out.grad_output;
  problem.loss = out.loss;
  problem.grad_input = out.grad_input;

  const ClassLossFn fn = active_kernels().*kernel;
  const int threads = get_num_threads();
  CrossEntropyResult result;
  if (problem.outer * problem.classes * problem.inner < kKeepGilBelow) {
    result = fn(problem, threads);
  } else {
    py::gil_scoped_release release;
    result = fn(problem, threads);
  }
  if (result.bad_target_position >= 0) {
    const int64_t value = problem.target[result.bad_target_position];
    throw py::index_error(
        "target: class index " + std::to_string(value) + " at flat position " +
        std::to_string(result.bad_target_position) + " is out of range [0, " +
        std::to_string(problem.classes) + ")" +
        (ignores ? " and is not ignore_index (" + std::to_string(problem.ignore_index) + ")" : ""));
  }
  return result.loss;
}

double nll(const py::array& input, const py::array& target, const py::object& weight,
           int64_t ignore_index, int reduction, const py::object& loss_out,
           const py::object& grad_input, const py::object& grad_output,
           double grad_output_scalar, bool bfloat16, int64_t outer, int64_t classes,
           int64_t inner) {
  ClassLossProblem problem{};
  problem.dtype = storage_dtype(input, bfloat16, "input");
  resolve_geometry(input, outer, classes, inner);
  problem.outer = outer;
  problem.classes = classes;
  problem.inner = inner;
  problem.ignore_index = ignore_index;
  problem.grad_output_scalar = grad_output_scalar;
  return run(&KernelTable::nll, problem,
             {input, target, weight, loss_out, grad_input, grad_output}, reduction, true);
}

double multi_margin(const py::array& input, const py::array& target, const py::object& weight,
                    int p, double margin, int reduction, const py::object& loss_out,
                    const py::object& grad_input, const py::object& grad_output,
                    double grad_output_scalar, bool bfloat16) {
  ClassLossProblem problem{};
  problem.dtype = storage_dtype(input, bfloat16, "input");
  if (input.ndim() != 2) throw py::value_error("input: expected a 2-d (N, C) array");
  if (p != 1 && p != 2) throw py::value_error("p: expected 1 or 2, got " + std::to_string(p));
  problem.outer = input.shape(0);
  problem.classes = input.shape(1);
  problem.inner = 1;
  problem.p = p;
  problem.margin = margin;
  problem.grad_output_scalar = grad_output_scalar;
  return run(&KernelTable::multi_margin, problem,
             {input, target, weight, loss_out, grad_input, grad_output}, reduction, false);
}

}  // namespace

void register_class_losses(py::module_& m) {
  m.def("nll", &nll, py::arg("input"), py::arg("target"), py::arg("weight"),
        py::arg("ignore_index"), py::arg("reduction"), py::arg("loss_out"),
        py::arg("grad_input"), py::arg("grad_output"), py::arg("grad_output_scalar") = 1.0,
        py::arg("bfloat16") = false, py::arg("outer") = -1, py::arg("classes") = -1,
        py::arg("inner") = -1,
        "Negative log-likelihood (+ gradient) over (outer, C, inner) buffers of\n"
        "log-probabilities; geometry and target layout as cross_entropy.");
  m.def("multi_margin", &multi_margin, py::arg("input"), py::arg("target"), py::arg("weight"),
        py::arg("p"), py::arg("margin"), py::arg("reduction"), py::arg("loss_out"),
        py::arg("grad_input"), py::arg("grad_output"), py::arg("grad_output_scalar") = 1.0,
        py::arg("bfloat16") = false,
        "Multi-class margin (hinge) loss (+ gradient) over a 2-d (N, C) input buffer and\n"
        "int64 targets of N elements; p is 1 or 2.");
}

}  // namespace fusedloss::bindings
