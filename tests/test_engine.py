"""fastgrad.Value against the oracles: the seed's semantics in plain Python (reference.py), central finite
differences, high-precision Decimal arithmetic, and micrograd 0.1.0 where it has the op."""
import decimal
import math
import struct
from fractions import Fraction

import micrograd.engine
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from fastgrad import Value, reference, trace
from fastgrad.engine import weighted_sum
from support import BINARY_OPS, check_recipe, graph_for_errors, recipes, same_float, snapshot

# ---------------------------------------------------------------------------------------------------
# Random expression graphs, built from one recipe in fastgrad and in the reference

@settings(max_examples=1500, deadline=None)
@given(recipes)
def test_random_graphs_match_the_reference(recipe):
    check_recipe(recipe)


@pytest.mark.slow
@settings(max_examples=20_000, deadline=None)
@given(recipes)
def test_random_graphs_match_the_reference_many(recipe):
    check_recipe(recipe)


# ---------------------------------------------------------------------------------------------------
# Every op's gradient against central finite differences of the reference's forward

def away_from_zero(bound, low=0.5):
    return st.one_of(st.floats(low, bound), st.floats(-bound, -low))


# (name, f(a, b) -> node, domain of a, domain of b or None when f ignores b)
FINITE_DIFFERENCE_CASES = [
    ("a + b", lambda a, b: a + b, st.floats(-10, 10), st.floats(-10, 10)),
    ("a - b", lambda a, b: a - b, st.floats(-10, 10), st.floats(-10, 10)),
    ("a * b", lambda a, b: a * b, st.floats(-10, 10), st.floats(-10, 10)),
    ("a / b", lambda a, b: a / b, st.floats(-10, 10), away_from_zero(10)),
    ("-a", lambda a, b: -a, st.floats(-10, 10), None),
    ("a ** 3", lambda a, b: a**3, st.floats(-5, 5), None),
    ("a ** -2", lambda a, b: a**-2, away_from_zero(5), None),
    ("a ** 2.5", lambda a, b: a**2.5, st.floats(0.1, 5), None),
    ("a ** b", lambda a, b: a**b, st.floats(0.2, 4), st.floats(-3, 3)),
    ("2 + a", lambda a, b: 2 + a, st.floats(-10, 10), None),
    ("2 - a", lambda a, b: 2 - a, st.floats(-10, 10), None),
    ("2 * a", lambda a, b: 2 * a, st.floats(-10, 10), None),
    ("2 / a", lambda a, b: 2 / a, away_from_zero(10), None),
    ("2.5 ** a", lambda a, b: 2.5**a, st.floats(-5, 5), None),
    ("a + 2.5", lambda a, b: a + 2.5, st.floats(-10, 10), None),
    ("a - 2.5", lambda a, b: a - 2.5, st.floats(-10, 10), None),
    ("a * 2.5", lambda a, b: a * 2.5, st.floats(-10, 10), None),
    ("a / 2.5", lambda a, b: a / 2.5, st.floats(-10, 10), None),
    ("tanh", lambda a, b: a.tanh(), st.floats(-5, 5), None),
    ("exp", lambda a, b: a.exp(), st.floats(-20, 20), None),
    ("log", lambda a, b: a.log(), st.floats(0.05, 100), None),
    ("relu", lambda a, b: a.relu(), away_from_zero(10, low=0.01), None),
    ("sigmoid", lambda a, b: a.sigmoid(), st.floats(-30, 30), None),
    ("softplus", lambda a, b: a.softplus(), st.floats(-30, 30), None),
    ("(a * b + a).tanh() / b", lambda a, b: (a * b + a).tanh() / b, st.floats(-2, 2), away_from_zero(3)),
    ("a * a - a / a", lambda a, b: a * a - a / a, away_from_zero(5), None),
]


def central_difference(f, x):
    h = 1e-6 * max(1.0, abs(x))
    return (f(x + h) - f(x - h)) / (2 * h)


@pytest.mark.parametrize("engine", [Value, reference.Value], ids=["fastgrad", "reference"])
@pytest.mark.parametrize("case", FINITE_DIFFERENCE_CASES, ids=[case[0] for case in FINITE_DIFFERENCE_CASES])
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_gradient_matches_finite_differences(engine, case, data):
    _, f, domain_a, domain_b = case
    x = data.draw(domain_a, "a")
    y = data.draw(domain_b, "b") if domain_b is not None else 0.0
    a, b = engine(x), engine(y)
    f(a, b).backward()

    def forward_in_a(t):
        return f(reference.Value(t), reference.Value(y)).data

    def forward_in_b(t):
        return f(reference.Value(x), reference.Value(t)).data

    assert a.grad == pytest.approx(central_difference(forward_in_a, x), rel=1e-5, abs=1e-6)
    if domain_b is not None:
        assert b.grad == pytest.approx(central_difference(forward_in_b, y), rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("engine", [Value, reference.Value], ids=["fastgrad", "reference"])
@settings(max_examples=40, deadline=None)
@given(x=st.floats(-4, -0.2), k=st.integers(-3, 3))
def test_pow_with_a_value_exponent_and_a_negative_base(engine, x, k):
    # A negative base takes an integer exponent only; its derivative in the base is ordinary.
    a = engine(x)
    (a ** engine(k)).backward()
    estimate = central_difference(lambda t: (reference.Value(t) ** reference.Value(k)).data, x)
    assert a.grad == pytest.approx(estimate, rel=1e-5, abs=1e-6)


def test_pow_slope_in_the_exponent_where_the_base_is_not_positive():
    # d(a**b)/db = a**b * log(a) has no real value for a < 0 (b is then an integer): nan, as the
    # issue says; for a == 0 (b > 0) the function is flat in b: 0.
    for engine in (Value, reference.Value):
        a, b = engine(-2.0), engine(3.0)
        (a**b).backward()
        assert a.grad == 3 * 4.0 and math.isnan(b.grad)
        a, b = engine(0.0), engine(2.0)
        (a**b).backward()
        assert a.grad == 0.0 and b.grad == 0.0


# ---------------------------------------------------------------------------------------------------
# The node as the seed and the lecture use it

def test_op_spellings():
    a, b = Value(2.0), Value(3.0)
    spelled = {
        "": a, "+": a + b, "-": a - b, "*": a * b, "/": a / b, "neg": -a,
        "**2": a**2, "**2.0": a**2.0, "**-1": a**-1, "**0.5": a**0.5, "**": a**b,
        "tanh": a.tanh(), "exp": a.exp(), "log": a.log(), "ReLU": a.relu(), "sigmoid": a.sigmoid(),
        "softplus": a.softplus(),
    }
    for spelling, node in spelled.items():
        assert node._op == spelling
    assert (2**a)._op == "**"
    assert (2 - a)._op == "-" and (2 / a)._op == "/" and (2 + a)._op == "+" and (2 * a)._op == "*"


def test_op_spellings_match_micrograd():
    for make in [lambda V: V(2.0) + V(3.0), lambda V: V(2.0) * V(3.0), lambda V: V(2.0) ** 2,
                 lambda V: V(2.0) ** -1, lambda V: V(2.0) ** 0.5, lambda V: V(-2.0).relu(), lambda V: V(2.0)]:
        assert make(Value)._op == make(micrograd.engine.Value)._op


def test_prev_holds_the_children_and_wrapped_numbers():
    a, b = Value(2.0), Value(3.0)
    assert a._prev == set() and isinstance(a._prev, set)
    assert (a * b)._prev == {a, b}
    assert (a * a)._prev == {a}
    assert (a.tanh())._prev == {a}
    (constant,) = (a + 5)._prev - {a}
    assert type(constant) is Value and constant.data == 5.0 and constant._op == "" and constant._prev == set()
    (constant,) = (5 - a)._prev - {a}
    assert constant.data == 5.0


def lecture_neuron(engine):
    """The lecture's hand-made neuron, its nodes by label."""
    x1, x2 = engine(2.0, label="x1"), engine(0.0, label="x2")
    w1, w2 = engine(-3.0, label="w1"), engine(1.0, label="w2")
    b = engine(6.8813735870195432, label="b")
    x1w1 = x1 * w1
    x2w2 = x2 * w2
    x1w1x2w2 = x1w1 + x2w2
    n = x1w1x2w2 + b
    o = n.tanh()
    return {"x1": x1, "x2": x2, "w1": w1, "w2": w2, "b": b, "x1w1": x1w1, "x2w2": x2w2,
            "x1w1x2w2": x1w1x2w2, "n": n, "o": o}


def test_backward_step_by_step_as_in_the_lecture():
    fg, ref = lecture_neuron(Value), lecture_neuron(reference.Value)
    fg["o"].grad = ref["o"].grad = 1.0
    for name in ["o", "n", "x1w1x2w2", "x2w2", "x1w1", "x1", "b"]:   # a leaf's step does nothing
        before = {k: v.grad for k, v in fg.items()}
        assert fg[name]._backward() is None
        ref[name]._backward()
        for k in fg:
            assert fg[k].grad == pytest.approx(ref[k].grad, rel=1e-15, abs=0)
        changed = {k for k in fg if fg[k].grad != before[k]}
        assert changed <= {c for c in fg if fg[c] in fg[name]._prev}   # only the node's own children
    expected = {"n": 0.5, "b": 0.5, "x1w1x2w2": 0.5, "x1w1": 0.5, "x2w2": 0.5,
                "x1": -1.5, "w1": 1.0, "x2": 0.5, "w2": 0.0}
    for name, grad in expected.items():
        assert fg[name].grad == pytest.approx(grad, rel=1e-12, abs=1e-15)


def test_backward_equals_the_manual_steps():
    fg = lecture_neuron(Value)
    fg["o"].backward()
    assert fg["o"].grad == 1.0
    assert fg["x1"].grad == pytest.approx(-1.5) and fg["w1"].grad == pytest.approx(1.0)
    assert fg["x2"].grad == pytest.approx(0.5) and fg["w2"].grad == 0.0


def two_backward_calls(engine):
    x, y = engine(1.5), engine(-2.0)
    a = x * y
    b = a + x
    c = b * b + a        # reuse: grads reach x by several paths
    c.backward()
    first = (x.grad, y.grad, a.grad, b.grad)
    c.backward()
    return first, (x.grad, y.grad, a.grad, b.grad, c.grad)


def test_grads_accumulate_across_backward_calls_like_micrograd():
    fg_first, fg_second = two_backward_calls(Value)
    for other in (reference.Value, micrograd.engine.Value):
        first, second = two_backward_calls(other)
        assert fg_first == pytest.approx(first, rel=1e-15, abs=0)
        assert fg_second == pytest.approx(second, rel=1e-15, abs=0)
    assert fg_second[0] != 2 * fg_first[0]    # inner nodes' grads grew too, so this is not a doubling


def test_label():
    assert Value(1.0).label == ""
    v = Value(1.0, label="weight")
    assert v.label == "weight"
    v.label = "w1"
    assert v.label == "w1"
    assert (v * 2).label == ""


@given(st.floats())
def test_repr_is_the_seeds(x):
    assert repr(Value(x)) == repr(reference.Value(x)) == f"Value(data={x!r})"


def test_repr_of_the_notebook_value_and_of_an_int():
    assert repr(Value(0.9867920106715578)) == "Value(data=0.9867920106715578)"
    assert repr(Value(2)) == "Value(data=2.0)"      # ints become floats (the seed would print 2)


def test_hash_and_equality_are_by_identity():
    a, b = Value(1.0), Value(1.0)
    assert a == a and not (a == b) and a != b
    assert len({a, b}) == 2 and {a: 1}[a] == 1
    assert hash(a) == hash(a)
    assert not (a == 1.0)
    a.data = 5.0
    assert a in {a}                         # the hash does not follow data


def test_constructor_children_and_op_as_in_the_seed():
    a, b = Value(2.0), Value(3.0)
    c = Value(6.0, (a, b), "*", label="c")
    ref_a, ref_b = reference.Value(2.0), reference.Value(3.0)
    ref_c = reference.Value(6.0, (ref_a, ref_b), "*", label="c")
    assert c._prev == {a, b} and c._op == "*" and c.label == "c" and c.data == 6.0
    assert Value(1.0, (a, a))._prev == {a}
    assert Value(1.0, [a])._prev == {a}
    # Like the seed's `_backward = lambda: None`, a node made by hand passes nothing down.
    c.grad = ref_c.grad = 2.0
    c._backward()
    ref_c._backward()
    assert (a.grad, b.grad) == (ref_a.grad, ref_b.grad) == (0.0, 0.0)
    c.backward()
    ref_c.backward()
    assert (c.grad, a.grad, b.grad) == (ref_c.grad, ref_a.grad, ref_b.grad) == (1.0, 0.0, 0.0)
    # ... and it takes part in ops like any node.
    d = c * a
    d.backward()
    assert c.grad == 1.0 + 2.0 and a.grad == 6.0


def test_constructor_refuses_what_it_cannot_hold():
    a = Value(1.0)
    with pytest.raises(TypeError, match="float"):
        Value(1.0, (a, 2.0))
    with pytest.raises(TypeError, match="float"):
        Value(1.0, (a, a, a, 2.0))


# ---------------------------------------------------------------------------------------------------
# Numbers: ints, bools, numpy scalars, Fraction and Decimal on both sides

def test_data_is_a_float_for_every_real_number():
    for given_data, expected in [(3, 3.0), (True, 1.0), (-7, -7.0), (np.float64(1.5), 1.5),
                                 (np.float32(0.25), 0.25), (np.int64(-4), -4.0), (np.int32(9), 9.0),
                                 (Fraction(1, 3), 1 / 3), (decimal.Decimal("0.1"), 0.1)]:
        v = Value(given_data)
        assert type(v.data) is float and v.data == expected, given_data
        assert type(v.grad) is float and v.grad == 0.0
    v = Value(0.0)
    v.data, v.grad = np.int64(3), np.float32(0.5)
    assert (type(v.data), v.data, type(v.grad), v.grad) == (float, 3.0, float, 0.5)


@given(st.floats())
def test_data_keeps_every_float_bit_for_bit(x):
    assert same_float(Value(x).data, x)


NUMPY_SCALARS = [np.float64(3.0), np.float32(0.5), np.int64(2), np.int32(3)]


@pytest.mark.parametrize("number", NUMPY_SCALARS, ids=lambda n: type(n).__name__)
@pytest.mark.parametrize("op", ["+", "-", "*", "/", "**"])
def test_numpy_scalars_on_either_side_give_a_value(number, op):
    v = Value(1.5)
    right = BINARY_OPS[op](v, number)
    left = BINARY_OPS[op](number, v)
    assert type(right) is Value and type(left) is Value
    c = float(number)
    assert same_float(right.data, BINARY_OPS[op](1.5, c)) and same_float(left.data, BINARY_OPS[op](c, 1.5))
    left.backward()
    assert v.grad == pytest.approx(central_difference(lambda t: BINARY_OPS[op](c, t), 1.5), rel=1e-6)


def test_numpy_scalar_exponent_is_spelled_like_the_number():
    v = Value(3.0)
    assert (v ** np.int64(2))._op == "**2" and (v ** np.int64(2)).data == 9.0
    assert (v ** np.float64(2.0))._op == "**2.0"


def test_numpy_float64_times_value_is_a_value():
    v = Value(2.0)
    out = np.float64(3) * v
    assert type(out) is Value and out.data == 6.0
    out.backward()
    assert v.grad == 3.0


# ---------------------------------------------------------------------------------------------------
# Errors: Python's types, raised before anything is made

@pytest.mark.parametrize("bad", ["1.0", None, [1.0], (1.0,), 1j, object(), b"1", {}],
                         ids=lambda b: type(b).__name__)
def test_non_numbers_raise_type_error_naming_the_type(bad):
    name = type(bad).__name__
    with pytest.raises(TypeError, match=name):
        Value(bad)
    v = Value(1.0)
    with pytest.raises(TypeError, match=name):
        v.data = bad
    with pytest.raises(TypeError, match=name):
        v.grad = bad
    assert (v.data, v.grad) == (1.0, 0.0)


@pytest.mark.parametrize("bad", ["1.0", None, [1.0], 1j, object()], ids=lambda b: type(b).__name__)
@pytest.mark.parametrize("op", sorted(BINARY_OPS))
def test_non_number_operands_raise_type_error_naming_the_type(bad, op):
    # Python writes these messages; where it names the type for a float operand, it must for a Value
    # too (`2.0 * "1.0"` says "can't multiply sequence by non-int of type 'float'": no 'str' there).
    v = Value(2.0)
    for with_value, with_float in [(lambda: BINARY_OPS[op](v, bad), lambda: BINARY_OPS[op](2.0, bad)),
                                   (lambda: BINARY_OPS[op](bad, v), lambda: BINARY_OPS[op](bad, 2.0))]:
        try:
            with_float()
            float_message = ""       # complex: a float takes it, a Value must not
        except TypeError as error:
            float_message = str(error)
        with pytest.raises(TypeError) as for_value:
            with_value()
        if type(bad).__name__ in float_message:
            assert type(bad).__name__ in str(for_value.value)


def test_label_must_be_a_str():
    with pytest.raises(TypeError, match="int"):
        Value(1.0, label=3)
    v = Value(1.0, label="a")
    with pytest.raises(TypeError, match="NoneType"):
        v.label = None
    assert v.label == "a"


def test_pow_with_a_modulo_is_a_type_error():
    with pytest.raises(TypeError):
        pow(Value(2.0), 2, 3)


def test_numbers_beyond_a_double_overflow_as_in_python():
    with pytest.raises(OverflowError):
        float(10**400)
    with pytest.raises(OverflowError):
        Value(10**400)
    with pytest.raises(OverflowError):
        Value(2.0) + 10**400


# (failing op on the graph's nodes, the exception, the same op in plain Python floats when it has one)
FAILING_OPS = [
    (lambda n: n["x"] / 0, ZeroDivisionError, lambda: 2.0 / 0),
    (lambda n: n["x"] / n["zero"], ZeroDivisionError, lambda: 2.0 / 0.0),
    (lambda n: 3 / n["zero"], ZeroDivisionError, lambda: 3 / 0.0),
    (lambda n: n["zero"] ** -1, ZeroDivisionError, lambda: 0.0 ** -1),
    (lambda n: n["zero"] ** -0.5, ZeroDivisionError, lambda: 0.0 ** -0.5),
    (lambda n: n["zero"] ** Value(-2.0), ZeroDivisionError, lambda: 0.0 ** -2.0),
    (lambda n: 0 ** n["minus"], ZeroDivisionError, lambda: 0 ** -8.0),
    (lambda n: n["zero"].log(), ValueError, lambda: math.log(0.0)),
    (lambda n: n["minus"].log(), ValueError, lambda: math.log(-8.0)),
    (lambda n: n["big"].exp(), OverflowError, lambda: math.exp(1000.0)),
    (lambda n: n["big"] ** 200, OverflowError, lambda: 1000.0 ** 200),
    (lambda n: 10 ** n["big"], OverflowError, lambda: 10.0 ** 1000.0),
    (lambda n: n["big"] ** n["big"], OverflowError, lambda: 1000.0 ** 1000.0),
    (lambda n: n["minus"] ** (1 / 3), ValueError, None),     # Python gives a complex number
    (lambda n: n["minus"] ** n["half"], ValueError, None),
    (lambda n: (-2) ** n["half"], ValueError, None),
    (lambda n: n["x"] + "1", TypeError, None),
    (lambda n: None * n["x"], TypeError, None),
]


@pytest.mark.parametrize("failing, error, in_python", FAILING_OPS)
def test_a_failed_op_raises_pythons_error_and_leaves_the_graph_untouched(failing, error, in_python):
    if in_python is not None:
        with pytest.raises(error):       # the error is Python's own for the same numbers
            in_python()
    root, nodes = graph_for_errors()
    before = snapshot(root)
    with pytest.raises(error):
        failing(nodes)
    assert snapshot(root) == before
    # The graph still works: zeroed and backpropagated again, it gives the same grads.
    all_nodes, _ = trace(root)
    grads = {n: n.grad for n in all_nodes}
    for n in all_nodes:
        n.grad = 0.0
    root.backward()
    assert {n: n.grad for n in all_nodes} == grads


def test_negative_base_with_integer_exponent_is_real():
    assert (Value(-2.0) ** 3).data == -8.0
    assert (Value(-2.0) ** Value(2.0)).data == 4.0
    assert ((-2.0) ** Value(-1.0)).data == -0.5


def test_overflow_without_an_error_where_python_has_none():
    # Python's float * and + give inf without an error; so does fastgrad, and the grads follow IEEE.
    v = Value(1e308)
    out = v * 10.0
    assert out.data == math.inf == 1e308 * 10.0
    assert (v + v).data == math.inf


# ---------------------------------------------------------------------------------------------------
# tanh and sigmoid: stable, accurate

def decimal_sigmoid(x):
    with decimal.localcontext() as context:
        context.prec = 60
        return float(1 / (1 + (-decimal.Decimal(x)).exp()))


def test_tanh_and_sigmoid_do_not_overflow():
    for x, tanh, sigmoid in [(1000.0, 1.0, 1.0), (-1000.0, -1.0, 0.0), (710.0, 1.0, 1.0), (-750.0, -1.0, 0.0),
                             (math.inf, 1.0, 1.0), (-math.inf, -1.0, 0.0), (1e308, 1.0, 1.0), (-1e308, -1.0, 0.0)]:
        v = Value(x)
        t, s = v.tanh(), v.sigmoid()
        assert (t.data, s.data) == (tanh, sigmoid)
        t.backward()
        s.backward()
        assert v.grad == 0.0
    with pytest.raises(OverflowError):
        reference.seed_tanh(1000.0)          # what the seed's formula does there


def ulps_from_the_exact_tanh(got, x):
    """|got - tanh(x)| in units of the last place of tanh(x), tanh(x) from decimal arithmetic with digits to
    spare: e^2x - 1 loses as many as x has zeros after the point."""
    with decimal.localcontext() as context:
        context.prec = 40 + max(0, -decimal.Decimal(x).adjusted())
        e = (2 * decimal.Decimal(x)).exp()
        exact = (e - 1) / (e + 1)
        return float(abs(decimal.Decimal(got) - exact) / decimal.Decimal(math.ulp(float(exact))))


# fastgrad's tanh is its own (src/ops.h): its two forms meet at ln(3)/2, the larger error just above it (1.33 ulp
# the worst of 10^6 samples), and it is 1 from 22 on
TANH_EDGES = [0.5493061443340548, 0.5493061443340549, 0.549306144334055, 0.5503431177645784, 2.0 ** -27,
              2.0 ** -27 * 1.5, 21.999999999999996, 22.0, 1e-300, 5e-324, 0.1, 1.0, 19.06]


@example(x=0.5503431177645784)
@given(st.one_of(st.floats(-30, 30), st.sampled_from(TANH_EDGES), st.sampled_from([-x for x in TANH_EDGES])))
def test_tanh_is_within_one_and_a_half_ulp_of_the_exact_tanh(x):
    assert ulps_from_the_exact_tanh(Value(x).tanh().data, x) <= 1.5


@given(st.floats(-700, 700))     # below -708 sigmoid is subnormal: no double holds it to 1e-15
def test_sigmoid_is_accurate(x):
    assert Value(x).sigmoid().data == pytest.approx(decimal_sigmoid(x), rel=1e-15, abs=0)


@given(st.one_of(st.floats(0.5, 20), st.floats(-20, -0.5)))
def test_tanh_agrees_with_the_seeds_formula_where_that_is_accurate(x):
    assert Value(x).tanh().data == pytest.approx(reference.seed_tanh(x), rel=1e-15, abs=0)


@given(st.floats())
def test_tanh_and_sigmoid_are_the_references_bit_for_bit(x):
    assert same_float(Value(x).tanh().data, reference.Value(x).tanh().data)
    assert same_float(Value(x).sigmoid().data, reference.Value(x).sigmoid().data)


# ---------------------------------------------------------------------------------------------------
# weighted_sum: a neuron's sum made by the engine in one call. Its oracle is the expression it replaces,
# `sum((w * x for w, x in zip(weights, inputs)), start)`, on the reference and on fastgrad's operators.

def structure(root):
    """The graph below root as nested (op, data, children...) tuples, leaves by their data."""
    children = sorted((structure(c) for c in root._prev), key=repr)
    return (root._op, struct.pack("<d", root.data), *children)


WEIGHTED_SUM_CASES = {
    "values": lambda V: ([V(0.5), V(-1.25), V(3.0)], [V(2.0), V(0.1), V(-7.5)], V(0.25)),
    "numbers as inputs": lambda V: ([V(0.5), V(-1.25), V(3.0)], [2.0, 1, np.float64(-7.5)], V(0.25)),
    "numbers as weights": lambda V: ([0.5, -1, Fraction(3, 4)], [V(2.0), V(0.1), V(-7.5)], V(0.25)),
    "a number start": lambda V: ([V(0.5), V(-1.25)], [V(2.0), V(0.1)], 1.5),
    "a pair of numbers": lambda V: ([V(0.5), 2.0, V(3.0)], [V(2.0), 4.0, V(-7.5)], V(0.25)),
    "more weights than inputs": lambda V: ([V(0.5), V(-1.25), V(3.0)], [V(2.0)], V(0.25)),
    "no inputs": lambda V: ([V(0.5)], [], V(0.25)),
}


@pytest.mark.parametrize("case", list(WEIGHTED_SUM_CASES.values()), ids=list(WEIGHTED_SUM_CASES))
def test_weighted_sum_makes_the_nodes_and_numbers_of_the_sum_it_replaces(case):
    w, x, start = case(Value)
    fused = weighted_sum(w, x, start)
    w2, x2, start2 = case(Value)
    summed = sum((wi * xi for wi, xi in zip(w2, x2)), start2)
    assert structure(fused) == structure(summed)
    rw, rx, rstart = case(reference.Value)
    expected = sum((wi * xi for wi, xi in zip(rw, rx)), rstart)
    assert same_float(fused.data, expected.data)

    fused.backward()
    expected.backward()
    leaves = [v for v in w + x + [start] if type(v) is Value]
    reference_leaves = [v for v in rw + rx + [rstart] if type(v) is reference.Value]
    assert [v.grad for v in leaves] == pytest.approx([v.grad for v in reference_leaves], rel=1e-12)


@pytest.mark.parametrize("as_given", [tuple, iter], ids=["tuples", "iterators"])
def test_weighted_sum_of_other_iterables_is_that_of_lists(as_given):
    w, x, start = WEIGHTED_SUM_CASES["numbers as inputs"](Value)
    w2, x2, start2 = WEIGHTED_SUM_CASES["numbers as inputs"](Value)
    assert structure(weighted_sum(as_given(w), as_given(x), start)) == structure(weighted_sum(w2, x2, start2))


def test_weighted_sum_sees_its_lists_change_as_zip_does():
    """Lists are read by index, their lengths read again at each pair: an operand whose operator appends to
    the inputs gets the pair zip would give it."""
    def summed(how):
        a = Value(3.0)
        weights, inputs = [a, a, a], []

        class Appends:
            def __rmul__(self, other):
                inputs.append(Value(5.0))
                return other * 2.0
        inputs.append(Appends())
        return how(weights, inputs, Value(1.0))

    fused = summed(weighted_sum)
    expected = summed(lambda w, x, start: sum((wi * xi for wi, xi in zip(w, x)), start))
    assert structure(fused) == structure(expected) and fused.data == 1.0 + 6.0 + 15.0


def test_weighted_sum_goes_through_python_for_other_operands():
    class Scaled:                       # knows how to multiply a Value: Python's operators find it
        def __rmul__(self, other):
            return other * 2.0

    a = Value(3.0)
    assert weighted_sum([a], [Scaled()], Value(1.0)).data == 7.0
    with pytest.raises(TypeError) as plain:
        sum((wi * xi for wi, xi in zip([a], ["2"])), Value(1.0))
    with pytest.raises(TypeError, match=str(plain.value)):
        weighted_sum([a], ["2"], Value(1.0))
    with pytest.raises(OverflowError):
        weighted_sum([a], [10 ** 400], Value(1.0))
    assert weighted_sum([2.0], [3.0], 1.0) == 7.0          # no Value anywhere: plain numbers, as sum gives
