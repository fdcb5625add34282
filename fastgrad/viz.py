"""Draw a Value's graph with graphviz, as the seed's trace and draw_dot do; iterative, so any depth."""
__all__ = ["trace", "draw_dot"]


def trace(root):
    """All nodes below root and the (child, parent) edges between them, as two sets."""
    nodes, edges = {root}, set()
    pending = [root]
    while pending:
        v = pending.pop()
        for child in v._prev:
            edges.add((child, v))
            if child not in nodes:
                nodes.add(child)
                pending.append(child)
    return nodes, edges


def draw_dot(root, format="svg", rankdir="LR"):
    """A graphviz.Digraph of root's graph: a record { label | data | grad } per Value, an oval per op.

    In Jupyter the returned Digraph shows inline; elsewhere call .render() or .pipe().
    """
    from graphviz import Digraph     # here, so that `import fastgrad` does not need graphviz

    dot = Digraph(format=format, graph_attr={"rankdir": rankdir})
    nodes, edges = trace(root)
    for n in nodes:
        uid = str(id(n))
        dot.node(name=uid, label="{ %s | data %.4f | grad %.4f }" % (n.label, n.data, n.grad), shape="record")
        if n._op:
            dot.node(name=uid + n._op, label=n._op)
            dot.edge(uid + n._op, uid)
    for child, parent in edges:
        dot.edge(str(id(child)), str(id(parent)) + parent._op)
    return dot
