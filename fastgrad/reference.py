"""The seed's Value, Neuron, Layer and MLP in plain Python: fastgrad's pure-Python twin, the oracle its tests
compare the compiled engine with and the "seed" engine of its benchmarks.

This is the user's notebook code (a node per operation, a `_backward` closure per node, a recursive
topological sort, `_prev` as a set), completed with the operations and number rules that fastgrad
documents, so that a test can build the same graph here and in fastgrad and compare them:

- every operation is one node: `a - b` is '-', `a / b` is '/', `-a` is 'neg' (micrograd builds those
  from `+`, `*` and `**`, and `a / b` rounds as micrograd's `a * b**-1` does); a number operand, on either
  side, becomes a new leaf Value;
- `data` is a Python float (the seed keeps ints as ints; fastgrad stores a C double);
- errors are Python's: `x / 0` and `0.0 ** -1` raise ZeroDivisionError, `log(x <= 0)` ValueError,
  `exp` and `**` overflow OverflowError, and a negative base to a fractional power raises ValueError
  where Python would return a complex number;
- `tanh` is fastgrad's own, `tanh(x)` below: the kernel's steps in Python floats, so the same bits (the
  seed's `(e^2x - 1) / (e^2x + 1)` overflows for x > 355; it is kept as `seed_tanh` for comparison), and
  `sigmoid` is computed in the form that cannot overflow.

It is plain Python on purpose, and imports nothing of fastgrad's.
"""
import math
import numbers
import random
import struct

__all__ = ["Value", "Module", "Neuron", "Layer", "MLP", "trace", "seed_tanh", "tanh"]


def _inverse_square(x):
    """x ** -2 as C's pow gives it where Python raises (x tiny, or a 0 set after the division): inf."""
    try:
        return x**-2
    except (OverflowError, ZeroDivisionError):
        return math.inf


def seed_tanh(x):
    """tanh as the seed's notebook computes it."""
    return (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1)


def tanh(x):
    """fastgrad's tanh of a float (src/ops.h, fg_tanh, where its steps are explained), step for step in Python's
    IEEE doubles, so bit for bit: within 1.5 ulp of the exact tanh, and not always math.tanh's bits."""
    ax = abs(x)
    z = ax * ax
    g = -0.3333333333333333 + z * (0.13333333333332728 + z * (-0.05396825396745119
        + z * (0.021869488494452378 + z * (-0.008863234415954168 + z * (0.003592110618190448
        + z * (-0.0014556637472391653 + z * (0.00058894551539517 + z * (-0.00023466287885907128
        + z * (8.515932180302729e-05 + z * -2.0634899771792012e-05)))))))))
    near_zero = ax + ax * (z * g)
    # e^y + 1, y = 2|x| (at most 44), as fg_exp_plus_one computes it
    y = 2.0 * (ax if ax < 22.0 else 22.0)
    kd = y * 1.4426950408889634 + 6755399441055744.0
    bits = struct.unpack("<Q", struct.pack("<d", kd))[0]
    kd -= 6755399441055744.0
    r = (y - kd * 6.93147180369123816490e-01) - kd * 1.90821492927058770002e-10
    r2 = r * r
    r4 = r2 * r2
    q = ((1.0 / 2 + r * (1.0 / 6)) + r2 * (1.0 / 24 + r * (1.0 / 120))) + r4 * (
        ((1.0 / 720 + r * (1.0 / 5040)) + r2 * (1.0 / 40320 + r * (1.0 / 362880)))
        + r4 * ((1.0 / 3628800 + r * (1.0 / 39916800)) + r2 * (1.0 / 479001600 + r * (1.0 / 6227020800))))
    p = r + r2 * q
    s = struct.unpack("<d", struct.pack("<Q", ((bits + 1023) << 52) & 0xFFFFFFFFFFFFFFFF))[0]
    away = 1.0 - 2.0 / (s * p + (s + 1.0))
    if x != x:
        return x + x
    return math.copysign(near_zero if ax < 0.5493061443340549 else away, x)


def _real_pow(x, y):
    """x ** y with Python's float rules, but ValueError where Python would go complex.

    Python takes the complex path for a finite negative base and a finite fractional exponent (and
    then may even raise OverflowError): the domain error comes first here, whatever the magnitude.
    """
    if x < 0 and math.isfinite(x) and math.isfinite(y) and y != math.floor(y):
        raise ValueError("a negative number cannot be raised to a fractional power")
    return x ** y


def _is_odd_integer(y):
    return math.isfinite(y) and y == math.floor(y) and math.fmod(y, 2.0) != 0.0


def _ieee_pow(x, y):
    """x ** y as C's pow gives it, for derivatives: inf where Python raises, nan where it goes complex.

    A forward x ** k can succeed where the derivative's x ** (k - 1) cannot (0.0 ** 0.5, tiny x with
    negative k); the derivative is then infinite, not an error.
    """
    try:
        result = x ** y
    except ZeroDivisionError:          # 0.0 ** negative
        return math.copysign(math.inf, x) if _is_odd_integer(y) else math.inf
    except OverflowError:
        return -math.inf if x < 0 and _is_odd_integer(y) else math.inf
    return math.nan if isinstance(result, complex) else result


class Value:
    """A scalar in a computation graph, as in the seed: data, grad, the op and children that made it."""

    def __init__(self, data, _children=(), _op="", label=""):
        if not isinstance(data, numbers.Real):
            raise TypeError(f"Value data must be a real number, not {type(data).__name__!r}")
        self.data = float(data)
        self.grad = 0.0
        self._backward = lambda: None
        self._prev = set(_children)
        self._op = _op
        self.label = label

    def __repr__(self):
        return f"Value(data={self.data})"

    def __add__(self, other):
        other = _as_value(other)
        if other is None:
            return NotImplemented
        out = Value(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += out.grad
            other.grad += out.grad
        out._backward = _backward
        return out

    def __sub__(self, other):
        other = _as_value(other)
        if other is None:
            return NotImplemented
        out = Value(self.data - other.data, (self, other), "-")

        def _backward():
            self.grad += out.grad
            other.grad -= out.grad
        out._backward = _backward
        return out

    def __mul__(self, other):
        other = _as_value(other)
        if other is None:
            return NotImplemented
        out = Value(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad
        out._backward = _backward
        return out

    def __truediv__(self, other):
        other = _as_value(other)
        if other is None:
            return NotImplemented
        # micrograd's and the lecture's a * b**-1 in one node: the same roundings and the same grads
        out = Value(self.data * other.data**-1, (self, other), "/")

        def _backward():
            # other.data**-1's own node would hold self.data * out.grad added to its grad of 0
            self.grad += other.data**-1 * out.grad
            other.grad += (-1 * _inverse_square(other.data)) * (self.data * out.grad + 0.0)
        out._backward = _backward
        return out

    def __neg__(self):
        out = Value(-self.data, (self,), "neg")

        def _backward():
            self.grad -= out.grad
        out._backward = _backward
        return out

    def __pow__(self, other):
        if isinstance(other, Value):
            return self._pow_value(other)
        if not isinstance(other, numbers.Real):
            return NotImplemented
        k = float(other)
        out = Value(_real_pow(self.data, k), (self,), f"**{other}")

        def _backward():
            self.grad += 0.0 if k == 0 else k * _ieee_pow(self.data, k - 1) * out.grad    # x ** 0 is flat
        out._backward = _backward
        return out

    def _pow_value(self, exponent):
        out = Value(_real_pow(self.data, exponent.data), (self, exponent), "**")

        def _backward():
            base = self.data
            if base > 0:
                slope_in_exponent = out.data * math.log(base)
            elif base == 0:
                slope_in_exponent = 0.0        # 0 ** b is flat in b for b > 0, the only case forward allows
            else:
                slope_in_exponent = math.nan   # b is an integer here: no real derivative in b
            self.grad += 0.0 if exponent.data == 0 else exponent.data * _ieee_pow(base, exponent.data - 1) * out.grad
            exponent.grad += slope_in_exponent * out.grad
        out._backward = _backward
        return out

    def __radd__(self, other):
        other = _as_value(other)
        return NotImplemented if other is None else other + self

    def __rsub__(self, other):
        other = _as_value(other)
        return NotImplemented if other is None else other - self

    def __rmul__(self, other):
        other = _as_value(other)
        return NotImplemented if other is None else other * self

    def __rtruediv__(self, other):
        other = _as_value(other)
        return NotImplemented if other is None else other / self

    def __rpow__(self, other):
        other = _as_value(other)
        return NotImplemented if other is None else other._pow_value(self)

    def tanh(self):
        t = tanh(self.data)
        out = Value(t, (self,), "tanh")

        def _backward():
            self.grad += (1 - t**2) * out.grad
        out._backward = _backward
        return out

    def exp(self):
        out = Value(math.exp(self.data), (self,), "exp")

        def _backward():
            self.grad += out.data * out.grad
        out._backward = _backward
        return out

    def log(self):
        out = Value(math.log(self.data), (self,), "log")

        def _backward():
            self.grad += out.grad / self.data
        out._backward = _backward
        return out

    def relu(self):
        out = Value(0.0 if self.data < 0 else self.data, (self,), "ReLU")

        def _backward():
            # fastgrad's mask (src/ops.h): 0 where the output is <= 0 whatever grad comes, and a nan output
            # (from a nan input) passes the grad on, as in PyTorch
            self.grad += 0.0 if out.data <= 0 else out.grad
        out._backward = _backward
        return out

    def sigmoid(self):
        x = self.data
        if x >= 0:
            s = 1 / (1 + math.exp(-x))
        else:                                  # exp(-x) would overflow for x < -709
            e = math.exp(x)
            s = e / (1 + e)
        out = Value(s, (self,), "sigmoid")

        def _backward():
            self.grad += s * (1 - s) * out.grad
        out._backward = _backward
        return out

    def softplus(self):
        x = self.data
        y = x + math.log1p(math.exp(-x)) if x > 0 else math.log1p(math.exp(x))   # log(1 + e^x), no overflow
        if x >= 0:                             # the slope is sigmoid(x), computed as sigmoid() does
            s = 1 / (1 + math.exp(-x))
        else:
            e = math.exp(x)
            s = e / (1 + e)
        out = Value(y, (self,), "softplus")

        def _backward():
            self.grad += s * out.grad
        out._backward = _backward
        return out

    def backward(self):
        topo = []
        visited = set()

        def build_topo(v):
            if v not in visited:
                visited.add(v)
                for child in v._prev:
                    build_topo(child)
                topo.append(v)
        build_topo(self)
        self.grad = 1.0
        for v in reversed(topo):
            v._backward()


def _as_value(x):
    """x if it is a Value, a new leaf if it is a real number, None otherwise (-> NotImplemented)."""
    if isinstance(x, Value):
        return x
    if isinstance(x, numbers.Real):
        return Value(x)
    return None


def trace(root):
    """The seed's trace: all nodes below root and the (child, parent) edges, as two sets."""
    nodes, edges = set(), set()

    def build(v):
        if v not in nodes:
            nodes.add(v)
            for child in v._prev:
                edges.add((child, v))
                build(child)
    build(root)
    return nodes, edges


class Module:

    def parameters(self):
        return []

    def zero_grad(self):
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):

    def __init__(self, nin):
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(random.uniform(-1, 1))

    def __call__(self, x):
        act = sum([wi * xi for wi, xi in zip(self.w, x)], self.b)
        return act.tanh()

    def parameters(self):
        return self.w + [self.b]


class Layer(Module):

    def __init__(self, nin, nout):
        self.neurons = [Neuron(nin) for _ in range(nout)]

    def __call__(self, x):
        outs = [n(x) for n in self.neurons]
        return outs[0] if len(outs) == 1 else outs

    def parameters(self):
        return [p for n in self.neurons for p in n.parameters()]


class MLP(Module):

    def __init__(self, nin, nouts):
        sz = [nin] + nouts
        self.layers = [Layer(sz[i], sz[i + 1]) for i in range(len(nouts))]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]
