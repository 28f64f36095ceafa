// The compiled module fusedloss._core: registers the loss bindings and the
// runtime controls (threads, instruction set).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <exception>
#include <iterator>
#include <new>
#include <string>

#include "fusedloss/dispatch.h"

namespace py = pybind11;

namespace fusedloss::bindings {
void register_losses(py::module_& m);
void register_class_losses(py::module_& m);
void register_kl_div_logits(py::module_& m);
void register_small_call(py::module_& m);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedloss compiled kernels (buffer level; see fusedloss._api for the user API)";
  fusedloss::bindings::register_losses(m);
  fusedloss::bindings::register_class_losses(m);
  fusedloss::bindings::register_kl_div_logits(m);
  fusedloss::bindings::register_small_call(m);
  // The kernels' scratch allocations throw std::bad_alloc (before any thread
  // starts): a MemoryError that says what could not be allocated.
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::bad_alloc&) {
      PyErr_SetString(PyExc_MemoryError, "fusedloss: out of memory for the kernel's scratch buffers");
    }
  });

  m.def("get_num_threads", &fusedloss::get_num_threads, "Threads the kernels use.");
  m.def(
      "set_num_threads",
      [](int threads) {
        if (threads < 1) throw py::value_error("threads: expected an integer >= 1");
        fusedloss::set_num_threads(threads);
      },
      py::arg("threads"));
  m.def("cpu_capability", [] { return std::string(fusedloss::active_kernels().name); },
        "The instruction set the kernels run with.");
  m.def("supported_capabilities", &fusedloss::supported_capabilities,
        "Instruction sets this CPU and OS can run, best last.");
  m.def(
      "set_capability",
      [](const std::string& name) {
        if (!fusedloss::set_capability(name)) {
          throw py::value_error("capability: '" + name + "' is unknown or not supported here");
        }
      },
      py::arg("name"), "Force a compiled path (for tests).");
  m.def(
      "elementwise_math",
      [](const std::string& op, const py::array& values) {
        const bool is_double = values.dtype().equal(py::dtype::of<double>());
        if (!is_double && !values.dtype().equal(py::dtype::of<float>())) {
          throw py::type_error("values: expected a float32 or float64 array");
        }
        if (!(values.flags() & py::array::c_style)) {
          throw py::value_error("values: must be C-contiguous");
        }
        struct Named {
          const char* name;
          fusedloss::MathOp op;
          bool float_only;  // a float32 polynomial (math.h), without a float64 form
        };
        static const Named kOps[] = {{"exp", fusedloss::MathOp::Exp, false},
                                     {"log", fusedloss::MathOp::Log, false},
                                     {"tanh", fusedloss::MathOp::Tanh, false},
                                     {"log1p_unit", fusedloss::MathOp::Log1pUnit, true},
                                     {"log1p_neg_half", fusedloss::MathOp::Log1pNegHalf, true}};
        const Named* found = std::find_if(std::begin(kOps), std::end(kOps),
                                          [&op](const Named& entry) { return op == entry.name; });
        if (found == std::end(kOps)) {
          std::string names;
          for (const Named& entry : kOps) names += std::string(names.empty() ? "'" : ", '") + entry.name + "'";
          throw py::value_error("op: expected one of " + names);
        }
        if (is_double && found->float_only) {
          throw py::type_error("values: '" + op + "' is a float32 polynomial; expected a float32 array");
        }
        py::array result(values.dtype(), std::vector<py::ssize_t>(values.shape(),
                                                                  values.shape() + values.ndim()));
        const auto n = static_cast<int64_t>(values.size());
        const void* in = values.data();
        void* out = result.mutable_data();
        const fusedloss::KernelTable& kernels = fusedloss::active_kernels();
        {
          py::gil_scoped_release release;
          kernels.math(found->op, is_double ? fusedloss::DType::Float64 : fusedloss::DType::Float32,
                       in, out, n);
        }
        return result;
      },
      py::arg("op"), py::arg("values"),
      "The kernels' own exp, log or tanh (or a float32 log1p polynomial), elementwise, on the\n"
      "active path (for tests).");
}
