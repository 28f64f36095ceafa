// The compiled module fusedloss._core: registers the loss bindings and the
// runtime controls (threads, instruction set).
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#include "fusedloss/dispatch.h"

namespace py = pybind11;

namespace fusedloss::bindings {
void register_losses(py::module_& m);
}

PYBIND11_MODULE(_core, m) {
  m.doc() = "fusedloss compiled kernels (buffer level; see fusedloss._api for the user API)";
  fusedloss::bindings::register_losses(m);

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
}
