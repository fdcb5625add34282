"""Deep graphs and memory: millions of nodes built, backpropagated and freed without recursion or
corruption; nodes invisible to the cyclic GC and small."""
import gc
import tracemalloc


from fastgrad import Value, trace
from support import run_python


# A chain v_k = -(v_{k-1} * x) + 0.0, so v_k = (-1)^k x^(k+1) and dv_k/dx = (-1)^k (k+1) at x = 1
# (exact in floats); every step adds 4 nodes (*, neg, the wrapped 0.0, +), 3 of them along the chain.
# Then a ladder a, b = b, (a + b) * 0.5: each node has two deep children, both still referenced
# elsewhere when it is made, which is the harder case for freeing.
DEEP_GRAPHS = """
    import sys
    from fastgrad import Value

    STEPS = 350_000
    x = Value(1.0)
    refs_to_x = sys.getrefcount(x)

    v = x
    for k in range(1, STEPS + 1):
        v = -(v * x) + 0.0
        if k == STEPS // 2:
            middle = v
    v.backward()
    assert x.grad == (-1) ** STEPS * (STEPS + 1), x.grad
    assert v.data == (-1) ** STEPS

    del v                        # frees the upper half while the lower half stays in use
    assert middle.data == (-1) ** (STEPS // 2)
    assert middle._op == "+" and len(middle._prev) == 2
    del middle                   # and now the rest
    assert sys.getrefcount(x) == refs_to_x, "some node of the chain was not freed"

    a, b = x, x * 1.0
    for _ in range(500_000):
        a, b = b, (a + b) * 0.5
    b.backward()
    assert abs(x.grad - (-1) ** STEPS * (STEPS + 1) - 1.0) < 1e-6, x.grad   # the ladder's grad to x is 1
    del a, b
    assert sys.getrefcount(x) == refs_to_x
    print("ok")
"""


def test_deep_graphs_under_debug_malloc(tmp_path):
    # The debug allocator checks guard bytes around every block and fills freed ones: a write
    # outside a node, or a use after free, while freeing deep graphs aborts the interpreter.
    stderr = run_python(DEEP_GRAPHS, tmp_path, PYTHONMALLOC="debug")
    assert "Fatal Python error" not in stderr
    assert "Debug memory block" not in stderr


def test_ten_million_node_chain(tmp_path):
    run_python("""
        import sys
        from fastgrad import Value

        N = 10_000_000
        x = Value(1.0)
        refs_to_x = sys.getrefcount(x)
        v = x
        for _ in range(N):
            v = v + x
        v.backward()
        assert x.grad == N + 1, x.grad
        assert v.data == N + 1
        del v
        assert sys.getrefcount(x) == refs_to_x
        print("ok")
    """, tmp_path)


def test_nodes_are_not_tracked_by_the_cyclic_gc():
    a = Value(2.0, label="a")
    b = Value(3.0)
    made = [a, b, a + b, a - b, a * b, a / b, -a, a**2, a**b, 2**a, a.tanh(), a.exp(), a.log(), a.relu(),
            a.sigmoid(), a + 1]
    assert not any(gc.is_tracked(v) for v in made)
    # A node made by hand can take a _backward closure that refers to it: the GC must see it, and the nodes
    # ops make from it (test_extending.py).
    custom = Value(1.0, (a, b), "f", label="custom")
    assert gc.is_tracked(custom) and gc.is_tracked(custom * a) and not gc.is_tracked(a * b)


def test_at_most_96_bytes_per_node():
    # tracemalloc sees the engine's memory as the 2 MiB slabs that hold nodes (26,176 of them each): over
    # 900,000 nodes the partly filled slabs at either end move the figure by under 3 bytes a node.
    x, w = Value(1.0), Value(0.5)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        v = x
        for _ in range(300_000):
            v = v * w + 0.25                     # a neuron's kind of nodes: *, +, a wrapped number
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    nodes = len(trace(v)[0]) - 2                 # less x and w, made before
    assert nodes == 900_000
    assert used / nodes <= 96, f"{used / nodes:.1f} bytes per node"
    assert used / nodes >= 60, f"{used / nodes:.1f} bytes per node: tracemalloc does not see the nodes"
