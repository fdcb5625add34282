"""NaN bits: which NaN comes out of an op whose operands are NaNs with different signs or payloads, and that it
is the same NaN on every path: the eager op, the compiled replay unfused and fused, and the batched replay.

The hardware does not decide it alone: x86 returns the first operand's NaN, and C lets the compiler put a
commutative op's operands in either order, so the same product inlined in two places gave two NaNs. The forward
kernels (src/ops.h) pin it: the result is the NaN operand, the first one if both are NaNs, so every node's data
has the same bits on every path. Grads where two NaNs meet are NaNs on every path, their bits not pinned (README).
"""
import pathlib
import shutil
import struct
import subprocess

import pytest

import fastgrad
from fastgrad import Value, trace
from fastgrad.engine import weighted_sum
from support import BINARY_OPS


def nan(bits):
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def bits(x):
    return struct.pack("<d", x).hex()


def bits_or_nan(x):
    """A grad's bits, any NaN as 'nan': where two NaNs meet in a grad, which one comes out is not pinned."""
    return "nan" if x != x else bits(x)


# Quiet NaNs: both signs, the default payload and others. Python keeps their bits as they are.
NANS = {
    "+nan": nan(0x7FF8000000000000),
    "-nan": nan(0xFFF8000000000000),
    "+nan(1)": nan(0x7FF8000000000001),
    "-nan(2)": nan(0xFFF8000000000002),
    "+nan(dead)": nan(0x7FF800000000DEAD),
}
PAIRS = [(x, y) for x in NANS for y in NANS if x != y] + [("+nan(1)", "2.5"), ("2.5", "-nan(2)")]
NUMBERS = {**NANS, "2.5": 2.5}


def test_python_keeps_the_payloads_these_tests_use():
    assert len({bits(x) for x in NANS.values()}) == len(NANS)


@pytest.mark.parametrize("op", BINARY_OPS)
@pytest.mark.parametrize("first, second", PAIRS)
def test_the_first_nan_operand_comes_out_as_it_is(op, first, second):
    a, b = NUMBERS[first], NUMBERS[second]
    expected = a if first in NANS else b
    assert bits(BINARY_OPS[op](Value(a), Value(b)).data) == bits(expected)


# Graph shapes around one op of two NaN operands, each built from leaves by name. `nodes` collects every Value
# the test compares: the leaves, the op's node and the root.

def alone(op, x, nodes):
    nodes["op"] = BINARY_OPS[op](x["a"], x["b"])
    return nodes["op"]


def under_a_nan_grad(op, x, nodes):
    """The op's NaN data times c's NaN; the op's grad is c's NaN, so its derivative meets two NaNs."""
    nodes["op"] = BINARY_OPS[op](x["a"], x["b"])
    return nodes["op"] * x["c"]


def in_a_neuron_sum(op, x, nodes):
    """The op feeds a neuron's sum, which fuse=True replays as one DOT instruction (its adds and products are
    kernels of two NaN operands too), and a leaf reached twice adds two NaN grads."""
    nodes["op"] = BINARY_OPS[op](x["a"], x["b"])
    return weighted_sum([x["c"], nodes["op"], x["a"]], [nodes["op"], x["d"], x["c"]], x["b"])


SHAPES = {"alone": alone, "under a nan grad": under_a_nan_grad, "in a neuron sum": in_a_neuron_sum}
OTHER_LEAVES = {"c": NANS["-nan(2)"], "d": NANS["+nan(dead)"]}


def build(shape, op, first, second):
    x = {"a": Value(NUMBERS[first]), "b": Value(NUMBERS[second])}
    x.update((name, Value(value)) for name, value in OTHER_LEAVES.items())
    nodes = dict(x)
    root = SHAPES[shape](op, x, nodes)
    nodes["root"] = root
    return root, nodes


def numbers(root, nodes):
    """The bits of every node's data and grad: the named ones, then the rest in the order trace() sorts."""
    named = {name: (bits(n.data), bits_or_nan(n.grad)) for name, n in nodes.items()}
    return named, sorted((bits(n.data), bits_or_nan(n.grad)) for n in trace(root)[0])


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", BINARY_OPS)
@pytest.mark.parametrize("first, second", PAIRS)
def test_eager_and_the_replay_fused_or_not_give_the_same_nan_bits(shape, op, first, second):
    root, nodes = build(shape, op, first, second)
    root.backward()
    eager = numbers(root, nodes)
    for fuse in (False, True):
        root, nodes = build(shape, op, first, second)
        graph = fastgrad.compile(root, fuse=fuse)
        graph.forward()
        graph.backward()
        assert numbers(root, nodes) == eager, f"fuse={fuse}"


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", BINARY_OPS)
def test_the_batched_replay_gives_each_sample_its_eager_nan_bits(shape, op):
    if not hasattr(fastgrad, "BatchedGraph"):
        pytest.skip("this fastgrad has no batched replay (fastgrad.compile(root, inputs=...)) yet")
    root, nodes = build(shape, op, "+nan", "-nan")
    batched = fastgrad.compile(root, inputs=[nodes["a"], nodes["b"]])
    rows = [[NUMBERS[first], NUMBERS[second]] for first, second in PAIRS]
    outputs = batched.forward(rows)
    for (first, second), output in zip(PAIRS, outputs):
        eager_root, _ = build(shape, op, first, second)
        assert bits(output) == bits(eager_root.data), (first, second)
    # One sample: the shared leaves' grads are that sample's eager grads.
    for first, second in PAIRS:
        eager_root, eager_nodes = build(shape, op, first, second)
        eager_root.backward()
        for name in OTHER_LEAVES:
            nodes[name].grad = 0.0
        batched.forward([[NUMBERS[first], NUMBERS[second]]])
        batched.backward()
        for name in OTHER_LEAVES:
            assert bits_or_nan(nodes[name].grad) == bits_or_nan(eager_nodes[name].grad), (first, second, name)


# ---------------------------------------------------------------------------------------------------
# The pinning costs no SIMD: a lane loop over a kernel (one sample per lane, as the batched replay runs them)
# still vectorises. A check of the header in this checkout with GCC's own report, skipped without GCC.
# (A select written the other way round, or arithmetic inside it, is control flow GCC does not vectorise.)

LANE_LOOPS = r"""
#include "ops.h"
#define FORWARD(op) void op##_forward(const double *restrict a, const double *restrict b, double *restrict out, \
                                      int n) { \
    for (int l = 0; l < n; l++) fg_##op##_forward(a[l], b[l], 0.0, &out[l]); }
#define BACKWARD(op) void op##_backward(const double *restrict g, const double *restrict out, \
        const double *restrict a, const double *restrict b, double *restrict ga, double *restrict gb, int n) { \
    for (int l = 0; l < n; l++) { \
        double da = 0.0, db = 0.0; \
        fg_##op##_derivative(g[l], out[l], a[l], b[l], 0.0, &da, &db); \
        ga[l] += da; \
        gb[l] += db; } }
"""
# The ops whose kernels have no libm call (those run per lane anyway) and no early return (div's zero check).
VECTOR_FORWARD = ["add", "sub", "mul", "neg", "relu"]
VECTOR_BACKWARD = ["add", "sub", "mul", "div", "neg", "tanh", "exp", "relu", "sigmoid"]


def test_lane_loops_over_the_kernels_still_vectorise(tmp_path):
    source = pathlib.Path(__file__).resolve().parent.parent / "fastgrad" / "src"
    gcc = shutil.which("gcc")
    if gcc is None or not (source / "ops.h").is_file():
        pytest.skip("needs GCC and fastgrad's source tree (fastgrad/src/ops.h)")
    loops = [f"FORWARD({op})" for op in VECTOR_FORWARD] + [f"BACKWARD({op})" for op in VECTOR_BACKWARD]
    (tmp_path / "lanes.c").write_text(LANE_LOOPS + "\n".join(loops) + "\n")
    first_line = LANE_LOOPS.count("\n") + 1
    # setup.py's flags that matter here: -O3 (as the lane loops are built) and no FMA contraction
    report = subprocess.run([gcc, "-O3", "-ffp-contract=off", "-fopt-info-vec-optimized", f"-I{source}", "-c",
                             "lanes.c", "-o", "lanes.o"], cwd=tmp_path, capture_output=True, text=True, check=True)
    vectorised = {int(line.split(":")[1]) for line in report.stderr.splitlines() if "loop vectorized" in line}
    assert [loop for i, loop in enumerate(loops) if first_line + i not in vectorised] == []
