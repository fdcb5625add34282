"""sin, cos, sqrt and abs: built-in ops (kernels in src/ops.h, shared by eager, compile and the batched replay)
against Python's math module, finite differences, and the replays bit for bit."""
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastgrad
from fastgrad import Value
from support import same_float

MATH = {"sin": math.sin, "cos": math.cos, "sqrt": math.sqrt, "abs": abs}
SLOPE = {"sin": math.cos, "cos": lambda x: -math.sin(x), "sqrt": lambda x: 0.5 / math.sqrt(x),
         "abs": lambda x: (x > 0) - (x < 0)}
CALLS = {"sin": Value.sin, "cos": Value.cos, "sqrt": Value.sqrt, "abs": abs}


@pytest.mark.parametrize("name", sorted(MATH))
@settings(max_examples=300, deadline=None)
@given(x=st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1.0, -1.0, math.inf, -math.inf, 1e300, 5e-324])))
def test_data_and_errors_are_maths(name, x):
    try:
        expected = MATH[name](x)
    except ValueError as error:
        with pytest.raises(ValueError, match=str(error)):
            CALLS[name](Value(x))
        return
    node = CALLS[name](Value(x))
    assert same_float(node.data, expected)
    assert node._op == name and node._prev == {next(iter(node._prev))}


def test_sqrt_of_a_negative_number_is_a_value_error_as_in_math():
    x = Value(-1.0)
    with pytest.raises(ValueError, match="math domain error"):
        x.sqrt()
    assert math.copysign(1.0, Value(-0.0).sqrt().data) == -1.0           # sqrt(-0.0) is -0.0, as math's


@pytest.mark.parametrize("name", sorted(MATH))
@pytest.mark.parametrize("x", [-2.5, -0.3, 0.7, 1.9, 40.0])
def test_grads_are_the_slope_and_match_central_differences(name, x):
    if name == "sqrt" and x < 0:
        x = -x
    leaf = Value(x)
    root = CALLS[name](leaf) * 3.0
    root.backward()
    assert leaf.grad == 3.0 * SLOPE[name](x)
    h = 1e-6 * max(1.0, abs(x))
    numeric = (MATH[name](x + h) - MATH[name](x - h)) * 3.0 / (2 * h)
    assert leaf.grad == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_abs_has_slope_zero_at_zero_and_sqrt_an_infinite_one():
    for name, grad in [("abs", 0.0), ("sqrt", math.inf)]:
        x = Value(0.0)
        CALLS[name](x).backward()
        assert x.grad == grad


def graph(x, y):
    return (x.sin() * y.cos() + (x * x + y * y).sqrt() - abs(x - y)).sin() * abs(y).sqrt()


@pytest.mark.parametrize("fuse", [True, False])
def test_compile_replays_them_bit_for_bit(fuse):
    x, y = Value(0.3), Value(-1.2)
    compiled = fastgrad.compile(graph(x, y), fuse=fuse)
    for point in [(0.3, -1.2), (2.5, 0.4), (-1.0, -3.0), (0.0, 0.0)]:
        x.data, y.data = point
        x.grad = y.grad = 0.0
        out = compiled.forward()
        compiled.backward()
        ex, ey = Value(point[0]), Value(point[1])
        eager = graph(ex, ey)
        eager.backward()
        assert same_float(out, eager.data)
        assert same_float(x.grad, ex.grad) and same_float(y.grad, ey.grad), point


def test_the_batched_replay_gives_each_rows_eager_bits():
    x, y = Value(0.0), Value(0.0)
    batch = fastgrad.compile(graph(x, y), inputs=[x, y])
    rows = [[0.1 * i - 2.0, 0.37 * i - 3.0] for i in range(41)]
    for row, out in zip(rows, batch.forward(rows)):
        assert same_float(out, graph(Value(row[0]), Value(row[1])).data), row


def test_a_replay_raises_maths_error_at_the_node():
    x = Value(4.0)
    compiled = fastgrad.compile(x.sqrt() + 1.0)
    x.data = -4.0
    with pytest.raises(ValueError, match="math domain error"):
        compiled.forward()
    x.data = 4.0
    batch = fastgrad.compile(x.sqrt() + 1.0, inputs=[x])
    with pytest.raises(ValueError, match="math domain error"):
        batch.forward([[1.0], [-1.0]])
