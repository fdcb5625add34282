"""Wide graphs: one node used by a million others (fan-out), and a million nodes summed (fan-in).

Each builds, backpropagates and frees without error, with grads checked against closed forms. Small
integer data keep every sum exact, so the closed forms are compared exactly. The same runs again in a
fresh interpreter under PYTHONMALLOC=debug, whose guard bytes catch a write outside an allocation and
whose freed-memory pattern turns a use after free into a wrong number or a crash.
"""
import os
import sys

import pytest

from fastgrad import Value
from support import run_python, tree_sum

MILLION = 1_000_000
TESTS = os.path.dirname(os.path.abspath(__file__))      # for the fresh interpreter to import this module


def fan_out(n):
    """hub = 2x is used by n products hub * w_i, summed: d/dx = 2 sum(w), d/dhub = sum(w), d/dw_i = 2x."""
    x = Value(1.5)
    hub = x * 2.0
    weights = [Value(float(i % 7 - 3)) for i in range(n)]
    hub_refs, weight_refs = sys.getrefcount(hub), [sys.getrefcount(w) for w in weights]
    root = sum([hub * w for w in weights])

    total = sum(i % 7 - 3 for i in range(n))     # in Python ints
    assert root.data == 3.0 * total
    assert sys.getrefcount(hub) == hub_refs + n  # one reference from each product
    root.backward()
    assert hub.grad == total
    assert x.grad == 2.0 * total
    assert all(w.grad == 3.0 for w in weights)

    del root                                     # frees the n products and the n-node chain of sums
    assert sys.getrefcount(hub) == hub_refs
    assert [sys.getrefcount(w) for w in weights] == weight_refs


def fan_in(n):
    """n leaves, squared, summed by tree_sum: d/dx_i = 2 x_i."""
    leaves = [Value(float(i % 5 - 2)) for i in range(n)]
    leaf_refs = [sys.getrefcount(x) for x in leaves]
    root = tree_sum([x * x for x in leaves])

    assert root.data == sum((i % 5 - 2) ** 2 for i in range(n))
    root.backward()
    assert all(x.grad == 2.0 * x.data for x in leaves)

    del root
    assert [sys.getrefcount(x) for x in leaves] == leaf_refs


def test_one_node_used_by_a_million_others():
    fan_out(MILLION)


def test_a_million_nodes_summed():
    fan_in(MILLION)


@pytest.mark.parametrize("n", [
    100_000,
    pytest.param(MILLION, marks=pytest.mark.slow),
])
def test_wide_graphs_under_the_debug_allocator(n, tmp_path):
    run_python(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        from test_huge import fan_in, fan_out
        fan_out({n})
        fan_in({n})
        print("ok")
    """, tmp_path, PYTHONMALLOC="debug", PYTHONFAULTHANDLER="1")
