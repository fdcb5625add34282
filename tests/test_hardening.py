"""What an adversarial pass found: freeing when memory has run out, a deallocator with an exception on its
way up, re-initialising a node that has children, exponents that are not what they claim, numpy arrays.

The memory tests run in a fresh interpreter under a limit on its address space (resource.setrlimit), so
that running out of memory there does not disturb this one; again under PYTHONMALLOC=debug, where every
node is a block of its own that the debug hooks check.
"""
import math
import operator
import sys

import micrograd.engine
import numpy as np
import pytest

from fastgrad import Value, draw_dot, trace
from support import run_python, under_address_sanitizer

MEMORY_LIMIT = """
    import resource, sys
    from fastgrad import Value

    def vm_size_bytes():
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmSize:"):
                    return int(line.split()[1]) * 1024

    limit = vm_size_bytes() + ({mib} << 20)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
"""

# The chain `total = Value(1.0) + total` leans right: the rest of the chain is each node's second child, so
# a freeing loop that keeps a list of pending nodes needs one more entry per level (a recurrence such as
# h = 0.5 * h + x has the same shape). It is built until memory runs out, then dropped.
DROP_AFTER_MEMORY_ERROR = MEMORY_LIMIT.format(mib=300) + """
    total = Value(0.0)
    levels = 0
    try:
        while True:
            total = Value(1.0) + total
            levels += 1
    except MemoryError:
        pass
    assert levels > 100_000, levels
    del total                      # a million levels or so: freed without allocating, without recursing
    print(levels, "levels freed", file=sys.stderr)
    print("ok")
"""

# A graph dropped as the temporary of a failing expression dies while the TypeError is on its way up, with
# no memory left: its deallocator must not touch the error state (no MemoryError of its own, no clearing).
DROP_WHILE_AN_EXCEPTION_PROPAGATES = MEMORY_LIMIT.format(mib=200) + """
    ballast = []

    def a_wide_graph_and_no_memory_left():
        nodes = [Value(1.0) * 2.0 for _ in range(200_000)]
        while len(nodes) > 1:                    # a balanced tree of sums: wide, 18 levels deep
            nodes = [nodes[i] + nodes[i + 1] for i in range(0, len(nodes) - 1, 2)] + nodes[len(nodes) // 2 * 2:]
        size = 1 << 20
        while size >= 64:                        # then take every byte left, down to small blocks
            try:
                ballast.append(bytearray(size))
            except MemoryError:
                size //= 2
        return nodes[0]

    try:
        a_wide_graph_and_no_memory_left() @ 2
    except TypeError as error:
        ballast.clear()
        assert "unsupported operand" in str(error), repr(error)
    print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="limits the address space, read from /proc")
@pytest.mark.skipif(sys.platform.startswith("linux") and under_address_sanitizer(),
                    reason="AddressSanitizer reserves its heap up front, so a limit on the address space no longer "
                           "stops small allocations, and a large one that fails makes its report hang")
@pytest.mark.parametrize("allocator", ["pymalloc", "debug"])
@pytest.mark.parametrize("script", [DROP_AFTER_MEMORY_ERROR, DROP_WHILE_AN_EXCEPTION_PROPAGATES],
                         ids=["deep graph dropped after MemoryError", "graph dropped while an exception propagates"])
def test_freeing_needs_no_memory(script, allocator, tmp_path):
    run_python(script, tmp_path, PYTHONMALLOC=allocator, PYTHONFAULTHANDLER="1")


def test_a_node_with_children_cannot_be_given_new_ones():
    a, b, c = Value(2.0), Value(3.0), Value(4.0)
    refs = sys.getrefcount(a)
    args = (a * b, 5.0, (c,), "f")           # the product is held by this tuple alone
    with pytest.raises(TypeError, match="children are fixed"):
        Value.__init__(*args)
    product = args[0]
    assert (product.data, product._op, product._prev) == (6.0, "*", {a, b})
    del args, product
    assert sys.getrefcount(a) == refs         # the product, and its reference to a, are gone
    with pytest.raises(TypeError, match="children are fixed"):
        Value.__init__(Value(1.0, (a,), "f"), 1.0, (), "g")     # an op, even without children


def test_a_leaf_made_from_a_number_cannot_be_made_a_hand_made_node_later():
    # It has no GC header, so it may not hold anything that could lead back to it.
    a = Value(2.0)
    args = (Value(7.0), 1.5, (a,), "f")
    with pytest.raises(TypeError, match=r"Value\(data, children, op\)"):
        Value.__init__(*args)
    assert (args[0].data, args[0]._op, args[0]._prev) == (7.0, "", set())


class NanInt(int):
    """An int that says it is nan as a float."""

    def __float__(self):
        return math.nan


@pytest.mark.parametrize("exponent, spelled", [(NanInt(2), "**nan"), (2, "**2"), (2.0, "**2.0"), (True, "**1")])
def test_an_exponent_is_spelled_as_an_int_only_if_it_is_a_finite_one(exponent, spelled):
    node = Value(3.0) ** exponent
    assert node._op == spelled
    assert "**" in draw_dot(node).source


# ---------------------------------------------------------------------------------------------------
# numpy arrays: element by element, as micrograd (which defines no __array_ufunc__) gets them from numpy

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}


def arrays(value_cls):
    return {"of Values": np.array([value_cls(1.0), value_cls(-3.0), value_cls(0.5)], dtype=object),
            "of floats": np.array([1.0, -3.0, 0.5])}


def numbers_of(result):
    """The data of every element: micrograd's `v op array` is one Value whose data is an array."""
    if isinstance(result, micrograd.engine.Value):
        result = result.data
    return [float(element.data if isinstance(element, (Value, micrograd.engine.Value)) else element)
            for element in result]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("kind", ["of Values", "of floats"])
@pytest.mark.parametrize("order", ["array op v", "v op array"])
def test_numpy_arrays_give_micrograds_numbers(op, kind, order):
    results = []
    for value_cls in (Value, micrograd.engine.Value):
        v, array = value_cls(2.0), arrays(value_cls)[kind]
        results.append(OPS[op](array, v) if order == "array op v" else OPS[op](v, array))
    ours, theirs = results
    assert isinstance(ours, np.ndarray) and ours.dtype == object and ours.shape == (3,)
    assert all(type(element) is Value for element in ours)
    assert numbers_of(ours) == numbers_of(theirs)


@pytest.mark.parametrize("op", OPS)
def test_grads_through_an_array_op_are_micrograds(op):
    grads = []
    for value_cls in (Value, micrograd.engine.Value):
        v, array = value_cls(2.0), arrays(value_cls)["of Values"]
        total = sum(OPS[op](array, v) * array)          # array op v, then element by element again
        total.backward()
        grads.append([v.grad] + [element.grad for element in array])
    assert grads[0] == pytest.approx(grads[1], rel=1e-15)


def test_arrays_broadcast_and_multiply_as_matrices():
    v = Value(2.0)
    matrix = np.array([[1.0, 2.0], [3.0, 4.0]])
    assert [[x.data for x in row] for row in matrix * v] == [[2.0, 4.0], [6.0, 8.0]]
    product = matrix @ np.array([v, v * 2], dtype=object)
    assert [x.data for x in product] == [10.0, 22.0]
    assert sum(product).backward() is None and v.grad == (1 + 3) + 2 * (2 + 4)


def test_numpy_scalars_and_0d_arrays_still_give_a_value():
    v = Value(2.0)
    for number in (np.float64(3.0), np.int64(3), np.array(3.0)):
        assert type(number * v) is Value and (number * v).data == 6.0
        assert type(v ** number) is Value and (v ** number).data == 8.0


def test_v_op_array_builds_one_node_per_element():
    v = Value(2.0)
    result = v * np.array([1.0, 2.0])
    for element in result:
        assert element._op == "*" and v in element._prev
    # v, the array's two numbers as leaves and their two products; sum's 0 as a leaf and two sums
    assert len(trace(sum(result))[0]) == 1 + 2 * 2 + 3
