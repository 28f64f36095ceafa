"""Property-based parity with torch (hypothesis), over the whole option space at once.

Each example draws shapes, dtype, reduction, options, grad_output and the compiled
path, and compares fusedloss with the float64 torch reference under the tolerances
in tests/conftest.py. Derandomised (no example database), so CI is reproducible.
"""

from __future__ import annotations

import numpy as np
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fusedloss as fl
from conftest import (
    CAPABILITIES,
    ELEMENTWISE_CASES,
    REAL_DTYPES,
    REDUCTIONS,
    TORCH_FN,
    check_against_torch,
    cross_entropy_inputs,
    elementwise_inputs,
    forced_capability,
    option_sets,
    upstream_gradient,
)

PROPERTY_SETTINGS = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)

seeds = st.integers(0, 2**32 - 1)


@st.composite
def cross_entropy_problems(draw):
    classes = draw(st.integers(1, 40))
    rank = draw(st.sampled_from(["single", "2d", "kdim"]))
    if rank == "single":
        shape: tuple[int, ...] = (classes,)
    else:
        batch = draw(st.integers(0, 6))
        extra = draw(st.lists(st.integers(0, 5), min_size=1, max_size=2)) if rank == "kdim" else []
        shape = (batch, classes, *extra)
    probs = draw(st.booleans())
    # torch rejects a non-default ignore_index with probability targets.
    ignore_index = -100 if probs else draw(st.sampled_from([-100, -1, 0, classes - 1]))
    problem = {
        "shape": shape,
        "dtype": draw(st.sampled_from(REAL_DTYPES)),
        "probs": probs,
        "weight": draw(st.sampled_from(["none", "positive", "some_zero"])),
        "ignore_index": ignore_index,
        "ignore_frac": 0.0 if probs else draw(st.sampled_from([0.0, 0.3, 1.0])),
        "label_smoothing": draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0)),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
        "scale": draw(st.sampled_from([0.1, 3.0, 30.0])),
        "grad_output": draw(st.sampled_from(["default", "array", "float"])),
        "capability": draw(st.sampled_from(CAPABILITIES)),
        "seed": draw(seeds),
    }
    return problem


@PROPERTY_SETTINGS
@given(cross_entropy_problems())
def test_cross_entropy_matches_torch(problem):
    rng = np.random.default_rng(problem["seed"])
    x, target, weight = cross_entropy_inputs(
        rng,
        problem["shape"],
        problem["dtype"],
        probs=problem["probs"],
        weight=problem["weight"] != "none",
        ignore_index=problem["ignore_index"],
        ignore_frac=problem["ignore_frac"],
        scale=problem["scale"],
    )
    if problem["weight"] == "some_zero":
        weight[rng.random(weight.shape) < 0.5] = 0
    reduction = problem["reduction"]
    opts = {
        "weight": weight,
        "ignore_index": problem["ignore_index"],
        "label_smoothing": problem["label_smoothing"],
        "reduction": reduction,
    }
    loss_shape = x.shape[:1] + x.shape[2:] if x.ndim > 1 else ()
    if problem["grad_output"] == "array":
        opts["grad_output"] = upstream_gradient(rng, loss_shape, x.dtype, reduction)
    elif problem["grad_output"] == "float" and reduction != "none":
        opts["grad_output"] = float(rng.standard_normal())
    x_before = x.copy()
    with forced_capability(problem["capability"]):
        loss, grad = fl.cross_entropy_and_grad(x, target, **opts)
    check_against_torch(F.cross_entropy, loss, grad, x, target, **opts)
    np.testing.assert_array_equal(x, x_before)


@PROPERTY_SETTINGS
@given(
    case=st.sampled_from(ELEMENTWISE_CASES),
    shape=st.lists(st.integers(0, 9), max_size=4).map(tuple),
    reduction_index=st.integers(0, 3),
    option_index=st.integers(0, 3),
    equal_frac=st.sampled_from([0.0, 0.3]),
    with_grad_output=st.booleans(),
    capability=st.sampled_from(CAPABILITIES),
    seed=seeds,
)
def test_elementwise_matches_torch(
    case, shape, reduction_index, option_index, equal_frac, with_grad_output, capability, seed
):
    """Every elementwise loss (fusedloss/_losses.py), its reductions and option values,
    with targets partly equal to the input (kinks, zero differences)."""
    loss, dtype = case
    rng = np.random.default_rng(seed)
    sets = option_sets(loss)
    options = sets[option_index % len(sets)]
    reduction = loss.reductions[reduction_index % len(loss.reductions)]
    x, y = elementwise_inputs(loss, rng, shape, dtype, scale=3.0)
    if loss.input_kind == loss.target_kind or np.iscomplexobj(x):
        equal = rng.random(shape) < equal_frac
        y[equal] = x[equal]
    opts = {"reduction": reduction, **options}
    if with_grad_output:
        opts["grad_output"] = upstream_gradient(rng, shape, dtype, reduction)
    with forced_capability(capability):
        loss_value, grad = getattr(fl, f"{loss.name}_and_grad")(x, y, **opts)
    check_against_torch(TORCH_FN[loss.name], loss_value, grad, x, y, **opts)
