"""Threads. Every engine operation holds the GIL from start to end, so:

- graphs built and backpropagated in separate threads are independent, and their grads are right;
- backward() calls on one shared graph from several threads run one after the other, each whole: the
  result is that of the same number of calls made in one thread. Grads accumulate as in micrograd:
  each call adds its gradients, computed from grads that earlier calls already accumulated in the inner
  nodes, so k calls give the root's children k times one call's grads, and nodes further down more.

- pickling or copying a graph while another thread runs backward() on it, or pickles it too, gives
  both the whole graph: the sort's marks are cleared before the pickling runs any Python code (the
  tests at the end make the other thread run in the middle of a pickling).
"""
import gc
import math
import pickle
import sys
import threading

import pytest

from fastgrad import Value, trace
from support import tree_sum


@pytest.fixture
def frequent_switches():
    """Ask the interpreter to switch threads as often as it can, to mix the threads' work finely."""
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    yield
    sys.setswitchinterval(interval)


def run_threads(target, count):
    """Run target(i) in count threads at once; return what they raised."""
    errors = []
    barrier = threading.Barrier(count)

    def run(i):
        try:
            barrier.wait()
            target(i)
        except BaseException as error:     # reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_threads_building_their_own_graphs_get_their_own_grads(frequent_switches):
    def work(i):
        for j in range(100):
            x, y = Value(0.01 * i + 0.001 * j), Value(1.0 + 0.1 * i)
            weights = [float(k % 5) for k in range(300)]
            # f = tanh(sum_k x * w_k + y * y): df/dx = (1 - t^2) * sum(w), df/dy = (1 - t^2) * 2y
            f = (sum([x * w for w in weights]) + y * y).tanh()
            f.backward()
            slope = 1 - math.tanh(sum(x.data * w for w in weights) + y.data * y.data) ** 2
            assert x.grad == pytest.approx(slope * sum(weights), rel=1e-12)
            assert y.grad == pytest.approx(slope * 2 * y.data, rel=1e-12)
            del f                  # threads free their graphs while others build and sweep theirs

    assert run_threads(work, 8) == []


def test_concurrent_backward_calls_on_one_graph_equal_the_same_calls_in_one_thread(frequent_switches):
    threads, calls_each = 4, 5
    shared = wide_graph()
    assert run_threads(lambda i: [shared.backward() for _ in range(calls_each)], threads) == []

    alone = wide_graph()                 # the same graph, built again
    for _ in range(threads * calls_each):
        alone.backward()
    # Bit for bit, node for node (the two graphs' nodes listed in one order).
    grads = grads_by_node(shared)
    assert all(math.isfinite(grad) for *_, grad in grads)
    assert grads == grads_by_node(alone)


def wide_graph():
    """About 55,000 nodes of several ops, about 20 deep: grads stay finite over many accumulating calls."""
    leaves = [Value(0.01 * (i % 200) - 1.0, label=f"x{i}") for i in range(1000)]
    terms = [((leaves[i % 1000] * leaves[(7 * i) % 1000] + 0.5).tanh() / 2.0 - leaves[(3 * i) % 1000]).sigmoid()
             for i in range(6000)]
    return tree_sum(terms)


def grads_by_node(root):
    return sorted((node._op, node.label, node.data, node.grad) for node in trace(root)[0])


def test_concurrent_backward_calls_accumulate_like_micrograd(frequent_switches):
    # A chain of adds, root = ((x + c_1) + c_2) + ... + c_depth, backpropagated `calls` times in all.
    # Every local derivative is 1; a node d edges below the root then has grad C(calls + d - 1, d):
    # the root's children `calls`, and each level below the running sum of the level above.
    depth, threads, calls_each = 20, 4, 6
    calls = threads * calls_each
    x = Value(0.0)
    constants = [Value(1.0) for _ in range(depth)]
    root = x
    for c in constants:
        root = root + c

    assert run_threads(lambda i: [root.backward() for _ in range(calls_each)], threads) == []
    assert x.grad == math.comb(calls + depth - 1, depth)
    for j, c in enumerate(constants):     # c_j is depth - j edges below the root
        d = depth - j
        assert c.grad == math.comb(calls + d - 1, d)


# ---------------------------------------------------------------------------------------------------
# Pickling: its sort marks the nodes, then it runs Python code (making the pickled list) before it
# clears them. Any Python code may let another thread run: here a GC pass during the pickling, whose
# callback waits (as a finalizer doing I/O would), hands the GIL to the other thread at that moment.

def chain_graph():
    """2000 leaves summed by a chain of adds: one backward gives each leaf grad 1."""
    leaves = [Value(float(i % 5 + 1)) for i in range(2000)]
    return leaves, sum(leaves[1:], leaves[0])


def while_pickling(root, other):
    """Pickle root; in the middle of it, let another thread run other() to its end."""
    started, finished = threading.Event(), threading.Event()
    outcome = {}

    def run_other():
        started.wait()
        try:
            outcome["result"] = other()
        except BaseException as error:      # reported by the test
            outcome["error"] = error
        finished.set()

    def hand_over(phase, info):
        if phase == "start" and not started.is_set():
            started.set()
            finished.wait(timeout=30)

    thread = threading.Thread(target=run_other)
    thread.start()
    gc.collect()          # so that the first GC pass comes from the pickling's own allocations
    gc.callbacks.append(hand_over)
    try:
        pickled = pickle.dumps(root)
    finally:
        gc.callbacks.remove(hand_over)
        started.set()
        thread.join()
    if not finished.is_set():     # not what the tests below are about: make it an error, not a failure
        raise RuntimeError("the other thread did not run during the pickling")
    return pickled, outcome


def test_backward_on_another_thread_while_the_graph_is_pickled():
    leaves, root = chain_graph()
    pickled, outcome = while_pickling(root, root.backward)
    assert "error" not in outcome
    assert all(x.grad == 1.0 for x in leaves)
    assert pickle.loads(pickled).data == root.data


def test_two_threads_pickling_one_graph():
    _, root = chain_graph()
    pickled, outcome = while_pickling(root, lambda: pickle.loads(pickle.dumps(root)))
    assert "error" not in outcome, repr(outcome.get("error"))
    for copy in (pickle.loads(pickled), outcome["result"]):
        assert len(trace(copy)[0]) == len(trace(root)[0]) and copy.data == root.data
