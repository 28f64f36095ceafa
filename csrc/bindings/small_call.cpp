// The common NumPy call of cross-entropy, recognised and run here so that a
// small call costs little more than its kernel (at 64 x 10 the kernel takes
// about 0.6 us). The Python layer checks weight, grad_output and inplace
// first; this takes C-contiguous float32 or float64 (N, C) logits, C > 0;
// C-contiguous int64 (N,) class indices; reduction "mean" or "sum";
// ignore_index an int, label_smoothing a float in [0, 1]; out None (a new
// gradient) or a writeable C-contiguous array of the logits' dtype and shape
// that is the logits themselves or shares no memory with them or the targets.
// It returns (loss as a NumPy scalar of the logits' dtype, gradient or None),
// or None for any other call, which the general route then checks and runs
// (same kernel, same bits).
//
// Raw CPython where the rest of the bindings use pybind11: a METH_FASTCALL
// function on borrowed references, the kernel's problem filled from what was
// checked here, and the NumPy scalar made as NumPy's own PyArrayScalar_New
// does. pybind11's dispatcher, the general binding's checks and
// `dtype.type(loss)` took about 0.5 us of the 1.4 us a 64 x 10 call cost.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <utility>
#include <vector>

#include "buffers.h"

namespace fusedloss::bindings {

namespace {

// numpy.ndarray, the dtypes this path takes and the scalar types it returns;
// set once by register_small_call (while the module imports: no lazy static
// that calls into Python from two threads) and kept for good (no destructor
// after the interpreter has finished).
py::handle ndarray_type, float32_dtype, float64_dtype, int64_dtype, float32_type, float64_type;

// Whether `obj` is exactly an ndarray (not a subclass) whose dtype equals
// `dtype` (byte order included: Python's `type(a) is np.ndarray and a.dtype ==
// dtype`).
bool exact_array(py::handle obj, py::handle dtype) {
  return Py_TYPE(obj.ptr()) == reinterpret_cast<PyTypeObject*>(ndarray_type.ptr()) &&
         py::reinterpret_borrow<py::array>(obj).dtype().equal(py::reinterpret_borrow<py::dtype>(dtype));
}

bool overlap(const void* a, const void* b, uintptr_t bytes_a, uintptr_t bytes_b) {
  const auto pa = reinterpret_cast<uintptr_t>(a), pb = reinterpret_cast<uintptr_t>(b);
  return pa < pb + bytes_b && pb < pa + bytes_a;
}

// The layout NumPy's arrayscalars.h gives np.float32 and np.float64
// (PyFloatScalarObject, PyDoubleScalarObject): the object head, then the value.
template <class T> struct NumpyScalar {
  PyObject_HEAD
  T obval;
};

template <class T> PyObject* numpy_scalar(py::handle type, T value) {
  auto* cls = reinterpret_cast<PyTypeObject*>(type.ptr());
  PyObject* scalar = cls->tp_alloc(cls, 0);
  if (scalar) reinterpret_cast<NumpyScalar<T>*>(scalar)->obval = value;
  return scalar;
}

// The call's work on borrowed references: the result, or None (not the common call).
py::object common_call(PyObject* const* args) {
  const py::handle input = args[0], target = args[1], out = args[2], reduction = args[3],
                   ignore_index = args[4], label_smoothing = args[5];
  const bool want_grad = args[6] == Py_True;
  const bool f64 = exact_array(input, float64_dtype);
  if (!(f64 || exact_array(input, float32_dtype)) || !exact_array(target, int64_dtype) ||
      !PyUnicode_CheckExact(reduction.ptr()) || !PyLong_CheckExact(ignore_index.ptr()) ||
      !PyFloat_CheckExact(label_smoothing.ptr())) {
    return py::none();
  }
  Reduction red;
  if (PyUnicode_CompareWithASCIIString(reduction.ptr(), "mean") == 0) {
    red = Reduction::Mean;
  } else if (PyUnicode_CompareWithASCIIString(reduction.ptr(), "sum") == 0) {
    red = Reduction::Sum;
  } else {
    return py::none();
  }
  int overflow = 0;
  const long long ignore = PyLong_AsLongLongAndOverflow(ignore_index.ptr(), &overflow);
  const double smoothing = PyFloat_AS_DOUBLE(label_smoothing.ptr());
  const auto x = py::reinterpret_borrow<py::array>(input);
  const auto t = py::reinterpret_borrow<py::array>(target);
  const int c_style = py::array::c_style;
  if (overflow || !(smoothing >= 0.0 && smoothing <= 1.0) || x.ndim() != 2 || x.shape(1) == 0 ||
      t.ndim() != 1 || t.shape(0) != x.shape(0) || !(x.flags() & c_style) || !(t.flags() & c_style)) {
    return py::none();
  }
  const int64_t rows = x.shape(0), classes = x.shape(1);
  const auto x_bytes = static_cast<uintptr_t>(x.nbytes()), t_bytes = static_cast<uintptr_t>(t.nbytes());
  py::object grad = py::none();
  if (want_grad) {
    if (out.is_none()) {
      grad = py::array(x.dtype(), std::vector<py::ssize_t>{rows, classes});
    } else {
      if (!exact_array(out, f64 ? float64_dtype : float32_dtype)) return py::none();
      const auto g = py::reinterpret_borrow<py::array>(out);
      if (g.ndim() != 2 || g.shape(0) != rows || g.shape(1) != classes || !(g.flags() & c_style) ||
          !g.writeable() || overlap(g.data(), t.data(), x_bytes, t_bytes) ||
          (g.data() != x.data() && overlap(g.data(), x.data(), x_bytes, x_bytes))) {
        return py::none();
      }
      grad = g;
    }
  }
  CrossEntropyProblem problem{};
  problem.dtype = f64 ? DType::Float64 : DType::Float32;
  problem.input = x.data();
  problem.outer = rows;
  problem.classes = classes;
  problem.inner = 1;
  problem.target_index = static_cast<const int64_t*>(t.data());
  problem.ignore_index = ignore;
  problem.label_smoothing = smoothing;
  problem.reduction = red;
  problem.grad_input = grad.is_none() ? nullptr : py::reinterpret_borrow<py::array>(grad).mutable_data();
  problem.grad_output_scalar = 1.0;
  const double total = run_cross_entropy(problem);
  auto loss = py::reinterpret_steal<py::object>(
      f64 ? numpy_scalar(float64_type, total) : numpy_scalar(float32_type, static_cast<float>(total)));
  if (!loss) throw py::error_already_set();
  py::tuple pair(2);
  PyTuple_SET_ITEM(pair.ptr(), 0, loss.release().ptr());
  PyTuple_SET_ITEM(pair.ptr(), 1, grad.release().ptr());
  return std::move(pair);
}

// cross_entropy_common(input, target, out, reduction, ignore_index,
// label_smoothing, want_grad), positional only.
PyObject* cross_entropy_common(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 7) {
    PyErr_Format(PyExc_TypeError, "cross_entropy_common: expected 7 positional arguments, got %zd", nargs);
    return nullptr;
  }
  try {
    return common_call(args).release().ptr();
  } catch (py::error_already_set& e) {
    e.restore();
    return nullptr;
  } catch (...) {
    // pybind11's own translation (IndexError, MemoryError), the one its dispatcher
    // applies (pybind11 >= 2.13.6, pyproject.toml).
    py::detail::try_translate_exceptions();
    return nullptr;
  }
}

PyMethodDef common_call_def = {
    "cross_entropy_common", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cross_entropy_common)),
    METH_FASTCALL,
    "cross_entropy_common(input, target, out, reduction, ignore_index, label_smoothing, want_grad)\n"
    "--\n\n"
    "The common NumPy cross-entropy call ((N, C) float32/float64 logits, int64 targets,\n"
    "mean or sum): (loss, gradient or None), or None when the call is not that case."};

}  // namespace

void register_small_call(py::module_& m) {
  const py::module_ numpy = py::module_::import("numpy");
  ndarray_type = py::object(numpy.attr("ndarray")).release();
  float32_type = py::object(numpy.attr("float32")).release();
  float64_type = py::object(numpy.attr("float64")).release();
  float32_dtype = py::dtype::of<float>().release();
  float64_dtype = py::dtype::of<double>().release();
  int64_dtype = py::dtype::of<int64_t>().release();
  PyObject* fn = PyCFunction_NewEx(&common_call_def, nullptr, m.attr("__name__").ptr());
  if (!fn) throw py::error_already_set();
  m.add_object("cross_entropy_common", py::reinterpret_steal<py::object>(fn));
}

}  // namespace fusedloss::bindings
