// The common NumPy calls of cross-entropy and of the elementwise losses,
// recognised and run here so that a small call costs little more than its
// kernel (at 64 x 10 the kernel takes about 0.6 us; the elementwise losses'
// general route cost about 8 us a call). The Python layer checks weight,
// grad_output and inplace first.
//
// Cross-entropy: C-contiguous float32 or float64 (N, C) logits, C > 0;
// C-contiguous int64 (N,) class indices; reduction "mean" or "sum";
// ignore_index an int, label_smoothing a float in [0, 1]; out None (a new
// gradient) or a writeable C-contiguous array of the logits' dtype and shape
// that is the logits themselves or shares no memory with them or the targets.
// It returns (loss as a NumPy scalar of the logits' dtype, gradient or None),
// or None for any other call, which the general route then checks and runs
// (same kernel, same bits).
//
// Elementwise losses: input and target C-contiguous arrays of one dtype
// (float32 or float64) and one shape; reduction "mean" or "sum"; the op's
// parameter a float; out None or a writeable C-contiguous array of that dtype
// and shape sharing no memory with either (an in-place gradient takes the
// general route, which checks BCE's domain before overwriting the input). A
// call whose values lie outside the op's domain returns None: the general
// route runs it again and raises.
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

// "mean" or "sum", exactly str; false for anything else.
bool mean_or_sum(py::handle reduction, Reduction& red) {
  if (!PyUnicode_CheckExact(reduction.ptr())) return false;
  if (PyUnicode_CompareWithASCIIString(reduction.ptr(), "mean") == 0) {
    red = Reduction::Mean;
  } else if (PyUnicode_CompareWithASCIIString(reduction.ptr(), "sum") == 0) {
    red = Reduction::Sum;
  } else {
    return false;
  }
  return true;
}

bool same_shape(const py::array& a, const py::array& b) {
  if (a.ndim() != b.ndim()) return false;
  for (py::ssize_t d = 0; d < a.ndim(); ++d)
    if (a.shape(d) != b.shape(d)) return false;
  return true;
}

// (loss as a NumPy scalar of the input's dtype, gradient or None).
py::object loss_and_grad(bool f64, double total, py::object grad) {
  auto loss = py::reinterpret_steal<py::object>(
      f64 ? numpy_scalar(float64_type, total) : numpy_scalar(float32_type, static_cast<float>(total)));
  if (!loss) throw py::error_already_set();
  py::tuple pair(2);
  PyTuple_SET_ITEM(pair.ptr(), 0, loss.release().ptr());
  PyTuple_SET_ITEM(pair.ptr(), 1, grad.release().ptr());
  return std::move(pair);
}

// The call's work on borrowed references: the result, or None (not the common call).
py::object common_call(PyObject* const* args) {
  const py::handle input = args[0], target = args[1], out = args[2], reduction = args[3],
                   ignore_index = args[4], label_smoothing = args[5];
  const bool want_grad = args[6] == Py_True;
  const bool f64 = exact_array(input, float64_dtype);
  Reduction red;
  if (!(f64 || exact_array(input, float32_dtype)) || !exact_array(target, int64_dtype) ||
      !mean_or_sum(reduction, red) || !PyLong_CheckExact(ignore_index.ptr()) ||
      !PyFloat_CheckExact(label_smoothing.ptr())) {
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
  return loss_and_grad(f64, run_cross_entropy(problem), std::move(grad));
}

py::object elementwise_call(PyObject* const* args) {
  const py::handle op = args[0], input = args[1], target = args[2], out = args[3], reduction = args[4],
                   param = args[5];
  const bool want_grad = args[6] == Py_True;
  const bool f64 = exact_array(input, float64_dtype);
  const py::handle dtype = f64 ? float64_dtype : float32_dtype;
  Reduction red;
  if (!(f64 || exact_array(input, float32_dtype)) || !exact_array(target, dtype) || !mean_or_sum(reduction, red) ||
      !PyLong_CheckExact(op.ptr()) || !PyFloat_CheckExact(param.ptr())) {
    return py::none();
  }
  const auto x = py::reinterpret_borrow<py::array>(input);
  const auto t = py::reinterpret_borrow<py::array>(target);
  const int c_style = py::array::c_style;
  if (!same_shape(x, t) || !(x.flags() & c_style) || !(t.flags() & c_style)) return py::none();
  const auto bytes = static_cast<uintptr_t>(x.nbytes());
  py::object grad = py::none();
  if (want_grad) {
    if (out.is_none()) {
      grad = py::array(x.dtype(), std::vector<py::ssize_t>(x.shape(), x.shape() + x.ndim()));
    } else {
      if (!exact_array(out, dtype)) return py::none();
      const auto g = py::reinterpret_borrow<py::array>(out);
      if (!same_shape(g, x) || !(g.flags() & c_style) || !g.writeable() || overlap(g.data(), x.data(), bytes, bytes) ||
          overlap(g.data(), t.data(), bytes, bytes)) {
        return py::none();
      }
      grad = g;
    }
  }
  ElementwiseProblem problem{};
  problem.op = to_elementwise_op(static_cast<int>(PyLong_AsLong(op.ptr())));
  problem.dtype = f64 ? DType::Float64 : DType::Float32;
  problem.input = x.data();
  problem.target = t.data();
  problem.n = static_cast<int64_t>(x.size());
  problem.param = PyFloat_AS_DOUBLE(param.ptr());
  problem.scale = 1.0;
  problem.reduction = red;
  problem.grad_output_scalar = 1.0;
  problem.grad_input = grad.is_none() ? nullptr : py::reinterpret_borrow<py::array>(grad).mutable_data();
  const ElementwiseResult result = run_elementwise(problem);
  if (result.input_out_of_domain || result.target_out_of_domain) return py::none();
  return loss_and_grad(f64, result.loss, std::move(grad));
}

// A METH_FASTCALL function of 7 positional arguments running `call`.
template <py::object (*call)(PyObject* const*)>
PyObject* fast_call(const char* name, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 7) {
    PyErr_Format(PyExc_TypeError, "%s: expected 7 positional arguments, got %zd", name, nargs);
    return nullptr;
  }
  try {
    return call(args).release().ptr();
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

// cross_entropy_common(input, target, out, reduction, ignore_index,
// label_smoothing, want_grad), positional only.
PyObject* cross_entropy_common(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return fast_call<common_call>("cross_entropy_common", args, nargs);
}

// elementwise_common(op, input, target, out, reduction, param, want_grad), positional only.
PyObject* elementwise_common(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  return fast_call<elementwise_call>("elementwise_common", args, nargs);
}

PyMethodDef common_call_def = {
    "cross_entropy_common", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&cross_entropy_common)),
    METH_FASTCALL,
    "cross_entropy_common(input, target, out, reduction, ignore_index, label_smoothing, want_grad)\n"
    "--\n\n"
    "The common NumPy cross-entropy call ((N, C) float32/float64 logits, int64 targets,\n"
    "mean or sum): (loss, gradient or None), or None when the call is not that case."};

PyMethodDef elementwise_call_def = {
    "elementwise_common", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&elementwise_common)),
    METH_FASTCALL,
    "elementwise_common(op, input, target, out, reduction, param, want_grad)\n"
    "--\n\n"
    "The common NumPy call of an elementwise loss (float32/float64 input and target of one\n"
    "shape, mean or sum): (loss, gradient or None), or None when the call is not that case."};

}  // namespace

void register_small_call(py::module_& m) {
  const py::module_ numpy = py::module_::import("numpy");
  ndarray_type = py::object(numpy.attr("ndarray")).release();
  float32_type = py::object(numpy.attr("float32")).release();
  float64_type = py::object(numpy.attr("float64")).release();
  float32_dtype = py::dtype::of<float>().release();
  float64_dtype = py::dtype::of<double>().release();
  int64_dtype = py::dtype::of<int64_t>().release();
  for (PyMethodDef* def : {&common_call_def, &elementwise_call_def}) {
    PyObject* fn = PyCFunction_NewEx(def, nullptr, m.attr("__name__").ptr());
    if (!fn) throw py::error_already_set();
    m.add_object(def->ml_name, py::reinterpret_steal<py::object>(fn));
  }
}

}  // namespace fusedloss::bindings
