"""fastgrad as micrograd: the same micrograd programs on the real micrograd 0.1.0 and on fastgrad agree.

The two cannot be imported under the one name `micrograd` in one process, so tests/micrograd_programs.py runs
once on each (in two child processes) and the tests compare what the two printed.
"""
import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

import fastgrad
import fastgrad.micrograd.engine
import fastgrad.micrograd.nn
import fastgrad.nn
from support import run_child

PROGRAMS = Path(__file__).with_name("micrograd_programs.py")
BACKENDS = ("real", "fastgrad")


def run_both(request, timeout):
    """Run micrograd_programs.py on both backends at once (two cores), with the same JSON request."""
    children = {
        backend: subprocess.Popen(
            [sys.executable, str(PROGRAMS), backend],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for backend in BACKENDS
    }
    outputs = {}
    try:
        for backend, child in children.items():
            stdout, stderr = child.communicate(json.dumps(request), timeout=timeout)
            assert child.returncode == 0, f"{backend} run failed:\n{stderr}"
            outputs[backend] = json.loads(stdout)
    finally:
        for child in children.values():
            if child.poll() is None:
                child.kill()
                child.wait()
    assert outputs["real"]["engine"] == "micrograd.engine"     # the oracle really is micrograd
    assert outputs["fastgrad"]["engine"] == "fastgrad.engine"  # and the other run really is fastgrad
    return outputs["real"], outputs["fastgrad"]


def close(x, y, rel=1e-9, floor=0.0):
    return math.isclose(x, y, rel_tol=rel, abs_tol=floor)


def assert_all_close(expected, actual, what, rel=1e-9, floor=0.0):
    """Each pair within rel of each other, or within floor of each other (for values near zero)."""
    assert len(expected) == len(actual), what
    bad = [(i, e, a) for i, (e, a) in enumerate(zip(expected, actual)) if not close(e, a, rel, floor)]
    assert not bad, f"{what}: {len(bad)} of {len(expected)} differ, first (index, micrograd, fastgrad): {bad[:3]}"


# ---------------------------------------------------------------------------------------------------
# Random programs over every op micrograd has. The generator keeps each program well conditioned: it runs
# every step on plain numbers as micrograd does (a / b as a * b**-1, a - b as a + (-b)), and keeps a step only
# if no value is tiny or huge, no ReLU input is near its kink, and no power leaves the reals.

EXPONENTS = [0, 1, 2, 3, -1, -2, 0.5, 1.5, -0.5, 2.0, -1.0, 3.5]
# The op names micrograd_programs.py understands: (operands, arithmetic). "value" ops take two variables,
# "constant" ops a variable and a number on its right, "reflected" ops a number on the left.
OPS = {
    **{op: ("value", op.rstrip("=")) for op in ["+", "-", "*", "/", "+=", "-=", "*=", "/="]},
    **{"c" + op: ("constant", op.rstrip("=")) for op in ["+", "-", "*", "/", "**", "+=", "-=", "*=", "/="]},
    **{"r" + op: ("reflected", op) for op in ["+", "-", "*", "/"]},
    "neg": ("unary", "neg"),
    "relu": ("unary", "relu"),
}


def simulate(arithmetic, a, b):
    """One step on plain numbers, as micrograd computes it."""
    if arithmetic == "+":
        return a + b
    if arithmetic == "-":
        return a + b * -1
    if arithmetic == "*":
        return a * b
    if arithmetic == "/":
        return a * b**-1
    if arithmetic == "**":
        return a**b
    if arithmetic == "neg":
        return a * -1
    return 0.0 if a < 0 else a          # relu


def acceptable(arithmetic, a, b):
    """Whether the step's operands are in the domain where both engines give real, finite numbers."""
    if arithmetic == "relu":
        return a == 0 or abs(a) >= 1e-3
    if arithmetic == "**":
        return not (a < 0 and b != int(b) or a == 0 and b < 1)
    return not (arithmetic == "/" and b == 0)


def well_conditioned(x):
    return math.isfinite(x) and (x == 0 or 1e-4 <= abs(x) <= 1e4)


def random_program(rng, max_uses=None):
    """Leaves and steps; with max_uses, no variable is an operand more than that many times."""
    values = [rng.choice([-1, 1]) * rng.uniform(0.1, 3.0) for _ in range(rng.randint(2, 4))]
    leaves = list(values)
    uses = [0] * len(values)
    steps = []
    n_steps = rng.randint(3, 25)
    while len(steps) < n_steps:
        op = rng.choice(list(OPS))
        operands, arithmetic = OPS[op]
        i = rng.randrange(len(values))
        if operands == "value":
            arg = rng.randrange(len(values))
        elif arithmetic == "**":
            arg = rng.choice(EXPONENTS)
        elif operands == "unary":
            arg = None
        else:
            arg = rng.randint(-5, 5) if rng.random() < 0.5 else rng.uniform(-3.0, 3.0)
        used = [i, arg] if operands == "value" else [i]
        if max_uses is not None and any(uses[v] + used.count(v) > max_uses for v in used):
            continue
        a, b = values[i], values[arg] if operands == "value" else arg
        if operands == "reflected":
            a, b = b, a
        if not acceptable(arithmetic, a, b):
            continue
        try:
            result = simulate(arithmetic, a, b)
        except (ZeroDivisionError, OverflowError):
            continue
        if well_conditioned(result):
            for v in used:
                uses[v] += 1
            values.append(result)
            uses.append(0)
            steps.append((op, i, arg))
    return {"leaves": leaves, "steps": steps}


# ---------------------------------------------------------------------------------------------------
# One pair of child runs serves all the default tests.

@pytest.fixture(scope="module")
def parity():
    rng = random.Random(20240501)
    request = {
        "examples": True,
        "programs": [random_program(rng) for _ in range(600)],
        "exact_programs": [random_program(rng, max_uses=2) for _ in range(600)],
        "structure_seed": 1337,
        "train_seed": 1337,
        "train_steps": 10,
    }
    real, fast = run_both(request, timeout=600)
    return request, real, fast


def test_the_fastgrad_run_imports_fastgrad_under_micrograds_name(parity):
    _, real, fast = parity
    assert real["package"] == "micrograd"
    assert fast["package"] == "fastgrad.micrograd"


def test_readme_example_gives_micrograds_numbers(parity):
    _, real, fast = parity
    for results in (real["readme"], fast["readme"]):
        # The values micrograd's README prints.
        assert [f"{results[k]:.4f}" for k in ("g", "a.grad", "b.grad")] == ["24.7041", "138.8338", "645.5773"]
    assert_all_close(list(real["readme"].values()), list(fast["readme"].values()), "README example")


def test_sanity_check_expression(parity):
    _, real, fast = parity
    # x = -4: z = -10, q = 40, h = 100, y = -20; dy/dx = dh/dx + (1 + x) dq/dx + q = -60 + 66 + 40.
    for results in (real["sanity"], fast["sanity"]):
        assert results == {"y": -20.0, "x.grad": 46.0}


def test_random_programs_agree_in_every_value_and_grad(parity):
    request, real, fast = parity
    assert len(request["programs"]) >= 500
    assert {op for program in request["programs"] for op, _, _ in program["steps"]} == set(OPS)
    for n, (program, expected, actual) in enumerate(zip(request["programs"], real["programs"], fast["programs"])):
        assert expected["data"] == actual["data"], f"program {n} {program}: data"      # no sum order in data
        # Grads add their terms in the order micrograd's sets happen to list children. A grad whose terms
        # cancel to a true zero (x/x, say) comes out as a few ulps of them, with either sign: there, compare
        # to the program's largest grad, against which a real error would be of order one, not 1e-12.
        floor = 1e-12 * max(abs(g) for g in expected["grad"])
        assert_all_close(expected["grad"], actual["grad"], f"program {n} {program}: grads", floor=floor)


def test_random_programs_whose_grads_have_at_most_two_terms_agree_bit_for_bit(parity):
    # With at most two terms in any grad, the order in which micrograd's sets list a node's children cannot
    # change a sum; every value and grad is then micrograd's bit for bit, / and - included.
    request, real, fast = parity
    programs = request["exact_programs"]
    assert {op for program in programs for op, _, _ in program["steps"]} == set(OPS)
    assert sum(op.endswith("/") for program in programs for op, _, _ in program["steps"]) > 500
    for n, (program, expected, actual) in enumerate(zip(programs, real["exact_programs"], fast["exact_programs"])):
        assert (expected["data"], expected["grad"]) == (actual["data"], actual["grad"]), f"program {n} {program}"


def test_models_have_micrograds_structure_and_initial_weights(parity):
    _, real, fast = parity
    assert fast["structure"]["reprs"][:2] == ["ReLUNeuron(3)", "LinearNeuron(3)"]
    for key in ("reprs", "parameter_counts", "single_output", "random_after"):
        assert fast["structure"][key] == real["structure"][key], key
    # The same draws in the same order: bit for bit the same weights, biases 0.
    assert fast["structure"]["parameters"] == real["structure"]["parameters"]


def check_training(real, fast):
    real_loss, real_accuracy = zip(*real["train"]["history"])
    fast_loss, fast_accuracy = zip(*fast["train"]["history"])
    assert_all_close(real_loss, fast_loss, "loss at each step")
    assert fast_accuracy == real_accuracy
    assert real["train"]["zeroed_grads"] == fast["train"]["zeroed_grads"] == [0.0] * 337


def test_demo_training_first_steps(parity):
    _, real, fast = parity
    assert len(fast["train"]["history"]) == 10
    check_training(real, fast)
    # The first loss is the forward pass from the same weights: no sum of grad terms, whose order micrograd's
    # sets decide, enters it yet, so it is micrograd's bit for bit. Every later step updates the weights by
    # grads of 100 terms and more, summed in another order: those losses agree to rounding (check_training).
    assert fast["train"]["history"][0] == real["train"]["history"][0]


@pytest.mark.slow
def test_demo_training_all_100_steps():
    real, fast = run_both({"train_seed": 1337, "train_steps": 100}, timeout=1800)
    check_training(real, fast)
    # The demo's point: the classifier separates the moons.
    assert fast["train"]["history"][-1][1] >= 0.95


# ---------------------------------------------------------------------------------------------------
# The modules themselves

def test_engine_is_the_compiled_value_itself():
    assert fastgrad.micrograd.engine.Value is fastgrad.Value


def test_nn_reuses_fastgrads_module():
    assert fastgrad.micrograd.nn.Module is fastgrad.nn.Module
    assert issubclass(fastgrad.micrograd.nn.MLP, fastgrad.nn.Module)


def test_layer_passes_keywords_to_its_neurons():
    layer = fastgrad.micrograd.nn.Layer(3, 2, nonlin=False)
    assert repr(layer) == "Layer of [LinearNeuron(3), LinearNeuron(3)]"
    assert all(n.b.data == 0.0 for n in layer.neurons)


def run_program(code, tmp_path):
    """(exit status, stdout, stderr) of code in a fresh interpreter, warnings made errors."""
    child = run_child(code, tmp_path, "-W", "error", timeout=120)
    return child.returncode, child.stdout, child.stderr


def test_install_as_micrograd_makes_micrograd_imports_give_fastgrad(tmp_path):
    code = """
import fastgrad
fastgrad.install_as_micrograd()
import micrograd, micrograd.engine, micrograd.nn
from micrograd.engine import Value
from micrograd.nn import MLP
from micrograd import nn
import fastgrad.micrograd
assert micrograd is fastgrad.micrograd
assert micrograd.engine is fastgrad.micrograd.engine and nn is micrograd.nn is fastgrad.micrograd.nn
assert Value is fastgrad.Value and MLP is fastgrad.micrograd.nn.MLP
print(micrograd.__file__)
"""
    returncode, stdout, stderr = run_program(code, tmp_path)
    assert returncode == 0, stderr
    assert Path(stdout.strip()).parent == Path(fastgrad.micrograd.__file__).parent


def test_install_as_micrograd_twice_is_harmless(tmp_path):
    code = """
import fastgrad
fastgrad.install_as_micrograd()
from micrograd.nn import MLP
fastgrad.install_as_micrograd()
from micrograd.nn import MLP as again
import micrograd.engine
assert again is MLP is fastgrad.micrograd.nn.MLP and micrograd.engine.Value is fastgrad.Value
"""
    returncode, _, stderr = run_program(code, tmp_path)
    assert returncode == 0, stderr


def test_install_after_real_micrograd_raises_and_leaves_it_alone(tmp_path):
    code = """
import sys
import micrograd.engine
real = dict(sys.modules)
import fastgrad
try:
    fastgrad.install_as_micrograd()
except RuntimeError as e:
    print(e)
else:
    raise SystemExit("no error")
for name in ("micrograd", "micrograd.engine"):
    assert sys.modules[name] is real[name], name
assert "micrograd.nn" not in sys.modules
from micrograd.engine import Value
assert Value.__module__ == "micrograd.engine" and Value is not fastgrad.Value
"""
    returncode, stdout, stderr = run_program(code, tmp_path)
    assert returncode == 0, stderr
    assert "micrograd is already imported" in stdout
    assert "before" in stdout
