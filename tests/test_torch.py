"""Gradients of every fastgrad op, and of whole expressions and networks, against PyTorch in float64."""
import math
import operator
import random
import struct
import sys

import pytest

import fastgrad.micrograd.nn
import fastgrad.nn
from fastgrad import Value

torch = pytest.importorskip(
    "torch", reason="PyTorch is not installed: the gradient cross-check against it is skipped (pip install torch)"
)

REL = 1e-12     # the two compute the same formulas; they may round a few intermediate steps differently


def fastgrad_result(f, inputs):
    leaves = [Value(x) for x in inputs]
    out = f(*leaves)
    out.backward()
    return out.data, [leaf.grad for leaf in leaves]


def torch_result(f, inputs):
    leaves = [torch.tensor(x, dtype=torch.float64, requires_grad=True) for x in inputs]
    out = f(*leaves)
    out.backward()
    return out.item(), [leaf.grad.item() for leaf in leaves]


def assert_same(actual, expected, what, abs_tol=0.0):
    both_nan = math.isnan(actual) and math.isnan(expected)
    assert both_nan or math.isclose(actual, expected, rel_tol=REL, abs_tol=abs_tol), (what, actual, expected)


def check(f, inputs, grad_abs_tol=0.0):
    data, grads = fastgrad_result(f, inputs)
    expected_data, expected_grads = torch_result(f, inputs)
    assert_same(data, expected_data, f"data at {inputs}")
    for n, (grad, expected) in enumerate(zip(grads, expected_grads)):
        assert_same(grad, expected, f"grad of input {n} at {inputs}", grad_abs_tol)


ANYWHERE = [-3.7, -1.2, -0.3, 0.4, 1.0, 2.5, 11.0]
POSITIVE = [1e-3, 0.3, 1.0, 2.5, 11.0]

# name: (function written once for both engines, points). Tensors and Values share operators and the
# method names tanh, exp, log, relu, sigmoid.
ONE_INPUT = {
    "-a": (operator.neg, ANYWHERE),
    "tanh": (lambda a: a.tanh(), ANYWHERE + [-25.0, 40.0]),
    "exp": (lambda a: a.exp(), ANYWHERE + [-700.0, 700.0]),
    "log": (lambda a: a.log(), POSITIVE + [1e-300, 1e300]),
    "relu": (lambda a: a.relu(), ANYWHERE + [0.0, -0.0]),
    "sigmoid": (lambda a: a.sigmoid(), ANYWHERE + [-800.0, -40.0, 0.0, 40.0, 800.0]),
    # a tensor has no softplus method: torch.nn.functional's
    "softplus": (lambda a: a.softplus() if isinstance(a, Value) else torch.nn.functional.softplus(a),
                 ANYWHERE + [-800.0, -40.0, 0.0, 40.0, 800.0]),
    "a**2": (lambda a: a**2, ANYWHERE + [0.0]),
    "a**3": (lambda a: a**3, ANYWHERE + [0.0]),
    "a**0": (lambda a: a**0, ANYWHERE),
    "a**-1": (lambda a: a**-1, ANYWHERE),
    "a**-2": (lambda a: a**-2, ANYWHERE),
    "a**0.5": (lambda a: a**0.5, POSITIVE + [0.0]),
    "a**-1.5": (lambda a: a**-1.5, POSITIVE),
    "a**2.0": (lambda a: a**2.0, ANYWHERE),
    "a + 2.5": (lambda a: a + 2.5, ANYWHERE),
    "a - 2.5": (lambda a: a - 2.5, ANYWHERE),
    "a * -1.5": (lambda a: a * -1.5, ANYWHERE),
    "a / 3": (lambda a: a / 3, ANYWHERE),
    "2.5 + a": (lambda a: 2.5 + a, ANYWHERE),
    "2.5 - a": (lambda a: 2.5 - a, ANYWHERE),
    "-1.5 * a": (lambda a: -1.5 * a, ANYWHERE),
    "3 / a": (lambda a: 3 / a, ANYWHERE),
    "2 ** a": (lambda a: 2 ** a, ANYWHERE),
    "0.5 ** a": (lambda a: 0.5**a, ANYWHERE),
    # One input used twice: the two paths' grads add up.
    "a + a": (lambda a: a + a, ANYWHERE),
    "a - a": (lambda a: a - a, ANYWHERE),
    "a * a": (lambda a: a * a, ANYWHERE),
    "a / a": (lambda a: a / a, ANYWHERE),
    "a ** a": (lambda a: a**a, POSITIVE),
}

PAIRS = [(a, b) for a in ANYWHERE for b in ANYWHERE[::2]]
POSITIVE_BASE_PAIRS = [(a, b) for a in POSITIVE for b in ANYWHERE]
TWO_INPUTS = {
    "a + b": (operator.add, PAIRS),
    "a - b": (operator.sub, PAIRS),
    "a * b": (operator.mul, PAIRS),
    "a / b": (operator.truediv, PAIRS),
    # A Value exponent: d/db = a**b * log(a) for a > 0; at a == 0 both say 0 for b >= 0, and for a < 0 with
    # an integer b (the only negative bases with a real power) both say nan.
    "a ** b": (operator.pow, POSITIVE_BASE_PAIRS + [(0.0, 2.0), (0.0, 0.5), (-2.0, 3.0), (-1.5, -2.0)]),
}


# tanh's slope 1 - t*t, where t = tanh(x) is near 1, keeps only the absolute accuracy of t (an ulp of 1):
# torch, which fuses the multiply and subtract, and fastgrad round it differently there.
GRAD_ABS_TOL = {"tanh": 4 * sys.float_info.epsilon}


@pytest.mark.parametrize("name", ONE_INPUT)
def test_one_input_op_matches_torch(name):
    f, points = ONE_INPUT[name]
    for x in points:
        check(f, [x], GRAD_ABS_TOL.get(name, 0.0))


@pytest.mark.parametrize("name", TWO_INPUTS)
def test_two_input_op_matches_torch(name):
    f, points = TWO_INPUTS[name]
    for a, b in points:
        check(f, [a, b])


# ---------------------------------------------------------------------------------------------------
# Where a local derivative is 0 whatever reaches it: torch gives 0, and so does fastgrad (0 * inf would be nan,
# which micrograd gives for relu and raises ZeroDivisionError for 0 ** 0). Compared bit for bit, zeros' signs too.

INF, NAN = math.inf, math.nan


def bits_or_nan(x):
    return "nan" if math.isnan(x) else struct.pack("<d", x).hex()


MASKED = {
    # relu: 0 where its output is <= 0, the incoming grad elsewhere (a nan output passes it on, as in torch)
    "relu(x) * w below 0, inf above": (lambda x, w: x.relu() * w, [-1.0, INF]),
    "relu(x) * w below 0, -inf above": (lambda x, w: x.relu() * w, [-1.0, -INF]),
    "relu(x) * w below 0, nan above": (lambda x, w: x.relu() * w, [-1.0, NAN]),
    "relu(x) * w at 0, inf above": (lambda x, w: x.relu() * w, [0.0, INF]),
    "relu(x) * w at nan": (lambda x, w: x.relu() * w, [NAN, 2.0]),
    # x ** 0 is 1 everywhere: its slope is 0, at x = 0 too (0 * 0 ** -1 would be 0 * inf)
    "x ** 0 at 0": (lambda x: x ** 0, [0.0]),
    "x ** 0.0 at -0.0": (lambda x: x ** 0.0, [-0.0]),
    "x ** 0 * w at 2, inf above": (lambda x, w: x ** 0 * w, [2.0, INF]),
    "x ** 0 * w at -3, nan above": (lambda x, w: x ** 0 * w, [-3.0, NAN]),
    # v ** w with w = 0: the same for the base; the exponent's slope, 0 ** w's, is 0 at v = 0 for w >= 0
    "v ** w at (0, 0)": (lambda v, w: v ** w, [0.0, 0.0]),
    "v ** w at (0, 0.5)": (lambda v, w: v ** w, [0.0, 0.5]),
    "v ** w * u at (2, 0), inf above": (lambda v, w, u: v ** w * u, [2.0, 0.0, INF]),
}


@pytest.mark.parametrize("name", MASKED)
def test_a_zero_slope_gives_0_whatever_grad_reaches_it_as_in_torch(name):
    f, inputs = MASKED[name]
    data, grads = fastgrad_result(f, inputs)
    expected_data, expected_grads = torch_result(f, inputs)
    assert bits_or_nan(data) == bits_or_nan(expected_data)
    assert [bits_or_nan(g) for g in grads] == [bits_or_nan(g) for g in expected_grads]


def test_minus_zero_to_the_half_is_python_s_power_and_its_slope_c_s():
    """(-0.0) ** 0.5 is +0.0 (Python's float power, micrograd's data) and its slope 0.5 * (-0.0) ** -0.5 is +inf
    (C's pow; micrograd raises ZeroDivisionError): what torch gives with a tensor exponent. With the number 0.5
    as exponent torch computes sqrt instead, and gives -0.0 and -inf: fastgrad does not special-case 0.5."""
    data, grads = fastgrad_result(lambda x: x ** 0.5, [-0.0])
    assert bits_or_nan(data) == bits_or_nan((-0.0) ** 0.5) == bits_or_nan(0.0)
    exponent = torch.tensor(0.5, dtype=torch.float64)
    expected_data, expected_grads = torch_result(lambda x: x ** exponent, [-0.0])
    assert bits_or_nan(data) == bits_or_nan(expected_data)
    assert grads == expected_grads == [INF]


def micrograd_sanity_check(x):
    z = 2 * x + 2 + x
    q = z.relu() + z * x
    h = (z * z).relu()
    return h + q + q * x


def micrograd_more_ops(a, b):
    c = a + b
    d = a * b + b**3
    c = c + c + 1
    c = c + 1 + c + (-a)
    d = d + d * 2 + (b + a).relu()
    d = d + 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    return g + 10.0 / f


def every_op(a, b):
    """All of fastgrad's ops in one graph, sharing subexpressions."""
    s = (a * b + a / b - b).tanh() + (a - 2.0).relu() * (-b).sigmoid()
    return (s.exp() + 1.0).log() * a**2 + 2**s / (b**b) + (s * s + 0.5) ** b.sigmoid()


@pytest.mark.parametrize("f, points", [
    (micrograd_sanity_check, [[-4.0], [0.7], [3.0]]),
    (micrograd_more_ops, [[-4.0, 2.0], [1.5, -0.5]]),
    (every_op, [[0.8, 1.3], [-1.1, 2.2], [2.0, 0.4]]),
])
def test_expressions_match_torch(f, points):
    for inputs in points:
        check(f, inputs)


def torch_network(model, weights, x):
    """model's forward in torch on the tensors `weights` (in model.parameters() order): tanh neurons for
    fastgrad.nn, ReLU or linear ones for fastgrad.micrograd.nn."""
    weights = iter(weights)
    for layer in model.layers:
        outs = []
        for neuron in layer.neurons:
            w = [next(weights) for _ in neuron.w]
            act = next(weights)                 # b + w0*x0 + w1*x1 + ..., in the classes' order
            for wi, xi in zip(w, x):
                act = act + wi * xi
            if isinstance(neuron, fastgrad.micrograd.nn.Neuron):
                outs.append(act.relu() if neuron.nonlin else act)
            else:
                outs.append(act.tanh())
        x = outs
    return x[0]


@pytest.mark.parametrize("mlp", [fastgrad.nn.MLP, fastgrad.micrograd.nn.MLP])
def test_network_loss_and_parameter_grads_match_torch(mlp):
    random.seed(7)
    model = mlp(3, [4, 4, 1])
    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
    ys = [1.0, -1.0, -1.0, 1.0]

    loss = sum((model(x) - y) ** 2 for x, y in zip(xs, ys))
    loss.backward()

    weights = [torch.tensor(p.data, dtype=torch.float64, requires_grad=True) for p in model.parameters()]
    expected = sum((torch_network(model, weights, x) - y) ** 2 for x, y in zip(xs, ys))
    expected.backward()
    assert_same(loss.data, expected.item(), "loss")
    for n, (p, w) in enumerate(zip(model.parameters(), weights)):
        assert_same(p.grad, w.grad.item(), f"grad of parameter {n}")
