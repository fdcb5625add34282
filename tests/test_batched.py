"""The batched replay, fastgrad.compile(root, inputs=[...]): each row's output is the bits of that sample's eager
graph, the shared leaves' grads are those of the eager graphs of all rows (within rounding), and the same bits
for any number of threads and any SIMD width; rows and weights in every form; errors; threads; memory."""
import array
import math
import random
import signal
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgrad
from fastgrad import Value, moons, optim
from fastgrad.batched import fused_multiply_add
from fastgrad.micrograd.nn import MLP
from fastgrad.reference import tanh as reference_tanh
from support import (apply_step, leaf_numbers, operand_numbers, readme_code, recipe_strategy, run_python,
                     same_float, simd_widths, under_address_sanitizer)

np = pytest.importorskip("numpy")


def moons_sample(seed=0, sizes=(16, 16, 1)):
    """micrograd's moons model and one sample's hinge loss over input leaves (x0, x1, label)."""
    random.seed(seed)
    model = MLP(2, list(sizes))
    x0, x1, label = Value(0.0), Value(0.0), Value(0.0)
    return model, (1 + -label * model([x0, x1])).relu(), [x0, x1, label]


def moons_rows(n, seed=0):
    X, y = moons.make_moons(n, noise=0.1, seed=seed)
    return np.array([[a, b, t] for (a, b), t in zip(X, y)], dtype=np.float64)


def eager_losses(model, rows):
    return [(1 + -row[2] * model([Value(row[0]), Value(row[1])])).relu() for row in rows]


def grads_of(model):
    return [p.grad for p in model.parameters()]


def zero(model):
    for p in model.parameters():
        p.grad = 0.0


def batched_pass(loss, inputs, rows, leaves, **compile_options):
    """One forward and backward of loss's batched graph over rows, weights 1/N: (the outputs' bytes, the leaves'
    grads)."""
    batch = fastgrad.compile(loss, inputs=inputs, **compile_options)
    outputs = batch.forward(rows)
    for v in leaves:
        v.grad = 0.0
    batch.backward(1.0 / len(rows))
    return bytes(outputs), tuple(v.grad for v in leaves)


def assert_eager_grads(batched, eager, leaves):
    """batched: the leaves' grads from the batched graph; eager: each row's eager graph. Their mean's grads,
    within 1e-12."""
    for v in leaves:
        v.grad = 0.0
    (sum(eager) * (1.0 / len(eager))).backward()
    for got, v in zip(batched, leaves):
        assert math.isclose(got, v.grad, rel_tol=1e-12, abs_tol=1e-15), (got, v.grad)


# ---------------------------------------------------------------------------------------------------
# Exact outputs, grads of the eager graphs

def test_each_output_is_the_eager_graphs_bits_and_the_grads_are_the_eager_sums():
    model, loss, inputs = moons_sample()
    rows = moons_rows(300)
    batch = fastgrad.compile(loss, inputs=inputs)
    outputs = batch.forward(rows)
    eager = eager_losses(model, rows)
    assert len(outputs) == len(rows)
    assert all(same_float(o, e.data) for o, e in zip(outputs, eager))
    zero(model)
    batch.backward(1.0 / len(rows))
    batched = grads_of(model)
    zero(model)
    (sum(eager) * (1.0 / len(rows))).backward()
    for got, want in zip(batched, grads_of(model)):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-15)


def test_grads_match_finite_differences():
    model, loss, inputs = moons_sample(sizes=(4, 1))
    rows = moons_rows(50, seed=3)
    batch = fastgrad.compile(loss, inputs=inputs)
    weights = np.linspace(0.5, 1.5, len(rows))
    batch.forward(rows)
    zero(model)
    batch.backward(weights)
    h = 1e-6
    for p in model.parameters():
        p.data += h
        up = float(np.dot(np.asarray(batch.forward(rows)), weights))
        p.data -= 2 * h
        down = float(np.dot(np.asarray(batch.forward(rows)), weights))
        p.data += h
        assert abs(p.grad - (up - down) / (2 * h)) <= 1e-5 * max(1.0, abs(p.grad))


@pytest.mark.parametrize("widths", [(1,), (2, 3), (5, 1), (4, 4, 2), (9, 7, 1), (3, 8)])
@pytest.mark.parametrize("input_count", [1, 2, 5])
def test_layers_of_any_width_give_each_rows_eager_bits_and_the_eager_grads(widths, input_count):
    """Neurons over the same inputs run as one layer: any number of them (blocks of four and what is left), any
    number of inputs, an input listed twice, a shared leaf among the inputs, neurons of one layer apart in the
    graph's order."""
    random.seed(sum(widths) * 10 + input_count)
    model = MLP(input_count, list(widths))
    params = model.parameters()
    shared = params[0]
    side = [([Value(random.uniform(-1, 1)) for _ in range(4)], Value(random.uniform(-1, 1))) for _ in range(3)]

    def loss_of(xs):
        out = model(xs)
        total = out if isinstance(out, Value) else sum(out)
        terms = [xs[0], xs[-1], xs[0], shared]
        for weights, bias in side:       # each neuron's sum, with other nodes between them
            total = total * 0.5 + sum((w * x for w, x in zip(weights, terms)), bias).tanh()
        return total

    inputs = [Value(0.0) for _ in range(input_count)]
    loss = loss_of(inputs)
    rows = np.random.default_rng(input_count).uniform(-2, 2, size=(70, input_count))
    every = params + [v for weights, bias in side for v in weights + [bias]]
    results = {batched_pass(loss, inputs, rows, every, threads=threads) for threads in (1, 3)}
    assert len(results) == 1
    outputs, batched = results.pop()
    eager = [loss_of([Value(x) for x in row]) for row in rows]
    assert all(same_float(o, e.data) for o, e in zip(array.array("d", outputs), eager))
    assert_eager_grads(batched, eager, every)


@pytest.mark.parametrize("shape", ["an input listed twice", "an input that is a weight too"])
@pytest.mark.parametrize("n", [5, 64])
def test_neurons_whose_inputs_repeat_or_are_their_weights_get_the_eager_grads(shape, n):
    """Neurons over an input listed twice, side by side (its grads read: it is a node), or over a shared leaf
    that is also one of their weights: the grads of the eager graphs at every width, in a short block and in
    whole ones. (A layer gathered the twice-listed input's grad twice and stored one over the other; a short
    block's weight grads went into the lanes of an input whose grad was then stored over them.)"""
    random.seed(8)
    a, c = Value(0.7), Value(-0.4)
    weights = [[Value(random.uniform(-1, 1)) for _ in range(3)] for _ in range(3)]    # a bias, two weights
    leaves = [a, c] + [v for neuron in weights for v in neuron]

    def loss_of(x):
        h = (a * x).tanh()
        if shape == "an input listed twice":
            sums = [b + w1 * h + w2 * h for b, w1, w2 in weights]
        else:
            sums = [weights[0][0] + weights[0][1] * h + c * c] + [b + w1 * h + w2 * c for b, w1, w2 in weights[1:]]
        return sum(s.tanh() for s in sums)

    x = Value(0.0)
    loss = loss_of(x)
    rows = np.random.default_rng(n).uniform(-2, 2, size=(n, 1))
    for _ in simd_widths():
        _, batched = batched_pass(loss, [x], rows, leaves)
        assert_eager_grads(batched, [loss_of(Value(r[0])) for r in rows], leaves)


def test_neurons_sharing_a_weight_give_the_same_bits_at_every_simd_width():
    """Two neurons over the same inputs with one weight in common (and a neuron using a weight twice)."""
    random.seed(4)
    shared = Value(0.7)
    other = [Value(random.uniform(-1, 1)) for _ in range(6)]
    leaves = [shared] + other

    def loss_of(x1, x2):
        neurons = [other[0] + shared * x1 + other[1] * x2, other[2] + other[3] * x1 + shared * x2,
                   other[4] + other[5] * x1 + other[5] * x2]
        return sum(n.tanh() for n in neurons)

    inputs = [Value(0.0), Value(0.0)]
    loss = loss_of(*inputs)
    rows = np.random.default_rng(4).uniform(-2, 2, size=(1000, 2))
    results = {}
    for _ in simd_widths():
        batch = fastgrad.compile(loss, inputs=inputs)
        for v in leaves:
            v.grad = 0.0
        batch.forward_backward(rows)
        results.setdefault(fused_multiply_add(), set()).add(tuple(v.grad for v in leaves))
    assert all(len(same) == 1 for same in results.values())
    eager = [loss_of(Value(a), Value(b)) for a, b in rows]
    for v in leaves:
        v.grad = 0.0
    sum(eager).backward()
    for (grads,) in results.values():
        assert all(math.isclose(got, v.grad, rel_tol=1e-12) for got, v in zip(grads, leaves))


def lane_instructions(batch):
    return int(repr(batch).split(" instructions")[0].rsplit(" ", 1)[1].replace(",", ""))


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid", "mixed", "a sum read twice"])
def test_a_layers_activations_give_each_rows_eager_bits_and_grads_at_every_simd_width(activation):
    """A layer whose every sum feeds one ReLU, tanh or sigmoid computes them itself (lanes.c), in one instruction
    fewer a neuron; sums feeding different ops, or a sum another node reads too, keep their own instructions.
    Rows with zeros, signed zeros and negative sums (the ReLU's mask), each width alike."""
    random.seed(11)
    weights = [[Value(random.uniform(-1, 1)) for _ in range(3)] for _ in range(5)]      # a bias, two weights
    leaves = [v for neuron in weights for v in neuron]

    def loss_of(x1, x2, plain=False):
        sums = [b + w1 * x1 + w2 * x2 for b, w1, w2 in weights]
        if plain:                                          # the same graph without the activations
            outs = sums
        elif activation == "mixed":
            outs = [s.relu() if k % 2 else s.tanh() for k, s in enumerate(sums)]
        else:
            outs = [getattr(s, "relu" if activation == "a sum read twice" else activation)() for s in sums]
        total = sum(o * (k + 1) for k, o in enumerate(outs))
        return total + sums[0] * 0.5 if activation == "a sum read twice" else total

    inputs = [Value(0.0), Value(0.0)]
    loss = loss_of(*inputs)
    rows = np.random.default_rng(11).uniform(-3, 3, size=(333, 2))
    rows[:8] = [[0.0, 0.0], [-0.0, 0.0], [0.0, -0.0], [1e-300, -1e-300], [30, 30], [-30, -30], [2, -2], [-2, 2]]
    fused = activation in ("relu", "tanh", "sigmoid")
    results = {}
    for _ in simd_widths():
        results.setdefault(fused_multiply_add(), set()).add(batched_pass(loss, inputs, rows, leaves))
    assert all(len(same) == 1 for same in results.values())
    assert len({outputs for (outputs, _), in results.values()}) == 1          # the forward pass fuses nothing
    for (outputs, batched), in results.values():
        eager = [loss_of(Value(a), Value(b)) for a, b in rows]        # a graph a backward(): its grads add up
        assert all(same_float(o, e.data) for o, e in zip(array.array("d", outputs), eager))
        assert_eager_grads(batched, eager, leaves)
    plain = fastgrad.compile(loss_of(*inputs, plain=True), inputs=inputs)
    assert lane_instructions(fastgrad.compile(loss, inputs=inputs)) - lane_instructions(plain) == (0 if fused else 5)


def test_tanh_in_the_lanes_is_eagers_tanh_bit_for_bit_at_every_simd_width():
    """fastgrad's tanh computes both of its forms and selects (src/ops.h): each form's edge, tiny and huge
    numbers, infinities and nan, in lanes beside ordinary numbers, against the eager op and reference.tanh."""
    edges = [0.0, 5e-324, 1e-300, 2.0 ** -27, 0.5493061443340548, 0.5493061443340549, 0.549306144334055, 1.0,
             19.06, 21.999999999999996, 22.0, 1e300, math.inf, math.nan]
    numbers = edges + [-x for x in edges] + list(np.random.default_rng(7).uniform(-25, 25, size=70))
    x = Value(0.0)
    root = x.tanh()
    for _ in simd_widths():
        outputs = fastgrad.compile(root, inputs=[x]).forward([[n] for n in numbers])
        for n, got in zip(numbers, outputs):
            assert same_float(got, Value(n).tanh().data) and same_float(got, reference_tanh(n)), n


@pytest.mark.parametrize("count", [2, 34])
def test_a_short_blocks_unused_lanes_reach_no_layers_grad(count):
    """The lanes past the last row repeat it with a grad of 0: 0 * inf would make the weights' grads nan."""
    w = [Value(0.5), Value(-1.5), Value(2.0), Value(0.25)]
    b = [Value(0.1), Value(-0.2)]
    x1, x2 = Value(0.0), Value(0.0)
    loss = (b[0] + w[0] * x1 + w[1] * x2) + (b[1] + w[2] * x1 + w[3] * x2)     # two neurons, as Neuron sums
    batch = fastgrad.compile(loss, inputs=[x1, x2])
    rows = [[1.0, 2.0]] * (count - 1) + [[math.inf, 1.0]]
    batch.forward(rows)
    batch.backward()
    assert [v.grad for v in w + b] == [math.inf, 2 * count - 1, math.inf, 2 * count - 1, count, count]


@settings(max_examples=150, deadline=None)
@given(recipe=recipe_strategy(leaf_numbers, operand_numbers, max_leaves=4),
       inputs_taken=st.integers(1, 4), rows=st.lists(st.lists(leaf_numbers, min_size=4, max_size=4),
                                                     min_size=1, max_size=70))
def test_random_programs_over_every_op_give_each_rows_eager_bits(recipe, inputs_taken, rows):
    """Any graph of the ops: the first leaves are inputs, the others shared. Where some row fails eagerly,
    the batched forward fails with that row's exception; otherwise every output is that row's eager bits,
    and the shared leaves' grads are the sum of the rows' eager grads (compared where that sum is finite)."""
    leaves, steps = recipe
    inputs_taken = min(inputs_taken, len(leaves))

    def build(numbers, shared):
        pool = [Value(x) for x in numbers[:inputs_taken]] + shared
        for step in steps:
            try:
                pool.append(apply_step(step, pool))
            except (ArithmeticError, ValueError):
                return None
        return pool[-1], pool[:inputs_taken], pool[len(numbers[:inputs_taken]) + len(shared):]

    shared = [Value(x) for x in leaves[inputs_taken:]]
    built = build(leaves, shared)
    if built is None:
        return                                 # the template itself fails: nothing to compile
    root, template_inputs, template_nodes = built
    if not root._prev:
        return                                 # every step failed: nothing above the leaves
    used = [x for x in template_inputs if any(x is y for y in _leaves(root))]
    if len(used) < len(template_inputs):
        return                                 # an input the root does not depend on is refused (tested below)
    batch = fastgrad.compile(root, inputs=template_inputs)
    in_graph = {id(n) for n in fastgrad.trace(root)[0]}
    used = [id(n) in in_graph for n in template_nodes]     # only the steps the root depends on fail a row
    rows = [row[:inputs_taken] for row in rows]
    # A row fails at whichever of its failing steps the replay meets first: the graph's order, which need not
    # be the order the steps were written in (the eager error of any step the root depends on will do).
    failures = {}
    eager = []
    for r, row in enumerate(rows):
        pool = [Value(x) for x in row] + shared
        errors = set()
        for step, needed in zip(steps, used):
            try:
                pool.append(apply_step(step, pool))
            except (ArithmeticError, ValueError) as error:
                if needed:
                    errors.add(type(error))
                pool.append(None)              # a step the root does not depend on, or one that failed
            except (TypeError, AttributeError):
                pool.append(None)              # after a failure: an operand is None
        if errors:
            failures[r] = errors
        else:
            eager.append(pool[-1])
    if failures:
        with pytest.raises((ArithmeticError, ValueError)) as raised:
            batch.forward(rows)
        row_named = int(str(raised.value).split("(row ")[1].split(":")[0].replace(",", ""))
        assert type(raised.value) in failures.get(row_named, ()), (row_named, raised.value, failures)
        return
    outputs = batch.forward(rows)
    assert all(same_float(o, e.data) for o, e in zip(outputs, eager))
    for leaf in shared:
        leaf.grad = 0.0
    batch.backward()
    batched = [leaf.grad for leaf in shared]
    for leaf in shared:
        leaf.grad = 0.0
    for out in eager:
        out.backward()
    for got, want in zip(batched, [leaf.grad for leaf in shared]):
        if math.isfinite(want) and abs(want) < 1e200:
            assert abs(got - want) <= 1e-9 * max(1.0, abs(want)) * len(rows), (got, want)


def _leaves(root):
    nodes, _ = fastgrad.trace(root)
    return [n for n in nodes if not n._prev]


# ---------------------------------------------------------------------------------------------------
# The same bits for any thread count, SIMD width, and shape of N

def test_the_same_bits_for_any_thread_count_and_simd_width():
    """The outputs at every width; the grads at every width that fuses a layer's multiply-adds, and at every
    width that does not (x86-64's baseline)."""
    model, loss, inputs = moons_sample()
    rows = moons_rows(20_000, seed=5)
    results = {}
    for _ in simd_widths():
        for threads in (1, 2, 3, 7):
            batch = fastgrad.compile(loss, inputs=inputs, threads=threads)
            outputs = bytes(batch.forward(rows))
            zero(model)
            batch.backward(1.0 / len(rows))
            results.setdefault(fused_multiply_add(), set()).add((outputs, tuple(grads_of(model))))
    assert all(len(same) == 1 for same in results.values())
    assert len({outputs for (outputs, _), in results.values()}) == 1


def test_a_layers_weight_grads_are_fused_multiply_adds_where_the_width_fuses():
    """A block's two rows reaching one of a weight's 8 folded sums (rows 0 and 8): their terms -1 and
    (1 + 2**-30)**2 = 1 + 2**-29 + 2**-60 add to 2**-29 + 2**-60 exactly in one fused multiply-add, to 2**-29 when
    the product is rounded first, as the eager graph rounds it. Every other row's term is 0."""
    w = [Value(0.5), Value(-1.5), Value(2.0), Value(0.25)]
    b = [Value(0.1), Value(-0.2)]
    x1, x2, x3 = Value(0.0), Value(0.0), Value(0.0)
    loss = (b[0] + w[0] * x1 + w[1] * x2) * x3 + (b[1] + w[2] * x1 + w[3] * x2) * x3     # a layer of two
    near_one = 1.0 + 2.0 ** -30
    rows = [[0.0, 1.0, 1.0] for _ in range(32)]                                          # one whole block
    rows[0] = [-1.0, 1.0, 1.0]
    rows[8] = [near_one, 1.0, near_one]
    eager = [(b[0] + w[0] * r[0] + w[1] * r[1]) * r[2] + (b[1] + w[2] * r[0] + w[3] * r[1]) * r[2] for r in rows]
    for v in w + b:
        v.grad = 0.0
    sum(eager).backward()
    assert w[0].grad == 2.0 ** -29
    for width in simd_widths():
        batch = fastgrad.compile(loss, inputs=[x1, x2, x3])
        for v in w + b:
            v.grad = 0.0
        batch.forward_backward(rows)
        expected = 2.0 ** -29 + 2.0 ** -60 if fused_multiply_add() else 2.0 ** -29
        assert w[0].grad == w[2].grad == expected, width


@pytest.mark.parametrize("n", [1, 2, 3, 17, 31, 32, 33, 63, 64, 65, 1000])
def test_any_number_of_rows(n):
    model, loss, inputs = moons_sample(sizes=(3, 1))
    rows = moons_rows(max(n, 2), seed=n)[:n]
    batch = fastgrad.compile(loss, inputs=inputs, threads=2)
    outputs = batch.forward(rows)
    eager = eager_losses(model, rows)
    assert all(same_float(o, e.data) for o, e in zip(outputs, eager))
    zero(model)
    batch.backward()
    batched = grads_of(model)
    zero(model)
    sum(eager).backward()
    for got, want in zip(batched, grads_of(model)):
        assert math.isclose(got, want, rel_tol=1e-12, abs_tol=1e-14)


def test_shared_leaves_whose_grads_go_lane_by_lane_in_every_role_over_many_chunks():
    """A shared leaf's grad is folded by the sums that weigh with it and added lane by lane by every other
    instruction; the lanes are summed only for leaves something adds lane by lane (batched.pyx,
    find_lanes_added): each such role, over whole blocks of several chunks (no short block), the first 1,024
    rows and all, against the eager graphs of all rows."""
    mix = fastgrad.op("mix", lambda a, b: a * math.tanh(b), lambda a, b: (math.tanh(b), a * (1 - math.tanh(b) ** 2)))
    s = [Value(v) for v in (0.3, -0.7, 1.1, 0.45, -0.2, 0.8, 0.6, -1.3, 0.25, 0.9, -0.4)]

    def loss_of(x1, x2):
        layer = [s[0] + s[1] * x1 + s[2] * s[9], s[3] + s[4] * x1 + s[5] * s[9]]     # a layer over s[9]
        plain_a = (s[6] * x1).tanh()                     # a plain op's first child
        plain_b = (x2 - s[7]) ** 2                       # its second
        dot = x2 + x1 * layer[1].relu() + x2 * s[8]     # a sum's term whose second factor is shared
        return dot + plain_a + plain_b + mix(s[10], x1) * layer[0].tanh()       # a custom op's input

    inputs = [Value(0.0), Value(0.0)]
    loss = loss_of(*inputs)
    for count in (1024, 32 * 32 * 3):
        rows = np.random.default_rng(count).uniform(-1.5, 1.5, size=(count, 2))
        _, batched = batched_pass(loss, inputs, rows, s)
        assert_eager_grads(batched, [loss_of(Value(a), Value(b)) for a, b in rows], s)


def test_a_million_and_three_rows_against_exact_sums():
    """A linear model, whose grads are exact sums of the inputs: math.fsum is the oracle."""
    w, b, x = Value(0.5), Value(-0.25), Value(0.0)
    batch = fastgrad.compile(w * x + b, inputs=[x])
    xs = np.random.default_rng(0).uniform(-2, 2, 1_000_003)
    outputs = np.asarray(batch.forward(xs))
    assert np.array_equal(outputs, xs * 0.5 + -0.25)
    batch.backward()
    assert abs(w.grad - math.fsum(xs)) <= 1e-12 * float(np.abs(xs).sum())
    assert b.grad == 1_000_003


# ---------------------------------------------------------------------------------------------------
# Rows and weights in every form

def test_rows_as_lists_array_array_and_numpy_give_the_same_outputs():
    model, loss, inputs = moons_sample(sizes=(3, 1))
    rows = moons_rows(40)
    batch = fastgrad.compile(loss, inputs=inputs)
    expected = bytes(batch.forward(rows))
    assert bytes(batch.forward(rows.tolist())) == expected
    assert bytes(batch.forward([tuple(r) for r in rows.tolist()])) == expected
    assert bytes(batch.forward(array.array("d", rows.ravel()))) == expected
    assert bytes(batch.forward(rows.ravel())) == expected


def test_numpy_rows_are_read_in_place_and_outputs_view_without_a_copy():
    model, loss, inputs = moons_sample(sizes=(3, 1))
    rows = moons_rows(40)
    batch = fastgrad.compile(loss, inputs=inputs)
    outputs = batch.forward(rows)
    with pytest.raises(ValueError):          # the graph holds the array's buffer: not copied
        rows.resize((80, 3))
    view = np.asarray(outputs)
    view[0] = 123.0
    assert outputs[0] == 123.0
    assert isinstance(outputs, array.array) and outputs.typecode == "d"


def test_fortran_ordered_rows_are_refused_and_say_what_to_do():
    model, loss, inputs = moons_sample(sizes=(3, 1))
    batch = fastgrad.compile(loss, inputs=inputs)
    with pytest.raises(ValueError, match="C-contiguous.*ascontiguousarray"):
        batch.forward(np.asfortranarray(moons_rows(40)))


@pytest.mark.parametrize("rows, error, message", [
    ([[1.0, 2.0]], ValueError, r"rows\[0\] has 2 numbers; each row has 3"),
    ([[1.0, "a", 2.0]], TypeError, r"rows\[0\]\[1\] must be a real number, not 'str'"),
    ([[1.0, Value(1.0), 2.0]], TypeError, r"rows\[0\]\[1\] must be a real number, not 'fastgrad.engine.Value'"),
    ([], ValueError, "rows is empty"),
    (np.zeros((0, 3)), ValueError, "rows is empty"),
    (np.zeros((4, 2)), ValueError, r"shape \(N, 3\)"),
    (np.zeros((4, 3), dtype=np.float32), TypeError, "float64"),
    (np.zeros((2, 2, 3)), ValueError, r"shape \(N, 3\)"),
    (array.array("d", [1.0] * 4), ValueError, "N \\* 3"),
    (5, TypeError, "sequence of rows"),
    ([5], TypeError, r"rows\[0\] must be a sequence"),
])
def test_bad_rows_are_refused_before_anything_is_computed(rows, error, message):
    model, loss, inputs = moons_sample(sizes=(3, 1))
    batch = fastgrad.compile(loss, inputs=inputs)
    with pytest.raises(error, match=message):
        batch.forward(rows)
    with pytest.raises(RuntimeError, match="forward"):
        batch.backward()


def test_weights_one_number_or_one_a_row():
    model, loss, inputs = moons_sample(sizes=(3, 1))
    rows = moons_rows(70)
    batch = fastgrad.compile(loss, inputs=inputs)
    batch.forward(rows)
    results = []
    for weights in (0.5, [0.5] * 70, np.full(70, 0.5), array.array("d", [0.5] * 70)):
        zero(model)
        batch.backward(weights)
        results.append(grads_of(model))
    assert all(r == results[0] for r in results)
    for bad, error in (([1.0] * 69, ValueError), ("x", TypeError), ([1.0] * 69 + ["x"], TypeError), (None, TypeError)):
        with pytest.raises(error):
            batch.backward(bad)


@pytest.mark.parametrize("threads", [1, 3])
@pytest.mark.parametrize("weights", ["mean", "per row"])
def test_forward_backward_gives_forward_then_backwards_bits(threads, weights):
    model, loss, inputs = moons_sample()
    rows = moons_rows(2 * 2048 + 37)         # several workers' chunks, and a short block
    weights = 1.0 / len(rows) if weights == "mean" else np.linspace(-1.0, 2.0, len(rows))
    batch = fastgrad.compile(loss, inputs=inputs, threads=threads)
    zero(model)
    outputs = bytes(batch.forward(rows))
    batch.backward(weights)
    apart = grads_of(model)
    zero(model)
    assert bytes(batch.forward_backward(rows, weights)) == outputs
    assert grads_of(model) == apart
    zero(model)
    batch.backward(weights)                  # its rows are the last forward's, as forward()'s are
    assert grads_of(model) == apart


def test_forward_backward_fails_as_forward_does_and_checks_weights_first():
    w, x = Value(2.0), Value(1.0)
    batch = fastgrad.compile((w * x).log() * w, inputs=[x])
    with pytest.raises(ValueError, match=r"math domain error \(row 40: 'log'"):
        batch.forward_backward([[1.0]] * 40 + [[-1.0]])
    assert w.grad == 0.0                     # nothing added
    with pytest.raises(RuntimeError, match="forward"):
        batch.backward()
    with pytest.raises(ValueError, match="weights has 2 numbers, for 3 rows"):
        batch.forward_backward([[1.0]] * 3, [1.0, 1.0])
    assert w.grad == 0.0
    outputs = batch.forward_backward([[1.0], [3.0]], [1.0, 0.5])
    assert list(outputs) == [math.log(2.0) * 2.0, math.log(6.0) * 2.0]
    # d/dw of log(w x) w is log(w x) + 1, a row's weight times it
    assert w.grad == pytest.approx((math.log(2.0) + 1) + 0.5 * (math.log(6.0) + 1), rel=1e-15)


# ---------------------------------------------------------------------------------------------------
# What compile() refuses, and what stays as it was

def test_inputs_must_be_distinct_leaves_of_the_graph():
    a, b, c = Value(1.0), Value(2.0), Value(3.0)
    root = (a * b).tanh() + 1
    with pytest.raises(ValueError, match=r"inputs\[1\] is inputs\[0\] again"):
        fastgrad.compile(root, inputs=[a, a])
    with pytest.raises(ValueError, match=r"inputs\[0\] is not a leaf .*'\*'"):
        fastgrad.compile(root, inputs=[a * b])
    with pytest.raises(ValueError, match=r"inputs\[1\] .* is not in the graph"):
        fastgrad.compile(root, inputs=[a, c])
    with pytest.raises(TypeError, match=r"inputs\[0\] must be a Value, not 'float'"):
        fastgrad.compile(root, inputs=[1.0])
    with pytest.raises(ValueError, match="empty"):
        fastgrad.compile(root, inputs=[])
    with pytest.raises(ValueError, match="threads"):
        fastgrad.compile(root, inputs=[a], threads=0)
    with pytest.raises(TypeError, match="threads= goes with inputs="):
        fastgrad.compile(root, threads=2)
    with pytest.raises(TypeError, match="made by fastgrad.compile"):
        fastgrad.BatchedGraph()


def test_the_template_graph_stays_a_template():
    model, loss, inputs = moons_sample(sizes=(4, 1))
    nodes, _ = fastgrad.trace(loss)
    params = {id(p) for p in model.parameters()}
    before = {id(n): (n.data, n.grad) for n in nodes}
    batch = fastgrad.compile(loss, inputs=inputs)
    batch.forward(moons_rows(100))
    batch.backward()
    for n in nodes:
        if id(n) not in params and n._prev:
            assert (n.data, n.grad) == before[id(n)]
        elif id(n) not in params:                       # the inputs, and the numbers ops wrapped
            assert n.data == before[id(n)][0]
    assert any(p.grad != 0 for p in model.parameters())


def test_a_domain_error_names_the_row_and_leaves_the_grads_then_a_valid_forward_works():
    w, x = Value(2.0), Value(1.0)
    batch = fastgrad.compile((w * x).log() * w, inputs=[x])
    batch.forward([[1.0], [2.0]])
    batch.backward()
    grads = w.grad
    rows = [[1.0]] * 100 + [[-1.0]] + [[1.0]] * 10
    with pytest.raises(ValueError, match=r"math domain error \(row 100: 'log'"):
        batch.forward(rows)
    with pytest.raises(RuntimeError, match="forward"):
        batch.backward()
    assert w.grad == grads
    assert list(batch.forward([[3.0]])) == [math.log(6.0) * 2.0]


def test_hand_made_nodes_roots_that_are_leaves_and_every_op():
    a, x = Value(0.7), Value(0.0)
    custom = Value(5.0, (a,), "mine")
    root = (x * a + custom).tanh().exp().log().sigmoid().softplus() ** 2 + (x - a) / 3 + (a ** x) + (-x).relu()
    batch = fastgrad.compile(root, inputs=[x])
    rows = [[v] for v in np.linspace(-2, 2, 9)]
    for row, out in zip(rows, batch.forward(rows)):
        xv = Value(row[0])
        custom_v = Value(5.0, (a,), "mine")
        eager = (xv * a + custom_v).tanh().exp().log().sigmoid().softplus() ** 2 + (xv - a) / 3 + (a ** xv) + (-xv).relu()
        assert same_float(out, eager.data)
    assert list(fastgrad.compile(x, inputs=[x]).forward([[1.5], [2.5]])) == [1.5, 2.5]
    leaf_root = fastgrad.compile(a, inputs=[a])
    assert list(leaf_root.forward([[4.0]])) == [4.0]


# ---------------------------------------------------------------------------------------------------
# Training: the moons demo batched against the eager graph and against micrograd

def test_ten_moons_steps_batched_match_the_eager_graph_and_micrograd(tmp_path):
    X, y = moons.make_moons(60, noise=0.1, seed=2)
    rows = [[a, b, t] for (a, b), t in zip(X, y)]
    model, loss, inputs = moons_sample(seed=7)
    batch = fastgrad.compile(loss, inputs=inputs)
    params = model.parameters()
    regulariser = fastgrad.compile(1e-4 * sum(p * p for p in params))
    sgd = optim.SGD(params, lr=1.0)
    batched_losses = []
    for k in range(10):
        sgd.zero_grad()
        outputs = batch.forward(rows)
        batch.backward(1.0 / len(rows))
        reg = regulariser.forward()
        regulariser.backward()
        batched_losses.append(sum(outputs) * (1.0 / len(rows)) + reg)
        sgd.lr = moons.learning_rate(k, 10)
        sgd.step()
    random.seed(7)
    eager_model = MLP(2, [16, 16, 1])
    eager = [moons.train_step(eager_model, Value, X, y, k, 10)[0] for k in range(10)]
    for got, want in zip(batched_losses, eager):
        assert math.isclose(got, want, rel_tol=1e-9)
    for p, q in zip(params, eager_model.parameters()):
        assert math.isclose(p.data, q.data, rel_tol=1e-9, abs_tol=1e-12)
    micrograd = pytest.importorskip("micrograd.nn")
    import micrograd.engine
    random.seed(7)
    reference_model = micrograd.nn.MLP(2, [16, 16, 1])
    reference = [moons.train_step(reference_model, micrograd.engine.Value, X, y, k, 10)[0] for k in range(10)]
    for got, want in zip(batched_losses, reference):
        assert math.isclose(got, want, rel_tol=1e-9)


# ---------------------------------------------------------------------------------------------------
# Threads, interruption, memory

def test_two_batched_graphs_on_shared_parameters_in_two_threads_while_a_third_reads():
    model, loss, inputs = moons_sample()
    rows = moons_rows(5000)
    graphs = [fastgrad.compile(loss, inputs=inputs, threads=2) for _ in range(2)]
    expected = bytes(graphs[0].forward(rows))
    zero(model)
    graphs[0].backward()
    one_pass = grads_of(model)
    zero(model)
    errors = []
    stop = threading.Event()

    def train(graph):
        try:
            for _ in range(5):
                assert bytes(graph.forward(rows)) == expected
                graph.backward()
        except BaseException as error:     # reported below
            errors.append(error)

    def read():
        while not stop.is_set():
            sum(p.data + p.grad for p in model.parameters())

    reader = threading.Thread(target=read)
    reader.start()
    workers = [threading.Thread(target=train, args=(g,)) for g in graphs]
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    stop.set()
    reader.join()
    assert not errors
    for got, want in zip(grads_of(model), one_pass):
        assert math.isclose(got, 10 * want, rel_tol=1e-12, abs_tol=1e-15)


def test_one_batched_graph_runs_one_pass_at_a_time():
    model, loss, inputs = moons_sample()
    batch = fastgrad.compile(loss, inputs=inputs, threads=1)
    rows = moons_rows(50_000)
    results, errors = [], []

    def run():
        try:
            results.append(bytes(batch.forward(rows)))
        except RuntimeError as error:
            errors.append(str(error))

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) + len(errors) == 4 and len(set(results)) == 1
    assert all("one pass at a time" in e for e in errors)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_helpers_are_daemons_a_forked_child_makes_its_own_and_the_process_exits_right_after_a_pass(tmp_path):
    """A pass on two threads starts a helper (a daemon thread); a child made by fork() right after has none of its
    parent's, starts its own, and gets the same bits; the interpreter exits while the helper still spins."""
    script = """
import os, random, threading
import fastgrad
from fastgrad import Value
random.seed(5)
w = [Value(random.uniform(-1, 1)) for _ in range(3)]
x1, x2 = Value(0.0), Value(0.0)
loss = (w[0] + w[1] * x1 + w[2] * x2).tanh()
rows = [[random.uniform(-2, 2), random.uniform(-2, 2)] for _ in range(9000)]
two = bytes(fastgrad.compile(loss, inputs=[x1, x2], threads=2).forward(rows))
one = bytes(fastgrad.compile(loss, inputs=[x1, x2], threads=1).forward(rows))
assert two == one
helpers = [t for t in threading.enumerate() if t.name == "fastgrad-helper"]
assert helpers and all(t.daemon for t in helpers), helpers
pid = os.fork()
if pid == 0:
    same = bytes(fastgrad.compile(loss, inputs=[x1, x2], threads=2).forward(rows)) == one
    own = any(t.name == "fastgrad-helper" for t in threading.enumerate())
    os._exit(0 if same and own else 3)
assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
fastgrad.compile(loss, inputs=[x1, x2], threads=2).forward(rows)       # and exit at once
print("ok")
"""
    run_python(script, tmp_path)


def test_a_graph_dropped_while_another_thread_runs_it():
    model, loss, inputs = moons_sample()
    rows = moons_rows(30_000)
    batch = fastgrad.compile(loss, inputs=inputs, threads=2)
    done = []
    thread = threading.Thread(target=lambda: done.append(len(batch.forward(rows))))
    thread.start()
    del batch
    thread.join()
    assert done == [30_000]


def test_ctrl_c_stops_a_long_pass_midway(tmp_path):
    """Ctrl-C during forward_backward over 3,000,000 rows (seconds of work) stops the pass at the next chunk,
    with nothing added to the grads: a pass that ran to its end before the interrupt was seen would have added
    its sums first."""
    run_python("""
        import _thread, signal, threading
        import numpy as np
        import fastgrad
        from fastgrad import Value, MLP
        x0, x1 = Value(0.0), Value(0.0)
        model = MLP(2, [64, 64, 1])                  # tanh: a slow sample
        batch = fastgrad.compile(model([x0, x1]), inputs=[x0, x1], threads=1)
        rows = np.random.default_rng(0).uniform(-1, 1, (3_000_000, 2))
        batch.forward_backward(rows[:64])
        assert any(p.grad != 0.0 for p in model.parameters())   # a pass that ends adds to the grads
        model.zero_grad()
        passed = threading.Event()
        pressed = []

        def first_press_only(signum, frame):   # Ctrl-C's default handler, once: later presses do nothing
            if not pressed:
                pressed.append(signum)
                raise KeyboardInterrupt

        def press_ctrl_c():                     # from 0.2 s on, and again, until the pass has ended
            while not passed.wait(0.2):
                _thread.interrupt_main()

        signal.signal(signal.SIGINT, first_press_only)
        threading.Thread(target=press_ctrl_c).start()
        try:
            batch.forward_backward(rows)
        except KeyboardInterrupt:
            pass
        else:
            raise SystemExit("not interrupted")
        finally:
            passed.set()
        assert all(p.grad == 0.0 for p in model.parameters())   # stopped inside the pass, before its sums
        assert len(batch.forward(rows[:10])) == 10          # usable afterwards
        print("ok")
    """, tmp_path)


def test_memory_does_not_grow_with_the_rows(tmp_path):
    if under_address_sanitizer():
        pytest.skip("the sanitizer keeps freed memory in quarantine: RSS says nothing then")
    run_python("""
        import numpy as np
        import fastgrad
        from fastgrad import Value
        from fastgrad.micrograd.nn import MLP

        def rss_mib():
            with open("/proc/self/status") as status:
                return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024

        model = MLP(2, [16, 16, 1])
        x0, x1, y = Value(0.0), Value(0.0), Value(0.0)
        batch = fastgrad.compile((1 + -y * model([x0, x1])).relu(), inputs=[x0, x1, y])
        rows = np.random.default_rng(0).uniform(-1, 1, (1_000_000, 3))
        before = rss_mib()
        out = batch.forward(rows)
        batch.backward(1e-6)
        grown = rss_mib() - before - len(out) * 8 / 2**20
        assert grown < 100, grown
        print("ok")
    """, tmp_path)


def test_the_readmes_batched_loop_runs_as_written_and_trains():
    namespace = {}
    exec(readme_code("Batched training loop"), namespace)
    rows = namespace["rows"]
    x0, x1 = namespace["x0"], namespace["x1"]
    scores = fastgrad.compile(namespace["model"]([x0, x1]), inputs=[x0, x1]).forward([r[:2] for r in rows])
    accuracy = sum((r[2] > 0) == (s > 0) for r, s in zip(rows, scores)) / len(rows)
    assert namespace["total"] < 0.05 and accuracy == 1.0
