"""Helpers shared by the test modules: fresh interpreters, float comparison, the random-program recipes,
a graph for the error paths, and a few graph shapes. Test modules import from here, never from each other."""
import gc
import math
import operator
import os
import re
import struct
import subprocess
import sys
import textwrap
import tracemalloc

import pytest
from hypothesis import event
from hypothesis import strategies as st

from fastgrad import Value, reference, trace

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")

# ---------------------------------------------------------------------------------------------------
# Fresh interpreters and the machine


def run_child(script, tmp_path, *flags, timeout=600, **env):
    """Run script in a fresh interpreter started in tmp_path, away from the source tree, so that it imports
    the installed fastgrad. flags go to the interpreter, env is added to the environment."""
    return subprocess.run([sys.executable, *flags, "-c", textwrap.dedent(script)], cwd=tmp_path,
                          env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout)


def run_python(script, tmp_path, **env):
    """run_child, asserting that script exited 0 and printed "ok" last; returns its stderr."""
    result = run_child(script, tmp_path, **env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith("ok"), result.stdout[-3000:]
    return result.stderr


def vm_rss_kib():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def bytes_left_after(build, times):
    """Memory still held (tracemalloc) after build() ran times times and a GC pass, build() having run once
    before, so that caches and the slabs it fills are in place."""
    build()
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for _ in range(times):
            build()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


def under_address_sanitizer():
    with open("/proc/self/maps") as maps:
        return "libasan" in maps.read()


# ---------------------------------------------------------------------------------------------------
# Random expression graphs, built from one recipe in fastgrad and in the reference

BINARY_OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "**": operator.pow}
UNARY_OPS = {
    "neg": operator.neg,
    "tanh": lambda v: v.tanh(),
    "exp": lambda v: v.exp(),
    "log": lambda v: v.log(),
    "relu": lambda v: v.relu(),
    "sigmoid": lambda v: v.sigmoid(),
    "softplus": lambda v: v.softplus(),
}
# fastgrad's ops beyond micrograd's, which the reference has not: for recipes that are only built in fastgrad
# (and PyTorch), given as recipe_strategy's `unary`
MATH_OPS = {"sin": lambda v: v.sin(), "cos": lambda v: v.cos(), "sqrt": lambda v: v.sqrt(), "abs": abs}
ALL_UNARY_OPS = {**UNARY_OPS, **MATH_OPS}

# Mostly moderate numbers, some exact edge values (zeros of either sign make the error paths run),
# and now and then anything at all, inf and nan included.
leaf_numbers = st.one_of(
    st.floats(-4, 4),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 2.0, 0.5, -3.0]),
    st.floats(-1e6, 1e6),
    st.floats(),
)
# Number operands: ints (which become floats) and floats; as exponents they give `**2` and `**2.0`.
operand_numbers = st.one_of(st.integers(-3, 3), st.sampled_from([0.5, -0.5, 1.5, 2.0, -1.0, 0.0]), st.floats(-4, 4))


def simd_widths():
    """Choose each SIMD width of the batched replay's lane loops this CPU runs, in turn, yielding its name; the
    width chosen before is chosen again after."""
    from fastgrad.batched import choose_simd, simd
    before = simd()
    try:
        for width in ("baseline", "avx2", "avx512"):
            try:
                choose_simd(width)
            except ValueError:
                continue                       # not on this CPU
            yield width
    finally:
        choose_simd(before)


def step_strategy(operands, unary=UNARY_OPS):
    """One recipe step: an op on nodes of the pool, or on a node and a number drawn from operands.

    A node is picked by its distance from the newest one, so that shrinking goes towards deep graphs;
    picking the same node twice makes DAGs (x * x, a node reused further up), not only trees."""
    node_index = st.integers(0, 7)
    return st.one_of(
        st.tuples(st.just("values"), st.sampled_from(sorted(BINARY_OPS)), node_index, node_index),
        st.tuples(st.just("number_right"), st.sampled_from(sorted(BINARY_OPS)), node_index, operands),
        st.tuples(st.just("number_left"), st.sampled_from(sorted(BINARY_OPS)), operands, node_index),
        st.tuples(st.just("unary"), st.sampled_from(sorted(unary)), node_index),
    )


def recipe_strategy(leaves, operands, max_leaves=5, max_steps=14, unary=UNARY_OPS):
    """(leaf numbers, steps): what build a graph in fastgrad and in the reference alike (with unary=ALL_UNARY_OPS,
    in fastgrad only)."""
    return st.tuples(st.lists(leaves, min_size=1, max_size=max_leaves),
                     st.lists(step_strategy(operands, unary), min_size=1, max_size=max_steps))


steps = step_strategy(operand_numbers)
recipes = recipe_strategy(leaf_numbers, operand_numbers)


def pick(pool, index):
    return pool[-1 - index % len(pool)]


def apply_step(step, pool):
    """One recipe step on a pool of nodes (fastgrad's or the reference's): returns the new node."""
    kind, op = step[0], step[1]
    if kind == "values":
        return BINARY_OPS[op](pick(pool, step[2]), pick(pool, step[3]))
    if kind == "number_right":
        return BINARY_OPS[op](pick(pool, step[2]), step[3])
    if kind == "number_left":
        return BINARY_OPS[op](step[2], pick(pool, step[3]))
    return ALL_UNARY_OPS[op](pick(pool, step[2]))


def same_float(x, y):
    """Bit for bit, except that any nan equals any nan (a nan's sign and payload are not a result)."""
    if math.isnan(x) or math.isnan(y):
        return math.isnan(x) and math.isnan(y)
    return struct.pack("<d", x) == struct.pack("<d", y)


class AbsoluteSum:
    """Stands in for a grad during a reference backward(): the sum of the absolute values of the terms
    added into it.

    A grad is a sum of terms, one per path, and two correct engines may add them in different orders.
    The results then differ by about eps * (number of terms) * this sum, which can be far more than
    eps * |grad| when terms cancel (x - x, a + b - a). So grads are compared relative to this sum.

    A local derivative may also round differently: the seed's `1 - t**2` (a pow) and C's `1 - t*t`
    differ by an ulp of 1, which is large next to 1 - t**2 itself when tanh saturates. Each factor
    therefore counts LOCAL_SLACK more than its magnitude: 1e-9 of it covers a few ulp.
    """

    LOCAL_SLACK = 1e-6

    def __init__(self, total=0.0):
        self.total = total

    def __add__(self, term):
        return AbsoluteSum(self.total + (term.total if isinstance(term, AbsoluteSum) else abs(term)))

    __sub__ = __add__

    def __mul__(self, factor):
        return AbsoluteSum(self.total * (abs(factor) + self.LOCAL_SLACK))

    __rmul__ = __mul__

    def __truediv__(self, divisor):
        return AbsoluteSum(self.total / abs(divisor))


def absolute_sums(ref_root):
    """For every node of a reference graph, the AbsoluteSum of its grad under ref_root.backward()."""
    nodes, _ = reference.trace(ref_root)
    for node in nodes:
        node.grad = AbsoluteSum()
    ref_root.backward()
    sums = {node: 1.0 if node is ref_root else node.grad.total for node in nodes}
    for node in nodes:
        node.grad = 0.0
    return sums


def check_recipe(recipe):
    leaves, recipe_steps = recipe
    fg_pool = [Value(x, label=f"x{i}") for i, x in enumerate(leaves)]
    ref_pool = [reference.Value(x, label=f"x{i}") for i, x in enumerate(leaves)]
    for step in recipe_steps:
        try:
            ref_node = apply_step(step, ref_pool)
        except (ArithmeticError, ValueError) as error:
            # The reference's error is Python's: fastgrad must raise the same type, and go on as if
            # the step had not been taken (the final comparison checks the graph is as it was).
            with pytest.raises(type(error)) as raised:
                apply_step(step, fg_pool)
            assert type(raised.value) is type(error)
            event(f"{type(error).__name__}")
            continue
        fg_pool.append(apply_step(step, fg_pool))
        ref_pool.append(ref_node)

    for fg, ref in zip(fg_pool, ref_pool):
        assert same_float(fg.data, ref.data), (fg._op, fg.data, ref.data)
        assert fg._op == ref._op
        assert sorted(c.data for c in fg._prev if not math.isnan(c.data)) == \
            sorted(c.data for c in ref._prev if not math.isnan(c.data))
        assert len(fg._prev) == len(ref._prev)
        assert fg.label == ref.label

    sums = absolute_sums(ref_pool[-1])
    fg_pool[-1].backward()
    ref_pool[-1].backward()
    for fg, ref in zip(fg_pool, ref_pool):
        total = sums.get(ref, 0.0)
        if not math.isfinite(total):
            event("a grad overflowed or is nan: order of summation decides it, not compared")
            continue
        assert abs(fg.grad - ref.grad) <= 1e-9 * total + 1e-300, (fg._op, fg.grad, ref.grad, total)


# ---------------------------------------------------------------------------------------------------
# Graphs for the error paths and for wide sums

def graph_for_errors():
    """A graph that has already been through backward(), and the nodes its failing ops will use."""
    x = Value(2.0, label="x")
    zero = Value(0.0, label="zero")
    minus = Value(-8.0, label="minus")
    big = Value(1000.0, label="big")
    half = Value(0.5, label="half")
    root = (x * zero + minus * half + big.tanh() + x**2).sigmoid()
    root.backward()
    return root, {"x": x, "zero": zero, "minus": minus, "big": big, "half": half}


def snapshot(root):
    """Everything a failed op must leave as it was: each node's data, grad, op, children, refcount."""
    nodes, _ = trace(root)
    return sorted((id(n), n.data, n.grad, n._op, sorted(map(id, n._prev)), sys.getrefcount(n)) for n in nodes)


def tree_sum(nodes):
    """The sum of nodes as a balanced tree of adds: as wide as nodes, log2(len(nodes)) deep."""
    while len(nodes) > 1:
        paired = [nodes[i] + nodes[i + 1] for i in range(0, len(nodes) - 1, 2)]
        nodes = paired + nodes[len(paired) * 2:]
    return nodes[0]


# ---------------------------------------------------------------------------------------------------
# The README's examples, which the tests run as they are written

PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", flags=re.M | re.S)


def readme_text():
    with open(README, encoding="utf-8") as file:
        return file.read()


def readme_code(heading, index=0):
    """The index-th ```python block of the README section whose heading line starts with `heading`."""
    section = re.split(rf"^#+ {re.escape(heading)}.*$", readme_text(), maxsplit=1, flags=re.M)[1]
    section = re.split(r"^## ", section, maxsplit=1, flags=re.M)[0]
    return PYTHON_BLOCK.findall(section)[index]


def readme_blocks():
    """Every ```python block of the README, in order."""
    return PYTHON_BLOCK.findall(readme_text())
