"""No leaks: memory and references come back when graphs are dropped, and no built-in node needs the cyclic GC.

Why no reference cycle can form through a node that an op made, so that it need not be tracked by the GC
(and is not): such a node holds references only to its children, which existed before it was made, and to
exact strs (its label), which hold no references at all. Following references from it therefore only reaches
nodes made before it, never the node itself: no cycle. This holds because a node's children are fixed when it
is made (`__init__` refuses to give children to a node that exists already), and a str subclass could carry a
`__dict__`, and with it anything, so labels are stored as exact strs. Nodes that can hold Python objects (made
by hand, a subclass's, and those ops make from them) are tracked: tests/test_extending.py.
"""
import copy
import gc
import os
import pickle
import sys

import pytest

import fastgrad.micrograd.nn as micrograd_nn
import fastgrad.nn
from fastgrad import Value, trace
from fastgrad.engine import rebuild_graph
from support import run_python, under_address_sanitizer, vm_rss_kib


TESTS = os.path.dirname(os.path.abspath(__file__))      # for a fresh interpreter to import this module


def numbers_printed_by(call, tmp_path, **env):
    """Run `print(*call)` in a fresh interpreter that imports this module; return the numbers it printed."""
    printed = run_python(f"""
        import sys
        sys.path.insert(0, {TESTS!r})
        import test_leaks
        print(*test_leaks.{call}, file=sys.stderr)
        print("ok")
    """, tmp_path, **env)
    return [int(number) for number in printed.strip().splitlines()[-1].split()]


# ---------------------------------------------------------------------------------------------------
# Resident memory over many rounds, measured in a fresh interpreter that runs nothing else

def mixed_graph(n):
    """A graph of about n nodes made by every op, with labels, wrapped numbers and shared leaves."""
    leaves = [Value(0.001 * i - 0.5, label=f"x{i}") for i in range(1000)]
    node = leaves[0]
    for i in range(n // 27):                     # 27 new nodes a round, wrapped numbers included
        a, b = leaves[i % 1000], leaves[(7 * i + 3) % 1000]
        node = (node * 0.5 + a).tanh() - b / 3.0
        node = node + (a * a + 1.0).log() * (-b).exp().sigmoid() - a.relu() ** 2
        node = node + (2.0 ** b) / (b ** Value(2.0) + 1.0)
    return node


def rss_after_rounds(n, rounds):
    """Resident KiB after each round of: build mixed_graph(n), backward, drop it."""
    sizes = []
    for _ in range(rounds):
        root = mixed_graph(n)
        root.backward()
        del root
        sizes.append(vm_rss_kib())
    return sizes


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from Linux's /proc")
@pytest.mark.skipif(os.path.exists("/proc/self/maps") and under_address_sanitizer(),
                    reason="AddressSanitizer keeps freed memory resident (its quarantine) by design; "
                           "the allocated-blocks test below still runs")
def test_building_and_dropping_200k_node_graphs_30_times_does_not_grow_memory(tmp_path):
    sizes = numbers_printed_by("rss_after_rounds(200_000, 30)", tmp_path)
    # The first round maps the allocator's arenas and the engine's slabs; what follows must not grow.
    growth_mib = (sizes[-1] - sizes[0]) / 1024
    assert growth_mib < 20, f"RSS grew by {growth_mib:.1f} MiB over 30 rounds: {sizes}"


def blocks_after_round_trips(n, rounds):
    """Python's allocated memory blocks after each round of: build mixed_graph(n), pickle it, copy it."""
    counts = []
    for _ in range(rounds):
        root = mixed_graph(n)
        root.backward()
        pickle.loads(pickle.dumps(root)).backward()
        copy.deepcopy(root).backward()
        copy.copy(root).backward()
        del root
        counts.append(sys.getallocatedblocks())
    return counts


def test_pickling_and_copying_graphs_does_not_keep_memory(tmp_path):
    # Counting the allocator's blocks is exact where RSS is coarse: a leak of one object per node
    # (a node, a tuple or a float of the pickled list) would be 20 rounds * n blocks here. Under the
    # debug hooks the engine leaves each node to pymalloc as a block of its own, so nodes count too.
    n = 2000
    counts = numbers_printed_by(f"blocks_after_round_trips({n}, 30)", tmp_path, PYTHONMALLOC="pymalloc_debug")
    growth = counts[-1] - counts[9]        # after ten rounds of warming caches and freelists
    assert growth < n, f"{growth} more blocks after 20 more rounds: {counts}"


# ---------------------------------------------------------------------------------------------------
# Reference counts come back to where they were

def graph_using(x, hub, label, i):
    """One of many graphs using leaf x and op node hub in every position an op can hold them."""
    kind = i % 5
    if kind == 0:
        root = (x * hub + x / 3.0 - 2.0 ** x + x ** hub).tanh()
    elif kind == 1:
        root = (hub - x) * (x + 1.0).log() + (-x).exp() + x.relu() + x.sigmoid()
    elif kind == 2:
        root = Value(1.0, (x, hub), "custom", label=label) * x ** 2 + 1.0 / x
    elif kind == 3:
        root = x * x + hub * hub
    else:
        root = sum([x * float(j) for j in range(10)], hub)
    root.label = label
    return root


def failed_ops(x, label):
    """Ops that must raise, each having been handed x (and a label) first."""
    zero = Value(0.0)
    for failing, error in [
        (lambda: x / 0, ZeroDivisionError),
        (lambda: zero ** -x, ZeroDivisionError),
        (lambda: (x - x).log(), ValueError),
        (lambda: (x * 1000.0).exp(), OverflowError),
        (lambda: x ** 10**400, OverflowError),
        (lambda: (-x) ** 0.5, ValueError),
        (lambda: x + "1", TypeError),
        (lambda: Value(1.0, (x, x, x, "1"), "+", label=label), TypeError),
        (lambda: Value(1.0, (x, "1"), "+", label=label), TypeError),
        (lambda: Value("1", (x,), "+", label=label), TypeError),
        (lambda: rebuild_graph(1, [x, (0.0, 0.0, label, 99, 0.0, 0, None, 0, -1)]), ValueError),
    ]:
        with pytest.raises(error):
            failing()


def test_a_leaf_is_referenced_as_before_after_1000_graphs_that_used_it_are_dropped():
    x = Value(2.0, label="x")
    hub = x * 3.0
    label = "".join(["a label ", "made at run time"])     # not interned: its count is its own
    before = [sys.getrefcount(obj) for obj in (x, hub, label)]
    for i in range(1000):
        root = graph_using(x, hub, label, i)
        root.backward()
        if i % 10 == 0:
            pickle.loads(pickle.dumps(root)).backward()
            copy.deepcopy(root).backward()
            copy.copy(root).backward()          # the shallow copy shares the leaves: x among them
            copy.deepcopy([x, hub, root])
        failed_ops(x, label)
    del root
    assert [sys.getrefcount(obj) for obj in (x, hub, label)] == before


def test_a_leaf_used_by_a_graph_is_referenced_once_per_use():
    # The count above can fail: it moves with every graph alive.
    x = Value(2.0)
    before = sys.getrefcount(x)
    y = x * 2.0
    z = x + y                  # x is a child of y and of z
    assert sys.getrefcount(x) == before + 2
    del y, z
    assert sys.getrefcount(x) == before


# ---------------------------------------------------------------------------------------------------
# Not tracked by the cyclic GC, and why that is safe (see the module docstring)

def test_no_node_made_by_unpickling_copying_or_wrapping_a_number_is_tracked():
    # test_deep checks the nodes that the ops make.
    a, b = Value(2.0, label="a"), Value(0.5)
    made = [a + b, a - b, a * b, a / b, -a, a**2, a**0.5, a**b, 2**a, a.tanh(), a.exp(), a.log(),
            a.relu(), a.sigmoid(), a + 1, 1 - a]
    root = sum(made, Value(0.0))
    for graph in [pickle.loads(pickle.dumps(root)), copy.deepcopy(root), copy.copy(root), root]:
        for node in trace(graph)[0]:
            assert not gc.is_tracked(node), node._op


def test_nodes_made_by_hand_come_back_tracked_from_a_pickle_and_so_do_the_nodes_above_them():
    a, b = Value(2.0, label="a"), Value(0.5)
    root = Value(1.0, (a, b), "custom") * a + Value(1.0, (), "custom")
    for graph in [pickle.loads(pickle.dumps(root)), copy.deepcopy(root), root]:
        nodes = trace(graph)[0]
        assert {n._op for n in nodes if gc.is_tracked(n)} == {"custom", "*", "+"}
        assert not any(gc.is_tracked(n) for n in nodes if n._op == "")


@pytest.mark.parametrize("nn", [
    fastgrad.nn,
    micrograd_nn,
], ids=["fastgrad.nn", "fastgrad.micrograd.nn"])
def test_model_parameters_and_outputs_are_not_tracked(nn):
    model = nn.MLP(3, [4, 4, 1])
    out = model([1.0, -2.0, 0.5])
    out.backward()
    assert model.parameters() and not any(gc.is_tracked(p) for p in model.parameters())
    assert not any(gc.is_tracked(node) for node in trace(out)[0])


def test_a_node_made_by_an_op_or_from_a_number_has_no_room_for_other_references():
    for v in (Value(1.0), Value(1.0) * 2.0):
        with pytest.raises(AttributeError):
            v.anything = v
        for attribute in ("_prev", "_backward", "_op"):
            with pytest.raises(TypeError, match="made by hand"):
                setattr(v, attribute, {v} if attribute == "_prev" else "x" if attribute == "_op" else lambda: v)
        with pytest.raises(TypeError):
            v.label = v


def test_an_existing_node_cannot_be_given_children():
    # The only way to a cycle: make an old node point at a newer one (here, at its own parent).
    old = Value(1.0)
    newer = old * 2.0
    with pytest.raises(TypeError):
        Value.__init__(old, 1.0, (newer,), "+")
    assert old._prev == set()


class Tag(str):
    """A str subclass: its instances have a __dict__ and can hold anything, a node included."""


def test_a_str_subclass_label_is_stored_as_an_exact_str():
    tag = Tag("weight")
    v = Value(1.0, label=tag)
    tag.node = v                    # were tag stored, v -> tag -> v would be a cycle the GC cannot see
    tag_refs = sys.getrefcount(tag)
    v.label = tag
    assert type(v.label) is str and v.label == "weight"
    assert sys.getrefcount(tag) == tag_refs
    assert type(Value(1.0, label=tag).label) is str


def test_a_str_subclass_op_is_stored_as_an_exact_str():
    a = Value(1.0)
    v = Value(2.0, (a,), Tag("custom"))
    assert type(v._op) is str and v._op == "custom"


def test_a_str_subclass_in_a_pickle_becomes_an_exact_str():
    a = Value(1.0)
    rebuilt = rebuild_graph(1, [a, (2.0, 0.0, Tag("t"), 1, 0.0, 0, Tag("custom"), 0, -1)])
    assert type(rebuilt.label) is str and type(rebuilt._op) is str
    assert (rebuilt.label, rebuilt._op, rebuilt._prev) == ("t", "custom", {a})
