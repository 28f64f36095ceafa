"""The elementwise losses of fusedloss.torch against torch.nn.functional and torch.nn,
for every loss in ``fusedloss._losses.ELEMENTWISE_LOSSES``: values, input and target
gradients under a random upstream gradient, options, weights, modules, autograd
corner cases, torch.compile, autocast and the fallbacks to torch's own code.

The reference is torch itself, never fusedloss. Tolerances:

* float64: against torch float64, ``rtol=1e-10``, ``atol=1e-12 * max|ref|``
  (conftest.assert_matches: the same float64 formulas, a few ULP apart);
* float32: no less accurate than torch's float32 against torch float64 on the same
  values: ``max|ours - ref| <= max(2 * max|torch32 - ref|, 4 eps32 max|ref|)``
  (conftest.assert_matches), NaN and inf where torch's float32 has them;
* float16 / bfloat16: against torch computing in float32 on the same (exactly
  widened) values, the result cast to the half type: ``rtol = 2 eps`` and
  ``atol = 2 eps * max|ref|`` (eps = 2**-10 / 2**-7). Both round a float32 result
  once (0.5 ULP each); our gradient is rounded once more when backward scales it by
  the upstream gradient (0.5 ULP), so the two lie at most 1.5 ULP apart.

NaN and +-inf must sit where torch puts them, with torch's sign.
"""

from __future__ import annotations

import inspect
import itertools
import warnings
import zlib
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402

import fusedloss.torch as flt  # noqa: E402
from fusedloss import _torch_elementwise  # noqa: E402
from fusedloss._losses import ELEMENTWISE_BY_NAME, ELEMENTWISE_LOSSES, ElementwiseLoss  # noqa: E402

from conftest import assert_matches, elementwise_values, option_sets  # noqa: E402

LOSS_IDS = [loss.name for loss in ELEMENTWISE_LOSSES]
HALF = (torch.float16, torch.bfloat16)
DTYPES = (torch.float32, torch.float64, *HALF)
SHAPE = (4, 3, 7)
FACTORS = ("weight", "pos_weight")  # per-element factors that broadcast against the input
# Factor shapes against SHAPE: broadcasting ones, the full shape, and ones torch refuses.
FACTOR_SHAPES = [(), (1,), (7,), (3, 1), (3, 7), (4, 1, 1), (4, 1, 7), SHAPE, (5,), (2, 3, 7),
                 (1, 4, 3, 7)]
NP_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}


def _seed(*parts: Any) -> int:
    return zlib.crc32(repr(parts).encode())


def _tensor_options(options: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    return {k: v.to(dtype) if isinstance(v, torch.Tensor) else v for k, v in options.items()}


def _signature(loss: ElementwiseLoss) -> set[str]:
    return set(inspect.signature(getattr(F, loss.name)).parameters)


def loss_values(loss: ElementwiseLoss, shape, dtype, seed, options=None):
    """(input, target) of ``dtype`` for ``loss``: its kinds of values (see
    conftest.elementwise_values) plus the places where the formulas change: input
    equal to target (L1's kink), a difference of exactly +-delta / beta, and the
    probability edges with targets 1 - input (BCE's clamped logs, KL's zero target)."""
    rng = np.random.default_rng(seed)
    x = elementwise_values(loss.input_kind, rng, shape, np.float64)
    t = elementwise_values(loss.target_kind, rng, shape, np.float64)
    flat_x, flat_t = x.reshape(-1), t.reshape(-1)
    if loss.input_kind == "real" and loss.target_kind == "real" and x.size >= 4:
        p = next((v for k, v in (options or {}).items() if k in ("delta", "beta") and v), 1.0)
        flat_t[:3] = 0.5
        flat_x[:3] = [0.5, 0.5 + p, 0.5 - p]
    if loss.input_kind == loss.target_kind == "probability" and x.size >= 3:
        flat_t[:3] = 1.0 - flat_x[:3]  # x in {0, 1} against the opposite label
    return torch.from_numpy(x).to(dtype), torch.from_numpy(t).to(dtype)


def loss_and_grads(fn, x, t, go=None, wrt=("input", "target"), **kwargs):
    """fn(x, t, **kwargs) and the gradients of sum(go * loss) w.r.t. x and t (those
    named in ``wrt``) and every tensor option that requires grad; go is random and
    loss-shaped for reduction none, a random scalar otherwise (seeded by the shape)."""
    if isinstance(x, torch.Tensor):
        x = x.detach().clone().requires_grad_("input" in wrt)
    if isinstance(t, torch.Tensor):
        t = t.detach().clone().requires_grad_("target" in wrt)
    loss = fn(x, t, **kwargs)
    if go is None:
        g = torch.Generator().manual_seed(_seed(tuple(loss.shape)))
        go = torch.randn(loss.shape, generator=g, dtype=torch.float64) + 0.5
    leaves = [a for a in (x, t, *kwargs.values())
              if isinstance(a, torch.Tensor) and a.requires_grad]
    grads = torch.autograd.grad(loss, leaves, go.to(loss.device, loss.dtype)) if leaves else ()
    return [loss.detach(), *grads], go


def assert_like_torch(ours, ref, low, dtype, what):
    """``ours`` (results at ``dtype``) against ``ref``: torch float64 (float32, float64;
    ``low`` is torch's own float32 result) or torch float32 (half types), under the
    tolerances in the module doc."""
    assert len(ours) == len(ref), f"{what}: {len(ours)} results, torch gives {len(ref)}"
    for k, (a, b) in enumerate(zip(ours, ref)):
        name = f"{what}: " + ("loss" if k == 0 else f"gradient {k}")
        assert a.dtype == dtype, f"{name}: dtype {a.dtype}, expected {dtype}"
        assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} != torch {tuple(b.shape)}"
        if dtype is torch.float32 and low is not None:
            # NaN / inf where torch float32 has them (it overflows where float64 does not)
            own = low[k].double()
            _same_specials(a.double(), own, name)
            finite = own.isfinite()
            a, b, low_k = a[finite], b[finite], own[finite]
            assert_matches(a.numpy(), b.double().numpy(), low_k.numpy(), np.float32, name)
            continue
        if dtype in NP_DTYPE:
            assert_matches(a.numpy(), b.double().numpy(),
                           None if low is None else low[k].double().numpy(), NP_DTYPE[dtype], name)
            continue
        a, b = a.double(), b.to(dtype).double()  # torch float32, rounded as it would return it
        _same_specials(a, b, name)
        finite = b.isfinite()
        eps = torch.finfo(dtype).eps
        scale = float(b[finite].abs().max()) if finite.any() else 0.0
        torch.testing.assert_close(a[finite], b[finite], rtol=2 * eps, atol=2 * eps * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _same_specials(a, b, name):
    """NaN and +-inf at the same positions, with the same signs."""
    assert torch.equal(a.isnan(), b.isnan()), f"{name}: NaN positions differ {a} {b}"
    assert torch.equal(a.isinf(), b.isinf()), f"{name}: inf positions differ {a} {b}"
    assert torch.equal(a[a.isinf()], b[b.isinf()]), f"{name}: inf signs differ"


def check_against_torch(loss, x, t, dtype, wrt=("input", "target"), **kwargs):
    """flt.NAME against F.NAME at ``dtype`` (inputs given at float64, cast here)."""
    torch_fn = getattr(F, loss.name)
    wide = torch.float32 if dtype in HALF else torch.float64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # kl_div's note on reduction="mean" (its own test)
        ours, go = loss_and_grads(getattr(flt, loss.name), x.to(dtype), t.to(dtype), wrt=wrt,
                                  **_tensor_options(kwargs, dtype))
        ref, _ = loss_and_grads(torch_fn, x.to(dtype).to(wide), t.to(dtype).to(wide), go, wrt,
                                **_tensor_options(kwargs, wide))
        low = None
        if dtype is torch.float32:
            low, _ = loss_and_grads(torch_fn, x.to(dtype), t.to(dtype), go, wrt,
                                    **_tensor_options(kwargs, dtype))
    assert_like_torch(ours, ref, low, dtype, f"{loss.name} {dtype} {kwargs}")


@pytest.fixture
def kernel_calls(monkeypatch):
    """The number of fused kernel calls the torch layer makes (a fallback makes none)."""
    calls = []
    real = _torch_elementwise._core.elementwise
    monkeypatch.setattr(_torch_elementwise._core, "elementwise",
                        lambda *a, **k: calls.append(a[0]) or real(*a, **k))
    return calls


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ------------------------------------------------------------------- the matrix


def _matrix():
    for loss in ELEMENTWISE_LOSSES:
        for options in option_sets(loss):
            for reduction in loss.reductions:
                opt = "-".join(f"{k}={v}" for k, v in options.items())
                yield pytest.param(loss, options, reduction,
                                   id="-".join(filter(None, (loss.name, opt, reduction))))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("loss,options,reduction", list(_matrix()))
def test_matches_torch(loss, options, reduction, dtype, capability, kernel_calls):
    x, t = loss_values(loss, SHAPE, torch.float64, _seed(loss.name, options), options)
    check_against_torch(loss, x, t, dtype, reduction=reduction, **options)
    assert kernel_calls, "the fused kernel did not run"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_shapes(loss, dtype, kernel_calls):
    """0-d, around the vector widths, more dimensions, and enough elements for the
    kernel's parallel path; the last option values."""
    options = {k: v[-1] for k, v in loss.options.items()}
    shapes = [(), (1,), (37,), (2, 3, 4, 5), (2, 32771)]  # the last: > 2**16, parallel
    for shape, reduction in itertools.product(shapes, loss.reductions):
        x, t = loss_values(loss, shape, torch.float64, _seed(loss.name, shape), options)
        check_against_torch(loss, x, t, dtype, reduction=reduction, **options)
    assert len(kernel_calls) == len(shapes) * len(loss.reductions)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_torch_func_transforms_give_torch_results(loss):
    """Under torch.func (grad, vmap) torch's own code runs: torch's results."""
    x, t = loss_values(loss, (3, 5), torch.float64, 11)
    for wrt in (0, 1):
        ours = torch.func.grad(lambda a, b: _quiet(getattr(flt, loss.name), a, b), wrt)(x, t)
        theirs = torch.func.grad(lambda a, b: _quiet(getattr(F, loss.name), a, b), wrt)(x, t)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0, equal_nan=True)
    ours = torch.func.vmap(lambda a, b: _quiet(getattr(flt, loss.name), a, b))(x, t)
    theirs = torch.func.vmap(lambda a, b: _quiet(getattr(F, loss.name), a, b))(x, t)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0, equal_nan=True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_nan_and_inf_like_torch(loss, dtype):
    """NaN and +-inf in input and target (each against finite values and each other):
    loss and both gradients have NaN / inf where torch has them (BCE refuses them,
    tested below)."""
    if loss.name == "binary_cross_entropy":
        return
    special = [float("nan"), float("inf"), -float("inf"), 0.0, 1.0, -1e30]
    pairs = torch.tensor(list(itertools.product(special, special)), dtype=torch.float64)
    for options in option_sets(loss):
        for reduction in ("none", "sum"):
            check_against_torch(loss, pairs[:, 0], pairs[:, 1], dtype, reduction=reduction,
                                **options)


def _factor_cases():
    for loss in ELEMENTWISE_LOSSES:
        for key in FACTORS:
            if key in _signature(loss):
                yield pytest.param(loss, key, id=f"{loss.name}-{key}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("loss,key", list(_factor_cases()))
def test_weights_broadcast_as_torch(loss, key, dtype):
    """Every factor shape, with and without requires_grad (then torch's own code
    gives the factor's gradient too), every reduction: torch's result or torch's
    exception. pos_weight also beside a weight."""
    x, t = loss_values(loss, SHAPE, torch.float64, _seed(loss.name, key))
    g = torch.Generator().manual_seed(1)
    for shape, requires_grad, reduction in itertools.product(
        FACTOR_SHAPES, (False, True), loss.reductions
    ):
        kwargs = {key: (torch.rand(shape, generator=g, dtype=torch.float64) * 2 + 0.2)
                  .requires_grad_(requires_grad), "reduction": reduction}
        if key == "pos_weight":
            kwargs["weight"] = torch.rand(7, generator=g, dtype=torch.float64) + 0.5
        try:
            _quiet(getattr(F, loss.name), x, t, **kwargs)
        except Exception as e:  # noqa: BLE001 - torch's exception is the expectation
            with pytest.raises(type(e)):
                _quiet(getattr(flt, loss.name), x.to(dtype), t.to(dtype),
                       **_tensor_options(kwargs, dtype))
            continue
        check_against_torch(loss, x, t, dtype, **kwargs)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("wrt", [("input",), ("target",), ()], ids=["input", "target", "none"])
def test_gradient_for_either_argument_alone(loss, wrt, kernel_calls):
    x, t = loss_values(loss, (5, 9), torch.float64, _seed(loss.name))
    for reduction in loss.reductions:
        check_against_torch(loss, x, t, torch.float64, wrt, reduction=reduction)
    assert len(kernel_calls) == len(loss.reductions)


# -------------------------------------------------------------------- gradcheck


def _interior_values(loss, shape, seed):
    """Values away from kinks and clamps, where the loss is smooth (for gradcheck)."""
    g = torch.Generator().manual_seed(seed)

    def draw(kind):
        u = torch.rand(shape, generator=g, dtype=torch.float64)
        return {"real": torch.randn(shape, generator=g, dtype=torch.float64) * 2,
                "probability": u * 0.8 + 0.1, "binary": u.round(),
                "log_probability": (u * 0.9 + 0.05).log()}[kind]

    return draw(loss.input_kind), draw(loss.target_kind)


def _gradcheck_cases():
    for loss in ELEMENTWISE_LOSSES:
        sets = option_sets(loss)
        sig = _signature(loss)
        if "pos_weight" in sig:
            sets.append({"pos_weight": (3,), "weight": (4, 1)})
        elif "weight" in sig and loss.name not in ("mse_loss", "l1_loss"):  # (those: torch's)
            sets.append({"weight": (4, 3)})
        for options in sets:
            for reduction in loss.reductions:
                opt = "-".join(f"{k}={v}" for k, v in options.items())
                yield pytest.param(loss, options, reduction,
                                   id="-".join(filter(None, (loss.name, opt, reduction))))


@pytest.mark.parametrize("loss,options,reduction", list(_gradcheck_cases()))
def test_gradcheck(loss, options, reduction, kernel_calls):
    x, t = _interior_values(loss, (4, 3), _seed(loss.name, reduction))
    g = torch.Generator().manual_seed(2)
    kwargs = {k: torch.rand(v, generator=g, dtype=torch.float64) + 0.5 if k in FACTORS else v
              for k, v in options.items()}
    fn = getattr(flt, loss.name)

    def call(a, b):
        return _quiet(fn, a, b, reduction=reduction, **kwargs)

    assert torch.autograd.gradcheck(call, (x.requires_grad_(), t.requires_grad_()))
    assert kernel_calls


# ---------------------------------------------------------------- torch.compile


def _compile_cases():
    for loss in ELEMENTWISE_LOSSES:
        options = {k: v[-1] for k, v in loss.options.items()}
        if "pos_weight" in _signature(loss):
            options["pos_weight"] = torch.rand(6) + 0.5
        elif "weight" in _signature(loss) and loss.name not in ("mse_loss", "l1_loss"):
            options["weight"] = torch.rand(8, 6) + 0.5
        yield pytest.param(loss, options, id=loss.name)


_SQUASH = {"real": lambda z: z, "probability": torch.sigmoid,
           "log_probability": lambda z: torch.log_softmax(z, -1)}


@pytest.mark.parametrize("loss,options", list(_compile_cases()))
def test_torch_compile_fullgraph(loss, options):
    """A small model ending in the loss, compiled with fullgraph=True: the graph
    calls fusedloss::elementwise, and loss and parameter gradients are torch's."""
    torch._dynamo.reset()
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(str(gm.graph))
        return torch._dynamo.lookup_backend("aot_eager")(gm, example_inputs)

    torch.manual_seed(0)
    model = torch.nn.Linear(5, 6).double()
    reduction = loss.reductions[-1]
    squash = _SQUASH[loss.input_kind]

    def objective(fn, m, h, y):
        return fn(squash(m(h)), y, reduction=reduction, **_tensor_options(options, h.dtype)) * 2

    compiled = torch.compile(objective, fullgraph=True, backend=backend)
    g = torch.Generator().manual_seed(3)
    for step in range(2):
        h = torch.randn(8, 6 - 1, generator=g, dtype=torch.float64)
        y = _interior_values(loss, (8, 6), step)[1].requires_grad_(True)
        ours = _quiet(compiled, getattr(flt, loss.name), model, h, y)
        ours.sum().backward()
        got = [p.grad.clone() for p in model.parameters()] + [y.grad.clone()]
        model.zero_grad()
        y.grad = None
        ref = _quiet(objective, getattr(F, loss.name), model, h, y)
        ref.sum().backward()
        want = [p.grad.clone() for p in model.parameters()] + [y.grad.clone()]
        model.zero_grad()
        y.grad = None
        torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    with torch.no_grad():  # evaluation: no gradient asked for
        ours = _quiet(compiled, getattr(flt, loss.name), model, h, y)
        ref = _quiet(objective, getattr(F, loss.name), model, h, y)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    assert graphs, "nothing was compiled"
    assert all("fusedloss.elementwise" in gr for gr in graphs), graphs[0]


# -------------------------------------------------------------------- modules


def _module_cases():
    for loss in ELEMENTWISE_LOSSES:
        params = inspect.signature(getattr(torch.nn, loss.module).__init__).parameters
        sets = option_sets(loss)
        sets += [{"reduction": r} for r in loss.reductions[:-1]]  # the default is "mean"
        if "weight" in params:
            sets.append({"weight": (7,), "reduction": "sum"})
        if "pos_weight" in params:
            sets.append({"pos_weight": (3, 7), "weight": (3, 1)})
        for kwargs in sets:
            yield pytest.param(loss, kwargs, id=f"{loss.module}-{kwargs}".replace(" ", ""))


@pytest.mark.parametrize("loss,kwargs", list(_module_cases()))
def test_module_is_a_drop_in(loss, kwargs, kernel_calls):
    """flt.X(**kwargs) is a torch.nn.X with the same state (weight / pos_weight
    buffers) giving torch's module's loss and gradients."""
    g = torch.Generator().manual_seed(4)
    kwargs = {k: torch.rand(v, generator=g, dtype=torch.float64) + 0.5 if k in FACTORS else v
              for k, v in kwargs.items()}
    ours = getattr(flt, loss.module)(**kwargs)
    theirs = getattr(torch.nn, loss.module)(**kwargs)
    assert isinstance(ours, getattr(torch.nn, loss.module))
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    for key, value in ours.state_dict().items():
        assert torch.equal(value, theirs.state_dict()[key])
    assert repr(ours) == repr(theirs)
    x, t = loss_values(loss, SHAPE, torch.float64, _seed(loss.module))
    a, go = loss_and_grads(lambda u, v: _quiet(ours, u, v), x, t)
    b, _ = loss_and_grads(lambda u, v: _quiet(theirs, u, v), x, t, go)
    assert_like_torch(a, b, None, torch.float64, f"{loss.module}({kwargs})")
    assert kernel_calls
    assert isinstance(getattr(flt, loss.module)(), getattr(torch.nn, loss.module))


LEGACY = [(False, None), (None, False), (True, True), (False, False), (True, None)]


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_deprecated_size_average_and_reduce_like_torch(loss):
    """Where torch takes size_average / reduce, they warn as torch warns and pick
    torch's reduction, in the function and in the module's constructor."""
    if "size_average" not in _signature(loss):
        with pytest.raises(TypeError):
            getattr(flt, loss.module)(size_average=False)
        with pytest.raises(TypeError):
            getattr(torch.nn, loss.module)(size_average=False)
        return
    x, t = loss_values(loss, SHAPE, torch.float64, _seed(loss.name))
    for (size_average, reduce), reduction in itertools.product(LEGACY, loss.reductions):
        legacy = {"size_average": size_average, "reduce": reduce, "reduction": reduction}
        results = []
        for fn, module in ((getattr(flt, loss.name), getattr(flt, loss.module)),
                           (getattr(F, loss.name), getattr(torch.nn, loss.module))):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                value = fn(x, t, **legacy)
                m = module(**legacy)
                by_module = m(x, t)
            results.append((value, by_module, m.reduction,
                            [(w.category, str(w.message)) for w in caught]))
        (a, ma, ra, wa), (b, mb, rb, wb) = results
        assert wa == wb, f"{legacy}: warnings {wa} != torch {wb}"
        assert ra == rb
        torch.testing.assert_close(a, b, rtol=1e-10, atol=0, msg=f"{legacy}")
        torch.testing.assert_close(ma, mb, rtol=1e-10, atol=0, msg=f"{legacy} module")


def test_kl_div_mean_warns_like_torch():
    x, t = loss_values(ELEMENTWISE_BY_NAME["kl_div"], SHAPE, torch.float64, 1)
    for call in (lambda f, m: f(x, t), lambda f, m: f(x, t, reduction="mean"),
                 lambda f, m: m()(x, t), lambda f, m: m(reduction="mean")(x, t)):
        caught = []
        for f, m in ((flt.kl_div, flt.KLDivLoss), (F.kl_div, torch.nn.KLDivLoss)):
            with warnings.catch_warnings(record=True) as record:
                warnings.simplefilter("always")
                call(f, m)
            caught.append([(w.category, str(w.message)) for w in record])
        assert caught[0] == caught[1] and len(caught[0]) == 1
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        flt.kl_div(x, t)
    assert record[0].filename == __file__  # the caller's line, as torch's warning
    for reduction in ("batchmean", "sum", "none"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            flt.kl_div(x, t, reduction=reduction)


# ------------------------------------------------------------ autograd corners


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_double_backward_raises(loss, reduction):
    """As torch's once_differentiable: a backward through a gradient raises; so does
    asking for the gradient's gradient w.r.t. the loss's arguments (they are not in
    its graph, which torch reports)."""
    x, t = loss_values(loss, (4, 5), torch.float64, 3)
    for wrt in ((x,), (t,), (x, t)):
        x.requires_grad_(any(a is x for a in wrt))
        t.requires_grad_(any(a is t for a in wrt))
        value = getattr(flt, loss.name)(x, t, reduction=reduction)
        grads = torch.autograd.grad(value.sum() * 2, wrt, create_graph=True)
        for g in grads:
            with pytest.raises(RuntimeError, match="double backward"):
                (g * 3).sum().backward(retain_graph=True)
            with pytest.raises(RuntimeError):
                torch.autograd.grad(g.sum(), wrt)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
@pytest.mark.parametrize("use", ["retain_graph_twice", "used_twice", "grad_then_backward"])
def test_saved_gradients_are_not_corrupted(loss, use):
    """Backward scales the saved gradients in place when it may: retaining the graph
    and backward twice, a loss used twice (loss * 2 + loss), or a gradient taken
    with retain_graph before a final backward all give torch's gradients."""
    x0, t0 = loss_values(loss, (6, 5), torch.float64, 5)
    grads = []
    for fn in (getattr(flt, loss.name), getattr(F, loss.name)):
        for reduction in loss.reductions:
            x = x0.clone().requires_grad_(True)
            t = t0.clone().requires_grad_(True)
            value = _quiet(fn, x, t, reduction=reduction)
            if use == "retain_graph_twice":
                (3.0 * value).sum().backward(retain_graph=True)
                (3.0 * value).sum().backward()
                grads += [x.grad, t.grad]
            elif use == "used_twice":
                (value * 2 + value).sum().backward()
                grads += [x.grad, t.grad]
            else:
                first = torch.autograd.grad((value * 0.5).sum(), (x, t), retain_graph=True)
                (value * 4).sum().backward()
                grads += [*first, x.grad, t.grad]
    half = len(grads) // 2
    for a, b in zip(grads[:half], grads[half:]):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)


# ---------------------------------------------------------------- fallbacks


def _torch_or_exception(fn):
    """(result or exception type, warnings as (category, text))."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - compared with torch's
            result = type(e)
    return result, [(w.category, str(w.message)) for w in caught]


def _same_as_torch(loss, x, t, wrt=("input", "target"), **kwargs):
    """flt.NAME and F.NAME give the same values and gradients, or raise the same
    exception type, with the same warnings."""
    ours = _torch_or_exception(
        lambda: loss_and_grads(getattr(flt, loss.name), x, t, wrt=wrt, **kwargs)[0])
    theirs = _torch_or_exception(
        lambda: loss_and_grads(getattr(F, loss.name), x, t, wrt=wrt, **kwargs)[0])
    assert ours[1] == theirs[1], f"warnings {ours[1]} != torch {theirs[1]}"
    if isinstance(theirs[0], type):
        assert ours[0] is theirs[0], f"raised {ours[0]}, torch {theirs[0]}"
        return
    assert not isinstance(ours[0], type), f"raised {ours[0]}, torch did not"
    for a, b in zip(ours[0], theirs[0], strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
        if a.device.type != "meta":
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_non_contiguous_tensors(loss, kernel_calls):
    x, t = loss_values(loss, (5, 4, 6), torch.float64, 6)
    for reduction in loss.reductions:
        _same_as_torch(loss, x.transpose(0, 2), t.transpose(0, 2), reduction=reduction)
        _same_as_torch(loss, x[:, ::2], t[:, 1::2], reduction=reduction)
        _same_as_torch(loss, x[:, :1].expand(5, 4, 6), t, reduction=reduction)
    assert len(kernel_calls) == 3 * len(loss.reductions)


TARGET_SHAPES = [(6,), (1, 6), (4, 1), (3, 4, 6), (5,), (4, 6, 1)]


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_target_of_another_shape_like_torch(loss):
    """torch broadcasts (warning where it warns) or raises; so do we."""
    x, _ = loss_values(loss, (4, 6), torch.float64, 7)
    for shape in TARGET_SHAPES:
        _, t = loss_values(loss, shape, torch.float64, 8)
        for reduction in loss.reductions:
            _same_as_torch(loss, x, t, reduction=reduction)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_other_dtypes_like_torch(loss):
    x, t = loss_values(loss, (4, 6), torch.float64, 9)
    for xd, td in [(torch.float32, torch.float64), (torch.float64, torch.float32),
                   (torch.float16, torch.float32), (torch.float32, torch.int64),
                   (torch.complex64, torch.complex64)]:
        a = x.to(xd) if not xd.is_complex else torch.complex(x, t).to(xd)
        b = t.to(td) if not td.is_complex else torch.complex(t, x).to(td)
        wrt = tuple(n for n, v in (("input", a), ("target", b)) if v.is_floating_point()
                    or v.is_complex())
        _same_as_torch(loss, a, b, wrt)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_empty_and_meta_tensors_like_torch(loss):
    for shape in [(0,), (0, 5), (3, 0, 2)]:
        x = torch.zeros(shape, dtype=torch.float64)
        for reduction in loss.reductions:
            _same_as_torch(loss, x, x.clone(), reduction=reduction)
    for reduction in loss.reductions:
        m = torch.empty(4, 5, device="meta")
        _same_as_torch(loss, m, torch.empty(4, 5, device="meta"), reduction=reduction)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_bad_arguments_raise_like_torch(loss):
    x, t = loss_values(loss, (4, 6), torch.float64, 10)
    cases = [{"reduction": "avg"}, {"reduction": None}, {"reduction": "batchmean"}]
    cases += [{k: -1.0} for k in loss.options if k in ("delta", "beta")]
    cases += [{k: 0.0} for k in loss.options if k == "delta"]
    cases += [{k: v} for k in loss.options if k == "log_target" for v in ("no", 1, np.bool_(True))]
    for kwargs in cases:
        _same_as_torch(loss, x, t, **kwargs)
    _same_as_torch(loss, x, [[0.5] * 6] * 4)


@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_non_cpu_tensors_use_torch(loss, monkeypatch):
    """The device check routes to torch's own function (simulated: no GPU here)."""
    calls = []
    real = getattr(F, loss.name)
    monkeypatch.setattr(torch.Tensor, "is_cpu", property(lambda self: False))
    monkeypatch.setattr(F, loss.name, lambda *a, **k: calls.append(1) or real(*a, **k))
    x, t = loss_values(loss, (3, 4), torch.float64, 12)
    _quiet(getattr(flt, loss.name), x, t)
    assert calls == [1]


def _opcheck_cases():
    """Each kernel op the torch layer calls (an option that only changes a number, as
    delta, needs no case of its own), with and without weights."""
    for loss in ELEMENTWISE_LOSSES:
        sig = _signature(loss)
        for options in [{}] + [{k: v[-1]} for k, v in loss.options.items()
                               if isinstance(v[0], bool) or 0.0 in v]:
            yield pytest.param(loss, options, id=f"{loss.name}-{options}".replace(" ", ""))
        if "pos_weight" in sig:
            yield pytest.param(loss, {"pos_weight": (4,), "weight": (3, 1)},
                               id=f"{loss.name}-pos_weight")
        elif "weight" in sig and loss.name not in ("mse_loss", "l1_loss"):  # (those: torch's)
            yield pytest.param(loss, {"weight": (3, 4)}, id=f"{loss.name}-weight")


@pytest.mark.parametrize("loss,options", list(_opcheck_cases()))
def test_custom_op_passes_opcheck(loss, options, monkeypatch):
    """torch.library.opcheck (schema, fake tensor, autograd registration, AOT
    dispatch) on the fusedloss::elementwise calls a loss makes under torch.compile:
    both gradients, the input's only, none (evaluation); float32 and bfloat16."""
    calls = []
    real = _torch_elementwise.elementwise_op
    monkeypatch.setattr(_torch_elementwise, "elementwise_op",
                        lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)  # the compiled route
    g = torch.Generator().manual_seed(13)
    kwargs = {k: torch.rand(v, generator=g) + 0.5 if k in FACTORS else v
              for k, v in options.items()}
    x, t = _interior_values(loss, (3, 4), 14)  # (opcheck compares with NaN != NaN)
    for dtype, reduction, wrt in [(torch.float32, "none", ("input", "target")),
                                  (torch.bfloat16, loss.reductions[-1], ("input",)),
                                  (torch.float32, "mean", ())]:
        a = x.to(dtype).requires_grad_("input" in wrt)
        b = t.to(dtype).requires_grad_("target" in wrt)
        _quiet(getattr(flt, loss.name), a, b, reduction=reduction,
               **_tensor_options(kwargs, dtype))
    assert len(calls) == 3
    for args in calls:
        torch.library.opcheck(real, args)


# ------------------------------------------------------------------ autocast


@pytest.mark.parametrize("dtype", HALF, ids=str)
@pytest.mark.parametrize("loss", ELEMENTWISE_LOSSES, ids=LOSS_IDS)
def test_cpu_autocast_like_torch(loss, dtype, kernel_calls):
    """Under CPU autocast torch computes every one of these losses in float32 (the
    loss is float32, the gradients keep the inputs' dtype); ours reads the half
    values as they are and returns the same dtypes. Values: the loss within float32
    accuracy, the gradients within the half-type tolerance of the module doc."""
    x, t = loss_values(loss, SHAPE, torch.float64, _seed(loss.name, "autocast"))
    x, t = x.to(dtype), t.to(dtype)
    for reduction in loss.reductions:
        with torch.autocast("cpu", dtype=dtype):
            ours, go = loss_and_grads(lambda a, b: _quiet(getattr(flt, loss.name), a, b,
                                                          reduction=reduction), x, t)
            ref, _ = loss_and_grads(lambda a, b: _quiet(getattr(F, loss.name), a, b,
                                                        reduction=reduction), x, t, go)
        assert [r.dtype for r in ours] == [r.dtype for r in ref], reduction
        assert ref[0].dtype == torch.float32 and ref[1].dtype == dtype
        what = f"{loss.name} autocast {reduction}"
        wide, _ = loss_and_grads(lambda a, b: _quiet(getattr(F, loss.name), a, b,
                                                     reduction=reduction), x.double(), t.double())
        assert_like_torch(ours[:1], wide[:1], ref[:1], torch.float32, what)
        assert_like_torch(ours[1:], [r.float() for r in ref[1:]], None, dtype, what)
    assert kernel_calls


# ------------------------------------------------------------ BCE's domain


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_binary_cross_entropy_outside_unit_interval_raises_like_torch(dtype):
    ok = torch.full((3, 4), 0.5, dtype=dtype)
    for bad in (-0.25, 1.5, float("nan"), float("inf")):
        for name in ("input", "target"):
            x, t = ok.clone(), ok.clone()
            (x if name == "input" else t)[1, 2] = bad
            for wrt in (("input",), ()):
                with pytest.raises(RuntimeError) as theirs:
                    loss_and_grads(F.binary_cross_entropy, x, t, wrt=wrt)
                with pytest.raises(RuntimeError) as ours:
                    loss_and_grads(flt.binary_cross_entropy, x, t, wrt=wrt)
                assert str(ours.value) == str(theirs.value)


def test_float16_is_computed_in_float32_where_torch_overflows():
    """Where torch's own float16 arithmetic overflows or underflows on the way, the
    result is float32's rounded once (the README's half-precision note): a
    ``batchmean`` KL whose sum passes float16's 65504 before the division (inf in
    torch), and BCE's gradient at an input of exactly 0 or 1 that equals its target
    (torch's 1e-12 clamp is 0 in float16: 0/0 = NaN)."""
    x = torch.log_softmax(torch.linspace(-30.0, 0.0, 4 * 512).reshape(4, 512), 1).half()
    t = torch.full((4, 512), 8.0, dtype=torch.float16)
    assert torch.isinf(F.kl_div(x, t, reduction="batchmean"))  # the artefact documented
    reference = F.kl_div(x.float(), t.float(), reduction="batchmean")
    assert reference < 65504
    assert flt.kl_div(x, t, reduction="batchmean") == reference.half()

    x = torch.tensor([0.0, 1.0, 0.25], dtype=torch.float16, requires_grad=True)
    t = torch.tensor([0.0, 1.0, 1.0], dtype=torch.float16)
    theirs = x.detach().clone().requires_grad_()
    F.binary_cross_entropy(theirs, t, reduction="sum").backward()
    assert torch.isnan(theirs.grad[:2]).all()  # the artefact documented
    flt.binary_cross_entropy(x, t, reduction="sum").backward()
    x32 = x.detach().float().requires_grad_()
    F.binary_cross_entropy(x32, t.float(), reduction="sum").backward()
    assert torch.equal(x.grad, x32.grad.half())
