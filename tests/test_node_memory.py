"""The engine's node memory (engine.pyx, "Node memory"): slabs that hand out the lowest free slot.

What it promises: nodes are made in memory order whatever order earlier graphs were freed in (that is
what keeps backward fast over a training loop), no slot is ever given to two live nodes, a dropped graph's
memory is kept for the next graph of its size, and what stays unused for a second goes back to the system
at the next drop, even when a node made later still sits at its end.
Under PYTHONMALLOC=debug or -X dev the engine leaves nodes to Python's allocator, so these tests skip.
"""
import os
import random
import sys
import time

import pytest

from fastgrad import Value
from support import run_python, under_address_sanitizer

pytestmark = pytest.mark.skipif(
    sys.flags.dev_mode or "debug" in os.environ.get("PYTHONMALLOC", ""),
    reason="under the debug allocator every node is its own block")

NODE_BYTES = sys.getsizeof(Value(0.0))


def chain_addresses(length):
    """Addresses of a chain's nodes, in the order they were made."""
    w = Value(0.5)
    node, made = Value(1.0), []
    for _ in range(length):
        node = node * w
        made.append(node)
    return [id(n) for n in made], made


def test_nodes_are_made_in_memory_order_after_a_graph_freed_in_random_order():
    rng = random.Random(3)
    for _ in range(3):                                 # several rounds: a LIFO free list gets worse each time
        _, made = chain_addresses(50_000)
        rng.shuffle(made)
        while made:                                    # every node freed at a random point of the chain
            made.pop()
    addresses, made = chain_addresses(20_000)
    steps = [b - a for a, b in zip(addresses, addresses[1:])]
    in_order = sum(step == NODE_BYTES for step in steps) / len(steps)
    # Each slab ends with a jump to the next one; everything else is the next slot.
    assert in_order > 0.99, f"only {in_order:.0%} of consecutive nodes are neighbours in memory"


def test_no_slot_is_given_to_two_live_nodes():
    rng = random.Random(5)
    live = {}                                          # id -> (node, the data it was made with)
    for round_ in range(40):
        for key in rng.sample(sorted(live), len(live) // 2):
            del live[key]                              # free half, scattered over the slabs
        for i in range(rng.randrange(1000, 20_000)):
            data = float(round_ * 100_000 + i)
            node = Value(data) if i % 3 else Value(data) * 1.0    # leaves and inner nodes alike
            assert id(node) not in live
            live[id(node)] = (node, data)
        assert all(node.data == data for node, data in live.values())


def test_memory_returned_between_live_slabs_is_mapped_again_and_used_safely():
    # Twelve graphs of a slab or more each, a node made after them all; dropping every other graph
    # empties slabs between live ones, more than the engine keeps mapped, and a second later they go.
    rng = random.Random(7)
    graphs = [chain_addresses(30_000)[1] for _ in range(12)]
    late = Value(-1.0)
    for i in range(0, 12, 2):
        graphs[i] = None
    time.sleep(1.2)                                    # unused for a second: returned at the next drop
    Value(0.0) * 1.0
    expected = [[n.data for n in g] if g else None for g in graphs]
    fresh = [chain_addresses(rng.randrange(5_000, 60_000))[1] for _ in range(8)]   # refills the gaps
    assert len({id(n) for g in graphs + fresh if g for n in g} | {id(late)}) == \
        sum(len(g) for g in graphs + fresh if g) + 1
    assert [[n.data for n in g] if g else None for g in graphs] == expected
    assert late.data == -1.0
    assert all(n.data == 0.5 ** (k + 1) for g in fresh for k, n in enumerate(g))


SLABS_RETURNED = """
    import sys, time
    sys.path.insert(0, {tests!r})
    from fastgrad import Value
    from support import vm_rss_kib

    def drop_a_small_graph():
        small = late
        for _ in range(1000):
            small = small * w

    before = vm_rss_kib()
    w = Value(0.5)
    node = Value(1.0)
    for _ in range(2_000_000):
        node = node * w
    late = Value(2.0)          # made while the chain lives: it sits in the chain's last slab
    grown = vm_rss_kib() - before
    del node
    drop_a_small_graph()       # at once: the chain's memory is kept for a next graph of its size
    after_drop = vm_rss_kib() - before
    time.sleep(1.2)
    drop_a_small_graph()       # a second later, unused: it goes back
    kept = vm_rss_kib() - before
    print(grown, after_drop, kept, file=sys.stderr)
    print("ok")
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads VmRSS from Linux's /proc")
@pytest.mark.skipif(os.path.exists("/proc/self/maps") and under_address_sanitizer(),
                    reason="AddressSanitizer keeps its own shadow and freed memory resident by design")
def test_the_memory_of_a_dropped_graph_is_kept_for_a_second_then_goes_back(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    grown, after_drop, kept = map(int, run_python(SLABS_RETURNED.format(tests=tests), tmp_path).split()[-3:])
    assert grown > 2_000_000 * NODE_BYTES / 1024 * 0.9, f"the chain took only {grown} KiB"
    assert after_drop > 0.9 * grown, f"only {after_drop} of {grown} KiB kept for the next graph"
    # Then the engine keeps 10 MiB of empty slabs; the rest is returned.
    assert kept < 16 * 1024, f"{kept} KiB still held a second after the graph was dropped ({grown} KiB)"
