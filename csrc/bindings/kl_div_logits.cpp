// pybind11 binding of the distillation KL kernel (kl_div_logits.h): buffers
// in, one kernel call with the GIL released, the reduced loss out.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>

#include "buffers.h"
#include "fusedloss/dispatch.h"

namespace fusedloss::bindings {

namespace {

double kl_div_with_logits(const py::array& input, const py::array& target, double temperature,
                          int reduction_code, const py::object& loss_out,
                          const py::object& grad_input, const py::object& grad_output,
                          double grad_output_scalar, bool bfloat16) {
  const DType dtype = storage_dtype(input, bfloat16, "input");
  if (input.ndim() != 2) throw py::value_error("input: expected a 2-d (rows, classes) array");
  const int64_t rows = input.shape(0), classes = input.shape(1);
  const std::vector<int64_t> shape{rows, classes}, loss_shape{rows};
  require_buffer(input, dtype, shape, "input");
  require_buffer(target, dtype, shape, "target");
  if (!(std::isfinite(temperature) && temperature > 0.0)) {
    throw py::value_error("temperature: expected a finite number > 0");
  }
  const Reduction reduction = to_reduction(reduction_code);
  const OptionalBuffers buffers = check_optional_buffers(
      loss_out, grad_input, grad_output, reduction, dtype, loss_shape, shape, false);
  if (!grad_input.is_none()) {
    const py::object target_obj = target;
    require_no_aliasing(py::reinterpret_borrow<py::array>(grad_input), input,
                        {{"target", &target_obj}, {"grad_output", &grad_output}, {"loss_out", &loss_out}});
  }
  KLDivLogitsProblem problem{};
  problem.dtype = dtype;
  problem.input = input.data();
  problem.target = target.data();
  problem.rows = rows;
  problem.classes = classes;
  problem.temperature = temperature;
  problem.reduction = reduction;
  problem.loss = buffers.loss;
  problem.grad_input = buffers.grad_input;
  problem.grad_output = buffers.grad_output;
  problem.grad_output_scalar = grad_output_scalar;

  const KLDivLogitsFn kernel = active_kernels().kl_div_logits;
  const int threads = get_num_threads();
  if (rows * classes < kKeepGilBelow) return kernel(problem, threads);
  py::gil_scoped_release release;
  return kernel(problem, threads);
}

}  // namespace

void register_kl_div_logits(py::module_& m) {
  m.def("kl_div_with_logits", &kl_div_with_logits, py::arg("input"), py::arg("target"),
        py::arg("temperature"), py::arg("reduction"), py::arg("loss_out"), py::arg("grad_input"),
        py::arg("grad_output"), py::arg("grad_output_scalar") = 1.0, py::arg("bfloat16") = false,
        "Distillation KL divergence T^2 KL(softmax(target/T) || softmax(input/T)) per row of\n"
        "(rows, classes) logits, and its gradient w.r.t. input. Reduction 1 (mean) divides\n"
        "by rows (batchmean).");
}

}  // namespace fusedloss::bindings
