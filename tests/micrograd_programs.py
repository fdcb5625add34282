"""Programs written against micrograd's API, run by tests/test_micrograd_parity.py in a child process.

    python micrograd_programs.py real       # on the micrograd package from PyPI
    python micrograd_programs.py fastgrad   # on fastgrad, after fastgrad.install_as_micrograd()

The request (JSON on stdin) says what to run; the results go to stdout as JSON. Both runs execute this same
file, which imports micrograd by its own name only, so the two outputs differ only by the engine underneath.
"""
import json
import operator
import random
import sys

from fastgrad import moons

if sys.argv[1] == "fastgrad":
    import fastgrad

    fastgrad.install_as_micrograd()

import micrograd  # noqa: E402  (must come after install_as_micrograd)
from micrograd.engine import Value  # noqa: E402
from micrograd.nn import MLP, Layer, Neuron  # noqa: E402


def readme_example():
    """The expression of micrograd's README (also its test suite's test_more_ops)."""
    a = Value(-4.0)
    b = Value(2.0)
    c = a + b
    d = a * b + b**3
    c += c + 1
    c += 1 + c + (-a)
    d += d * 2 + (b + a).relu()
    d += 3 * d + (b - a).relu()
    e = c - d
    f = e**2
    g = f / 2.0
    g += 10.0 / f
    g.backward()
    return {"g": g.data, "a.grad": a.grad, "b.grad": b.grad}


def sanity_check():
    """The expression of micrograd's test suite's test_sanity_check."""
    x = Value(-4.0)
    z = 2 * x + 2 + x
    q = z.relu() + z * x
    h = (z * z).relu()
    y = h + q + q * x
    y.backward()
    return {"y": y.data, "x.grad": x.grad}


# Each step of a random program makes a new variable from earlier ones: (op, i, j) with j an index for
# two-Value ops and a number for ops with a constant. The in-place forms use the augmented assignment
# statements themselves, which micrograd (no __iadd__) turns into new nodes.
def _iadd(a, b):
    a += b
    return a


def _isub(a, b):
    a -= b
    return a


def _imul(a, b):
    a *= b
    return a


def _idiv(a, b):
    a /= b
    return a


BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv,
          "+=": _iadd, "-=": _isub, "*=": _imul, "/=": _idiv}
CONSTANT_RIGHT = dict(BINARY, **{"**": operator.pow})
CONSTANT_LEFT = {"r+": operator.add, "r-": operator.sub, "r*": operator.mul, "r/": operator.truediv}
UNARY = {"neg": operator.neg, "relu": lambda a: a.relu()}


def run_program(program):
    """Build a program's graph, backward from its last variable; every variable's data and grad."""
    variables = [Value(x) for x in program["leaves"]]
    for op, i, arg in program["steps"]:
        a = variables[i]
        if op in UNARY:
            out = UNARY[op](a)
        elif op in CONSTANT_LEFT:
            out = CONSTANT_LEFT[op](arg, a)
        elif op.startswith("c"):
            out = CONSTANT_RIGHT[op[1:]](a, arg)
        else:
            out = BINARY[op](a, variables[arg])
        variables.append(out)
    variables[-1].backward()
    return {"data": [float(v.data) for v in variables], "grad": [float(v.grad) for v in variables]}


def structure(seed):
    """Reprs, parameter counts and initial weights of micrograd's nn classes after random.seed(seed)."""
    random.seed(seed)
    models = [Neuron(3), Neuron(3, nonlin=False), Layer(3, 2), Layer(4, 1, nonlin=False),
              MLP(3, [4, 4, 1]), MLP(2, [16, 16, 1])]
    single = Layer(2, 1)([Value(0.5), Value(-1.5)])
    after = random.random()       # the draws made above leave the generator in the same state
    return {
        "reprs": [repr(m) for m in models],
        "parameter_counts": [len(m.parameters()) for m in models],
        "parameters": [[float(p.data) for p in m.parameters()] for m in models],
        "single_output": [type(single).__name__, float(single.data)],
        "random_after": after,
    }


def train(seed, steps):
    """micrograd's moons demo: MLP(2, [16, 16, 1]) after random.seed(seed), full batch, (loss, accuracy)."""
    X, y = moons.make_moons(n_samples=100, noise=0.1, seed=seed)
    random.seed(seed)
    model = MLP(2, [16, 16, 1])
    history = [moons.train_step(model, Value, X, y, k) for k in range(steps)]
    model.zero_grad()
    return {"history": history, "zeroed_grads": [float(p.grad) for p in model.parameters()]}


def main():
    request = json.load(sys.stdin)
    results = {"engine": Value.__module__, "package": micrograd.__name__}
    if request.get("examples"):
        results["readme"] = readme_example()
        results["sanity"] = sanity_check()
    for key in ("programs", "exact_programs"):
        if key in request:
            results[key] = [run_program(p) for p in request[key]]
    if "structure_seed" in request:
        results["structure"] = structure(request["structure_seed"])
    if "train_steps" in request:
        results["train"] = train(request["train_seed"], request["train_steps"])
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
