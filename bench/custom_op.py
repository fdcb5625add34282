"""What a custom op (fastgrad.op) costs per node, eager, compiled and batched, beside a built-in unary op (tanh):
CPU time of this thread (time.thread_time), medians of 7 runs, in one process. The README's figures ("Custom
ops") come from `python bench/custom_op.py`; it takes about 10 seconds."""
import statistics
import time

import fastgrad
from fastgrad import Value

softsign = fastgrad.op("softsign", lambda x: x / (1 + abs(x)), lambda x: 1 / (1 + abs(x)) ** 2)
OPS = {"custom op": softsign, "tanh": Value.tanh}
CHAIN = 20_000              # nodes of the eager and compiled chains
DEPTH, ROWS = 100, 3200     # the batched graph: a chain of DEPTH nodes over ROWS rows


def cpu(run, repeats=7):
    times = []
    for _ in range(repeats):
        start = time.thread_time()
        run()
        times.append(time.thread_time() - start)
    return statistics.median(times)


def chain(op, n):
    x = Value(0.5)
    v = x
    for _ in range(n):
        v = op(v)
    return x, v


def costs(op):
    """ns a node for each way of running it."""
    result = {"eager, building": cpu(lambda: chain(op, CHAIN)) / CHAIN}
    _, root = chain(op, CHAIN)
    result["eager, backward()"] = cpu(root.backward) / CHAIN
    graph = fastgrad.compile(root)
    result["compiled, forward()"] = cpu(graph.forward) / CHAIN
    result["compiled, backward()"] = cpu(graph.backward) / CHAIN
    x, root = chain(op, DEPTH)
    batch = fastgrad.compile(root, inputs=[x], threads=1)
    rows = [[0.01 * r] for r in range(ROWS)]
    result["batched, forward() a row"] = cpu(lambda: batch.forward(rows)) / (DEPTH * ROWS)
    batch.forward(rows)
    result["batched, backward() a row"] = cpu(batch.backward) / (DEPTH * ROWS)   # it runs forward again
    return {what: seconds * 1e9 for what, seconds in result.items()}


if __name__ == "__main__":
    table = {name: costs(op) for name, op in OPS.items()}
    print(f"{'ns a node':28s}" + "".join(f"{name:>12s}" for name in OPS))
    for what in table["tanh"]:
        print(f"{what:28s}" + "".join(f"{table[name][what]:12.1f}" for name in OPS))
