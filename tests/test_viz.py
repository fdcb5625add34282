"""fastgrad.viz: trace against the seed's trace (reference.py), draw_dot rendered by the real `dot` binary."""
import random
import xml.etree.ElementTree as ET

import graphviz

from fastgrad import MLP, Value, draw_dot, reference, trace

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


def test_draw_dot_draws_every_value_op_and_edge():
    z = labelled_graph()
    values, value_edges = reference.trace(z)
    nodes, edges = rendered(draw_dot(z))

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


def test_trace_of_a_100k_deep_chain():
    x = Value(0.5)
    v = x
    for _ in range(100_000):
        v = v * 1.0
    nodes, edges = trace(v)
    assert len(nodes) == 1 + 2 * 100_000            # the chain, x, and one wrapped 1.0 per step
    assert len(edges) == 2 * 100_000
    assert x in nodes and v in nodes
