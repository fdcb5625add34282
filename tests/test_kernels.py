"""The op kernels as the compiled replay dispatches them (fastgrad.engine.kernel_forward and kernel_derivative,
over _ops.forward and _ops.derivative) against the eager ops, which call each kernel by name: same data bit
for bit, same exception, same local derivative bit for bit, for every op in the op table."""
import math
import pickle

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from fastgrad import Value, grad, trace
from fastgrad.engine import OPS, kernel_derivative, kernel_forward
from support import same_float

CODE = {op.name: op.code for op in OPS}
# op name: how the eager op builds its node from leaves a and b, and the exponent k it stores
EAGER = {
    "ADD": lambda a, b, k: a + b,
    "SUB": lambda a, b, k: a - b,
    "MUL": lambda a, b, k: a * b,
    "DIV": lambda a, b, k: a / b,
    "NEG": lambda a, b, k: -a,
    "POW_CONST": lambda a, b, k: a ** k,
    "POW": lambda a, b, k: a ** b,
    "TANH": lambda a, b, k: a.tanh(),
    "EXP": lambda a, b, k: a.exp(),
    "LOG": lambda a, b, k: a.log(),
    "RELU": lambda a, b, k: a.relu(),
    "SIGMOID": lambda a, b, k: a.sigmoid(),
    "SOFTPLUS": lambda a, b, k: a.softplus(),
    "SIN": lambda a, b, k: a.sin(),
    "COS": lambda a, b, k: a.cos(),
    "SQRT": lambda a, b, k: a.sqrt(),
    "ABS": lambda a, b, k: abs(a),
    # No method makes these: grad builds them into derivatives (ops.h). Relu's is gate(relu(a), g), which is
    # gate(a, g); with g = b. Its derivative in its first child is 0: what its _backward() adds into relu(a)
    # leaves a's grad at 0.0 + 0.0.
    "GATE": lambda a, b, k: made(grad(a.relu(), a, grad_outputs=b, create_graph=True)[0], "gate"),
    "QUOTIENT": lambda a, b, k: quotient(a, b),
    # abs's derivative is sign(a) * g
    "SIGN": lambda a, b, k: made(grad(abs(a), a, create_graph=True)[0], "sign"),
}


def made(result, op):
    """The node of that _op in result's graph."""
    return next(n for n in trace(result)[0] if n._op == op)


def quotient(a, b):
    """quotient(a, b), as grad builds log's derivative g / b with g = a. log refuses b <= 0 (where quotient
    itself gives inf or nan, as the derivative kernels' division does): those cases are left out."""
    assume(b.data > 0)
    return made(grad(b.log(), b, grad_outputs=a, create_graph=True)[0], "quotient")


numbers = st.one_of(st.floats(), st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -2.0, 710.0, -745.0]))


def test_every_op_with_a_forward_is_here():
    assert set(EAGER) == {op.name for op in OPS} - {"LEAF", "CUSTOM", "PYTHON"}   # PYTHON: a fastgrad.op, no kernels
    assert len({op.code for op in OPS}) == len(OPS) and [op.code for op in OPS] == list(range(len(OPS)))


def test_the_op_table_pickles_and_says_where_it_lives():
    assert pickle.loads(pickle.dumps(OPS)) == OPS
    assert type(OPS[0]).__module__ == "fastgrad.engine"


@pytest.mark.parametrize("name", sorted(EAGER))
@settings(max_examples=300, deadline=None)
@given(a=numbers, b=numbers, k=st.one_of(numbers, st.integers(-4, 4).map(float)), g=numbers)
def test_the_dispatched_kernels_are_the_eager_ops(name, a, b, k, g):
    code = CODE[name]
    leaf_a, leaf_b = Value(a), Value(b)
    try:
        node = EAGER[name](leaf_a, leaf_b, k)
    except (ArithmeticError, ValueError) as error:
        with pytest.raises(type(error)) as raised:
            kernel_forward(code, a, b, k)
        assert str(raised.value) == str(error)
        return
    assert node._op == OPS[code].spelling or name == "POW_CONST" and node._op.startswith("**")
    assert same_float(kernel_forward(code, a, b, k), node.data)

    node.grad = g
    node._backward()
    da, db = kernel_derivative(code, g, node.data, a, b, k)
    assert same_float(leaf_a.grad, 0.0 + da)
    if OPS[code].arity == 2:
        assert same_float(leaf_b.grad, 0.0 + db)
    else:
        assert leaf_b.grad == 0.0


@pytest.mark.parametrize("name", sorted(EAGER))
@settings(max_examples=300, deadline=None)
@given(a=numbers, b=numbers, k=st.one_of(numbers, st.integers(-4, 4).map(float)), g=numbers)
def test_each_derivative_as_ops_is_its_derivative_kernel(name, a, b, k, g):
    # grad(create_graph=True) builds each op's derivative from its steps in ops.h: node by node, the same bits
    # as the derivative kernel, or, where a step leaves its op's domain, the eager op's exception.
    code = CODE[name]
    leaf_a, leaf_b = Value(a), Value(b)
    try:
        node = EAGER[name](leaf_a, leaf_b, k)
    except (ArithmeticError, ValueError):
        return
    da, db = kernel_derivative(code, g, node.data, a, b, k)
    try:
        got_a, got_b = grad(node, [leaf_a, leaf_b], grad_outputs=Value(g), create_graph=True)
    except (ArithmeticError, ValueError):
        assert not (math.isfinite(da) and math.isfinite(db))     # backward() has inf or nan there
        return
    assert same_float(got_a.data, 0.0 + da)
    assert same_float(got_b.data, 0.0 + db if OPS[code].arity == 2 else 0.0)


def test_leaves_and_hand_made_nodes_have_no_kernels():
    for name in ("LEAF", "CUSTOM"):
        with pytest.raises(ValueError):
            kernel_forward(CODE[name], 1.0)
    with pytest.raises(ValueError):
        kernel_derivative(len(OPS), 1.0, 1.0, 1.0)
    assert math.isnan(kernel_forward(CODE["ADD"], math.inf, -math.inf))
