"""fastgrad.compile: a recorded graph replayed in C gives what building the same expression again gives.

The oracle throughout is an eager rebuild: the same expression built afresh from the same leaf values, then
backward(). Fused or not, every node's data and grad are the same bits. Whatever path Python takes to a node
(a variable, `_prev`, trace, draw_dot, pickling, an eager op or an eager backward on it), it shows the
replay's numbers, never older ones.
"""
import copy
import gc
import math
import pickle
import random
import struct
import sys
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgrad
from fastgrad import CompiledGraph, Value, draw_dot, losses, moons, trace
from fastgrad.micrograd.nn import MLP
from support import README, apply_step, leaf_numbers, readme_code, run_python, same_float, steps, tree_sum

FUSE = pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])


def bits(x):
    return "nan" if math.isnan(x) else struct.pack("<d", x).hex()


def numbers(root):
    """Every node's (data, grad) under root, as a sorted list of bit patterns: a graph's numbers, node by node."""
    return sorted((bits(n.data), bits(n.grad)) for n in trace(root)[0])


def build(leaf_values, recipe_steps):
    """The recipe's graph on fresh leaves; the steps that fail (an op outside its domain) are left out.
    Returns (leaves, pool of every step's node, the steps taken, the index of the first step that failed)."""
    leaves = [Value(x, label=f"x{i}") for i, x in enumerate(leaf_values)]
    pool, taken, first_failure = list(leaves), [], None
    for index, step in enumerate(recipe_steps):
        try:
            pool.append(apply_step(step, pool))
        except (ArithmeticError, ValueError):
            first_failure = index if first_failure is None else first_failure
            continue
        taken.append(step)
    return leaves, pool, taken, first_failure


# ---------------------------------------------------------------------------------------------------
# Random programs over every op: compile, change the leaves, replay, compare with an eager rebuild

def check_replay(fuse, old_leaves, new_leaves, recipe_steps):
    leaves, pool, taken, _ = build(old_leaves, recipe_steps)
    root = pool[-1]
    graph = fastgrad.compile(root, fuse=fuse)
    for leaf, x in zip(leaves, new_leaves):
        leaf.data = x
    recorded = trace(root)[0]                    # a step's node need not be below the last one
    _, eager_pool, _, first_failure = build(new_leaves, taken)
    if first_failure is not None:                # at the new numbers an op fails
        if pool[len(leaves) + first_failure] in recorded:                  # and the replay meets it too
            with pytest.raises((ArithmeticError, ValueError)):
                graph.forward()
        for leaf, x in zip(leaves, old_leaves):  # either way, with the old leaves it replays as before
            leaf.data = x
        eager_pool = build(old_leaves, taken)[1]
    assert same_float(graph.forward(), eager_pool[-1].data)
    graph.backward()
    eager_pool[-1].backward()
    for ours, theirs in zip(pool, eager_pool):
        if ours not in recorded:
            continue
        assert same_float(ours.data, theirs.data), (ours._op, ours.data, theirs.data)
        assert same_float(ours.grad, theirs.grad), (ours._op, ours.grad, theirs.grad)
    assert numbers(root) == numbers(eager_pool[-1])          # every node, wrapped numbers included


programs = st.tuples(st.lists(leaf_numbers, min_size=1, max_size=5), st.lists(steps, min_size=1, max_size=14))


@FUSE
@settings(max_examples=400, deadline=None)
@given(program=programs, new_leaves=st.lists(leaf_numbers, min_size=5, max_size=5))
def test_random_programs_replay_as_an_eager_rebuild(fuse, program, new_leaves):
    old_leaves, recipe_steps = program
    check_replay(fuse, old_leaves, new_leaves[:len(old_leaves)], recipe_steps)


def neuron_sums(w, x, b, weights_first=True):
    """Sums of products, as weighted_sum and sum() make them: what fusion turns into DOT instructions."""
    first = fastgrad.engine.weighted_sum(w, x, b)
    second = sum((wi * xi for wi, xi in zip(w, x)), b * 0.5)
    third = sum(xi * xi for xi in x)                          # a sum that starts at the number 0
    shared = w[0] * x[0]                                      # a product used twice does not fuse
    return ((first.tanh() + second.relu()) * third + shared + shared * 2.0) / (1.0 + first * first)


@FUSE
@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(-3, 3), min_size=9, max_size=9), st.lists(st.floats(-3, 3), min_size=9, max_size=9))
def test_neuron_sums_replay_as_an_eager_rebuild(fuse, old, new):
    def made(values):
        leaves = [Value(v) for v in values]
        return leaves, neuron_sums(leaves[:4], leaves[4:8], leaves[8])

    leaves, root = made(old)
    graph = fastgrad.compile(root, fuse=fuse)
    for leaf, v in zip(leaves, new):
        leaf.data = v
    eager_leaves, eager_root = made(new)
    assert same_float(graph.forward(), eager_root.data)
    graph.backward()
    eager_root.backward()
    assert numbers(root) == numbers(eager_root)
    for ours, theirs in zip(leaves, eager_leaves):
        assert same_float(ours.grad, theirs.grad)


@FUSE
def test_a_sum_whose_terms_cancel_replays_exactly(fuse):
    """Each term's grad comes in where backward() puts it: a fused sum visits its nodes in the order
    eager does, even when a product's operand was built inside the sum (here 1e16 * x, cancelled later)."""
    def made():
        x, w1, w2, b = Value(1.0), Value(1.0), Value(1.0), Value(0.0)
        return x, b + w1 * x + w2 * (x * 1e16) + x * -1e16

    x, root = made()
    graph = fastgrad.compile(root, fuse=fuse)
    graph.forward()
    graph.backward()
    eager_x, eager = made()
    eager.backward()
    assert numbers(root) == numbers(eager) and x.grad == eager_x.grad == 1.0
    if fuse:                             # the sum is cut where the product's graph adds into x: a DOT of the
        assert repr(graph).endswith("4 instructions, fused>")   # first terms, the lone last term as * and +


def test_fusion_makes_one_instruction_of_each_neurons_sum():
    random.seed(0)
    model = MLP(3, [4, 1])
    loss = model([1.0, 2.0, 3.0])
    unfused, fused = fastgrad.compile(loss, fuse=False), fastgrad.compile(loss)
    nodes = trace(loss)[0]
    inner = sum(1 for n in nodes if n._prev)
    assert len(unfused) == len(fused) == len(nodes)
    assert inner == 4 * (2 * 3 + 1) + 2 * 4           # 4 neurons: 3 terms and a relu; then 4 terms
    assert repr(unfused).endswith(f"{inner} instructions>")
    # 5 sums, 4 relus. The last neuron's sum reaches the relus' own graphs first from its terms, but those add
    # into nothing its lower terms add into: the order of every grad's terms is kept in one instruction.
    assert repr(fused).endswith("9 instructions, fused>")


@pytest.mark.parametrize("case", [
    ("x * y + (x / y).tanh()", lambda x, y: x * y + (x / y).tanh()),
    ("exp, log, sigmoid, softplus", lambda x, y: (x.exp() + y.sigmoid()).log() * (x - y).softplus()),
    ("powers", lambda x, y: x ** 3 + (x * x + 1.0) ** y + 2.0 ** (y * 0.5) - x ** -1),
    ("a neuron", lambda x, y: fastgrad.engine.weighted_sum([x, y, x], [y, y, 2.0], x * 0.5).tanh()),
])
@FUSE
def test_replayed_grads_match_central_differences_of_the_replay(case, fuse):
    x, y = Value(0.7), Value(1.3)
    root = case[1](x, y)
    graph = fastgrad.compile(root, fuse=fuse)
    for point in [(0.7, 1.3), (1.9, 0.4), (1.1, 2.2)]:
        for leaf, v in zip((x, y), point):
            leaf.data, leaf.grad = v, 0.0
        graph.forward()
        graph.backward()
        for leaf, v in zip((x, y), point):
            h = 1e-6 * max(1.0, abs(v))
            leaf.data = v + h
            up = graph.forward()
            leaf.data = v - h
            down = graph.forward()
            leaf.data = v
            assert leaf.grad == pytest.approx((up - down) / (2 * h), rel=1e-6, abs=1e-8), case[0]


# ---------------------------------------------------------------------------------------------------
# micrograd's moons demo: compiled, eager and the real micrograd train alike

def moons_graph(fuse, seed=1):
    """micrograd's demo model after random.seed(seed), its loss built once from input leaves, compiled."""
    random.seed(seed)
    X, y = moons.make_moons(100, noise=0.1, seed=0)
    model = MLP(2, [16, 16, 1])
    loss, _ = moons.svm_loss(model, Value, X, y)
    return model, loss, fastgrad.compile(loss, fuse=fuse)


def compiled_moons(steps, fuse, seed=1):
    return train_compiled(*moons_graph(fuse, seed), steps)


def train_compiled(model, loss, graph, steps):
    """The demo's training, the compiled way: forward, zero_grad, backward, SGD with the demo's schedule."""
    history = []
    for k in range(steps):
        graph.forward()
        model.zero_grad()
        graph.backward()
        history.append(loss.data)
        for p in model.parameters():
            p.data -= moons.learning_rate(k) * p.grad
    return history, [p.data for p in model.parameters()]


def eager_moons(value_cls, mlp, steps, seed=1):
    random.seed(seed)
    X, y = moons.make_moons(100, noise=0.1, seed=0)
    model = mlp(2, [16, 16, 1])
    history = [moons.train_step(model, value_cls, X, y, k)[0] for k in range(steps)]
    return history, [p.data for p in model.parameters()]


@FUSE
def test_ten_moons_steps_compiled_equal_eager_and_micrograd(fuse):
    import micrograd.engine
    import micrograd.nn

    ours = compiled_moons(10, fuse)
    eager = eager_moons(Value, MLP, 10)
    theirs = eager_moons(micrograd.engine.Value, micrograd.nn.MLP, 10)
    assert ours == eager                               # bit for bit
    for mine, other in zip(ours[0] + ours[1], theirs[0] + theirs[1]):
        assert mine == pytest.approx(other, rel=1e-9, abs=1e-12)


# ---------------------------------------------------------------------------------------------------
# No stale numbers, by any path

def fresh_graph():
    """x, w leaves; a hidden inner node h (held by nothing but the graph); the root. And the eager twin maker."""
    def make(xv, wv):
        x, w = Value(xv, label="x"), Value(wv, label="w")
        hidden = (x * w + 1.0).tanh()
        hidden.label = "hidden"
        return x, w, (hidden * x + w.exp()).relu() * 3.0
    return make


def replayed_and_eager(fuse=True):
    make = fresh_graph()
    x, w, root = make(0.5, -0.25)
    graph = fastgrad.compile(root, fuse=fuse)
    x.data, w.data = 1.5, 0.75
    graph.forward()
    graph.backward()
    _, _, eager = make(1.5, 0.75)
    eager.backward()
    return graph, root, eager


@FUSE
def test_prev_and_trace_show_the_replays_numbers(fuse):
    graph, root, eager = replayed_and_eager(fuse)
    assert numbers(root) == numbers(eager)
    assert sorted(bits(c.data) for c in root._prev) == sorted(bits(c.data) for c in eager._prev)


def test_a_node_held_in_a_variable_is_written_at_once():
    make = fresh_graph()
    x, w, root = make(0.5, -0.25)
    scores = [root, *root._prev]                 # taken before compile: the graph sees them held
    graph = fastgrad.compile(root)
    x.data = 2.0
    graph.forward()
    graph.backward()
    _, _, eager = make(2.0, -0.25)
    eager.backward()
    assert sorted((bits(s.data), bits(s.grad)) for s in scores) == \
        sorted((bits(n.data), bits(n.grad)) for n in [eager, *eager._prev])


def test_a_node_taken_through_prev_after_compiling_is_current_after_every_later_pass():
    make = fresh_graph()
    x, w, root = make(0.5, -0.25)
    graph = fastgrad.compile(root)
    graph.forward()
    held = [n for n in root._prev if n._op]            # the relu, taken now: later passes must write it too
    for value in (1.0, -2.0, 3.5):
        x.data = value
        graph.forward()
        graph.backward()
        _, _, eager = make(value, -0.25)
        eager.backward()
        expected = [n for n in eager._prev if n._op]
        assert [(n.data, n.grad) for n in held] == [(n.data, n.grad) for n in expected]
        assert [(n * 1.0).data for n in held] == [n.data for n in expected]       # an eager op on it


@pytest.mark.parametrize("next_pass", ["forward", "backward"])
def test_a_wrapped_number_reached_and_changed_by_the_user_is_read_by_the_next_pass(next_pass):
    x = Value(2.0)
    root = (x * 3.0).tanh() * x          # the 3.0 is a leaf only the graph holds: not read at every pass
    graph = fastgrad.compile(root)
    graph.forward()
    graph.backward()
    three = next(n for n in trace(root)[0] if not n._op and n.data == 3.0)
    three.data, three.grad = 0.5, 10.0   # reached through trace, changed like any leaf
    x.grad = 0.0
    if next_pass == "forward":
        graph.forward()
    graph.backward()

    eager_x, eager_three = Value(2.0), Value(3.0)
    eager = (eager_x * eager_three).tanh() * eager_x
    eager.backward()
    eager_three.data, eager_three.grad = 0.5, 10.0
    eager_x.grad = 0.0
    if next_pass == "forward":           # forward: as if built again from the leaves as they are now
        eager = (eager_x * eager_three).tanh() * eager_x
    eager.backward()
    assert (three.grad, x.grad, root.data) == (eager_three.grad, eager_x.grad, eager.data)


def test_zero_grad_after_forward_survives_python_reaching_in_before_backward():
    def zeroed_then_backpropagated(root):
        """Every node but the wrapped numbers (whose grads the first backward() below also reached)."""
        return sorted((n.label or n._op, bits(n.data), bits(n.grad)) for n in trace(root)[0] if n._op or n.label)

    make = fresh_graph()
    x, w, root = make(0.5, -0.25)
    graph = fastgrad.compile(root)
    graph.forward()
    graph.backward()                     # the leaves' grads are not 0 now
    graph.forward()
    x.grad = w.grad = 0.0                # the training loop's zero_grad, between forward and backward
    trace(root)                          # Python reaches in (another thread drawing the graph, say)
    graph.backward()
    _, _, eager = make(0.5, -0.25)
    eager.backward()
    assert zeroed_then_backpropagated(root) == zeroed_then_backpropagated(eager)


def test_reinitialising_an_inner_node_is_seen_by_backward():
    def made():
        x = Value(0.5)
        hidden = (x * 2.0).tanh()
        return x, hidden, hidden * x

    x, hidden, root = made()
    graph = fastgrad.compile(root, fuse=False)
    graph.forward()
    hidden.__init__(0.25)             # Value.__init__ on a node with children: its data only
    graph.backward()
    eager_x, eager_hidden, eager = made()
    eager_hidden.__init__(0.25)
    eager.backward()
    assert (x.grad, hidden.data) == (eager_x.grad, 0.25)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="from Python 3.12 an allocation only schedules a GC pass, "
                    "which runs between bytecodes: none can run inside the compiled _prev")
def test_children_taken_while_python_code_runs_inside_prev_are_current():
    """Making _prev's set can run Python code (a GC pass, a finalizer, another thread) that replays the graph:
    the children must be current afterwards all the same."""
    x = Value(1.0)
    root = (x * 2.0).tanh() * 1.0                # the tanh only the graph holds
    graph = fastgrad.compile(root, fuse=False)
    graph.forward()
    armed = [True]

    def replay_during_a_gc_pass(phase, info):
        if armed[0] and phase == "start":
            armed[0] = False
            x.data = 0.25
            graph.forward()

    threshold = gc.get_threshold()
    gc.callbacks.append(replay_during_a_gc_pass)
    gc.set_threshold(1)
    try:
        children = root._prev
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(replay_during_a_gc_pass)
    assert not armed[0]                          # the replay did run inside _prev
    tanh = next(child for child in children if child._op == "tanh")
    assert tanh.data == (Value(0.25) * 2.0).tanh().data == root.data


def test_pickling_and_copying_a_replayed_graph_carry_its_numbers():
    graph, root, eager = replayed_and_eager()
    for copied in (pickle.loads(pickle.dumps(root)), copy.deepcopy(root)):
        assert numbers(copied) == numbers(eager)


def test_draw_dot_shows_the_replays_numbers():
    graph, root, eager = replayed_and_eager()
    source = draw_dot(root).source
    for n in trace(eager)[0]:
        assert f"data {n.data:.4f} | grad {n.grad:.4f}" in source


def test_eager_backward_on_a_replayed_node_adds_to_the_replays_grads():
    graph, root, eager = replayed_and_eager()
    hidden = next(n for n in trace(root)[0] if n.label == "hidden")
    eager_hidden = next(n for n in trace(eager)[0] if n.label == "hidden")
    hidden.backward()
    eager_hidden.backward()
    assert numbers(root) == numbers(eager)
    graph.backward()                               # and the replay goes on from there
    eager.backward()
    assert numbers(root) == numbers(eager)


def test_setting_an_inner_node_between_forward_and_backward_is_seen_by_backward():
    make = fresh_graph()
    x, w, root = make(0.5, -0.25)
    hidden = next(n for n in trace(root)[0] if n.label == "hidden")
    graph = fastgrad.compile(root)
    graph.forward()
    hidden.data = 0.125
    hidden.grad = 7.0
    graph.backward()
    _, _, eager = make(0.5, -0.25)
    eager_hidden = next(n for n in trace(eager)[0] if n.label == "hidden")
    eager_hidden.data, eager_hidden.grad = 0.125, 7.0
    eager.backward()
    assert numbers(root) == numbers(eager)


def test_dropping_the_compiled_graph_writes_its_numbers_back():
    graph, root, eager = replayed_and_eager()
    del graph
    assert numbers(root) == numbers(eager)


def test_backward_twice_adds_twice_as_eager_does_and_forward_zeroes_inner_grads():
    make = fresh_graph()
    x, w, root = make(0.5, -0.25)
    graph = fastgrad.compile(root, fuse=False)
    _, _, eager = make(0.5, -0.25)
    for replay, rebuild in [(graph.backward, eager.backward)] * 2:
        replay()
        rebuild()
        assert numbers(root) == numbers(eager)
    graph.forward()
    assert all(n.grad == 0.0 for n in trace(root)[0] if n._op) and x.grad != 0.0 and w.grad != 0.0


@pytest.mark.parametrize("passes", [1, 2, 3])
def test_a_fused_sum_whose_start_is_also_its_operand_adds_as_eager_does(passes):
    """A DOT carries its running sum, and its sums' and products' grads, in registers rather than reading back
    what it stored: where the sum's start is also an operand of its terms, and where backward() runs again
    without forward() (every grad accumulates, the inner ones too), every node still gets eager's bits."""
    def made(numbers_):
        s, w, x = (Value(v) for v in numbers_)
        start = s * w
        total = start + w * start + start * x + x * w + start * start
        return (s, w, x), (total * x).tanh() + total

    leaves, root = made((0.75, -1.5, 2.0 / 3.0))
    graph = fastgrad.compile(root)
    assert repr(graph).endswith("5 instructions, fused>")    # s * w, the sum's DOT, * x, tanh, + total
    for leaf, v in zip(leaves, (0.5, 1.25, -0.375)):
        leaf.data = v
    graph.forward()
    eager_leaves, eager = made((0.5, 1.25, -0.375))
    for _ in range(passes):
        graph.backward()
        eager.backward()
    assert numbers(root) == numbers(eager)
    for ours, theirs in zip(leaves, eager_leaves):
        assert bits(ours.grad) == bits(theirs.grad)


def test_two_graphs_sharing_nodes_see_each_others_passes():
    make = fresh_graph()
    x, w, root = make(0.5, -0.25)
    hidden = next(n for n in trace(root)[0] if n.label == "hidden")
    other = hidden * hidden - w
    first, second = fastgrad.compile(root), fastgrad.compile(other)
    x.data = 1.25
    first.forward()
    second.forward()
    first.backward()
    second.backward()
    _, _, eager = make(1.25, -0.25)
    eager_hidden = next(n for n in trace(eager)[0] if n.label == "hidden")
    eager_other = eager_hidden * eager_hidden - next(n for n in trace(eager)[0] if n.label == "w")
    eager.backward()
    eager_other.backward()
    assert numbers(root) == numbers(eager) and numbers(other) == numbers(eager_other)


def test_two_graphs_sharing_leaves_only_they_hold_add_up_their_grads():
    def made():
        x = Value(2.0)
        shared = x * 3.0
        return x, shared * shared, shared + 1.0

    _, first_root, second_root = made()         # x and the 3.0: leaves only the two graphs hold
    first, second = fastgrad.compile(first_root), fastgrad.compile(second_root)
    first.forward()
    first.backward()
    second.forward()
    second.backward()
    eager_x, eager_first, eager_second = made()
    eager_first.backward()
    for node in trace(eager_second)[0]:         # second.forward(): its inner nodes as if built anew
        if node._op:
            node.grad = 0.0
    eager_second.backward()
    assert eager_x.grad == 2 * 6.0 * 3.0 + 3.0
    leaves = sorted((n.data, n.grad) for n in trace(first_root)[0] | trace(second_root)[0] if not n._op)
    assert leaves == sorted((n.data, n.grad) for n in trace(eager_first)[0] | trace(eager_second)[0] if not n._op)


# ---------------------------------------------------------------------------------------------------
# Errors

@pytest.mark.parametrize("make, bad, error, op", [
    (lambda x: (x * 2.0).log(), -1.0, ValueError, "log"),
    (lambda x: 1.0 / (x - 1.0), 1.0, ZeroDivisionError, "/"),
    (lambda x: (x * 1.0).exp(), 1000.0, OverflowError, "exp"),
    (lambda x: (x + 0.0) ** 0.5, -4.0, ValueError, "**0.5"),
    (lambda x: x ** Value(-1.0), 0.0, ZeroDivisionError, "**"),
    (lambda x: (x * 0.5) ** 500, 10.0, OverflowError, "**500"),
])
@FUSE
def test_a_forward_outside_an_ops_domain_raises_the_eager_error_then_recovers(make, bad, error, op, fuse):
    x = Value(2.0)
    root = make(x) * 3.0 + 1.0
    good = root.data
    graph = fastgrad.compile(root, fuse=fuse)
    x.data = bad
    with pytest.raises(error) as raised:
        make(Value(bad))                             # what eager raises
    with pytest.raises(error) as replayed:
        graph.forward()
    assert str(raised.value) in str(replayed.value) and repr(op) in str(replayed.value)
    assert root.data == good                        # the failing node and those above keep their data
    assert all(n.grad == 0.0 for n in trace(root)[0] if n._op)
    graph.backward()                                # allocates nothing, cannot fail
    x.data = 2.0
    for node in trace(root)[0]:
        node.grad = 0.0
    assert graph.forward() == good
    graph.backward()
    eager = make(Value(2.0)) * 3.0 + 1.0
    eager.backward()
    assert numbers(root) == numbers(eager)


def test_the_first_failing_node_in_topological_order_is_named():
    x = Value(2.0)
    root = (x - 1.0).log() + (1.0 / (x - 1.0))     # both fail at x = 1; the log comes first
    graph = fastgrad.compile(root)
    x.data = 1.0
    with pytest.raises(ValueError, match="'log'"):
        graph.forward()


def test_compile_takes_a_value():
    for bad in (1.0, None, [Value(1.0)], "x"):
        with pytest.raises(TypeError, match=type(bad).__name__):
            fastgrad.compile(bad)


def test_a_compiled_graph_comes_from_compile_only():
    with pytest.raises(TypeError, match="fastgrad.compile"):
        CompiledGraph()
    unrecorded = CompiledGraph.__new__(CompiledGraph)
    for call in (unrecorded.forward, unrecorded.backward):
        with pytest.raises(TypeError, match="records no graph"):
            call()


def test_a_compiled_graph_cannot_be_pickled_or_copied():
    graph = fastgrad.compile(Value(1.0) * 2.0)
    for attempt in (pickle.dumps, copy.copy, copy.deepcopy):
        with pytest.raises(TypeError, match="pickle .or copy. its root"):
            attempt(graph)


def test_a_leaf_root_that_only_the_graph_holds_is_still_read():
    graph = fastgrad.compile(Value(3.0))
    Value(1.0)._prev                  # Python reaches in somewhere: the next pass looks again at what it holds
    graph.forward()
    graph.root.data = 4.0             # the root is handed out: setting a leaf's data does not reach in
    assert graph.forward() == 4.0


def test_a_leaf_compiles_and_replays_as_eager():
    leaf = Value(3.0)
    graph = fastgrad.compile(leaf)
    assert len(graph) == 1 and graph.root is leaf
    leaf.data = 4.0
    assert graph.forward() == 4.0
    graph.backward()
    assert leaf.grad == 1.0


def test_len_root_and_the_structure_compile_saw():
    x = Value(1.0)
    root = (x * 2.0 if x.data > 0 else x * -2.0).relu()    # a branch taken on data stays taken
    graph = fastgrad.compile(root)
    assert len(graph) == len(trace(root)[0]) and graph.root is root and isinstance(graph, CompiledGraph)
    x.data = -1.0
    assert graph.forward() == 0.0                   # relu(-1 * 2): the recorded branch, replayed exactly
    assert sys.getsizeof(graph) <= 32 * len(graph) + 512


def program_bound(graph, distinct_exponents, held):
    """What the README promises a CompiledGraph holds: 32 bytes a node, 16 a distinct exponent, 4 a node held
    from outside, and a fixed part (measured on the graph of one leaf: 2 slots, 1 node, 1 held)."""
    fixed = sys.getsizeof(fastgrad.compile(Value(0.0))) - (2 * 16 + 8 + 4)
    return fixed + 16 + 32 * len(graph) + 16 * distinct_exponents + 4 * held


def program_shapes():
    random.seed(1)
    model = MLP(2, [16, 16, 1])
    X, y = moons.make_moons(20, noise=0.1, seed=1)
    loss = moons.svm_graph(model, Value, X, y)[0]
    yield "moons", loss, 0, len(model.parameters()) + 2 * len(X) + 20 + 1
    w = [Value(0.1 * i) for i in range(4)]
    xs = [i / 10 for i in range(30)]
    preds = [sum((w[k] * x ** k for k in range(4)), Value(0.0)) for x in xs]
    yield "polynomial regression, mse", losses.mse(preds, [math.sin(x) for x in xs]), 4, 4 + 30 + 1
    x = Value(1.1)
    chain = x
    for _ in range(500):
        chain = chain ** 2 * 0.5
    yield "x ** 2 chain", chain, 1, 2
    chain = x
    for i in range(500):
        chain = chain ** (1.0 + i * 1e-9)
    yield "distinct exponents", chain, 500, 2
    held = [x]
    for i in range(500):
        held.append(held[-1] * 1.0001 + held[-1])
    yield "a list holds every node", held[-1], 0, len(held) * 2
    terms = [Value(3.0) + Value(1.0) * Value(2.0) for _ in range(300)]
    yield "sums of one term", tree_sum(terms), 0, 1


@pytest.mark.parametrize("fuse", [True, False])
def test_program_bytes_stay_within_the_readmes_bound_on_graphs_of_several_shapes(fuse):
    for name, root, distinct_exponents, held in program_shapes():
        graph = fastgrad.compile(root, fuse=fuse)
        assert sys.getsizeof(graph) <= program_bound(graph, distinct_exponents, held), name


def test_the_readme_states_the_program_bound_with_its_terms():
    text = " ".join(open(README, encoding="utf-8").read().split())
    assert "32 bytes a node recorded, plus 16 bytes for each distinct exponent" in text
    assert "4 bytes for each node held from outside the graph" in text


# ---------------------------------------------------------------------------------------------------
# The README's examples, run as written

def test_the_readmes_compiled_moons_loop_trains_as_the_eager_demo(tmp_path):
    code = readme_code("Compiled training loop")
    run_python(code + """
assert accuracy >= 0.95, accuracy
random.seed(1)                                   # the same model, trained on eager graphs
eager_model = MLP(2, [16, 16, 1])
for k in range(100):
    eager_loss, eager_accuracy = moons.train_step(eager_model, Value, X, y, k)
assert (loss.data, accuracy) == (eager_loss, eager_accuracy)
assert [p.data for p in model.parameters()] == [p.data for p in eager_model.parameters()]
print("ok")
""", tmp_path)


def test_the_readmes_frozen_structure_example():
    namespace = {}
    exec("import fastgrad\nfrom fastgrad import Value\n" + readme_code("Compiled training loop", 1), namespace)
    assert namespace["graph"].forward() == 0.0 and namespace["y"].data == 0.0


# ---------------------------------------------------------------------------------------------------
# Memory and threads

def test_a_million_node_chain_compiles_and_replays_without_recursion(tmp_path):
    run_python("""
        import fastgrad
        from fastgrad import Value
        x = Value(1.0)
        node = x
        for _ in range(333_333):
            node = -(node * 1.0) + 0.0          # 3 nodes a level, plus the wrapped numbers
        graph = fastgrad.compile(node)
        assert len(graph) > 1_000_000
        x.data = 2.0
        assert graph.forward() == -2.0
        graph.backward()
        assert x.grad == -1.0
        del graph, node
        print("ok")
    """, tmp_path, PYTHONMALLOC="debug")


def test_compiling_and_dropping_leaves_nothing_behind():
    random.seed(0)
    model = MLP(2, [8, 1])
    loss = sum((model([0.1 * i, 0.2]) - 1.0) ** 2 for i in range(20))
    refs = [sys.getrefcount(n) for n in trace(loss)[0]]
    for _ in range(3):
        fastgrad.compile(loss).forward()
    gc.collect()
    blocks = sys.getallocatedblocks()
    for _ in range(200):
        graph = fastgrad.compile(loss)
        graph.forward()
        graph.backward()
        del graph
    gc.collect()
    assert sys.getallocatedblocks() - blocks < 50
    assert [sys.getrefcount(n) for n in trace(loss)[0]] == refs


def test_dropping_a_graph_and_its_root_frees_every_node():
    x = Value(1.0)
    refs = sys.getrefcount(x)
    graph = fastgrad.compile(sum(x * float(i) for i in range(1000)).tanh())
    graph.forward()
    del graph
    assert sys.getrefcount(x) == refs


def test_two_threads_replay_two_graphs_while_a_third_reads_nodes():
    expected = {seed: compiled_moons(5, True, seed=seed) for seed in (1, 2)}
    made = {seed: moons_graph(True, seed) for seed in (1, 2)}     # the random module is the main thread's
    results = {}

    def train(seed):
        results[seed] = train_compiled(*made[seed], 5)

    graph, root, eager = replayed_and_eager()
    eager_data = sorted(bits(n.data) for n in trace(eager)[0])
    reads = []

    def read():              # the replay below keeps the leaves: every pass gives the same data
        for _ in range(200):
            reads.append(sorted(bits(n.data) for n in trace(root)[0]) == eager_data)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        threads = [threading.Thread(target=train, args=(seed,)) for seed in (1, 2)]
        threads.append(threading.Thread(target=read))
        for thread in threads:
            thread.start()
        eager_inner = [n for n in trace(eager)[0] if n._op]
        for _ in range(50):
            graph.forward()
            graph.backward()
            for node in eager_inner:                # what forward() sets back to 0: leaves keep theirs
                node.grad = 0.0
            eager.backward()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert results == expected
    assert len(reads) == 200 and all(reads)
    assert numbers(root) == numbers(eager)
