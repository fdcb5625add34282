"""Two micrograd programs that extend Value, run by tests/test_extending.py in a child process:

    python extending_programs.py real      tanh-exp     # on micrograd 0.1.0 from PyPI
    python extending_programs.py fastgrad  subclass     # on fastgrad, after fastgrad.install_as_micrograd()

- tanh-exp: a module adds `tanh` and `exp` to micrograd's Value (functions that make a node with a `_backward`
  closure, assigned to the class) and trains one tanh neuron with them;
- subclass: `ValueExt(Value)` with its own __init__, class and instance attributes, its own `+`, `*`, `**`,
  `relu` and a new `sigmoid`, all with closures, trains a sigmoid neuron.

Each prints its numbers, in full (repr of floats); the two runs must print the same lines. Every node's grad
gets at most two terms in a backward(), so the order in which micrograd's sets list children cannot change a
sum: the programs are deterministic on both engines.
"""
import math
import random
import sys

if sys.argv[1] == "fastgrad":
    import fastgrad

    fastgrad.install_as_micrograd()

from micrograd.engine import Value  # noqa: E402  (must come after install_as_micrograd)


# --- tanh-exp: new methods on Value, written the notebook's way

def tanh(self):
    x = self.data
    t = (math.exp(2 * x) - 1) / (math.exp(2 * x) + 1)
    out = Value(t, (self,), "tanh")

    def _backward():
        self.grad += (1 - t**2) * out.grad
    out._backward = _backward
    return out


def exp(self):
    x = self.data
    out = Value(math.exp(x), (self,), "exp")

    def _backward():
        self.grad += out.data * out.grad
    out._backward = _backward
    return out


def tanh_exp():
    Value.tanh = tanh
    Value.exp = exp
    random.seed(3)
    w = [Value(random.uniform(-1, 1)) for _ in range(2)]
    b = Value(random.uniform(-1, 1))
    samples = [([2.0, -1.0], 0.5), ([-0.5, 1.5], -0.25), ([1.0, 1.0], 0.75)]
    for step in range(30):
        x, target = samples[step % len(samples)]
        n = w[0] * x[0] + w[1] * x[1] + b
        out = n.tanh()
        e = (n * 2).exp()                       # the notebook's second way to a tanh: (e^2x - 1) / (e^2x + 1)
        other = (e - 1) / (e + 1)
        loss = (out - target) ** 2 + (other - target) ** 2
        for p in w + [b]:
            p.grad = 0.0
        loss.backward()
        for p in w + [b]:
            p.data += -0.1 * p.grad
        print(step, repr(float(loss.data)), [repr(float(p.data)) for p in w + [b]], out._op, e._op)


# --- subclass: a Value of one's own, as a micrograd program writes it

class ValueExt(Value):
    made = 0                                    # a class attribute

    def __init__(self, data, _children=(), _op=""):
        self.data = data
        self.grad = 0
        self._backward = lambda: None
        self._prev = set(_children)
        self._op = _op
        self.note = f"#{ValueExt.made}"         # an instance attribute
        ValueExt.made += 1

    def __add__(self, other):
        other = other if isinstance(other, Value) else ValueExt(other)
        out = ValueExt(self.data + other.data, (self, other), "+")

        def _backward():
            self.grad += out.grad
            other.grad += out.grad
        out._backward = _backward
        return out

    def __mul__(self, other):
        other = other if isinstance(other, Value) else ValueExt(other)
        out = ValueExt(self.data * other.data, (self, other), "*")

        def _backward():
            self.grad += other.data * out.grad
            other.grad += self.data * out.grad
        out._backward = _backward
        return out

    def __pow__(self, other):
        out = ValueExt(self.data**other, (self,), f"**{other}")

        def _backward():
            self.grad += (other * self.data ** (other - 1)) * out.grad
        out._backward = _backward
        return out

    def relu(self):
        out = ValueExt(0 if self.data < 0 else self.data, (self,), "ReLU")

        def _backward():
            self.grad += (out.data > 0) * out.grad
        out._backward = _backward
        return out

    def sigmoid(self):
        s = 1 / (1 + math.exp(-self.data))
        out = ValueExt(s, (self,), "sigmoid")

        def _backward():
            self.grad += s * (1 - s) * out.grad
        out._backward = _backward
        return out

    def __neg__(self):
        return self * -1

    def __radd__(self, other):
        return self + other

    def __sub__(self, other):
        return self + (-other)

    def __rmul__(self, other):
        return self * other


def subclass():
    random.seed(5)
    w = [ValueExt(random.uniform(-1, 1)) for _ in range(3)]
    b = ValueExt(0.0)
    samples = [([0.5, -1.0, 2.0], 1.0), ([1.5, 0.25, -0.5], 0.0), ([-1.0, 2.0, 0.5], 1.0)]
    for step in range(30):
        x, target = samples[step % len(samples)]
        n = (w[0] * x[0] + w[1] * x[1]).relu() + w[2] * x[2] + b
        out = n.sigmoid()
        loss = (out - target) ** 2
        for p in w + [b]:
            p.grad = 0
        loss.backward()
        for p in w + [b]:
            p.data += -0.5 * p.grad
        print(step, repr(float(loss.data)), [repr(float(p.data)) for p in w + [b]],
              type(loss).__name__, loss._op, sorted(c._op for c in loss._prev), out.note[:1], ValueExt.made > 0)


if __name__ == "__main__":
    {"tanh-exp": tanh_exp, "subclass": subclass}[sys.argv[2]]()
