"""fusedloss.torch under torch.export and TorchScript (src/fusedloss/_torchscript.py).

The reference is the same model computed by torch.nn.functional in float64. The
exported / traced / scripted models run in float32: loss and gradients must match the
reference to 1e-5 relative (float32 rounding of a linear layer and three losses over
40 values is ~1e-7; 1e-5 still catches any wrong term or dropped argument).
"""

from __future__ import annotations

import io

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

import fusedloss.torch as flt  # noqa: E402
from fusedloss._torchscript import RefusesTorchScript, torch_twin  # noqa: E402

# torch.jit.trace / script warn that they are deprecated, and torch's own mse_loss warns
# when traced (filterwarnings=error).
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]
RTOL, ATOL = 1e-5, 1e-7
CLASS_WEIGHT = torch.tensor([0.5, 1.0, 2.0, 1.5, 0.75])


class LossModel(nn.Module):
    """A linear layer ending in fusedloss losses: modules and a function."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(8, 5)
        self.ce = flt.CrossEntropyLoss(weight=CLASS_WEIGHT, label_smoothing=0.1)
        self.mse = flt.MSELoss(reduction="sum")

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        return self.ce(z, t) + self.mse(z, y) + flt.l1_loss(z, y)


def inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(4, 8, generator=g), torch.randint(0, 5, (4,), generator=g), torch.randn(
        4, 5, generator=g
    )


def reference(model: LossModel, x, t, y) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Loss and parameter gradients of ``model`` by torch.nn.functional in float64."""
    w = model.linear.weight.detach().double().requires_grad_()
    b = model.linear.bias.detach().double().requires_grad_()
    z = F.linear(x.double(), w, b)
    yd = y.double()
    loss = (
        F.cross_entropy(z, t, weight=CLASS_WEIGHT.double(), label_smoothing=0.1)
        + F.mse_loss(z, yd, reduction="sum")
        + F.l1_loss(z, yd)
    )
    loss.backward()
    return loss.detach(), [w.grad, b.grad]


def check_runs_like_reference(run, model: LossModel, seed: int) -> None:
    """``run`` (x, t, y) -> loss; a module holds its own copy of the linear layer
    (weight, bias), anything else uses ``model``'s."""
    params = list((run if isinstance(run, nn.Module) else model).parameters())
    assert len(params) == 2
    x, t, y = inputs(seed)
    for p in params:
        p.grad = None
    loss = run(x, t, y)
    loss.backward()
    ref_loss, ref_grads = reference(model, x, t, y)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=RTOL, atol=ATOL)
    for p, ref in zip(params, ref_grads):
        torch.testing.assert_close(p.grad.double(), ref, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("strict", [True, False], ids=["strict", "non_strict"])
def test_export_runs_like_torch(strict: bool) -> None:
    """torch.export.export of a model ending in fusedloss losses: the exported program
    keeps the custom ops and gives torch's loss and gradients on new inputs. Strict
    export traces them through their fake implementations; non-strict export (torch's
    default) runs the Python code on FakeTensors under a torch-function mode of its
    own, which fusedloss does not take for a request to hand over to torch."""
    model = LossModel()
    exported = torch.export.export(model, inputs(1), strict=strict)
    code = exported.graph_module.code
    assert "torch.ops.fusedloss.cross_entropy" in code
    assert code.count("torch.ops.fusedloss.elementwise") == 2, code  # MSE and L1
    check_runs_like_reference(exported.module(), model, seed=2)


def test_exported_program_saves_and_loads() -> None:
    model = LossModel()
    exported = torch.export.export(model, inputs(1), strict=True)
    buffer = io.BytesIO()
    torch.export.save(exported, buffer)
    buffer.seek(0)
    check_runs_like_reference(torch.export.load(buffer).module(), model, seed=3)


@pytest.mark.parametrize("grad", [True, False], ids=["grad", "no_grad"])
def test_jit_trace_records_torch_ops(grad: bool) -> None:
    """torch.jit.trace records torch's own losses (the fused kernels would be recorded as
    a constant loss), so the trace computes the loss of new inputs, saves and loads."""
    model = LossModel()
    with torch.set_grad_enabled(grad):
        traced = torch.jit.trace(model, inputs(1))
    graph = str(traced.inlined_graph)
    assert "aten::cross_entropy_loss" in graph and "aten::mse_loss" in graph, graph
    assert "PythonOp" not in graph and "scalar_tensor" not in graph, graph
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer)
    buffer.seek(0)
    check_runs_like_reference(torch.jit.load(buffer), model, seed=4)


def test_jit_script_of_loss_functions_compiles_torch_ones() -> None:
    def objective(z: torch.Tensor, t: torch.Tensor, y: torch.Tensor, w: torch.Tensor):
        return (flt.cross_entropy(z, t, weight=w, label_smoothing=0.1)
                + flt.mse_loss(z, y, reduction="sum") + flt.l1_loss(z, y))

    model = LossModel()
    scripted = torch.jit.script(objective)
    check_runs_like_reference(
        lambda x, t, y: scripted(model.linear(x), t, y, CLASS_WEIGHT), model, seed=5
    )


MODULES = [v for v in vars(flt).values() if isinstance(v, type) and issubclass(v, nn.Module)]
FUNCTIONS = [getattr(flt, name) for name in flt.__all__ if not isinstance(getattr(flt, name), type)]


def test_every_loss_is_covered() -> None:
    """Each loss module refuses TorchScript, each loss function has a TorchScript twin."""
    assert {m.__name__ for m in MODULES} == {n for n in flt.__all__ if n[0].isupper()}
    assert all(issubclass(m, RefusesTorchScript) for m in MODULES)
    assert FUNCTIONS and all(
        hasattr(f, "__prepare_scriptable__") or hasattr(f, "__script_unsupported")
        for f in FUNCTIONS
    )


CONSTRUCTOR_ARGS = {"LinearCrossEntropyLoss": (8, 5)}  # in_features, num_classes


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_jit_script_of_loss_modules_says_what_to_use(module) -> None:
    """torch.jit.script of a loss module, or of a model holding one, raises fusedloss's
    error naming torch.compile, torch.export and the torch module it stands in for (if
    any); the model is left as it was."""
    torch_module = getattr(nn, module.__name__, None)
    advice = "torch.compile or torch.export" + (f".*torch.nn.{module.__name__}" if torch_module else "")
    with pytest.raises(RuntimeError, match=advice):
        torch.jit.script(module(*CONSTRUCTOR_ARGS.get(module.__name__, ())))
    model = LossModel()
    with pytest.raises(RuntimeError, match="fusedloss.torch.CrossEntropyLoss.*torch.compile"):
        torch.jit.script(model)
    assert type(model.ce) is flt.CrossEntropyLoss


def test_torch_twin_refuses_what_torch_cannot_compute() -> None:
    """Under tracing, an argument the torch function has not got must be at its default
    (inplace_backward changes no value and is dropped); a loss with no torch
    counterpart refuses tracing and scripting with the same advice."""

    @torch_twin(F.mse_loss)
    def scaled_mse(input, target, reduction="mean", scale=1.0, *, inplace_backward=False):
        return F.mse_loss(input * scale, target, reduction=reduction)

    @torch_twin(None)
    def no_twin(input, target):
        return (input - target).sum()

    x, y = torch.randn(3), torch.randn(3)
    traced = torch.jit.trace(lambda a, b: scaled_mse(a, b, inplace_backward=True), (x, y))
    torch.testing.assert_close(traced(y, x), F.mse_loss(y, x))
    with pytest.raises(RuntimeError, match="has no scale=.*torch.compile or torch.export"):
        torch.jit.trace(lambda a, b: scaled_mse(a, b, scale=2.0), (x, y))
    with pytest.raises(RuntimeError, match="no_twin: torch.jit.trace cannot record"):
        torch.jit.trace(no_twin, (x, y))
    with pytest.raises(RuntimeError, match="no_twin: TorchScript cannot compile it.*torch.export"):
        torch.jit.script(no_twin)


def test_losses_without_a_torch_namesake_under_torchscript() -> None:
    """kl_div_with_logits runs its torch-op formula under trace and script; the LLM
    options of linear_cross_entropy, which torch's namesake has not got, refuse tracing
    unless left at their defaults (chunk_bytes changes no value)."""
    g = torch.Generator().manual_seed(6)
    student, teacher = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    s64, t64 = student.double(), teacher.double()
    ref = 4.0 * F.kl_div(F.log_softmax(s64 / 2, -1), F.log_softmax(t64 / 2, -1),
                         reduction="sum", log_target=True) / 4

    def distill(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return flt.kl_div_with_logits(s, t, 2.0)

    for compiled in (torch.jit.trace(distill, (student, teacher)), torch.jit.script(distill)):
        torch.testing.assert_close(compiled(student, teacher).double(), ref, rtol=RTOL, atol=ATOL)

    x, w, t = torch.randn(6, 8, generator=g), torch.randn(5, 8, generator=g), inputs(7)[1][:3]
    t = torch.cat([t, t])
    traced = torch.jit.trace(lambda a, b, c: flt.linear_cross_entropy(a, b, c, chunk_bytes=64),
                             (x, w, t))
    torch.testing.assert_close(traced(x, w, t).double(),
                               F.cross_entropy(x.double() @ w.double().T, t), rtol=RTOL, atol=ATOL)
    with pytest.raises(RuntimeError, match="has no logit_scale=.*torch.compile or torch.export"):
        torch.jit.trace(lambda a, b, c: flt.linear_cross_entropy(a, b, c, logit_scale=2.0),
                        (x, w, t))
