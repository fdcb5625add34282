"""Extending Value the way micrograd and the notebook teach: nodes made by hand with a `_backward` closure, any
number of children, new methods on the class, subclasses.

The oracle is the real micrograd 0.1.0 (imported here as `micrograd`), whose Value is the same ten-line-per-op
class a learner writes: the same program, written once over a Value class, runs on both.
"""
import copy
import gc
import math
import pickle
import subprocess
import sys
import threading
from pathlib import Path

import micrograd.engine
import pytest

import fastgrad
from fastgrad import Value, draw_dot, trace
from support import bytes_left_after, readme_code

ENGINES = [Value, micrograd.engine.Value]


def hand_made(value_cls, name, children, forward, slopes):
    """A node made as micrograd's ops make theirs: data forward(*children' data), a closure adding
    slope_i(*data) * out.grad into child i."""
    data = [c.data for c in children]
    out = value_cls(forward(*data), tuple(children), name)

    def _backward():
        for child, slope in zip(children, slopes):
            child.grad += slope(*data) * out.grad
    out._backward = _backward
    return out


def square(value_cls, x):
    return hand_made(value_cls, "sq", [x], lambda a: a * a, [lambda a: 2 * a])


def both(build):
    """build(Value class) on fastgrad and on micrograd: the two results."""
    return build(Value), build(micrograd.engine.Value)


def grads(nodes):
    return [float(n.grad) for n in nodes]


# ---------------------------------------------------------------------------------------------------
# _backward closures

def test_a_closure_runs_at_its_nodes_place_in_the_order_on_a_diamond():
    def build(V):
        x, y = V(1.5), V(-0.5)
        s = x * y + x                               # built-in nodes below and above the hand-made ones
        left, right = square(V, s), square(V, s * 3.0)
        top = hand_made(V, "mix", [left, right, x], lambda a, b, c: a * b + c,
                        [lambda a, b, c: b, lambda a, b, c: a, lambda a, b, c: 1.0])
        root = top * 0.5 + left
        root.backward()
        return [x, y, s, left, right, top, root]
    fast, real = both(build)
    assert grads(fast) == grads(real)
    assert [n.data for n in fast] == [n.data for n in real]


def test_reading_backward_gives_what_was_assigned_else_the_builtin_step():
    x = Value(2.0)
    y = x * 3.0
    node = Value(1.0, (x,), "f")
    step = node._backward
    assert step() is None and x.grad == 0.0         # like micrograd's `lambda: None`
    y.grad = 1.0
    y._backward()                                   # the built-in one, still callable
    assert x.grad == 3.0

    def closure():
        x.grad += 10.0
    node._backward = closure
    assert node._backward is closure
    node._backward()
    assert x.grad == 13.0


def test_a_hand_made_node_takes_any_number_of_children():
    def build(V):
        leaves = [V(float(i) + 0.5) for i in range(5)]
        inner = [leaf * leaf for leaf in leaves]
        out = hand_made(V, "sum5", inner, lambda *a: sum(a), [lambda *a: 1.0] * 5)
        (out * out).backward()
        return leaves + inner + [out]
    fast, real = both(build)
    assert grads(fast) == grads(real)
    out = fast[-1]
    assert out._prev == set(fast[5:10]) and out._op == "sum5"
    assert len(trace(out)[0]) == 11 and "sum5" in draw_dot(out).source


def test_a_closure_that_raises_stops_backward_and_the_grads_added_so_far_stay():
    def build(V):
        x = V(2.0)
        a = square(V, x)
        bad = V(a.data, (a,), "bad")

        def _backward():
            a.grad += 1.0
            raise RuntimeError("from the closure")
        bad._backward = _backward
        root = bad * 3.0 + x
        with pytest.raises(RuntimeError, match="from the closure"):
            root.backward()
        first = grads([x, a, bad, root])
        bad._backward = lambda: None                # the graph is whole: another backward() runs, and adds
        root.backward()
        return first, grads([x, a, bad, root])
    fast, real = both(build)
    assert fast == real
    assert fast[0] == [1.0, 1.0, 3.0, 1.0]


def test_a_closure_may_build_values_and_run_backward_on_another_graph():
    seen = []

    def build(V):
        x = V(0.75)
        out = V(x.data * 2, (x,), "twice")

        def _backward():
            side = V(3.0)
            (side * side).backward()                # a whole other backward() in the middle of this one
            seen.append(side.grad)
            x.grad += (V(2.0) * out.grad).data
        out._backward = _backward
        root = square(V, out) + out
        root.backward()
        return [x, out, root]
    fast, real = both(build)
    assert grads(fast) == grads(real) and seen == [6.0, 6.0]


def test_a_closure_that_drops_the_last_reference_to_a_node_still_to_be_swept():
    def build(V):
        x = V(1.0)
        node = V(2.0, (x * 2.0,), "h")              # the product is held by node alone

        def _backward():
            child = next(iter(node._prev))
            child.grad += node.grad
            node._prev = set()                      # now only backward's list holds the product
        node._backward = _backward
        root = node + 1.0
        root.backward()
        return [x, node, root]
    fast, real = both(build)
    assert grads(fast) == grads(real) == [2.0, 1.0, 1.0]


def test_a_deep_chain_of_closure_nodes_backward_frees_and_is_collected():
    def deep(V, n):
        x = V(0.5)
        v = x
        for _ in range(n):
            v = hand_made(V, "half", [v], lambda a: a * 0.5 + 0.25, [lambda a: 0.5])
        return x, v
    x, v = deep(Value, 100_000)
    v.backward()
    assert x.grad == 0.5**100_000
    assert v.data == 0.5
    del v
    gc.collect()
    assert sys.getrefcount(x) == 2


def test_a_deep_chain_of_nodes_with_five_children_sorts_and_frees_without_recursion():
    x = Value(1.0)
    v = x
    for _ in range(100_000):
        v = Value(v.data, (v, x, x, x, x), "five")
    v._backward = lambda: None
    v.backward()                                    # the sort goes through every node's five children
    assert len(v._prev) == 2 and x in v._prev
    del v
    gc.collect()
    assert sys.getrefcount(x) == 2


def test_the_gc_collects_100000_closure_nodes_and_their_graphs():
    def build():
        v = Value(0.1)
        for _ in range(1000):
            v = hand_made(Value, "f", [v * 1.0001 + 0.5], math.sin, [math.cos])
        v.backward()
    left = bytes_left_after(build, 100)              # 100,000 closure nodes, 300,000 nodes in all
    assert left < 100_000, f"{left} bytes not given back"


def test_built_in_nodes_stay_untracked_and_small_and_the_ones_over_python_state_are_tracked():
    a, b = Value(1.0), Value(2.0)
    plain = [a, b, a * b, (a * b).tanh(), a + 1.0]
    assert not any(gc.is_tracked(n) for n in plain)
    assert {sys.getsizeof(n) for n in plain} == {80}
    custom = square(Value, a)
    above = [custom, custom * b, (custom + 1.0).relu()]
    assert all(gc.is_tracked(n) for n in above)


def test_pickling_refuses_a_closure_and_keeps_a_hand_made_node_without_one():
    x = Value(2.0, label="x")
    node = Value(4.0, (x,), "sq", label="n")
    root = node * 2.0
    back = pickle.loads(pickle.dumps(root))
    assert (back.data, {c._op for c in back._prev}) == (8.0, {"sq", ""})
    node._backward = lambda: None
    for attempt in (pickle.dumps, copy.deepcopy):
        with pytest.raises(TypeError, match="_backward closure"):
            attempt(root)
    many = Value(1.0, (x, x * 2.0, x * 3.0), "three")
    with pytest.raises(TypeError, match="more than two children"):
        pickle.dumps(many)


def test_compile_refuses_a_graph_holding_a_closure_and_names_the_node():
    x = Value(0.3)
    node = square(Value, x * 2.0)
    node.label = "my square"
    root = node + x
    with pytest.raises(TypeError, match="my square.*_backward closure.*fastgrad's ops"):
        fastgrad.compile(root)
    root.backward()                                 # the refused recording left the graph usable
    assert x.grad == pytest.approx(1.0 + 8 * 0.3)
    hand_made_without_closure = Value(1.0, (x,), "given") * x
    assert len(fastgrad.compile(hand_made_without_closure)) == 3


def test_closures_in_threads_give_what_one_thread_gives():
    def work(i, results):
        x = Value(0.1 * (i + 1))
        v = x
        for _ in range(200):
            v = square(Value, v * 0.5) + 0.25
        v.backward()
        results[i] = (v.data, x.grad)

    alone, together = {}, {}
    for i in range(4):
        work(i, alone)
    threads = [threading.Thread(target=work, args=(i, together)) for i in range(4)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)                     # switch threads in the middle of the sweeps
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert together == alone


def test_only_nodes_made_by_hand_or_by_subclasses_take_python_state():
    with pytest.raises(TypeError, match=r"made by hand \(Value\(data, children, op\)\)"):
        (Value(1.0) * 2.0)._backward = lambda: None
    with pytest.raises(TypeError, match="made by hand"):
        Value(1.0)._prev = set()


# ---------------------------------------------------------------------------------------------------
# New methods on Value, and subclasses

@pytest.fixture
def restore_value_class():
    """Put Value's class attributes back as they were after the test."""
    before = dict(vars(Value))
    yield
    for name in set(vars(Value)) - set(before):
        delattr(Value, name)
    for name, attribute in before.items():
        if vars(Value).get(name) is not attribute:
            setattr(Value, name, attribute)


def my_sin(self):
    return hand_made(type(self), "sin", [self], math.sin, [math.cos])


def test_assigning_a_function_to_value_adds_a_method(restore_value_class):
    Value.sin = my_sin
    x = Value(0.5)
    y = x.sin() * 2.0
    y.backward()
    assert (y.data, x.grad) == (2 * math.sin(0.5), 2 * math.cos(0.5))
    assert x.sin()._op == "sin"


def test_assigning_a_method_replaces_it_for_calls_through_the_attribute(restore_value_class):
    def counting_tanh(self):
        calls.append(self)
        return hand_made(Value, "my tanh", [self], math.tanh, [lambda a: 1 - math.tanh(a) ** 2])
    calls = []
    Value.tanh = counting_tanh
    x = Value(0.3)
    assert x.tanh()._op == "my tanh" and calls == [x]
    # fastgrad.nn's neurons call it through the attribute, as the notebook's Neuron does ...
    assert fastgrad.Neuron(2)([1.0, 2.0])._op == "my tanh" and len(calls) == 2


def test_weighted_sum_keeps_the_built_in_ops(restore_value_class):
    # ... while their sums, weighted_sum's, keep the built-in + and * (so does compile, which replays ops).
    Value.__add__ = Value.__mul__ = lambda self, other: pytest.fail("called")
    w, x = [Value(1.0), Value(2.0)], [3.0, 4.0]
    total = fastgrad.engine.weighted_sum(w, x, Value(0.5))
    assert total.data == 11.5 and total._op == "+"


def test_operators_assigned_to_value_behave_as_for_a_python_class(restore_value_class):
    def div(self, other):
        other = other if isinstance(other, Value) else Value(other)
        return self * other**-1
    Value.__truediv__ = div
    Value.__matmul__ = lambda self, other: Value(self.data * other.data + 1.0)
    a, b = Value(3.0), Value(4.0)
    assert (a / b)._op == "*" and (a @ b).data == 13.0
    del Value.__matmul__
    with pytest.raises(TypeError):
        a @ b


def test_operators_are_built_in_again_once_restored(restore_value_class):
    original = vars(Value)["__mul__"]
    Value.__mul__ = lambda self, other: "replaced"
    assert Value(2.0) * 3.0 == "replaced"
    Value.__mul__ = original
    assert (Value(2.0) * 3.0)._op == "*"


def test_the_readme_example_adds_sin(restore_value_class):
    namespace = {}
    exec(readme_code("Extending Value"), namespace)
    assert namespace["x"].grad == math.cos(0.5) * 0.5 + math.sin(0.5)
    assert Value(1.0).sin()._op == "sin"


class Scaled(Value):
    """A subclass that keeps Value's __init__ and ops, with a class attribute, an instance attribute and a
    method of its own."""
    unit = "m"

    def __init__(self, data, _children=(), _op="", label=""):
        super().__init__(data, _children, _op, label)
        self.history = [data]

    def double(self):
        out = type(self)(self.data * 2, (self,), "double")

        def _backward():
            self.grad += 2 * out.grad
        out._backward = _backward
        return out


def test_a_subclass_is_a_full_node():
    x = Scaled(1.5, label="x")
    y = x.double()
    z = (y * x).tanh() + Value(2.0)              # Value's own ops give plain Values, as micrograd's do
    z.backward()
    assert type(y) is Scaled and type(z) is Value
    assert (x.unit, x.history, y.history, y._op, y._prev) == ("m", [1.5], [3.0], "double", {x})
    t = math.tanh(4.5)
    assert x.grad == pytest.approx((1 - t * t) * (3.0 + 1.5 * 2))
    assert trace(z)[0] >= {x, y, z} and "double" in draw_dot(z).source
    assert gc.is_tracked(x) and gc.is_tracked(z)
    x.anything = "kept"
    assert vars(x)["anything"] == "kept"


def test_a_subclass_does_not_pickle_and_says_why():
    x = Scaled(1.5)
    for attempt in (pickle.dumps, copy.deepcopy):
        with pytest.raises(TypeError, match="subclass 'Scaled'"):
            attempt(x * 2.0)


def test_subclass_instances_in_cycles_are_collected():
    def build():
        v = Scaled(0.5)
        for _ in range(1000):
            y = v.double()
            y.me = y                                # a cycle through the instance's __dict__ too
            v = Scaled(0.25, (y * 0.5,), "half")    # over a plain Value over a Scaled
    left = bytes_left_after(build, 50)
    assert left < 100_000, f"{left} bytes not given back"


# ---------------------------------------------------------------------------------------------------
# The two ways micrograd programs extend Value, on the real micrograd and on fastgrad, in child processes

PROGRAMS = Path(__file__).with_name("extending_programs.py")


@pytest.mark.parametrize("program", ["tanh-exp", "subclass"])
def test_a_program_extending_value_prints_what_it_prints_on_micrograd(program):
    outputs = {}
    for backend in ("real", "fastgrad"):
        child = subprocess.run([sys.executable, str(PROGRAMS), backend, program], capture_output=True, text=True,
                               timeout=300)
        assert child.returncode == 0, f"{backend}:\n{child.stderr}"
        outputs[backend] = child.stdout.splitlines()
    assert len(outputs["real"]) == 30
    assert outputs["fastgrad"] == outputs["real"]
