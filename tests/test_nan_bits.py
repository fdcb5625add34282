"""NaN bits: what comes out of an op whose operands are NaNs with different signs or payloads, on every path: the
eager op, the compiled replay unfused and fused, and the batched replay.

What is promised (README, "Exact."): a NaN is a NaN on every path, and has the same bits on every path, except
where two NaNs meet in an addition or a multiplication (an op's, a derivative's, or a grad's sum). There x86
returns the first operand's NaN and C lets the compiler order a commutative op's operands, differently in each
inlined copy of a kernel; picking the NaN with a select was measured too costly for the replays (src/ops.h).
"""
import struct

import pytest

import fastgrad
from fastgrad import Value, trace
from fastgrad.engine import weighted_sum
from support import BINARY_OPS


def nan(bits):
    return struct.unpack("<d", struct.pack("<Q", bits))[0]


def bits(x):
    return struct.pack("<d", x).hex()


def nan_or_bits(x):
    return "nan" if x != x else bits(x)


# Quiet NaNs: both signs, the default payload and others. Python keeps their bits as they are.
NANS = {
    "+nan": nan(0x7FF8000000000000),
    "-nan": nan(0xFFF8000000000000),
    "+nan(1)": nan(0x7FF8000000000001),
    "-nan(2)": nan(0xFFF8000000000002),
    "+nan(dead)": nan(0x7FF800000000DEAD),
}
NUMBERS = {**NANS, "2.5": 2.5}
TWO_NANS = [(x, y) for x in NANS for y in NANS if x != y]
ONE_NAN = [(x, "2.5") for x in NANS] + [("2.5", y) for y in NANS]


def test_python_keeps_the_payloads_these_tests_use():
    assert len({bits(x) for x in NANS.values()}) == len(NANS)


@pytest.mark.parametrize("op", ["-", "/"])
@pytest.mark.parametrize("first, second", TWO_NANS)
def test_minus_and_divide_return_the_first_nan(op, first, second):
    assert bits(BINARY_OPS[op](Value(NANS[first]), Value(NANS[second])).data) == bits(NANS[first])


@pytest.mark.parametrize("op", ["+", "-", "*", "/"])
@pytest.mark.parametrize("first, second", ONE_NAN)
def test_one_nan_operand_comes_out_as_it_is(op, first, second):
    expected = NUMBERS[first] if first in NANS else NUMBERS[second]
    assert bits(BINARY_OPS[op](Value(NUMBERS[first]), Value(NUMBERS[second])).data) == bits(expected)


# Graph shapes around one op of NaN operands, each built from leaves by name. `nodes` collects the Values the
# tests compare by name: the leaves, the op's node and the root.

def alone(op, x, nodes):
    nodes["op"] = BINARY_OPS[op](x["a"], x["b"])
    return nodes["op"]


def under_a_nan_grad(op, x, nodes):
    """The op's data times c's NaN; the op's grad is c's NaN, so its derivative meets NaNs too."""
    nodes["op"] = BINARY_OPS[op](x["a"], x["b"])
    return nodes["op"] * x["c"]


def in_a_neuron_sum(op, x, nodes):
    """The op feeds a neuron's sum, which fuse=True replays as one instruction (its adds and products are
    kernels of NaN operands too), and leaves reached twice add NaN terms into their grads."""
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


def numbers(root, nodes, show):
    """show(x) of every node's data and grad: the named ones, then the rest in the order trace() sorts."""
    named = {name: (show(n.data), show(n.grad)) for name, n in nodes.items()}
    return named, sorted((show(n.data), show(n.grad)) for n in trace(root)[0])


def paths(shape, op, first, second, show):
    """The numbers eager backward() gives, and those of the replay unfused and fused, each on a fresh graph."""
    root, nodes = build(shape, op, first, second)
    root.backward()
    results = {"eager": numbers(root, nodes, show)}
    for fuse in (False, True):
        root, nodes = build(shape, op, first, second)
        graph = fastgrad.compile(root, fuse=fuse)
        graph.forward()
        graph.backward()
        results[f"fuse={fuse}"] = numbers(root, nodes, show)
    return results


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", BINARY_OPS)
@pytest.mark.parametrize("first, second", TWO_NANS + ONE_NAN)
def test_a_nan_is_a_nan_on_every_path(shape, op, first, second):
    results = paths(shape, op, first, second, nan_or_bits)
    assert results["fuse=False"] == results["eager"] and results["fuse=True"] == results["eager"]


# Where no two NaNs meet in a + or a *: one NaN operand and a number, alone; or two NaNs in a - or a / (with g = 1,
# their derivatives meet at most one NaN in a product, then divide).
PINNED = [(op, pair) for op in BINARY_OPS for pair in ONE_NAN] + [(op, pair) for op in ["-", "/"] for pair in TWO_NANS]


@pytest.mark.parametrize("op, pair", PINNED)
def test_the_same_nan_bits_on_every_path_where_no_two_nans_meet_in_a_sum_or_product(op, pair):
    results = paths("alone", op, *pair, bits)
    assert results["fuse=False"] == results["eager"] and results["fuse=True"] == results["eager"]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("op", BINARY_OPS)
def test_the_batched_replay_gives_each_sample_its_eager_nan(shape, op):
    if not hasattr(fastgrad, "BatchedGraph"):
        pytest.skip("this fastgrad has no batched replay (fastgrad.compile(root, inputs=...)) yet")
    root, nodes = build(shape, op, "+nan", "-nan")
    batched = fastgrad.compile(root, inputs=[nodes["a"], nodes["b"]])
    pairs = TWO_NANS + ONE_NAN
    outputs = batched.forward([[NUMBERS[first], NUMBERS[second]] for first, second in pairs])
    pinned = {pair for pinned_op, pair in PINNED if pinned_op == op} if shape == "alone" else set()
    for (first, second), output in zip(pairs, outputs):
        eager_root, _ = build(shape, op, first, second)
        show = bits if (first, second) in pinned else nan_or_bits
        assert show(output) == show(eager_root.data), (first, second)
    # One sample at a time: the shared leaves' grads are that sample's eager grads.
    for first, second in pairs:
        eager_root, eager_nodes = build(shape, op, first, second)
        eager_root.backward()
        for name in OTHER_LEAVES:
            nodes[name].grad = 0.0
        batched.forward([[NUMBERS[first], NUMBERS[second]]])
        batched.backward()
        for name in OTHER_LEAVES:
            assert nan_or_bits(nodes[name].grad) == nan_or_bits(eager_nodes[name].grad), (first, second, name)
