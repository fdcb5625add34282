"""Pickle and copy: a Value pickles as its whole graph (micrograd's nodes cannot: they hold lambdas).

A node's graph is written flat, children first, so a deep chain does not recurse; its leaves are written
as themselves, so that in one pickle a leaf, or a model's parameter, stays one object wherever it is used.
"""
import copy
import math
import pickle

import pytest

import fastgrad.micrograd.nn as micrograd_nn
import fastgrad.nn
from fastgrad import Value, trace
from fastgrad.engine import OPS, rebuild_graph
from support import run_python

PROTOCOLS = range(pickle.HIGHEST_PROTOCOL + 1)


def pickled(obj, protocol=pickle.HIGHEST_PROTOCOL):
    return pickle.loads(pickle.dumps(obj, protocol=protocol))


ROUND_TRIPS = [pytest.param(lambda obj, p=p: pickled(obj, p), id=f"pickle protocol {p}") for p in PROTOCOLS]
ROUND_TRIPS.append(pytest.param(copy.deepcopy, id="deepcopy"))


def bits(x):
    """A float's exact value as text: pickle must keep every bit (a nan is any nan)."""
    return "nan" if math.isnan(x) else x.hex()


def graph_with_every_kind_of_node():
    """A graph with every op, shared leaves, wrapped numbers, a hand-made node and awkward floats; every
    node labelled uniquely so that a copy's nodes can be matched with the original's."""
    a, b = Value(1.5, label="a"), Value(-0.0, label="b")
    c, tiny = Value(0.25, label="c"), Value(5e-324, label="tiny")
    custom = Value(2.0, (a, c), "my op", label="custom")
    terms = [a + b, a - c, a * c, a / c, -a, a**2, a**2.0, a**-1, c**0.5, a**c, 2**c, a.tanh(), a.exp(),
             c.log(), b.relu(), a.sigmoid(), a + 1, 1 - a, a * a, custom * a, tiny * 1e308, Value(1e308) * 10]
    root = sum(terms, Value(0.0))
    for i, node in enumerate(sorted(trace(root)[0], key=lambda n: (n.label, n._op, bits(n.data)))):
        if not node.label:
            node.label = f"n{i}"
    root.backward()
    a.grad = math.nan          # grads are kept as they are, whatever they are
    return root


def describe(root):
    """Everything about a graph but the identity of its nodes, by label."""
    return {n.label: (bits(n.data), bits(n.grad), n._op, sorted(child.label for child in n._prev))
            for n in trace(root)[0]}


def zero_grads(root):
    for node in trace(root)[0]:
        node.grad = 0.0


@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
def test_a_graph_survives_with_its_data_grads_labels_ops_and_structure(round_trip):
    root = graph_with_every_kind_of_node()
    described = describe(root)
    assert len(described) == len(trace(root)[0])           # the labels do identify the nodes
    twin = round_trip(root)
    assert describe(twin) == described
    assert not set(map(id, trace(twin)[0])) & set(map(id, trace(root)[0]))   # a copy, not a view

    # backward on the copy gives what it gives on the original
    zero_grads(root)
    zero_grads(twin)
    root.backward()
    twin.backward()
    assert describe(twin) == describe(root)


@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
def test_leaves_shared_by_several_objects_stay_one_object(round_trip):
    a, b = Value(2.0, label="a"), Value(3.0, label="b")
    first, second = a * b + a, (b - a).tanh()
    twin = round_trip({"roots": [first, second], "leaves": [a, b], "first again": first})
    a2, b2 = twin["leaves"]
    for root in twin["roots"]:
        leaves = {n for n in trace(root)[0] if not n._prev}
        assert leaves == {a2, b2}                        # the very objects, in both graphs
    assert twin["first again"] is twin["roots"][0]      # and a node pickled twice is one
    assert a2 is not a and a2.label == "a"

    twin["roots"][0].backward()
    assert (a2.grad, b2.grad) == (4.0, 2.0)             # d(ab + a)/da = b + 1, d/db = a


@pytest.mark.parametrize("round_trip", ROUND_TRIPS[-2:])
def test_an_inner_node_shared_by_two_pickled_roots_is_copied_into_each_but_its_leaves_are_shared(round_trip):
    # As the README says: each pickled root carries its own inner nodes (pickling them as objects would
    # recurse as deep as the graph); leaves, and so a model's parameters, stay one object.
    a = Value(2.0)
    hidden = a * 3.0
    loss = hidden.tanh()
    hidden2, loss2 = round_trip([hidden, loss])
    (inner,) = loss2._prev
    assert inner is not hidden2 and (inner.data, inner._op) == (hidden2.data, hidden2._op) == (6.0, "*")
    leaf = {n for n in hidden2._prev if n.data == 2.0}
    assert leaf and leaf <= inner._prev                   # the same leaf object under both copies
    loss2.backward()
    hidden2.backward()
    (a2,) = leaf
    assert a2.grad == 3.0 * (1.0 - math.tanh(6.0) ** 2) + 3.0


@pytest.mark.parametrize("nn", [
    fastgrad.nn,
    micrograd_nn,
], ids=["fastgrad.nn", "fastgrad.micrograd.nn"])
@pytest.mark.parametrize("round_trip", ROUND_TRIPS)
def test_a_model_and_its_loss_survive_together(nn, round_trip):
    model = nn.MLP(3, [4, 4, 1])
    x = [2.0, -1.0, 0.5]
    loss = (model(x) - 1.0) ** 2
    loss.backward()
    model2, loss2 = round_trip((model, loss))

    assert repr(model2) == repr(model)
    params, params2 = model.parameters(), model2.parameters()
    assert [(bits(p.data), bits(p.grad)) for p in params2] == [(bits(p.data), bits(p.grad)) for p in params]
    assert not set(map(id, params2)) & set(map(id, params))
    # The loss's graph uses the copied model's parameters themselves: training can go on from the copy.
    assert set(params2) <= set(trace(loss2)[0])
    assert bits(loss2.data) == bits(loss.data)

    for m in (model, model2):
        m.zero_grad()
        out = (m(x) - 1.0) ** 2
        out.backward()
    assert bits(model2(x).data) == bits(model(x).data)
    assert [bits(p.grad) for p in params2] == [bits(p.grad) for p in params]


def test_copy_shares_the_leaves_and_copies_the_rest():
    a, b = Value(2.0, label="a"), Value(3.0, label="b")
    root = (a * b + a).tanh()
    shallow = copy.copy(root)
    assert shallow is not root
    assert {n for n in trace(shallow)[0] if not n._prev} == {a, b}
    assert not ({n for n in trace(shallow)[0] if n._prev} & {n for n in trace(root)[0] if n._prev})

    root.backward()
    once = (a.grad, b.grad)
    shallow.backward()                    # adds into the same leaves
    assert (a.grad, b.grad) == (2 * once[0], 2 * once[1])


def test_a_leaf_copied_alone_is_a_new_leaf():
    a = Value(2.0, label="a")
    a.grad = 0.5
    for twin in (copy.copy(a), copy.deepcopy(a), pickled(a, 0), pickled(a)):
        assert twin is not a
        assert (twin.data, twin.grad, twin.label, twin._op, twin._prev) == (2.0, 0.5, "a", "", set())


def long_chain(length):
    x = Value(0.5, label="x")
    v = x
    for _ in range(length // 3):          # three nodes a step: the sum, the product, the wrapped 0.5
        v = (v + x) * 0.5
    return x, v


@pytest.mark.parametrize("round_trip", [ROUND_TRIPS[0], ROUND_TRIPS[-2], ROUND_TRIPS[-1]])
def test_a_100k_node_chain_pickles_without_recursion(round_trip):
    x, root = long_chain(100_000)
    twin = round_trip(root)
    assert bits(twin.data) == bits(root.data)
    root.backward()
    twin.backward()
    (x2,) = {n for n in trace(twin)[0] if not n._prev and n.label == "x"}
    assert bits(x2.grad) == bits(x.grad) and x.grad > 0


# ---------------------------------------------------------------------------------------------------
# rebuild_graph, given what no pickle of fastgrad writes, refuses it: each case runs in a fresh
# interpreter so that a crash fails the test instead of ending the run.

CODES = {op.name: op.code for op in OPS}
ADD, NEG, CUSTOM = CODES["ADD"], CODES["NEG"], CODES["CUSTOM"]
LEAF = (1.0, 0.0, "", CODES["LEAF"], 0.0, 0, None, -1, -1)   # data, grad, label, op, exponent, is-int, custom op, a, b


def op(code, a=-1, b=-1, custom_op=None):
    return (1.0, 0.0, "", code, 0.0, 0, custom_op, a, b)


MALFORMED = {                          # each must raise ValueError
    "nothing": [],
    "an unknown op code": [op(99)],
    "a negative op code": [op(-1)],
    "a huge op code": [op(10**30)],
    "a child after its parent": [LEAF, op(ADD, 0, 2), LEAF],
    "a node its own child": [LEAF, op(ADD, 0, 1)],
    "a child index below -1": [LEAF, op(ADD, 0, -2)],
    "a binary op without children": [op(ADD)],
    "a binary op with one child": [LEAF, op(ADD, 0)],
    "a unary op with two children": [LEAF, op(NEG, 0, 0)],
    "a unary op without a child": [op(NEG)],
    "a leaf with a child": [LEAF, op(0, 0)],
    "only a second child": [LEAF, op(NEG, -1, 0)],
    "a hand-made op without its name": [LEAF, op(CUSTOM, 0)],
    "an entry too short": [LEAF[:-1]],
    "an entry too long": [LEAF + (0,)],
}
WRONGLY_TYPED = {                      # each must raise an error, any ordinary one
    "an entry that is not a tuple": [None],
    "data that is a str": [("1.0",) + LEAF[1:]],
    "a label that is not a str": [LEAF[:2] + (5,) + LEAF[3:]],
    "an op name that is not a str": [LEAF, op(CUSTOM, 0, custom_op=5)],
    "a float op code": [op(2.5)],
    "a float child index": [LEAF, op(NEG, 0.0)],
    "an is-int flag out of range": [LEAF[:5] + (300,) + LEAF[6:]],
}

# Entries that no pickle.loads of a real pickle gives, but a hand-made payload can: an int subclass whose
# comparisons lie (orderings say yes, equality says no), and exponents that are not finite integers but
# are flagged as given as an int. Written as source for the fresh interpreter, where Liar is defined.
LIAR_CODE, LIAR_CUSTOM = f"Liar({len(OPS) + 90})", f"Liar({CUSTOM})"
LYING_INTS = {
    "an op code past the table": f"[{LEAF!r}, (1.0, 0.0, '', {LIAR_CODE}, 0.0, 0, None, 0, 0)]",
    "a negative op code": f"[{LEAF!r}, (1.0, 0.0, '', Liar(-3), 0.0, 0, None, 0, -1)]",
    "a hand-made op without its name": f"[{LEAF!r}, (1.0, 0.0, '', {LIAR_CUSTOM}, 0.0, 0, None, 0, -1)]",
    "a child after its parent": f"[{LEAF!r}, (1.0, 0.0, '', {ADD}, 0.0, 0, None, 0, Liar(5))]",
    "a child index below -1": f"[{LEAF!r}, (1.0, 0.0, '', {NEG}, 0.0, 0, None, Liar(-7), -1)]",
    "an is-int flag out of range": f"[{LEAF!r}, (1.0, 0.0, '', {CODES['POW_CONST']}, 2.0, Liar(200), None, 0, -1)]",
}
NOT_INT_EXPONENTS = {
    "nan": f"[{LEAF!r}, (1.0, 0.0, '', {CODES['POW_CONST']}, float('nan'), 1, None, 0, -1)]",
    "inf": f"[{LEAF!r}, (1.0, 0.0, '', {CODES['POW_CONST']}, float('inf'), 1, None, 0, -1)]",
    "-inf": f"[{LEAF!r}, (1.0, 0.0, '', {CODES['POW_CONST']}, float('-inf'), 1, None, 0, -1)]",
    "2.5": f"[{LEAF!r}, (1.0, 0.0, '', {CODES['POW_CONST']}, 2.5, 1, None, 0, -1)]",
    "an int flag on another op": f"[{LEAF!r}, (1.0, 0.0, '', {NEG}, 2.0, 1, None, 0, -1)]",
}

REBUILD = """
    import pickle, sys
    from fastgrad.engine import rebuild_graph

    class Liar(int):
        __lt__ = __le__ = __gt__ = __ge__ = __ne__ = lambda self, other: True
        __eq__ = lambda self, other: False
        __hash__ = int.__hash__

    try:
        node = rebuild_graph({format}, {entries})
    except ({errors}) as error:
        print("refused:", type(error).__name__, error, file=sys.stderr)
    else:                 # what is accepted must be usable
        node._op, node._prev, node.label, repr(node)
        node.backward()
        node._backward()
        pickle.loads(pickle.dumps(node))
        print("accepted", file=sys.stderr)
    print("ok")
"""


def refusal(format, entries, errors, tmp_path):
    """How a fresh interpreter takes rebuild_graph(format, entries): entries a list, or its source as a str."""
    source = entries if isinstance(entries, str) else repr(entries)
    return run_python(REBUILD.format(format=format, entries=source, errors=errors), tmp_path,
                      PYTHONFAULTHANDLER="1").strip().splitlines()[-1]


@pytest.mark.parametrize("entries", list(MALFORMED.values()), ids=list(MALFORMED))
def test_a_malformed_graph_is_refused_with_value_error(entries, tmp_path):
    assert refusal(1, entries, "ValueError, TypeError, IndexError", tmp_path).startswith("refused: ValueError")


@pytest.mark.parametrize("entries", list(WRONGLY_TYPED.values()), ids=list(WRONGLY_TYPED))
def test_a_wrongly_typed_field_is_refused(entries, tmp_path):
    assert refusal(1, entries, "ValueError, TypeError, OverflowError", tmp_path).startswith("refused:")


@pytest.mark.parametrize("entries", list(LYING_INTS.values()) + list(NOT_INT_EXPONENTS.values()),
                         ids=[f"lying int: {case}" for case in LYING_INTS] + [f"exponent flagged as int: {case}"
                                                                               for case in NOT_INT_EXPONENTS])
def test_each_number_is_checked_as_the_number_it_is(entries, tmp_path):
    """An int whose comparisons lie is checked as the value it has; an exponent flagged as given as an int
    must be a finite integer."""
    assert refusal(1, entries, "ValueError", tmp_path).startswith("refused: ValueError")


@pytest.mark.parametrize("exponent, spelled", [(math.nan, "**nan"), (math.inf, "**inf"), (2.5, "**2.5"),
                                               (3.0, "**3"), (-2.0, "**-2")])
def test_an_exponent_is_spelled_as_an_int_only_when_it_is_one(exponent, spelled):
    entries = [LEAF, (1.0, 0.0, "", CODES["POW_CONST"], exponent, int(math.isfinite(exponent) and
                                                                        exponent == int(exponent)), None, 0, -1)]
    node = pickle.loads(pickle.dumps(rebuild_graph(1, entries)))
    assert node._op == spelled


def test_another_format_is_refused(tmp_path):
    assert refusal(2, [LEAF], "ValueError", tmp_path).startswith("refused: ValueError")


def test_the_op_table_names_the_codes_nodes_pickle_with():
    a = Value(1.0)
    for node, name in [(a + a, "ADD"), (-a, "NEG"), (Value(1.0, (a,), "f"), "CUSTOM"), (a, "LEAF")]:
        entries = node.__reduce__()[1][1]
        assert OPS[entries[-1][3]].name == name
    assert len(LEAF) == len((a + a).__reduce__()[1][1][-1])
