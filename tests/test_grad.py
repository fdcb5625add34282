"""fastgrad.grad: first derivatives bit for bit backward()'s (floats and create_graph=True alike), second and
third derivatives against PyTorch float64 autograd and against finite differences, no .grad touched, the
gradient graph an ordinary graph (backward, compile, pickling), deep chains, errors and memory."""
import decimal
import gc
import math
import pickle
import random
import sys
import weakref

import pytest
from hypothesis import assume, event, example, given, settings
from hypothesis import strategies as st

import fastgrad
from fastgrad import Value, grad, trace
from support import (ALL_UNARY_OPS, apply_step, leaf_numbers, operand_numbers, pick, readme_code,
                     recipe_strategy, run_python, same_float)

try:
    import torch
except ImportError:                    # the cross-checks against torch.autograd skip; the other oracles run
    torch = None
needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed: the cross-check against "
                                                       "torch.autograd is skipped")


def build(recipe):
    """The recipe's graph in fastgrad, its failing steps skipped: (leaves, nodes made, root)."""
    numbers, steps = recipe
    leaves = [Value(x) for x in numbers]
    pool = list(leaves)
    kept = []
    for step in steps:
        try:
            pool.append(apply_step(step, pool))
        except (ArithmeticError, ValueError):
            continue
        kept.append(step)
    return leaves, pool, kept


def all_grads(root):
    nodes, _ = trace(root)
    return {node: node.grad for node in nodes}


def backward_grads(root, leaves):
    """What root.backward() adds into the leaves' grads, on grads that start at 0."""
    nodes, _ = trace(root)
    for node in nodes:
        node.grad = 0.0
    root.backward()
    result = [leaf.grad for leaf in leaves]
    for node in nodes:
        node.grad = 0.0
    return result


# ---------------------------------------------------------------------------------------------------
# First derivatives: backward()'s bits, and no .grad touched

@settings(max_examples=400, deadline=None)
@given(recipe=recipe_strategy(leaf_numbers, operand_numbers, unary=ALL_UNARY_OPS))
@example(recipe=([0.0], [("unary", "relu", 0), ("number_right", "**", 0, 0.5)]))   # relu(0) ** 0.5: inf, gated
def test_first_derivatives_are_backwards_bits_in_both_modes_and_no_grad_changes(recipe):
    leaves, pool, _ = build(recipe)
    root = pool[-1]
    nodes, _ = trace(root)
    for i, node in enumerate(nodes):           # grads left over from earlier passes: grad must keep them
        node.grad = 0.25 + i
    before = all_grads(root)

    floats = grad(root, leaves)
    try:
        values = grad(root, leaves, create_graph=True)
    except (ArithmeticError, ValueError) as error:
        event(f"create_graph raised {type(error).__name__}")
        values = error
    after = all_grads(root)
    assert all(same_float(before[node], after[node]) for node in nodes)

    expected = backward_grads(root, leaves)      # also proves grad left no mark behind: the sort sees all
    assert all(same_float(g, e) for g, e in zip(floats, expected)), (floats, expected)
    if isinstance(values, Exception):
        # A derivative term outside its op's domain (0.0 ** -0.5): backward() makes it inf or nan in the grad
        # of the node it flows into, though a relu below (its gate) or an x ** 0 may stop it before an input.
        assert not all(math.isfinite(g) for g in backward_grads(root, list(nodes))), (values, floats)
    else:
        assert all(same_float(v.data, e) for v, e in zip(values, expected)), ([v.data for v in values], expected)


def test_backward_keeps_its_meaning_and_points_create_graph_to_grad():
    x = Value(3.0)
    y = x * x
    y.backward(create_graph=False)
    assert x.grad == 6.0
    with pytest.raises(ValueError, match=r"fastgrad\.grad\(output, inputs, create_graph=True\)"):
        y.backward(create_graph=True)
    assert x.grad == 6.0 and y.grad == 1.0          # refused before anything is touched
    (g,) = grad(y, [x], create_graph=True)
    assert isinstance(g, Value) and g.data == 6.0


def test_an_input_outside_the_graph_gets_zero_and_an_output_gets_its_seed():
    x, y, z = Value(2.0), Value(3.0), Value(5.0)
    f = x * y
    assert grad(f, [x, z, y, f, x * z]) == [3.0, 0.0, 2.0, 1.0, 0.0]
    values = grad(f, [z, f, x], create_graph=True, grad_outputs=2.0)
    assert all(type(v) is Value for v in values)
    assert [v.data for v in values] == [0.0, 2.0, 6.0]
    assert grad(x, [x, y]) == [1.0, 0.0]               # an output that is a leaf
    assert grad(f, x) == [3.0]                         # one Value is a sequence of one
    assert grad(f, []) == []


def test_a_hand_made_node_passes_nothing_on_as_in_backward():
    x = Value(3.0)
    made = Value(9.0, (x,), "square")          # the seed's hand-made node: its _backward does nothing
    f = made * x
    assert grad(f, [x, made]) == backward_grads(f, [x, made]) == [9.0, 3.0]
    assert [v.data for v in grad(f, [x, made], create_graph=True)] == [9.0, 3.0]


def test_a_backward_closure_in_the_graph_is_a_type_error_and_leaves_no_mark():
    x, y = Value(3.0), Value(2.0)
    made = Value(9.0, (x,), "square")
    made._backward = lambda: setattr(x, "grad", x.grad + 6.0 * made.grad)   # what only backward() can call
    f = made * y
    for create_graph in (False, True):
        with pytest.raises(TypeError, match=r"grad cannot differentiate through Value\(data=9\.0.*_op 'square'"):
            grad(f, [x, y], create_graph=create_graph)
    assert grad(x * y, [x, y]) == [2.0, 3.0]           # the sort sees every node again: no mark was left
    f.backward()
    assert (x.grad, y.grad) == (12.0, 9.0)


class Tagged(Value):
    """A subclass: its instances carry a __dict__, so a reference cycle can pass through them."""


def test_grad_over_a_subclass_tracks_what_it_builds_so_a_cycle_through_it_is_collected():
    x = Tagged(0.7)
    f = (x * x).tanh() * x.exp()
    gx = grad(f, x, create_graph=True)[0]
    (hx,) = grad(gx, [x])
    h = 1e-5
    slope = [grad((y * y).tanh() * y.exp(), [y])[0] for y in (Value(0.7 + h), Value(0.7 - h))]
    assert hx == pytest.approx((slope[0] - slope[1]) / (2 * h), rel=1e-8)
    # every node made from a tracked node is tracked (as the eager ops make them), so the GC sees the cycle
    assert all(gc.is_tracked(n) for n in trace(gx)[0] if any(gc.is_tracked(c) for c in n._prev))
    x.gradient = gx                                    # x -> its __dict__ -> gx -> ... -> x
    alive = weakref.ref(x)
    del x, f, gx
    gc.collect()
    assert alive() is None


def test_python_code_that_a_gc_pass_runs_during_grad_finds_every_grad_and_mark_in_place():
    # grad keeps each node's place in its grad and marks it while it works. Nodes made from a subclass's are
    # tracked by the GC, so making them can start a GC pass, whose finalizers run Python code: here each one
    # reads the graph's grads, runs grad on it (its sort would skip a node left marked), and leaves another
    # cycle with a finalizer for a later pass.
    x, y = Tagged(0.7), Value(1.3)
    f = (x * y).tanh() * y + y.exp() * x - (x + y).sigmoid()
    nodes, _ = trace(f)
    for i, node in enumerate(nodes):
        node.grad = 0.25 + i
    expected = [node.grad for node in nodes]
    expected_gradient = grad(f, [x, y])
    checks = []

    class Finalized:
        def __del__(self):
            if len(checks) < 200:
                checks.append((inside, [node.grad for node in nodes] == expected, grad(f, [x, y]) == expected_gradient))
                again = Finalized()
                again.cycle = again

    threshold = gc.get_threshold()
    gc.collect()
    gc.set_threshold(1)
    try:
        inside = False
        first = Finalized()
        first.cycle = first
        del first
        for _ in range(20):
            inside = True
            first_derivatives = grad(f, [x, y], create_graph=True)
            inside = False
    finally:
        gc.set_threshold(*threshold)
        gc.collect()
    assert [g.data for g in first_derivatives] == expected_gradient
    assert any(during for during, _, _ in checks), checks      # some ran while grad was at work
    assert all(grads_kept and same_gradient for _, grads_kept, same_gradient in checks), checks


def test_inner_nodes_and_repeated_inputs_get_backwards_numbers_in_both_modes():
    x, y = Value(0.3), Value(-1.2)
    u = (x * y).tanh()
    v = u * x + y.exp() * u
    inputs = [u, x, u, v, y, Value(2.0), x]
    floats = grad(v, inputs)
    values = grad(v, inputs, create_graph=True)
    assert all(same_float(a, b) for a, b in zip(floats, backward_grads(v, inputs)))
    assert all(same_float(g.data, a) for g, a in zip(values, floats))
    # the gradient kept for an inner input is a whole graph: differentiated again, it is its finite difference
    h = 1e-6
    slope = [grad(((x * Value(t)).tanh() * x + Value(t).exp() * (x * Value(t)).tanh()), [x])[0]
             for t in (-1.2 + h, -1.2 - h)]
    assert grad(values[1], [y])[0] == pytest.approx((slope[0] - slope[1]) / (2 * h), rel=1e-6)


@needs_torch
def test_several_outputs_weighted_by_grad_outputs_as_pytorch():
    leaves = [Value(0.3), Value(-1.2), Value(2.0)]
    a, b, c = leaves
    u = (a * b).tanh() + c.log()
    v = u * c + a.exp()                  # u is below v: its gradient is its seed plus what v gives it
    w = Value(0.7)
    result = grad([u, v], leaves, grad_outputs=[-1.5, w], create_graph=True)

    t = [torch.tensor(x.data, dtype=torch.float64, requires_grad=True) for x in leaves]
    tu = (t[0] * t[1]).tanh() + t[2].log()
    tv = tu * t[2] + t[0].exp()
    expected = torch.autograd.grad([tu, tv], t, grad_outputs=[torch.tensor(-1.5, dtype=torch.float64),
                                                              torch.tensor(0.7, dtype=torch.float64)])
    for r, e in zip(result, expected):
        assert r.data == pytest.approx(e.item(), rel=1e-15)
    # w, a seed given as a Value, is in the gradient graph: the derivative by w is the plain gradient of v
    assert grad(result[0], [w]) == pytest.approx(grad(v, [a]), rel=1e-15)
    assert grad([u, v], leaves, grad_outputs=[-1.5, 0.7]) == [r.data for r in result]
    before = all_grads(v)
    assert grad([v, u, v], leaves, grad_outputs=[0.7, -1.5, 0.0]) == [r.data for r in result]   # u placed once
    assert all_grads(v) == before


# ---------------------------------------------------------------------------------------------------
# Higher orders against PyTorch float64 autograd

TORCH_UNARY = {} if torch is None else {
    "neg": lambda t: -t,
    "tanh": torch.tanh,
    "exp": torch.exp,
    "log": torch.log,
    "relu": torch.relu,
    "sigmoid": torch.sigmoid,
    # PyTorch's softplus is x itself above its threshold (20); fastgrad's is log(1 + e^x) everywhere
    "softplus": lambda t: torch.nn.functional.softplus(t, threshold=1000.0),
    "sin": torch.sin,
    "cos": torch.cos,
    "sqrt": torch.sqrt,
    "abs": torch.abs,
}
assert torch is None or set(TORCH_UNARY) == set(ALL_UNARY_OPS)


class TorchPower(torch.autograd.Function if torch else object):
    """a ** b, its derivative in a written out as b * a ** (b - 1) * g, so that it keeps its derivative in b
    where b is 0. PyTorch's own pow takes it as where(b == 0, 0, ...), flat in b: its third derivative of x ** x
    at 1 is 2, not 3. Only where that product is not finite (0 ** 0) is the slope in a a constant 0."""

    @staticmethod
    def forward(ctx, a, b):
        ctx.save_for_backward(a, b)
        return a ** b

    @staticmethod
    def backward(ctx, g):
        a, b = ctx.saved_tensors
        flat = (b == 0) & ~(torch.isfinite(g) & torch.isfinite(a) & torch.isfinite(1 / a))
        in_base = torch.where(flat, torch.zeros_like(g), b * TorchPower.apply(a, b - 1) * g)
        in_exponent = g * torch.where((a == 0) & (b >= 0), torch.zeros_like(g), TorchPower.apply(a, b) * torch.log(a))
        return in_base, in_exponent


def torch_program(numbers, kept):
    leaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in numbers]
    pool = list(leaves)
    for kind, op, *operands in kept:
        if kind == "unary":
            pool.append(TORCH_UNARY[op](pool[-1 - operands[0] % len(pool)]))
        elif (kind, op) == ("values", "**"):
            pool.append(TorchPower.apply(pick(pool, operands[0]), pick(pool, operands[1])))
        else:
            pool.append(apply_step((kind, op, *operands), pool))
    return leaves, pool[-1]


def torch_grads(output, leaves, create_graph):
    if not output.requires_grad:
        return [torch.zeros((), dtype=torch.float64) for _ in leaves]
    grads = torch.autograd.grad(output, leaves, create_graph=create_graph, retain_graph=True, allow_unused=True)
    return [torch.zeros((), dtype=torch.float64) if g is None else g for g in grads]


def error_scale(value):
    """How far two correct evaluations of value may differ, over eps: the sum over the nodes n of its graph
    of |n| * |d value / d n| (each node's rounding, carried to the result), at least |value|."""
    nodes, _ = trace(value)
    for node in nodes:
        node.grad = 0.0
    value.backward()
    scale = sum(abs(node.data * node.grad) for node in nodes)
    for node in nodes:
        node.grad = 0.0
    return scale


def assert_close(fg, expected, what):
    """fg's data is PyTorch's number within 1e-12 of its rounding scale; False if either is not finite."""
    e = expected.item()
    if not (math.isfinite(fg.data) and math.isfinite(e)):
        event("a non-finite derivative: not compared")
        return False
    scale = error_scale(fg)
    assume(math.isfinite(scale))
    assert abs(fg.data - e) <= 1e-12 * max(scale, abs(e)) + 1e-300, (what, fg.data, e, scale)
    return True


moderate_recipes = recipe_strategy(
    st.one_of(st.floats(-3, 3), st.sampled_from([0.0, 1.0, -1.0, 0.5, 2.0, -2.0])),
    st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -0.5, 1.5, 2.0, 0.0]), st.floats(-3, 3)),
    max_leaves=3, max_steps=10, unary=ALL_UNARY_OPS)


@needs_torch
@settings(max_examples=300, deadline=None)
@given(recipe=moderate_recipes)
def test_second_and_third_derivatives_of_random_programs_match_pytorch(recipe):
    leaves, pool, kept = build(recipe)
    # PyTorch's second derivative of log(x) squares x: beyond 1e154 that is inf, and the term it divides
    # is dropped as 0 (log(c ** x)'' came out log(c)^2 instead of 0 at c ** x = 1.6e199); and the third
    # derivative of a quotient divides by its denominator to the fourth power, inf beyond 1e77 in both engines
    # (|x / k| / (x / k), which is 1, came out with a third derivative of 6 in fastgrad and 8.8e-102 in
    # PyTorch at x / k = 1.1e101). Below 1e-75 the same holds the other way: a product of a few such numbers
    # underflows, and where depends on the order of the formula's factors (x / y**2's second derivative by y,
    # 6 x / y**4 = 2.4e-217 at x = 1.1e-308, y = 2.3e-23: fastgrad's chain multiplies x by 2 y first, 5e-331,
    # which is 0, and came out -8.0e-218; PyTorch's did not)
    assume(all(abs(v.data) < 1e75 for v in pool))
    assume(all(v.data == 0.0 or abs(v.data) > 1e-75 for v in pool))
    t_leaves, t_root = torch_program(recipe[0], kept)
    try:
        first = grad(pool[-1], leaves, create_graph=True)
        second = [grad(g, leaves, create_graph=True) for g in first]
        third = [[grad(h, leaves, create_graph=True) for h in row] for row in second]
    except (ArithmeticError, ValueError) as error:
        event(f"grad raised {type(error).__name__}: a derivative outside its domain")
        return
    # A derivative of a nan is compared only as far as it is finite: beyond a nan the engines' choices differ
    # (PyTorch gives d/da (a ** b * log(a)) at a = -1, b = 0 as -1, though the first derivative is nan).
    t_first = torch_grads(t_root, t_leaves, True)
    for i, (g, t_g) in enumerate(zip(first, t_first)):
        if assert_close(g, t_g, ("first", i)):
            t_second = torch_grads(t_g, t_leaves, True)
            for j, (h, t_h) in enumerate(zip(second[i], t_second)):
                if assert_close(h, t_h, ("second", i, j)):
                    for k, (d3, t_d3) in enumerate(zip(third[i][j], torch_grads(t_h, t_leaves, False))):
                        assert_close(d3, t_d3, ("third", i, j, k))


def test_x_to_the_x_has_its_closed_form_third_derivative():
    # The third derivative of x^x is x^x ((log x + 1)^3 + 3 (log x + 1) / x - 1 / x^2).
    for t in (0.5, 1.5, 2.0):
        x = Value(t)
        derivatives = [x ** x]
        for _ in range(3):
            derivatives += grad(derivatives[-1], [x], create_graph=True)
        closed = t ** t * ((math.log(t) + 1) ** 3 + 3 * (math.log(t) + 1) / t - 1 / t ** 2)
        assert derivatives[3].data == pytest.approx(closed, rel=1e-13)


@needs_torch
def test_the_hessian_of_a_function_of_every_op_is_pytorchs():
    def f(x, y, z, tanh, exp, log, relu, sigmoid, softplus):
        return (tanh(x * y) * z + exp(x / z) - y ** 3 + log(z) * sigmoid(y) + softplus(x ** z)
                + relu(x - y) * relu(z) ** 2.5 + (y * y + 1.0) ** -0.5 - 2.0 ** (x * z) + (-x) / y)

    point = [0.7, -1.3, 1.9]
    leaves = [Value(p) for p in point]
    value = f(*leaves, Value.tanh, Value.exp, Value.log, Value.relu, Value.sigmoid, Value.softplus)
    first = grad(value, leaves, create_graph=True)
    hessian = [grad(g, leaves) for g in first]

    expected = torch.autograd.functional.hessian(
        lambda t: f(*t, torch.tanh, torch.exp, torch.log, torch.relu, torch.sigmoid,
                    lambda u: torch.nn.functional.softplus(u, threshold=1000.0)),
        torch.tensor(point, dtype=torch.float64))
    for i in range(3):
        for j in range(3):
            assert hessian[i][j] == pytest.approx(expected[i, j].item(), rel=1e-12, abs=1e-12)
    assert hessian[0][1] == hessian[1][0] or hessian[0][1] == pytest.approx(hessian[1][0], rel=1e-14)


# ---------------------------------------------------------------------------------------------------
# Finite differences of the first derivatives, a second oracle

smooth_recipes = recipe_strategy(
    st.floats(0.5, 2.0),
    st.one_of(st.integers(1, 3), st.sampled_from([0.5, 1.5, 2.0]), st.floats(0.5, 2.0)),
    max_leaves=3, max_steps=8, unary=ALL_UNARY_OPS)


def test_a_power_keeps_its_derivative_in_the_exponent_where_the_exponent_is_zero():
    # f = c * x1 ** (x0 - 1) at x0 = 1: df/dx1 = c * b * x1 ** (b - 1) is 0 there, but its d/dx0 is c / x1
    # (for a base below 0, d/db is nan: a ** b is real at whole b only)
    for base in (1.0, 2.5, 0.25, 1e300, -3.0):
        for c in (1.0, -2.0):
            x0, x1 = Value(1.0), Value(base)
            f = c * x1 ** (x0 - 1.0)
            (slope,) = grad(f, [x1], create_graph=True)
            f.backward()
            assert same_float(slope.data, x1.grad) and same_float(slope.data, 0.0)    # not -0.0
            if base < 0:
                continue
            mixed, pure = grad(slope, [x0, x1])
            assert math.isclose(mixed, c / base, rel_tol=1e-15) and pure == 0.0
            assert math.isclose(grad(grad(f, [x0], create_graph=True)[0], [x1])[0], mixed, rel_tol=1e-15)


def test_a_power_of_a_zero_base_and_a_zero_exponent_has_a_flat_slope_in_its_base():
    x0, x1 = Value(1.0), Value(0.0)     # 0 ** b: its mixed second derivative 1 / x1 is infinite at 0
    (slope,) = grad(x1 ** (x0 - 1.0), [x1], create_graph=True)
    assert same_float(slope.data, 0.0) and grad(slope, [x0, x1]) == [0.0, 0.0]


@settings(max_examples=200, deadline=None)
@given(recipe=smooth_recipes)
def test_second_derivatives_are_the_finite_differences_of_the_first(recipe):
    numbers, steps = recipe
    assume(not any(step[0] == "unary" and step[1] in ("relu", "abs") for step in steps))   # no kink
    leaves, pool, kept = build(recipe)
    assume(len(kept) == len(steps) and all(abs(v.data) < 1e3 for v in pool))
    try:
        hessian = [grad(g, leaves) for g in grad(pool[-1], leaves, create_graph=True)]
    except (ArithmeticError, ValueError):
        return
    assume(all(math.isfinite(h) for row in hessian for h in row))    # (x - y) ** y at x = y: 0 * 0 ** -1

    def gradient_at(point):
        moved_leaves, moved_pool, moved_kept = build((point, steps))
        assume(len(moved_kept) == len(steps))
        return grad(moved_pool[-1], moved_leaves)

    def central_difference(j, h):
        up = gradient_at([x + h if i == j else x for i, x in enumerate(numbers)])
        down = gradient_at([x - h if i == j else x for i, x in enumerate(numbers)])
        return [(u - d) / (2 * h) for u, d in zip(up, down)], up

    # A central difference is off by about h**2/6 times the fourth derivative, large where derivatives are
    # (cos(exp(exp(x))) at 1.75: 7e-5 relative at h = 1e-5). Richardson's combination of h and h/2 cancels that
    # term, and the two differences' gap, the error's own estimate, is allowed on top of the tolerance.
    h = 1e-5
    for j in range(len(numbers)):
        (coarse, up), (fine, _) = central_difference(j, h), central_difference(j, h / 2)
        for i in range(len(numbers)):
            assume(math.isfinite(coarse[i]) and math.isfinite(fine[i]))
            extrapolated = (4 * fine[i] - coarse[i]) / 3
            allowed = 1e-5 * abs(extrapolated) + 1e-5 * (1 + abs(up[i])) + abs(fine[i] - coarse[i])
            assert abs(hessian[i][j] - extrapolated) <= allowed, (i, j, hessian[i][j], coarse[i], fine[i])


# ---------------------------------------------------------------------------------------------------
# The gradient graph is an ordinary graph

def hvp_root(x_value=0.8, y_value=-0.4):
    """The Hessian-vector product of a small smooth function as one Value, and its leaves."""
    x, y = Value(x_value, label="x"), Value(y_value, label="y")
    f = (x * y).tanh() + x ** 3 * y.sigmoid() + (x - y).softplus() + (y * y + 1.0).log() / x + (x - y).relu() * x
    gx, gy = grad(f, [x, y], create_graph=True)            # relu's derivative holds a gate node
    return gx * 0.3 + gy * -1.1, [x, y]


@pytest.mark.parametrize("fuse", [True, False])
def test_a_compiled_gradient_graph_replays_bit_for_bit(fuse):
    root, leaves = hvp_root()
    graph = fastgrad.compile(root, fuse=fuse)
    assert same_float(graph.forward(), root.data)
    graph.backward()
    replayed = [leaf.grad for leaf in leaves]
    fresh, fresh_leaves = hvp_root()
    fresh.backward()
    assert all(same_float(a, b.grad) for a, b in zip(replayed, fresh_leaves))

    for x, y in [(1.3, 0.2), (-0.6, 1.7), (2.5, -2.0)]:     # new data, the same structure
        leaves[0].data, leaves[1].data = x, y
        rebuilt, _ = hvp_root(x, y)
        assert same_float(graph.forward(), rebuilt.data)


def test_a_gradient_graph_pickles_and_differentiates_like_any_graph():
    root, leaves = hvp_root()
    copy = pickle.loads(pickle.dumps((root, leaves)))
    assert same_float(copy[0].data, root.data)
    assert grad(copy[0], copy[1]) == grad(root, leaves)
    root.backward()
    assert [leaf.grad for leaf in leaves] == grad(root, leaves)


# ---------------------------------------------------------------------------------------------------
# Deep graphs, errors, memory

def test_a_million_node_chain_without_recursion():
    x = Value(0.5)
    v = x
    for _ in range(250_000):        # 4 nodes a step: *, the wrapped 0.999, +, the wrapped 1e-6 ... 1e6 nodes
        v = v * 0.999 + 1e-6 * x
    assert grad(v, [x]) == backward_grads(v, [x])
    (g,) = grad(v, [x], create_graph=True)
    assert same_float(g.data, backward_grads(v, [x])[0])
    assert grad(g, [x]) == [0.0]               # v is linear in x
    del g, v                                     # the deep gradient graph and the chain go, iteratively


def test_type_errors_and_wrong_seeds():
    x = Value(1.0)
    f = x * 2
    with pytest.raises(TypeError, match="inputs must be Values"):
        grad(f, [x, 1.0])
    with pytest.raises(TypeError, match="outputs must be Values"):
        grad([f, 3], [x])
    with pytest.raises(TypeError, match="outputs must be a Value or a sequence of Values, not 'Decimal'"):
        grad(decimal.Decimal(1), [x])
    with pytest.raises(TypeError, match="inputs must be a Value or a sequence of Values, not 'float'"):
        grad(f, 1.0)
    with pytest.raises(ValueError, match="2 entries for 1 outputs"):
        grad(f, [x], grad_outputs=[1.0, 2.0])
    with pytest.raises(TypeError, match="one per output"):
        grad([f, f], [x], grad_outputs=1.0)
    with pytest.raises(TypeError, match="numbers or Values"):
        grad(f, [x], grad_outputs=["1"])


@pytest.mark.parametrize("make, eager", [
    (lambda x: (x ** 0.5, [x]), lambda: Value(0.0) ** -0.5),      # d/dx x ** 0.5 = 0.5 * x ** -0.5, at 0
    (lambda x: (x ** Value(0.5), [x]), lambda: Value(0.0) ** Value(-0.5)),
    (lambda x: (lambda a: (a ** (x - 1.5), [a]))(Value(1e-200)), lambda: Value(1e-200) ** Value(-2.5)),
])
def test_a_derivative_outside_its_domain_raises_what_eager_raises_and_leaves_no_mark(make, eager):
    f, inputs = make(Value(0.0))
    with pytest.raises((ArithmeticError, ValueError)) as eager_error:
        eager()
    with pytest.raises(type(eager_error.value), match=str(eager_error.value)):
        grad(f, inputs, create_graph=True)
    assert not all(math.isfinite(g) for g in grad(f, inputs))          # backward() says inf or nan
    assert grad(f * 1.0, inputs) == backward_grads(f * 1.0, inputs)     # no mark left on the graph


def test_x_to_an_integer_power_has_every_derivative_at_zero():
    x = Value(0.0)
    derivatives = []
    g = x ** 4 + x ** 1 * 3.0
    for _ in range(5):
        (g,) = grad(g, [x], create_graph=True)
        derivatives.append(g.data)
    assert derivatives == [3.0, 0.0, 0.0, 24.0, 0.0]


def test_a_thousand_rounds_of_grad_of_grad_leave_no_block_behind(tmp_path):
    # Under the debug allocator every node is one of Python's blocks, so a node leaked is a block counted.
    printed = run_python("""
        import sys
        from fastgrad import Value, grad
        x, y = Value(0.3), Value(1.7)
        counts = []
        for round in range(1000):
            f = (x * y).tanh() * x.exp() + (x / y).log() ** 2 + (x ** y).softplus() - y.sigmoid() * x.relu()
            first = grad(f, [x, y], create_graph=True)
            hvp = grad(first[0] * 2.0 + first[1], [x, y], create_graph=True, grad_outputs=0.5)
            grad(hvp, [x, y])
            del f, first, hvp
            if round in (99, 999):
                counts.append(sys.getallocatedblocks())
        print(*counts, file=sys.stderr)
        print("ok")
    """, tmp_path, PYTHONMALLOC="debug")
    early, late = map(int, printed.split()[-2:])
    assert late - early < 50, (early, late)


def test_the_gradient_graph_is_freed_with_its_values():
    x, y = Value(0.3), Value(1.7)
    f = (x * y).tanh() * x.exp() + (x / y).log() ** 2
    counts = [sys.getrefcount(n) for n in (x, y, f)]
    for _ in range(1000):
        first = grad(f, [x, y], create_graph=True)
        hvp = grad(first[0] * 2.0 + first[1], [x, y], create_graph=True)
        hvp[0].backward()
        del first, hvp
    assert [sys.getrefcount(n) for n in (x, y, f)] == counts


# ---------------------------------------------------------------------------------------------------
# The README's examples, run as written

def test_the_readmes_newton_step_finds_the_minimum(capsys):
    namespace = {}
    exec(readme_code("Higher-order gradients"), namespace)
    assert abs(namespace["x"].data - 1.0) < 1e-12 and abs(namespace["y"].data - 1.0) < 1e-12
    assert capsys.readouterr().out.split() == ["0.9999999999999999", "0.9999999999999757"]


def test_the_readmes_hessian_vector_product_is_the_finite_difference_of_the_gradient():
    namespace = {}
    exec(readme_code("Higher-order gradients", 1), namespace)
    hvp, difference = namespace["hvp"], namespace["finite_difference"]
    assert len(hvp) == 337 and max(map(abs, hvp)) > 0.1
    assert max(abs(a - b) for a, b in zip(hvp, difference)) <= 1e-6 * max(map(abs, hvp))
    assert all(p.grad == 0.0 for p in namespace["params"])       # grad touched no .grad


def test_the_readmes_physics_informed_fit_is_sin_and_writes_its_picture(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace = {}
    exec(readme_code("Higher-order gradients", 2), namespace)
    model, curve = namespace["model"], namespace["curve"]
    assert curve[-1] < 1e-3 < curve[0]
    assert max(abs(model([Value(t)]).data - math.sin(t)) for t in [i * math.pi / 50 for i in range(51)]) < 0.06
    assert (tmp_path / "physics_informed.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_batched_gradient_graph_is_eager_grad_of_grad_per_sample_bit_for_bit():
    random.seed(3)
    model = fastgrad.MLP(1, [8, 8, 1])

    def residual_at(t):
        x = Value(t)
        u = model([x]) + x.relu() * x                    # relu: a gate node in each derivative
        (du,) = grad(u, [x], create_graph=True)
        (d2u,) = grad(du, [x], create_graph=True)
        return x, (d2u + u * du) ** 2

    x, residual = residual_at(0.0)
    batch = fastgrad.compile(residual, inputs=[x])
    assert "gate" in {n._op for n in trace(residual)[0]}
    points = [-1.5, -0.2, 0.0, 0.4, 1.1, 2.9]
    outputs = batch.forward([[t] for t in points])
    assert all(same_float(o, residual_at(t)[1].data) for o, t in zip(outputs, points))

    params = model.parameters()
    batch.forward([[0.4]])
    batch.backward()
    batched = [p.grad for p in params]
    model.zero_grad()
    residual_at(0.4)[1].backward()
    assert all(same_float(a, p.grad) for a, p in zip(batched, params))
