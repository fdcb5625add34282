"""Custom ops (fastgrad.op): an op defined by its forward and local derivative as Python functions on floats.

Oracles: the same expression written on plain floats (data, bit for bit), central finite differences (grads),
and the eager graph, which compile and the batched replay must give bit for bit."""
import gc
import math
import pickle
import random
import sys

import pytest

import fastgrad
from fastgrad import Value, reference
from support import bytes_left_after, same_float

softsign = fastgrad.op("softsign", lambda x: x / (1 + abs(x)), lambda x: (1 / (1 + abs(x)) ** 2,))
hypot = fastgrad.op("hypot", math.hypot, lambda a, b: (a / math.hypot(a, b), b / math.hypot(a, b)))
lerp = fastgrad.op("lerp", lambda a, b, t: a + (b - a) * t, lambda a, b, t: (1 - t, t, b - a))
log_ = fastgrad.op("mylog", math.log, lambda x: 1 / x)        # raises as math.log does, in forward


def central_difference(f, xs, i, h=1e-6):
    up, down = list(xs), list(xs)
    up[i] += h
    down[i] -= h
    return (f(*up) - f(*down)) / (2 * h)


# Each: the expression on Values, the same on floats (the custom ops' forwards where they stand).
EXPRESSIONS = {
    "unary": (lambda a, b, c: softsign(a * b) * c + softsign(c),
              lambda a, b, c: (a * b) / (1 + abs(a * b)) * c + c / (1 + abs(c))),
    "binary": (lambda a, b, c: hypot(a, b.tanh()) * hypot(c, 2.0),
               lambda a, b, c: math.hypot(a, reference.tanh(b)) * math.hypot(c, 2.0)),
    "ternary": (lambda a, b, c: lerp(a, b * b, softsign(c)).exp() + lerp(c, a, 0.25),
                lambda a, b, c: math.exp(a + (b * b - a) * (c / (1 + abs(c)))) + (c + (a - c) * 0.25)),
    "shared input": (lambda a, b, c: lerp(a, a, b) * hypot(a, a) + lerp(b, c, a),
                     lambda a, b, c: (a + (a - a) * b) * math.hypot(a, a) + (b + (c - b) * a)),
}
POINTS = [(0.5, -1.5, 2.0), (-0.3, 0.8, -1.1), (1.7, 0.2, 0.6)]


@pytest.mark.parametrize("name", sorted(EXPRESSIONS))
@pytest.mark.parametrize("point", POINTS)
def test_data_is_the_float_expressions_bits_and_grads_match_finite_differences(name, point):
    on_values, on_floats = EXPRESSIONS[name]
    leaves = [Value(x) for x in point]
    y = on_values(*leaves)
    assert same_float(y.data, on_floats(*point))
    y.backward()
    for i, leaf in enumerate(leaves):
        assert leaf.grad == pytest.approx(central_difference(on_floats, point, i), rel=1e-6, abs=1e-8)


def test_the_node_shows_its_name_inputs_and_arity_fixed_by_the_call():
    a, b = Value(1.0), Value(2.0)
    y = lerp(a, 3, b)                    # a number becomes a leaf, as with the built-in ops
    assert y._op == "lerp" and y.data == 1.0 + (3.0 - 1.0) * 2.0
    assert len(y._prev) == 3 and a in y._prev and b in y._prev and Value(3.0).data in {v.data for v in y._prev}
    assert softsign(b)._prev == {b} and hypot(a, b)._prev == {a, b}
    five = fastgrad.op("sum5", lambda *xs: sum(xs), lambda *xs: (1.0,) * len(xs))
    assert five(1, 2, 3, 4, 5).data == 15.0 and five(a).data == 1.0       # any arity, per call
    with pytest.raises(TypeError, match="'softsign' takes one input or more"):
        softsign()
    with pytest.raises(TypeError, match="inputs of the custom op 'softsign' must be Values or real numbers, not 'str'"):
        softsign("1")
    assert isinstance(softsign, fastgrad.CustomOp) and softsign.name == "softsign"


def test_an_op_is_checked_when_made():
    with pytest.raises(TypeError, match="forward must be callable"):
        fastgrad.op("f", 1.0, abs)
    with pytest.raises(TypeError, match="derivative must be callable"):
        fastgrad.op("f", abs, None)
    with pytest.raises(ValueError, match="must not be empty"):
        fastgrad.op("", abs, abs)
    with pytest.raises(TypeError, match="must be a str"):
        fastgrad.op(3, abs, abs)


def test_trace_and_draw_dot_show_the_ops_name():
    a, b, c = Value(1.0, label="a"), Value(2.0, label="b"), Value(0.5, label="t")
    y = lerp(a, b, c)
    nodes, edges = fastgrad.trace(y)
    assert nodes == {a, b, c, y} and edges == {(a, y), (b, y), (c, y)}
    source = fastgrad.draw_dot(y).source
    assert 'label=lerp' in source and source.count("->") == 4       # three inputs into the op, the op into y


# ---------------------------------------------------------------------------------------------------
# Eager, compile and the batched replay: the same bits

def model(inputs, shared):
    """A sample's graph: two inputs, three shared leaves, custom ops of one, two and three inputs among
    built-in ops and neuron sums (which compile fuses)."""
    x0, x1 = inputs
    w0, w1, w2 = shared
    h = softsign(w0 * x0 + w1 * x1 + w2)
    g = hypot(h, x1.tanh()) + lerp(x0, w2, softsign(w1))
    return (lerp(g, h * w0, 0.3) - 0.5) ** 2


def eager_run(row, shared_numbers):
    inputs = [Value(x) for x in row]
    shared = [Value(x) for x in shared_numbers]
    out = model(inputs, shared)
    out.backward()
    return out.data, [v.grad for v in inputs], [v.grad for v in shared]


SHARED = [0.3, -0.7, 1.1]


def rows_of(n):
    return [[math.sin(1.3 * r + 0.2), math.cos(0.7 * r) * 1.5] for r in range(n)]


def test_compile_gives_the_eager_bits_row_after_row():
    inputs, shared = [Value(0.0), Value(0.0)], [Value(x) for x in SHARED]
    graph = fastgrad.compile(model(inputs, shared))
    for row in rows_of(40):
        data, input_grads, shared_grads = eager_run(row, SHARED)
        for v, x in zip(inputs, row):
            v.data = x
        for v in inputs + shared:
            v.grad = 0.0
        assert same_float(graph.forward(), data)
        graph.backward()
        assert all(same_float(v.grad, g) for v, g in zip(inputs + shared, input_grads + shared_grads))


@pytest.mark.parametrize("simd", ["baseline", None])
def test_the_batched_replay_gives_each_rows_eager_bits(simd):
    from fastgrad import batched
    before = batched.simd()
    batched.choose_simd(simd)
    try:
        rows = rows_of(37)                   # a block of 32 and a short one
        inputs, shared = [Value(0.0), Value(0.0)], [Value(x) for x in SHARED]
        graph = fastgrad.compile(model(inputs, shared), inputs=inputs)
        outputs = graph.forward(rows)
        eager = [eager_run(row, SHARED) for row in rows]
        assert all(same_float(o, e[0]) for o, e in zip(outputs, eager))
        for r in (0, 31, 32, 36):            # one row's grads: weight 1 on it, 0 on the others
            for v in shared:
                v.grad = 0.0
            graph.backward([1.0 if i == r else 0.0 for i in range(len(rows))])
            assert all(same_float(v.grad + 0.0, g + 0.0) for v, g in zip(shared, eager[r][2]))   # 0.0 + -0.0
    finally:
        batched.choose_simd(before)


def test_the_batched_replay_gives_the_same_bits_on_any_number_of_threads():
    rows = rows_of(3 * 4096 + 5)             # enough rows for three workers
    results = []
    for threads in (1, 2, 3):
        inputs, shared = [Value(0.0), Value(0.0)], [Value(x) for x in SHARED]
        graph = fastgrad.compile(model(inputs, shared), inputs=inputs, threads=threads)
        outputs = list(graph.forward(rows))
        graph.backward(1.0 / len(rows))
        results.append((outputs, [v.grad for v in shared]))
    assert all(all(same_float(x, y) for x, y in zip(results[0][0], r[0])) for r in results[1:])
    assert all(all(same_float(x, y) for x, y in zip(results[0][1], r[1])) for r in results[1:])
    sums = [0.0] * len(SHARED)               # the eager mean, summed in another order: close, not the same bits
    for row in rows[::97]:
        assert same_float(results[0][0][rows.index(row)], eager_run(row, SHARED)[0])
    for row in rows:
        sums = [s + g / len(rows) for s, g in zip(sums, eager_run(row, SHARED)[2])]
    assert all(math.isclose(got, want, rel_tol=1e-9, abs_tol=1e-12) for got, want in zip(results[0][1], sums))


def test_a_layer_between_custom_ops_gives_each_rows_eager_bits_and_grads():
    """A micrograd MLP runs its neurons as layers: here its inputs and its output pass through a custom op."""
    from fastgrad.micrograd.nn import MLP
    cube = fastgrad.op("cube", lambda a: a ** 3, lambda a: 3 * a * a)
    random.seed(3)
    mlp = MLP(2, [5, 4, 1])

    def loss_of(xs):
        out = mlp([cube(x) for x in xs])
        return cube(out) + out

    inputs = [Value(0.0), Value(0.0)]
    rows = rows_of(45)
    for threads in (1, 3):
        graph = fastgrad.compile(loss_of(inputs), inputs=inputs, threads=threads)
        outputs = list(graph.forward(rows))
        for p in mlp.parameters():
            p.grad = 0.0
        graph.backward(1.0)
        batched = [p.grad for p in mlp.parameters()]
        eager = [loss_of([Value(a), Value(b)]) for a, b in rows]
        assert all(same_float(o, e.data) for o, e in zip(outputs, eager))
        for p in mlp.parameters():
            p.grad = 0.0
        sum(eager).backward()
        assert all(math.isclose(got, p.grad, rel_tol=1e-12, abs_tol=1e-15) for got, p in zip(batched, mlp.parameters()))


def test_grad_without_create_graph_gives_backwards_bits_and_with_it_names_the_op():
    leaves = [Value(x) for x in POINTS[0]]
    y = EXPRESSIONS["ternary"][0](*leaves)
    got = fastgrad.grad(y, leaves)
    y.backward()
    assert all(same_float(g, v.grad) for g, v in zip(got, leaves))
    assert same_float(fastgrad.grad(y, [leaves[2]])[0], leaves[2].grad)       # the third input, through a bundle
    refusal = r"create_graph=True\) cannot differentiate through .*_op 'softsign'.*create_graph=False"
    with pytest.raises(TypeError, match=refusal):
        fastgrad.grad(y, leaves, create_graph=True)
    unrelated = Value(2.0)
    z = softsign(leaves[0]) + unrelated * unrelated       # no input below the custom op: nothing to refuse
    assert fastgrad.grad(z, [unrelated], create_graph=True)[0].data == 4.0


# ---------------------------------------------------------------------------------------------------
# Errors: as from a built-in op

def test_eager_errors_go_up_as_they_are_and_build_nothing():
    x = Value(-1.0)
    with pytest.raises(ValueError, match="math domain error"):
        log_(x)
    assert x.grad == 0.0 and sys.getrefcount(x) == 2        # no node holds it
    bad_result = fastgrad.op("bad", lambda x: "one", lambda x: 1.0)
    with pytest.raises(TypeError, match="forward of the custom op 'bad' must return a real number, not 'str'"):
        bad_result(x)


def test_a_derivative_that_raises_stops_backward_adding_nothing_for_its_node():
    def slope(x):
        raise ArithmeticError("no slope here")
    flat = fastgrad.op("flat", lambda x: 2 * x, slope)
    a = Value(3.0)
    y = flat(a) + a
    with pytest.raises(ArithmeticError, match="no slope here"):
        y.backward()
    assert a.grad == 1.0                     # `+` ran before (as micrograd's closures); the op added nothing
    wrong = [fastgrad.op("w", lambda x, y: x, lambda x, y: (1.0,)),
             fastgrad.op("w", lambda x, y: x, lambda x, y: 1.0),
             fastgrad.op("w", lambda x, y: x, lambda x, y: (1.0, "2"))]
    for op, message in zip(wrong, ["not 1 numbers", "not 'float'", "real numbers, not 'str'"]):
        with pytest.raises(TypeError, match=message):
            op(a, a).backward()


def test_compile_surfaces_a_forward_error_as_the_built_in_ops_do_and_keeps_the_old_numbers():
    x = Value(2.0)
    y = log_(x) * 3.0
    builtin = x.log() * 3.0
    graph, builtin_graph = fastgrad.compile(y), fastgrad.compile(builtin)
    x.data = -1.0
    with pytest.raises(ValueError) as raised:
        graph.forward()
    with pytest.raises(ValueError) as raised_builtin:
        builtin_graph.forward()
    assert str(raised.value) == str(raised_builtin.value).replace("'log'", "'mylog'")
    assert isinstance(raised.value.__cause__, ValueError)          # the op's own exception, with its traceback
    assert y.data == 3 * math.log(2.0) and [n.data for n in y._prev if n._op] == [math.log(2.0)]
    x.data = math.e
    assert graph.forward() == 3.0 and y.data == 3.0


def test_compile_surfaces_a_derivative_error_and_changes_no_grad():
    calls = []

    def slope(x):
        calls.append(x)
        if x == 0.0:
            raise ZeroDivisionError("float division by zero")
        return 1 / x
    inverse_log = fastgrad.op("inverse_log", lambda x: x, slope)
    x = Value(2.0)
    y = inverse_log(x) * x
    graph = fastgrad.compile(y)
    graph.forward()
    graph.backward()
    x.data = 0.0
    graph.forward()
    grads = (x.grad, y.grad)
    with pytest.raises(ZeroDivisionError, match=r"'inverse_log' at node 1 of 2 .*no grad was changed"):
        graph.backward()
    assert (x.grad, y.grad) == grads
    x.data = 4.0
    graph.forward()
    graph.backward()
    assert x.grad == grads[0] + (0.25 * 4.0 + 4.0) and y.grad == 1.0


def test_batched_errors_name_the_row_and_change_nothing():
    inputs, w = [Value(1.0)], Value(0.5)
    y = log_(inputs[0] * w) + w
    graph = fastgrad.compile(y, inputs=inputs, threads=2)
    rows = [[1.0 + r] for r in range(9000)]
    rows[5000] = [-3.0]
    with pytest.raises(ValueError, match=r"math domain error \(row 5,000: 'mylog' at node 2 of 3"):
        graph.forward(rows)
    rows[5000] = [3.0]
    outputs = graph.forward(rows)
    assert all(same_float(o, math.log(r[0] * 0.5) + 0.5) for o, r in zip(outputs, rows))
    w.grad = 0.0

    def slope(x):
        if x > 4000.0:
            raise OverflowError("too steep")
        return 1 / x
    steep = fastgrad.op("steep", math.log, slope)
    y = steep(inputs[0] * w) + w
    for threads in (1, 2):
        graph = fastgrad.compile(y, inputs=inputs, threads=threads)
        graph.forward(rows)
        with pytest.raises(OverflowError, match=r"too steep \(row [0-9,]+: 'steep' at node 2 of 3.*nothing was "
                                                r"changed") as raised:
            graph.backward()
        row = int(str(raised.value).split("(row ")[1].split(":")[0].replace(",", ""))
        assert row == 8000 if threads == 1 else row >= 8000      # threads: the first failure a worker met
        assert w.grad == 0.0
        graph.forward(rows[:8000])
        graph.backward()
        assert w.grad == pytest.approx(8000 / 0.5 + 8000)
        w.grad = 0.0


# ---------------------------------------------------------------------------------------------------
# Refusals, memory, depth

def test_compile_refuses_a_bare_backward_closure_naming_the_node_and_fastgrad_op():
    a = Value(2.0)
    out = Value(a.data ** 2, (a,), "square", label="sq")

    def _backward():
        a.grad += 2 * a.data * out.grad
    out._backward = _backward
    with pytest.raises(TypeError, match=r"compile cannot replay .*_op 'square', label 'sq'.*fastgrad\.op\(name, "
                                        r"forward, derivative\)"):
        fastgrad.compile(out * 2)
    fastgrad.compile(softsign(a) * 2)       # the same node as a custom op compiles


def test_a_custom_nodes_op_children_and_backward_are_fixed_and_it_does_not_pickle():
    a = Value(1.0)
    y = lerp(a, 2.0, 0.5)
    with pytest.raises(TypeError, match="made by 'lerp' is fixed"):
        y._op = "other"
    with pytest.raises(TypeError, match="made by 'lerp' are fixed"):
        y._prev = [a]
    with pytest.raises(TypeError, match="custom op 'lerp' has that op's derivative"):
        y._backward = lambda: None
    with pytest.raises(TypeError, match="cannot pickle a graph holding a node of the custom op 'lerp'"):
        pickle.dumps(y * 2)
    with pytest.raises(TypeError, match="custom op 'lerp' cannot be pickled"):
        pickle.dumps(lerp)
    y._backward()                            # the op's derivative, one step, as the built-in one is
    assert a.grad == 0.0 * 0.5 and y.grad == 0.0
    y.grad = 2.0
    y._backward()
    assert a.grad == 1.0


def test_custom_nodes_are_tracked_and_a_cycle_through_an_op_is_collected():
    a = Value(1.0)
    y = softsign(a)
    assert gc.is_tracked(y) and gc.is_tracked(y * 2) and not gc.is_tracked(a * 2)
    holder = []
    looped = fastgrad.op("looped", lambda x: x + len(holder), lambda x: 1.0)
    holder.append(looped(a))               # the op's forward refers to its own node: a cycle
    del looped, holder
    gc.collect()
    assert sys.getrefcount(a) == 3           # a, y's input, and getrefcount's argument


def test_100000_custom_nodes_made_run_and_dropped_give_their_memory_back():
    def build():
        x = Value(0.3)
        v = x
        for _ in range(1000):
            v = lerp(softsign(v), v, 0.5) * 1.0001
        v.backward()
        graph = fastgrad.compile(v)
        graph.forward()
        graph.backward()
        fastgrad.compile(v, inputs=[x]).forward([[0.1], [0.2]])
    left = bytes_left_after(build, 50)         # 100,000 custom nodes, 150,000 nodes in all
    assert left < 100_000, f"{left} bytes not given back"


def test_a_chain_of_100000_custom_nodes_runs_and_frees_without_recursion():
    x = Value(0.5)
    v = x
    for _ in range(100_000):
        v = softsign(v) + 0.25
    v.backward()
    eager = (v.data, x.grad)
    x.grad = 0.0
    graph = fastgrad.compile(v)
    assert same_float(graph.forward(), eager[0])
    graph.backward()
    assert same_float(x.grad, eager[1])
    assert fastgrad.grad(v, [x])[0] == eager[1]
    del v, graph
    gc.collect()
    assert sys.getrefcount(x) == 2
