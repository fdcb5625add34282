"""Bad input: what is not a number, numbers that are not finite, and ops that fail.

tests/test_engine.py checks the error types of the ops and non-numbers as data, grad and operands; this file
covers the remaining paths (reflected ops, dicts and bytes, label, `_children`, `_op`), nan and inf through
forward and backward, and the failures test_engine does not make (constructor, setters, unpickling).
"""
import math

import pytest

import fastgrad
from fastgrad import MLP, Value, losses, optim, trace
from fastgrad.engine import rebuild_graph
from support import BINARY_OPS, graph_for_errors, same_float, snapshot

BAD = ["1.0", None, [1.0], {"a": 1.0}, 1 + 2j, object(), b"1"]
BAD_IDS = [type(bad).__name__ for bad in BAD]
NOT_STR = [bad for bad in BAD if not isinstance(bad, str)]       # for label and _op, which take a str
NOT_STR_IDS = [type(bad).__name__ for bad in NOT_STR]


# ---------------------------------------------------------------------------------------------------
# Not a number: TypeError, and the message says what was given

@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
@pytest.mark.parametrize("op", sorted(BINARY_OPS))
def test_binary_op_with_a_non_number_names_its_type_on_either_side(op, bad):
    v = Value(2.0)
    for left, right in [(v, bad), (bad, v)]:
        with pytest.raises(TypeError) as raised:
            BINARY_OPS[op](left, right)
        if op == "*" and isinstance(bad, (str, bytes, list)):
            # Both sides said NotImplemented, so Python tried sequence repetition: its message names the
            # Value as the count, and not the sequence.
            assert "can't multiply sequence" in str(raised.value)
        else:
            assert type(bad).__name__ in str(raised.value)
    assert (v.data, v.grad, v._prev) == (2.0, 0.0, set())


@pytest.mark.parametrize("bad", NOT_STR, ids=NOT_STR_IDS)
def test_label_that_is_not_a_str_names_its_type(bad):
    name = type(bad).__name__
    with pytest.raises(TypeError, match=name):
        Value(1.0, label=bad)
    v = Value(1.0, label="kept")
    with pytest.raises(TypeError, match=name):
        v.label = bad
    assert v.label == "kept"


@pytest.mark.parametrize("bad", BAD, ids=BAD_IDS)
def test_a_child_that_is_not_a_value_names_its_type(bad):
    a = Value(1.0)
    with pytest.raises(TypeError, match=type(bad).__name__):
        Value(2.0, (bad,), "+")
    with pytest.raises(TypeError, match=type(bad).__name__):
        Value(2.0, (a, bad), "+")


@pytest.mark.parametrize("bad", [None, 1 + 2j, object()], ids=["NoneType", "complex", "object"])
def test_children_that_are_not_a_collection_name_its_type(bad):
    # An iterable `_children` is read element by element, as the seed's set(_children) does, and the
    # test above covers what is found in it.
    with pytest.raises(TypeError, match=type(bad).__name__):
        Value(2.0, bad, "+")


@pytest.mark.parametrize("bad", NOT_STR, ids=NOT_STR_IDS)
def test_op_that_is_not_a_str_names_its_type(bad):
    a = Value(1.0)
    with pytest.raises(TypeError, match=type(bad).__name__):
        Value(2.0, (a,), bad)


@pytest.mark.parametrize("falsy", [None, 0, b"", [], {}], ids=lambda b: type(b).__name__)
def test_falsy_op_that_is_not_a_str_is_refused_too(falsy):
    with pytest.raises(TypeError, match=type(falsy).__name__):
        Value(2.0, (), falsy)


# ---------------------------------------------------------------------------------------------------
# nan and inf: IEEE results forward and backward, no error and no crash
#
# Each case: the node made from x, its data in plain Python floats, and the grad its input gets from
# backward(), by the op's derivative written out in plain Python floats.

def sigmoid(x):
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


def softplus(x):
    return x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))


def pow_in_exponent_slope(base, out):
    """d(base ** y)/dy as fastgrad documents it: real for base > 0, 0 at base 0, nan below."""
    if base > 0:
        return out * math.log(base)
    return 0.0 if base == 0 else math.nan


EXTREME_CASES = [
    ("-x", lambda v: -v, lambda x: -x, lambda x, out: -1.0),
    ("tanh", lambda v: v.tanh(), math.tanh, lambda x, out: 1 - out * out),
    ("exp", lambda v: v.exp(), math.exp, lambda x, out: out),
    ("log", lambda v: v.log(), math.log, lambda x, out: 1 / x),
    # relu's slope is torch's mask: 0 where the output is <= 0, 1 elsewhere (a nan output too)
    ("relu", lambda v: v.relu(), lambda x: 0.0 if x < 0 else x, lambda x, out: 0.0 if out <= 0 else 1.0),
    ("sigmoid", lambda v: v.sigmoid(), sigmoid, lambda x, out: out * (1 - out)),
    ("softplus", lambda v: v.softplus(), softplus, lambda x, out: sigmoid(x)),
    ("x ** 2", lambda v: v**2, lambda x: x**2, lambda x, out: 2 * x**1),
    ("x ** -1", lambda v: v**-1, lambda x: x**-1, lambda x, out: -1 * x**-2),
    ("x ** 0.5", lambda v: v**0.5, lambda x: x**0.5, lambda x, out: 0.5 * x**-0.5),
    ("x ** 0", lambda v: v**0, lambda x: x**0, lambda x, out: 0.0),     # flat everywhere, as in torch
    ("x ** Value(3)", lambda v: v ** Value(3.0), lambda x: x**3.0, lambda x, out: 3.0 * x**2.0),
    ("2 ** x", lambda v: 2 ** v, lambda x: 2.0**x, lambda x, out: out * math.log(2.0)),
    ("x + 1", lambda v: v + 1, lambda x: x + 1.0, lambda x, out: 1.0),
    ("1 - x", lambda v: 1 - v, lambda x: 1.0 - x, lambda x, out: -1.0),
    ("x * 0", lambda v: v * 0, lambda x: x * 0.0, lambda x, out: 0.0),
    ("x * 3", lambda v: v * 3, lambda x: x * 3.0, lambda x, out: 3.0),
    ("x / 2", lambda v: v / 2, lambda x: x / 2.0, lambda x, out: 1 / 2.0),
    ("1 / x", lambda v: 1 / v, lambda x: 1.0 / x, lambda x, out: -out / x),
    ("x + x", lambda v: v + v, lambda x: x + x, lambda x, out: 2.0),
    ("x - x", lambda v: v - v, lambda x: x - x, lambda x, out: 0.0),
    ("x * x", lambda v: v * v, lambda x: x * x, lambda x, out: x + x),
    ("x / x", lambda v: v / v, lambda x: x / x, lambda x, out: 1 / x - out / x),
    ("x ** x", lambda v: v**v, lambda x: x**x, lambda x, out: x * x ** (x - 1) + pow_in_exponent_slope(x, out)),
]


def same_grad(x, y):
    """nan equals nan; zeros of either sign are equal (a grad's zero sign depends on the summation)."""
    return (math.isnan(x) and math.isnan(y)) or x == y


@pytest.mark.parametrize("x", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("case", EXTREME_CASES, ids=[case[0] for case in EXTREME_CASES])
def test_nan_and_inf_follow_ieee_forward_and_backward(case, x):
    _, make, data_in_python, grad_in_python = case
    try:
        expected_data = data_in_python(x)
    except (ValueError, ArithmeticError) as error:     # log(-inf): Python's error, and fastgrad's
        with pytest.raises(type(error)):
            make(Value(x))
        return
    v = Value(x)
    out = make(v)
    assert same_float(out.data, expected_data)
    out.backward()
    assert out.grad == 1.0
    assert same_grad(v.grad, grad_in_python(x, expected_data)), (v.grad, grad_in_python(x, expected_data))


@pytest.mark.parametrize("base", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
def test_value_exponent_of_a_non_finite_base(base):
    b, k = Value(base), Value(3.0)
    out = b**k
    expected = base**3.0
    assert same_float(out.data, expected)
    out.backward()
    assert same_grad(b.grad, 3.0 * base**2.0)
    assert same_grad(k.grad, pow_in_exponent_slope(base, expected))


def test_one_nan_leaf_spoils_only_the_grads_that_depend_on_it():
    a, b = Value(math.nan), Value(2.0)
    c = a * b + b * b        # dc/da = b (finite), dc/db = a + 2b (nan)
    c.backward()
    assert math.isnan(c.data)
    assert a.grad == 2.0
    assert math.isnan(b.grad)


def test_one_inf_leaf():
    a, b = Value(math.inf), Value(2.0)
    c = a * b + b * b
    c.backward()
    assert c.data == math.inf
    assert a.grad == 2.0
    assert b.grad == math.inf


def test_an_mlp_on_a_nan_input_gives_nan_everywhere_without_error():
    model = MLP(3, [4, 4, 1])
    out = model([math.nan, 1.0, 2.0])
    assert math.isnan(out.data)
    out.backward()
    # Every neuron of the first layer sees the nan, so everything after it is nan, and tanh's
    # derivative 1 - nan**2 is nan: every parameter's grad is nan.
    assert all(math.isnan(p.grad) for p in model.parameters())


def test_grads_can_be_set_to_nan_and_inf_and_backward_adds_to_them():
    a = Value(1.0)
    out = a * 3
    a.grad = math.inf
    out.backward()
    assert a.grad == math.inf
    a.grad = math.nan
    out.backward()
    assert math.isnan(a.grad)


# ---------------------------------------------------------------------------------------------------
# micrograd's own Value, given to fastgrad: every message names it as micrograd's, not as a bare 'Value'
# (which reads as "a Value is not a Value")

def micrograd_value():
    engine = pytest.importorskip("micrograd.engine")
    v = engine.Value(1.0)
    assert type(v).__module__ == "micrograd.engine" and type(v) is not Value    # the real one, not fastgrad's
    return v


def batched_graph():
    x = Value(1.0)
    return fastgrad.compile(x * Value(2.0), inputs=[x])


def adam_state_with(field, item):
    state = optim.Adam([Value(1.0)]).state_dict()
    state[field] = [item]
    return state


FOREIGN_VALUE = {
    "compile": lambda v: fastgrad.compile(v),
    "compile inputs": lambda v: fastgrad.compile(Value(1.0) * Value(2.0), inputs=[v]),
    "batched rows": lambda v: batched_graph().forward(v),
    "batched row": lambda v: batched_graph().forward([v]),
    "Value(data)": lambda v: Value(v),
    "Value(_children)": lambda v: Value(1.0, (v,), "+"),
    "data setter": lambda v: setattr(Value(1.0), "data", v),
    "grad setter": lambda v: setattr(Value(1.0), "grad", v),
    "mse preds": lambda v: losses.mse([v], [1.0]),
    "mse targets": lambda v: losses.mse([1.0], [v]),
    "hinge scores": lambda v: losses.hinge(v, [1.0]),
    "cross_entropy": lambda v: losses.cross_entropy([v], 0),
    "Module.load_state_dict": lambda v: MLP(1, [1]).load_state_dict({name: v for name in MLP(1, [1]).state_dict()}),
    "optimizer params": lambda v: optim.SGD([v], lr=0.1),
    "optimizer lr": lambda v: optim.SGD([Value(1.0)], lr=v),
    "optimizer state buffer": lambda v: optim.Adam([Value(1.0)]).load_state_dict(adam_state_with("exp_avg", v)),
    "save": lambda v: fastgrad.save({"w": v}, "never-written.json"),
}


@pytest.mark.parametrize("call", FOREIGN_VALUE.values(), ids=FOREIGN_VALUE.keys())
def test_a_micrograd_value_is_named_as_micrograd_s(call):
    v = micrograd_value()
    with pytest.raises(TypeError) as raised:
        call(v)
    assert "'micrograd.engine.Value'" in str(raised.value)


# ---------------------------------------------------------------------------------------------------
# A failed op leaves the graph as it was (test_engine covers the arithmetic errors of the ops)

def failing_op(what, error, failing):
    return pytest.param(error, failing, id=what)


FAILED_OPS = [
    failing_op("three children", ValueError, lambda n: Value(1.0, (n["x"], n["half"], n["big"]), "+")),
    failing_op("a child that is not a Value", TypeError, lambda n: Value(1.0, (n["x"], 2.0), "+")),
    failing_op("_op not a str", TypeError, lambda n: Value(1.0, (n["x"], n["half"]), 5)),
    failing_op("data not a number, with children", TypeError, lambda n: Value("1", (n["x"], n["half"]), "+")),
    failing_op("label not a str, with children", TypeError, lambda n: Value(1.0, (n["x"],), "f", label=3)),
    failing_op("an int too big for a double", OverflowError, lambda n: n["x"] + 10**400),
    failing_op("an int too big for a double, as exponent", OverflowError, lambda n: n["x"] ** 10**400),
    failing_op("three-argument pow", TypeError, lambda n: pow(n["x"], 2, 3)),
    failing_op("set data to None", TypeError, lambda n: setattr(n["x"], "data", None)),
    failing_op("set grad to a str", TypeError, lambda n: setattr(n["x"], "grad", "1")),
    failing_op("set label to bytes", TypeError, lambda n: setattr(n["x"], "label", b"x")),
    failing_op("unpickle a corrupted graph that uses the graph's nodes", ValueError,
               lambda n: rebuild_graph(1, [n["x"], n["half"], (0.0, 0.0, "", 99, 0.0, 0, None, 0, 1)])),
    failing_op("re-run __init__ with children on an existing node", TypeError,
               lambda n: Value.__init__(n["x"], 5.0, (n["half"],), "+", "relabelled")),
]


def labels(root):
    return sorted((id(n), n.label) for n in trace(root)[0])


@pytest.mark.parametrize("error, failing", FAILED_OPS)
def test_a_failed_op_leaves_the_graph_as_it_was(error, failing):
    root, nodes = graph_for_errors()
    before, labels_before = snapshot(root), labels(root)
    with pytest.raises(error):
        failing(nodes)
    assert snapshot(root) == before       # data, grads, ops, children and reference counts
    assert labels(root) == labels_before

    # A later backward still gives the right grads: those of the same graph built afresh.
    fresh_root, fresh_nodes = graph_for_errors()
    for node in trace(root)[0]:
        node.grad = 0.0
    root.backward()
    for name, node in nodes.items():
        assert same_float(node.grad, fresh_nodes[name].grad), name
