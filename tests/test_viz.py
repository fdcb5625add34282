"""fastgrad.viz: trace against the seed's trace (reference.py), draw_dot rendered by the real `dot` binary,
and cut above max_nodes: checked against distances and hidden parts counted here, breadth first."""
import random
import re
import subprocess
import warnings
import xml.etree.ElementTree as ET
from collections import deque

import graphviz
import pytest

from fastgrad import MLP, Value, draw_dot, reference, trace
from fastgrad.viz import DEFAULT_MAX_NODES
from support import run_python

SVG = "{http://www.w3.org/2000/svg}"


def labelled_graph():
    """The lecture's neuron plus the ops it lacks, with a node used twice (a DAG) and an unlabelled leaf."""
    x1, x2 = Value(2.0, label="x1"), Value(0.0, label="x2")
    w1, w2 = Value(-3.0, label="w1"), Value(1.0, label="w2")
    b = Value(6.8813735870195432, label="b")
    n = x1 * w1 + x2 * w2 + b
    n.label = "n"
    o = n.tanh()
    o.label = "o"
    z = (o - x1 / w2) ** 2 + (-o).exp() + n.relu().sigmoid() + (w2.log() * 3) + 2 ** x1
    z.label = "z"
    z.backward()
    return z


def rendered(dot):
    """The SVG `dot` makes of a Digraph: {node title: [its text lines]}, [(tail, head) of each edge]."""
    root = ET.fromstring(dot.pipe(format="svg"))
    nodes, edges = {}, []
    for group in root.iter(f"{SVG}g"):
        title = group.findtext(f"{SVG}title")
        if group.get("class") == "node":
            nodes[title] = [(t.text or "").strip() for t in group.iter(f"{SVG}text")]
        elif group.get("class") == "edge":
            tail, head = title.split("->", 1)
            edges.append((tail, head))
    return nodes, edges


@pytest.mark.parametrize("limit", ["default", "at the graph's size", None])
def test_draw_dot_draws_every_value_op_and_edge(limit):
    z = labelled_graph()
    values, value_edges = reference.trace(z)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # a graph within the limit is drawn whole, without a word
        if limit == "default":
            dot = draw_dot(z)
        else:
            dot = draw_dot(z, max_nodes=len(values) if limit else None)
    nodes, edges = rendered(dot)

    with_op = [v for v in values if v._op]
    assert len(nodes) == len(values) + len(with_op)
    for v in values:
        assert nodes[str(id(v))] == [v.label, "data %.4f" % v.data, "grad %.4f" % v.grad]
    for v in with_op:
        assert nodes[str(id(v)) + v._op] == [v._op]
    expected_edges = {(str(id(v)) + v._op, str(id(v))) for v in with_op}
    expected_edges |= {(str(id(child)), str(id(parent)) + parent._op) for child, parent in value_edges}
    assert len(edges) == len(expected_edges)
    assert set(edges) == expected_edges
    assert {v._op for v in with_op} >= {"+", "-", "*", "/", "neg", "**2", "**", "tanh", "exp", "log", "ReLU",
                                          "sigmoid"}
    labels = {nodes[str(id(v))][0] for v in values}
    assert {"x1", "x2", "w1", "w2", "b", "n", "o", "z", ""} <= labels


def test_draw_dot_of_the_notebooks_mlp():
    random.seed(0)
    out = MLP(3, [4, 4, 1])([3.0, 5.0, -2.0])
    values, _ = reference.trace(out)
    nodes, edges = rendered(draw_dot(out))
    assert len(nodes) == len(values) + sum(1 for v in values if v._op)
    assert nodes[str(id(out))] == ["", "data %.4f" % out.data, "grad 0.0000"]


def test_draw_dot_returns_a_digraph_with_the_seeds_defaults():
    dot = draw_dot(Value(1.0).tanh())
    assert isinstance(dot, graphviz.Digraph)
    assert dot.pipe().lstrip().startswith(b"<?xml")    # svg unless told otherwise
    assert "image/svg+xml" in dot._repr_mimebundle_()  # what Jupyter asks for to show it inline


def node_centres(dot):
    """{node title: (x, y)} of the node's first text in the rendered SVG."""
    root = ET.fromstring(dot.pipe(format="svg"))
    centres = {}
    for group in root.iter(f"{SVG}g"):
        if group.get("class") == "node":
            text = next(group.iter(f"{SVG}text"))
            centres[group.findtext(f"{SVG}title")] = (float(text.get("x")), float(text.get("y")))
    return centres


def test_rankdir_is_honoured():
    a = Value(1.0, label="a")
    out = a.exp().exp()
    first, last = str(id(a)), str(id(out))
    left_right = node_centres(draw_dot(out))
    top_bottom = node_centres(draw_dot(out, rankdir="TB"))
    assert left_right[first][0] < left_right[last][0]      # children to the left of parents
    assert top_bottom[first][1] < top_bottom[last][1]      # children above parents


def test_format_is_honoured():
    dot = draw_dot(Value(1.0) * 2, format="png")
    assert dot.format == "png"
    assert dot.pipe().startswith(b"\x89PNG")


def test_trace_equals_the_seeds_trace():
    z = labelled_graph()
    assert trace(z) == reference.trace(z)
    leaf = Value(3.0)
    assert trace(leaf) == ({leaf}, set())


def deep_chain(x, depth=100_000):
    """x * 1.0 * 1.0 ...: `depth` products, each with a wrapped 1.0."""
    v = x
    for _ in range(depth):
        v = v * 1.0
    return v


def test_trace_of_a_100k_deep_chain():
    x = Value(0.5)
    v = deep_chain(x)
    nodes, edges = trace(v)
    assert len(nodes) == 1 + 2 * 100_000            # the chain, x, and one wrapped 1.0 per step
    assert len(edges) == 2 * 100_000
    assert x in nodes and v in nodes


# ---------------------------------------------------------------------------------------------------
# Above max_nodes: the nearest nodes, and boxes counting what is left out

def lecture_loss():
    """The lecture's training loss: the notebook's MLP(3, [4, 4, 1]) on its four samples, after backward()."""
    random.seed(3)
    model = MLP(3, [4, 4, 1])
    xs = [[2.0, 3.0, -1.0], [3.0, -1.0, 0.5], [0.5, 1.0, 1.0], [1.0, 1.0, -1.0]]
    ys = [1.0, -1.0, -1.0, 1.0]
    loss = sum((model(x) - y) ** 2 for x, y in zip(xs, ys))
    loss.backward()
    return loss


def distances(root):
    """{node: the fewest edges from root down to it}."""
    distance = {root: 0}
    pending = deque([root])
    while pending:
        v = pending.popleft()
        for child in v._prev:
            if child not in distance:
                distance[child] = distance[v] + 1
                pending.append(child)
    return distance


def hidden_below(parent, drawn):
    """How many nodes not drawn can be reached from parent through nodes not drawn."""
    hidden = {child for child in parent._prev if child not in drawn}
    pending = list(hidden)
    while pending:
        for child in pending.pop()._prev:
            if child not in drawn and child not in hidden:
                hidden.add(child)
                pending.append(child)
    return len(hidden)


def more_below(count):
    return f"{count:,} more node{'s' if count != 1 else ''} below"


def draw_with_warning(root, **kwargs):
    """draw_dot(root, **kwargs), asserting it warned exactly once, at the caller's line; returns (dot, message)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        dot = draw_dot(root, **kwargs)
    assert [w.category for w in caught] == [UserWarning]
    assert caught[0].filename == __file__
    return dot, str(caught[0].message)


@pytest.mark.parametrize("max_nodes", [1, 2, 7, 60, 200])
def test_a_cut_graph_draws_the_nearest_nodes_and_counts_the_rest(max_nodes):
    loss = lecture_loss()
    distance = distances(loss)
    assert len(distance) > max_nodes
    dot, message = draw_with_warning(loss, max_nodes=max_nodes)
    assert f"{len(distance):,} nodes" in message and f"the {max_nodes:,} nearest" in message
    assert "max_nodes=None" in message
    nodes, edges = rendered(dot)

    drawn = {v for v in distance if str(id(v)) in nodes}
    assert len(drawn) == max_nodes
    # Breadth first: every node nearer than the farthest drawn one is drawn.
    farthest = max(distance[v] for v in drawn)
    assert {v for v, d in distance.items() if d < farthest} <= drawn
    cut = [v for v in drawn if not v._prev <= drawn]
    assert cut

    expected_nodes = {}
    expected_edges = set()
    for v in drawn:
        uid = str(id(v))
        expected_nodes[uid] = [v.label, "data %.4f" % v.data, "grad %.4f" % v.grad]
        if v._op:
            expected_nodes[uid + v._op] = [v._op]
            expected_edges.add((uid + v._op, uid))
        expected_edges |= {(str(id(child)), uid + v._op) for child in v._prev if child in drawn}
    for v in cut:
        marker = f"more below {id(v)}"
        expected_nodes[marker] = [more_below(hidden_below(v, drawn))]
        expected_edges.add((marker, str(id(v)) + v._op))
    assert nodes == expected_nodes
    assert sorted(edges) == sorted(expected_edges)


def test_the_counts_hold_whatever_order_the_sets_iterate_in():
    """`_prev` is a set, ordered by the nodes' addresses: the same graph built 40 times gives 40 orders of the
    breadth-first cut (once, two cut parents sharing a hidden child made that child count twice)."""
    graphs = [lecture_loss() for _ in range(40)]          # all alive: 40 different sets of addresses
    for loss in graphs:
        for max_nodes in (7, 60, 200):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                source = draw_dot(loss, max_nodes=max_nodes).source
            drawn = {v for v in trace(loss)[0] if f"\t{id(v)} [" in source}
            counts = dict(re.findall(r'"more below (\d+)" \[label="([\d,]+) more nodes? below"', source))
            assert counts and all(int(counts[str(id(v))].replace(",", "")) == hidden_below(v, drawn)
                                  for v in drawn if not v._prev <= drawn)


def test_the_root_alone_counts_everything_below_it():
    loss = lecture_loss()
    nodes, edges = rendered(draw_with_warning(loss, max_nodes=1)[0])
    assert nodes[f"more below {id(loss)}"] == [more_below(len(trace(loss)[0]) - 1)]
    assert len(nodes) == 3                               # the root, its op and the box


def test_max_nodes_none_draws_every_node_of_a_graph_above_the_default():
    x = Value(0.5, label="x")
    v = x
    for _ in range(DEFAULT_MAX_NODES):
        v = v.tanh()
    values, value_edges = trace(v)
    assert len(values) > DEFAULT_MAX_NODES
    draw_with_warning(v)                                 # the default cuts it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        dot = draw_dot(v, max_nodes=None)
    # Read back by graphviz's own parser (gvpr), without a layout, which would take seconds.
    listing = subprocess.run(["gvpr", 'N{print("node\t", $.name, "\t", $.label)} E{print("edge\t", $.tail.name, '
                              '"\t", $.head.name)}'], input=dot.source, capture_output=True, text=True, check=True)
    rows = [line.split("\t") for line in listing.stdout.splitlines()]
    nodes = {row[1]: row[2] for row in rows if row[0] == "node"}
    edges = {(row[1], row[2]) for row in rows if row[0] == "edge"}
    assert len(nodes) == 2 * len(values) - 1
    assert all(nodes[str(id(n))] == "{ %s | data %.4f | grad %.4f }" % (n.label, n.data, n.grad) for n in values)
    assert edges == {(str(id(c)), str(id(p)) + "tanh") for c, p in value_edges} | \
        {(str(id(n)) + "tanh", str(id(n))) for n in values if n is not x}


def test_a_100k_deep_chain_is_cut_without_recursion():
    v = deep_chain(Value(0.5))
    dot, message = draw_with_warning(v)
    assert "200,001 nodes" in message
    counts = [int(n.replace(",", "")) for n in re.findall(r'"([\d,]+) more nodes? below"', dot.source)]
    assert sum(counts) == 200_001 - DEFAULT_MAX_NODES     # a chain shares nothing: each hidden node counted once


def test_max_nodes_must_be_a_positive_integer_or_none():
    with pytest.raises(ValueError, match="max_nodes"):
        draw_dot(Value(1.0), max_nodes=0)
    with pytest.raises(TypeError):
        draw_dot(Value(1.0), max_nodes=2.5)


def test_making_values_does_not_need_graphviz(tmp_path):
    run_python("""
        import sys
        sys.modules["graphviz"] = None               # as if the graphviz package were not installed
        import fastgrad
        v = fastgrad.Value(2.0) * 3.0
        v.backward()
        assert len(fastgrad.trace(v)[0]) == 3
        try:
            fastgrad.draw_dot(v)
        except ImportError:                          # drawing is what needs it
            print("ok")
    """, tmp_path)
