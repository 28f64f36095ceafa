"""fusedloss.torch on PyTorch's own test inputs.

Every sample that torch's operator database (``OpInfo``, what torch's
test_ops.py runs) gives for ``nn.functional.cross_entropy`` and each
elementwise loss (``fusedloss._losses.ELEMENTWISE_LOSSES``: ``mse_loss``,
``l1_loss``, ``huber_loss``, ...), ``nll_loss`` and ``multi_margin_loss``, in every dtype fusedloss takes, and every
sample its module database (``ModuleInfo``, test_modules.py) gives for their
modules (``CrossEntropyLoss``, ``MSELoss``, ...). The reference is torch itself in float64
(complex128) on the very same values; loss and every gradient (input, and
probability targets where they require grad) are compared under the
tolerances of test_torch.py (float64 1e-9 relative, float32 1e-5, half types
4 eps, each with an absolute floor scaled by the reference's magnitude), or
must lie no further from the reference than twice torch's own result at the
sample's dtype. The samples are random: each test seeds torch's generator.
Warnings (kl_div's note on reduction="mean", deprecated arguments) must be
torch's own.
"""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

import fusedloss.torch as flt  # noqa: E402
from fusedloss._losses import ELEMENTWISE_LOSSES  # noqa: E402
from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

CLASS_LOSSES = [("nll_loss", "NLLLoss"), ("multi_margin_loss", "MultiMarginLoss")]
OURS = {f"nn.functional.{name}": getattr(flt, name)
        for name in ["cross_entropy", *(loss.name for loss in ELEMENTWISE_LOSSES),
                     *(name for name, _ in CLASS_LOSSES)]}
OUR_MODULES = {getattr(torch.nn, name): getattr(flt, name)
               for name in ["CrossEntropyLoss", *(loss.module for loss in ELEMENTWISE_LOSSES),
                            *(module for _, module in CLASS_LOSSES)]}
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.complex64,
          torch.complex128]
OP_CASES = [
    pytest.param(op, dtype, id=f"{op.name.split('.')[-1]}-{str(dtype).split('.')[-1]}")
    for op in op_db
    if op.name in OURS and not op.variant_test_name
    for dtype in DTYPES
    if dtype in op.dtypes
]
MODULE_CASES = [
    pytest.param(info, dtype, id=f"{info.module_cls.__name__}-{str(dtype).split('.')[-1]}")
    for info in module_db
    if info.module_cls in OUR_MODULES
    for dtype in (torch.float32, torch.float64)
]


def test_the_databases_cover_every_loss():
    assert {op.name for op in op_db if op.name in OURS} == set(OURS)
    assert {info.module_cls for info in module_db if info.module_cls in OUR_MODULES} == set(
        OUR_MODULES
    )


def _map_tensors(obj, fn):
    """fn applied to every tensor in obj, recursively through lists, tuples and dicts."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (list, tuple)):
        return type(obj)(_map_tensors(o, fn) for o in obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    return obj


def _widen_tensor(t):
    if t.is_complex():
        return t.detach().to(torch.complex128).requires_grad_(t.requires_grad)
    if t.is_floating_point():
        return t.detach().double().requires_grad_(t.requires_grad)
    return t


def _widen(obj):
    """Floating tensors in obj to float64 / complex128."""
    return _map_tensors(obj, _widen_tensor)


def _fresh(obj):
    """Leaf copies of the tensors in obj (so each run builds its own graph)."""
    return _map_tensors(obj, lambda t: t.detach().clone().requires_grad_(t.requires_grad))


def _warned(call, caught):
    """call(), its warnings appended to ``caught`` as (category, text)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = call()
    caught += [(w.category, str(w.message)) for w in record]
    return result


def _loss_and_grads(fn, args, kwargs, grad_output, caught):
    """fn(*args, **kwargs) and the gradients of sum(grad_output * loss) with respect
    to every tensor argument that requires grad; its warnings are appended to ``caught``."""
    args, kwargs = _fresh(args), _fresh(kwargs)
    loss = _warned(lambda: fn(*args, **kwargs), caught)
    wrt = [a for a in (*args, *kwargs.values())
           if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(loss, wrt, grad_output.to(loss.dtype)) if wrt else ()
    return [loss.detach(), *grads]


def _tolerances(dtype):
    if dtype in (torch.float64, torch.complex128):
        return 1e-9, 1e-12
    if dtype in (torch.float32, torch.complex64):
        return 1e-5, 1e-6
    eps = torch.finfo(dtype).eps
    return 4 * eps, 4 * eps


def _compare(ours, ref, torch_own, dtype, what):
    """Each of ours within the tolerances of the float64 reference, or no further from
    it than twice torch's own result at the same dtype (cancellation, as in a confident
    row's p_target - 1, costs torch the same absolute error)."""
    assert len(ours) == len(ref), f"{what}: {len(ours)} results, torch {len(ref)}"
    rtol, atol = _tolerances(dtype)
    for k, (a, b, t) in enumerate(zip(ours, ref, torch_own)):
        name = "loss" if k == 0 else f"grad {k - 1}"
        assert a.shape == b.shape, f"{what} {name}: shape {tuple(a.shape)} != {tuple(b.shape)}"
        a, t = a.to(b.dtype), t.to(b.dtype)
        finite = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), finite), f"{what} {name}: NaN/inf positions differ"
        assert torch.equal(a[~finite].nan_to_num(), b[~finite].nan_to_num()), f"{what} {name}: inf"
        if not finite.any():
            continue
        if (a[finite] - b[finite]).abs().max() <= 2 * (t[finite] - b[finite]).abs().max():
            continue
        scale = float(b[finite].abs().max())
        torch.testing.assert_close(
            a, b, rtol=rtol, atol=atol * max(scale, 1e-30), equal_nan=True,
            msg=lambda m, name=name: f"{what} {name}: {m}",
        )


def _grad_output(loss_shape, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(loss_shape, generator=g, dtype=torch.float64) + 0.5


def _describe(args, kwargs):
    def d(o):
        return f"{tuple(o.shape)} {o.dtype}" if isinstance(o, torch.Tensor) else repr(o)

    return f"args {[d(a) for a in args]} kwargs { {k: d(v) for k, v in kwargs.items()} }"


@pytest.mark.parametrize("op, dtype", OP_CASES)
def test_opinfo_samples_match_torch(op, dtype):
    torch.manual_seed(0)  # the samples are random
    samples = list(op.sample_inputs("cpu", dtype, requires_grad=True))
    assert samples, "torch gave no samples"
    ours_fn = OURS[op.name]
    for i, s in enumerate(samples):
        args = (s.input, *s.args)
        what = f"sample {i}: {_describe(args, s.kwargs)}"
        theirs_warned, ours_warned = [], []
        with torch.no_grad():  # torch at the sample's own dtype: the loss's dtype and shape
            expected = _warned(lambda: op.op(*_fresh(args), **_fresh(s.kwargs)), theirs_warned)
        go = _grad_output(expected.shape, i)
        ref = _loss_and_grads(op.op, _widen(args), _widen(s.kwargs), go, [])
        ours = _loss_and_grads(ours_fn, args, s.kwargs, go, ours_warned)
        assert ours[0].dtype == expected.dtype, f"{what}: loss dtype {ours[0].dtype}"
        assert ours_warned == theirs_warned, f"{what}: warnings"
        _compare(ours, ref, _loss_and_grads(op.op, args, s.kwargs, go, []), dtype, what)


@pytest.mark.parametrize("info, dtype", MODULE_CASES)
def test_moduleinfo_samples_match_torch(info, dtype):
    torch.manual_seed(0)  # the inputs are random
    inputs = info.module_inputs_func(info, device="cpu", dtype=dtype, requires_grad=True,
                                     training=True)
    inputs = [m for m in inputs if m.forward_input is not None]
    assert inputs, "torch gave no module inputs"
    ours_cls = OUR_MODULES[info.module_cls]
    for i, m in enumerate(inputs):
        ctor, fwd = m.constructor_input, m.forward_input
        what = f"input {i}: constructor {_describe(ctor.args, ctor.kwargs)}, forward " + _describe(
            fwd.args, fwd.kwargs
        )
        ours_warned, theirs_warned, ignored = [], [], []
        ref_module = _warned(lambda: info.module_cls(*_widen(ctor.args), **_widen(ctor.kwargs)),
                             ignored)
        our_module = _warned(lambda: ours_cls(*ctor.args, **ctor.kwargs), ours_warned)
        their_module = _warned(lambda: info.module_cls(*ctor.args, **ctor.kwargs), theirs_warned)
        assert isinstance(our_module, info.module_cls)
        with torch.no_grad():
            shape = _warned(lambda: ref_module(*_widen(fwd.args), **_widen(fwd.kwargs)),
                            ignored).shape
        go = _grad_output(shape, i)
        ref = _loss_and_grads(ref_module, _widen(fwd.args), _widen(fwd.kwargs), go, ignored)
        ours = _loss_and_grads(our_module, fwd.args, fwd.kwargs, go, ours_warned)
        theirs = _loss_and_grads(their_module, fwd.args, fwd.kwargs, go, theirs_warned)
        assert ours_warned == theirs_warned, f"{what}: warnings"
        _compare(ours, ref, theirs, dtype, what)
