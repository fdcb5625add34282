"""The workloads: what is built and timed on each engine.

Each workload gives, per engine, a sampler `sampler(inner) -> {phase: seconds}` (see timing.py), and says
how many units (ops, nodes, steps) one run is, so that the suite reports time per unit. An engine that cannot
run a workload (micrograd 0.1.0 has no tanh) gets a reason instead of a sampler.

Graph engines all run the same workload body; plain floats run the same arithmetic with a hand-written
backward and no graph. Graphs are dropped outside the timed phases, except in the scaling sweep, which times
the whole life of a graph (build, backward, free).
"""
import array
import functools
import gc
import hashlib
import math
import os
import random
import subprocess
import sys
import threading
import time

from timing import clock


class Unsupported(Exception):
    """This engine cannot run this workload; the message says why."""


class Workload:
    name = ""
    title = ""
    unit = "node"          # what one reported time is per: "op", "node" or "step"
    phases = ("total",)
    whole_models = False   # engines that compute a whole model at once (PyTorch tensors, CasADi) run it too
    exact = False          # it counts something exact (bytes): one sample each, not timed

    @property
    def shown_phases(self):
        """The phases the table shows (the JSON has them all)."""
        return self.phases

    def units(self):
        return 1

    def sampler(self, engine):
        raise NotImplementedError


# --- single ops ------------------------------------------------------------------------------------------
# Each loop is the statement users write, run n times in a plain `for` loop (as timeit does). The result is
# dropped at once, so every engine also pays for freeing the node it made (micrograd: its share of GC).

def mul_loop(n, a, b):
    for _ in range(n):
        a * b


def add_loop(n, a, b):
    for _ in range(n):
        a + b


def tanh_method_loop(n, a, b):
    for _ in range(n):
        a.tanh()


def tanh_float_loop(n, a, b):
    tanh = math.tanh
    for _ in range(n):
        tanh(a)


def empty_loop(n, a, b):
    """The loop alone, to tell how much of a single op's time is the loop around it."""
    for _ in range(n):
        pass


class SingleOp(Workload):
    unit = "op"
    phases = ("op",)

    def __init__(self, name, title, graph_loop, float_loop=None, needs_tanh=False):
        self.name, self.title = name, title
        self.graph_loop, self.float_loop = graph_loop, float_loop or graph_loop
        self.needs_tanh = needs_tanh

    def sampler(self, engine):
        if self.needs_tanh and not engine.has_tanh:
            raise Unsupported(f"{engine.name} {engine.version} has no tanh")
        loop = self.graph_loop if engine.is_graph else self.float_loop
        a, b = engine.leaf(0.5), engine.leaf(-0.75)
        return lambda inner: loop_sampler(loop, inner, a, b)


def loop_sampler(loop, inner, a, b):
    start = clock()
    loop(inner, a, b)
    return {"op": clock() - start}


# --- a long expression chain -----------------------------------------------------------------------------

class Chain(Workload):
    """x = relu(x*w + b), STEPS times: a graph as deep as it is long (3 nodes per step)."""

    name = "chain"
    title = "chain relu(x*w+b) x1000"
    phases = ("forward", "backward")
    STEPS = 1000

    def units(self):
        return 3 * self.STEPS

    def sampler(self, engine):
        # micrograd and the seed sort the graph recursively, one Python frame per level of depth.
        sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * self.units()))
        body = self.run_graph if engine.is_graph else self.run_floats
        leaf = engine.leaf
        return lambda inner: sum_phases(body(leaf) for _ in range(inner))

    def run_graph(self, leaf):
        x, w, b = leaf(0.5), leaf(0.9), leaf(0.1)
        start = clock()
        for _ in range(self.STEPS):
            x = (x * w + b).relu()
        built = clock()
        x.backward()
        return {"forward": built - start, "backward": clock() - built}

    def run_floats(self, leaf):
        x, w, b = 0.5, 0.9, 0.1
        start = clock()
        xs = [x]
        for _ in range(self.STEPS):
            y = x * w + b
            x = 0.0 if y < 0 else y
            xs.append(x)
        built = clock()
        g, gw, gb = 1.0, 0.0, 0.0
        for i in range(self.STEPS, 0, -1):
            if xs[i] > 0:
                gw += g * xs[i - 1]
                gb += g
                g = g * w
            else:
                g = 0.0
        return {"forward": built - start, "backward": clock() - built}


def sum_phases(runs):
    total = {}
    for run in runs:
        for phase, seconds in run.items():
            total[phase] = total.get(phase, 0.0) + seconds
    return total


# --- the seed's tanh layer -------------------------------------------------------------------------------

class TanhLayer(Workload):
    """NOUT neurons of NIN inputs built as the notebook's Neuron does: sum([wi*xi ...], b).tanh().

    Each neuron makes NIN leaves (the float inputs, wrapped), NIN products, NIN sums and a tanh; the
    outputs are summed into one loss so that backward has a single root.
    """

    name = "layer"
    title = "layer 64x512 tanh (seed's Neuron)"
    phases = ("forward", "backward")
    NIN, NOUT = 64, 512

    def units(self):
        return self.NOUT * (3 * self.NIN + 1) + self.NOUT - 1

    def sampler(self, engine):
        if not engine.has_tanh:
            raise Unsupported(f"{engine.name} {engine.version} has no tanh")
        rng = random.Random(4)
        x = [rng.uniform(-1, 1) for _ in range(self.NIN)]
        neurons = [([engine.leaf(rng.uniform(-1, 1)) for _ in range(self.NIN)], engine.leaf(rng.uniform(-1, 1)))
                   for _ in range(self.NOUT)]
        if engine.is_graph:
            return lambda inner: sum_phases(self.run_graph(neurons, x) for _ in range(inner))
        grads = [([0.0] * self.NIN, [0.0]) for _ in range(self.NOUT)]
        return lambda inner: sum_phases(self.run_floats(neurons, x, grads) for _ in range(inner))

    @staticmethod
    def run_graph(neurons, x):
        start = clock()
        outs = [sum([wi * xi for wi, xi in zip(w, x)], b).tanh() for w, b in neurons]
        loss = sum(outs[1:], outs[0])
        built = clock()
        loss.backward()
        return {"forward": built - start, "backward": clock() - built}

    @staticmethod
    def run_floats(neurons, x, grads):
        tanh = math.tanh
        start = clock()
        outs = [tanh(sum([wi * xi for wi, xi in zip(w, x)], b)) for w, b in neurons]
        sum(outs[1:], outs[0])
        built = clock()
        for t, (gw, gb) in zip(outs, grads):
            g = 1.0 - t * t
            for i, xi in enumerate(x):
                gw[i] += xi * g
            gb[0] += g
        return {"forward": built - start, "backward": clock() - built}


# --- the scaling sweep -----------------------------------------------------------------------------------

class Sweep(Workload):
    """A graph of about `size` nodes and its whole life: build, backward, free. Per node it should stay flat.

    The graph is a batch of ReLU neurons, relu(sum([wi*xi ...], b)), sharing one set of 64 weights over
    cycling input rows (so the setup stays small next to the timed graph), their outputs summed into one loss.
    'free' times dropping the last reference: fastgrad's nodes are freed then and there; micrograd's, the
    seed's and PyTorch's sit in reference cycles and are reclaimed later by the cyclic GC, untimed between
    samples, so the sweep leaves that cost out in their favour.
    """

    unit = "node"
    phases = ("forward", "backward", "free")
    shown_phases = ("total",)
    NIN, ROWS = 64, 64
    NODES_PER_NEURON = 3 * NIN + 2      # NIN wrapped inputs, NIN products, NIN sums, a relu, its share of the loss sum

    def __init__(self, size):
        self.size = size
        self.neurons = max(1, round(size / self.NODES_PER_NEURON))
        self.name = f"sweep-{size:.0e}".replace("+0", "")
        self.title = f"sweep, {self.units():,} nodes"

    def units(self):
        return self.neurons * self.NODES_PER_NEURON - 1

    def inputs(self, engine):
        rng = random.Random(5)
        rows = [[rng.uniform(-1, 1) for _ in range(self.NIN)] for _ in range(self.ROWS)]
        w = [engine.leaf(rng.uniform(-1, 1)) for _ in range(self.NIN)]
        return rows, w, engine.leaf(0.1)

    def build(self, rows, w, b):
        """The forward graph, on a graph engine; returns the loss and the neuron outputs."""
        outs = [sum([wi * xi for wi, xi in zip(w, rows[j % self.ROWS])], b).relu() for j in range(self.neurons)]
        return sum(outs[1:], outs[0]), outs

    def sampler(self, engine):
        rows, w, b = self.inputs(engine)
        if engine.is_graph:
            return lambda inner: sum_phases(self.run_graph(rows, w, b) for _ in range(inner))
        grads = [0.0] * self.NIN
        return lambda inner: sum_phases(self.run_floats(rows, w, b, grads) for _ in range(inner))

    def run_graph(self, rows, w, b):
        start = clock()
        loss, outs = self.build(rows, w, b)
        built = clock()
        loss.backward()
        swept = clock()
        del loss, outs
        return {"forward": built - start, "backward": swept - built, "free": clock() - swept}

    def run_floats(self, rows, w, b, grads):
        start = clock()
        n, nin = self.neurons, self.NIN
        outs = []
        for j in range(n):
            act = sum([wi * xi for wi, xi in zip(w, rows[j % self.ROWS])], b)
            outs.append(0.0 if act < 0 else act)
        sum(outs[1:], outs[0])
        built = clock()
        for j in range(n):
            if outs[j] > 0:
                row = rows[j % self.ROWS]
                for i in range(nin):
                    grads[i] += row[i]
        swept = clock()
        del outs
        return {"forward": built - start, "backward": swept - built, "free": clock() - swept}


# --- bytes per node ---------------------------------------------------------------------------------------

class BytesPerNode(Sweep):
    """tracemalloc's count of the bytes a live graph holds, divided by its nodes (the sweep's graph)."""

    name = "memory"
    unit = "byte"
    exact = True
    phases = shown_phases = ("bytes",)
    # tracemalloc sees fastgrad's nodes 2 MiB (26,176 nodes) at a time, as slabs that hold nodes, so fastgrad
    # is measured over this many copies of the graph held at once (a million nodes): the slabs at either
    # end, partly filled, then move the figure by under 3 bytes a node.
    SLAB_COPIES = 50

    def __init__(self, size=20_000):
        super().__init__(size)
        self.name = "memory"
        self.title = f"memory, live graph of {self.units():,} nodes"

    def sampler(self, engine):
        if not engine.is_graph:
            raise Unsupported("no graph")
        if engine.name == "torch":
            raise Unsupported("PyTorch allocates its graph in C++, which tracemalloc does not see")
        return lambda inner: self.measure(engine)

    def measure(self, engine):
        import tracemalloc

        rows, w, b = self.inputs(engine)
        copies = self.SLAB_COPIES if engine.name == "fastgrad" else 1
        gc.collect()
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            graphs = [self.build(rows, w, b) for _ in range(copies)]
            held = tracemalloc.get_traced_memory()[0] - before
        finally:
            tracemalloc.stop()
        del graphs
        return {"bytes": float(held) / copies}


# --- micrograd's moons demo ------------------------------------------------------------------------------

class MoonsStep(Workload):
    """One training step of micrograd's demo: MLP(2, [16, 16, 1]), 100 moons points, SVM loss + L2, SGD.

    The data and the step are fastgrad.moons'. Every engine starts from the same weights (random.seed) and
    keeps training from sample to sample; the step index cycles through the demo's 100-step schedule.
    `family` picks the model: "micrograd" (ReLU layers, linear output: the demo's) or "seed" (the
    notebook's tanh MLP, which only fastgrad and the seed's Value have).
    """

    unit = "step"
    phases = ("step",)
    SIZES = [16, 16, 1]
    points = 100

    def __init__(self, family):
        self.family = family
        self.whole_models = family == "micrograd"
        if family == "micrograd":
            self.name, self.title = "moons", "moons step, micrograd's MLP"
        else:
            self.name, self.title = "moons-seed", "moons step, seed's tanh MLP"
        self.first_loss = {}   # engine -> loss of step 0: the same model on the same data must agree
        self.build_seconds = {}  # engine -> seconds its model took to build once (CasADi's graph and AD)

    def sampler(self, engine):
        from baselines import FloatMLP

        from fastgrad import moons

        X, y = moons_data(self.points)
        random.seed(1)
        if engine.moons_model:
            model = engine.moons_model(X, y, self.SIZES)
            if hasattr(model, "build_seconds"):
                self.build_seconds[engine.name] = model.build_seconds
            step = self.whole_model_step(model)
        elif not engine.is_graph:
            if self.family != "micrograd":
                raise Unsupported("no hand-written version of the tanh model")
            model = FloatMLP(2, self.SIZES)
            step = model.train_step
        else:
            mlp = engine.mlp if self.family == "micrograd" else engine.seed_mlp
            if mlp is None:
                raise Unsupported(f"{engine.name} has no {self.family}-style MLP")
            model = mlp(2, self.SIZES)

            def step(X, y, k):
                return moons.train_step(model, engine.leaf, X, y, k)
        first = step(X, y, 0)
        self.first_loss[engine.name] = float(first[0])
        return self.timed_steps(step, X, y)

    @staticmethod
    def whole_model_step(model):
        """The step an engine that computes whole models runs in this row: step(X, y, k) -> (loss, ...)."""
        return model.train_step

    @staticmethod
    def timed_steps(step, X, y, phase="step"):
        """A sampler running step(X, y, k) for the next `inner` steps of the schedule, round and round."""
        counter = [1]

        def sampler(inner):
            k = counter[0]
            start = clock()
            for i in range(k, k + inner):
                step(X, y, i % 100)
            counter[0] = k + inner
            return {phase: clock() - start}
        return sampler


class CompiledMoonsStep(MoonsStep):
    """The same demo step, fastgrad's way once the model is fixed: the loss built once from input leaves and
    compiled (fastgrad.compile), then each step forward, zero_grad, backward and the update. The update is
    fastgrad.optim.SGD ("step"), or the Python loop a micrograd user writes ("SGD as a Python loop"), in the same
    sample, on the same graph. The other engines run their own steps, as in the row above."""

    phases = ("step", "SGD as a Python loop")

    def __init__(self):
        super().__init__("micrograd")
        self.name, self.title = "moons-compiled", "moons step, compiled"

    def sampler(self, engine):
        if engine.name != "fastgrad":
            return super().sampler(engine)
        X, y = moons_data(self.points)
        first, with_optimizer, with_python_loop = compiled_moons_steps(engine, X, y)
        self.first_loss[engine.name] = first
        optimizer, loop = (self.timed_steps(step, X, y, phase) for step, phase in zip(
            (with_optimizer, with_python_loop), self.phases))
        return lambda inner: {**optimizer(inner), **loop(inner)}


@functools.lru_cache(maxsize=1)      # the engines of a row take turns on the same points
def total_time_of(run):
    """A sampler timing `inner` calls of run() in all, the row's one phase ("total")."""
    def sampler(inner):
        start = clock()
        for _ in range(inner):
            run()
        return {"total": clock() - start}
    return sampler


def moons_data(points):
    """micrograd's moons points (X, y), the same for every engine (which only read them)."""
    from fastgrad import moons
    return moons.make_moons(points, noise=0.1, seed=0)


def compiled_moons_steps(engine, X, y):
    """micrograd's demo loss over X, y on fastgrad, built once from input leaves and compiled (fastgrad.compile).

    Returns (the loss of step 0, step with fastgrad.optim.SGD, step with the Python loop a micrograd user writes):
    step(X, y, k) runs forward, zero_grad, backward and the update on the one graph, and returns the loss.
    """
    import fastgrad
    import fastgrad.optim
    from fastgrad import moons

    random.seed(1)
    model = engine.mlp(2, MoonsStep.SIZES)
    loss, _ = moons.svm_graph(model, engine.leaf, X, y)
    graph = fastgrad.compile(loss)
    params = model.parameters()
    sgd = fastgrad.optim.SGD(params, lr=moons.learning_rate(0))

    def with_optimizer(X, y, k):
        graph.forward()
        sgd.zero_grad()
        graph.backward()
        sgd.lr = moons.learning_rate(k)
        sgd.step()
        return loss.data

    def with_python_loop(X, y, k):
        graph.forward()
        model.zero_grad()
        graph.backward()
        rate = moons.learning_rate(k)
        for p in params:
            p.data -= rate * p.grad
        return loss.data

    return with_optimizer(X, y, 0), with_optimizer, with_python_loop


# --- the batched replay: one point's graph over N points --------------------------------------------------

class BatchedMoonsStep(MoonsStep):
    """The demo's step over N moons points, as each engine does it best once the model is fixed.

    fastgrad: one point's loss, (1 + -y*score).relu(), compiled with its inputs (fastgrad.compile(loss,
    inputs=[x1, x2, y]) makes a BatchedGraph), forward and backward over the N rows in one pass (forward_backward,
    weights 1/N: the mean), the L2 term compiled on its own, fastgrad.optim.SGD; one thread ("step", CPU time as
    in every row), and every
    core the process may use ("all threads, wall clock": CPU time would add the threads' times up). Not shown,
    for the ratio of the two and what it owes to the load of the machine: "1 thread, wall clock", "all
    threads, CPU time", and a control that any machine parallelises, SHA-256 on one thread and on all
    (gil_free_control): on a shared machine the process may get less than its cores. Beside it
    ("compiled graph") the plain compiled graph of all N points, as in the compiled row. PyTorch tensors and JAX
    run their whole-batch steps without the accuracy; micrograd its own step. Each way trains its own model
    from the same weights.
    """

    phases = ("step", "all threads, wall clock", "compiled graph", "1 thread, wall clock", "all threads, CPU time",
              "GIL-free control, 1 thread", "GIL-free control, all threads")
    shown_phases = phases[:3]
    COMPILED_MAX = 10_000   # the compiled graph holds N copies of the model: 674 MB at 10,000 points
    MICROGRAD_MAX = 100     # micrograd's step builds the N copies in Python: a second at 100 points

    def __init__(self, points, micrograd=True, min_seconds=0.0):
        super().__init__("micrograd")
        self.points = points
        self.micrograd = micrograd    # a second a step: the quick run leaves it to the moons row
        # fastgrad's batched steps run at least this long in a sample, as every other engine's whole steps do:
        # the harness calibrates a sample's runs on the sum of its phases, and the compiled graph's step (22 ms
        # at 10,000 points) would leave the batched step 2 runs a sample, just after that graph has emptied the
        # caches (measured: 650 us a step, against 565 us in runs of 20).
        self.min_seconds = min_seconds
        self.name = self.row_name(points)
        self.title = f"moons step, batched, N={points:,}"
        self.notes = []

    @staticmethod
    def row_name(points):
        return f"moons-batched-{points:.0e}".replace("+0", "")     # moons-batched-1e4: 10,000 points

    @staticmethod
    def threads():
        """How many threads threads=None means: the cores this process may use."""
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    def sampler(self, engine):
        if engine.name == "fastgrad":
            return self.fastgrad_sampler(engine)
        if engine.name == "micrograd" and not self.micrograd:
            raise Unsupported("left out of the quick run: the moons row times its step at 100 points")
        if engine.name == "micrograd" and self.points > self.MICROGRAD_MAX:
            raise Unsupported(f"a step builds the graph of every point: run up to {self.MICROGRAD_MAX} points")
        if engine.name not in ("micrograd", "torch-tensor", "jax"):
            raise Unsupported("the batched rows run fastgrad, PyTorch tensors, JAX and micrograd")
        return super().sampler(engine)

    @staticmethod
    def whole_model_step(model):
        return lambda X, y, k: model.update(k)

    def fastgrad_sampler(self, engine):
        import fastgrad

        X, y = moons_data(self.points)
        one = every = compiled = None
        if hasattr(fastgrad, "BatchedGraph"):
            import numpy
            rows = numpy.array([[x1, x2, label] for (x1, x2), label in zip(X, y)], dtype=numpy.float64)
            one, first = batched_moons_step(engine, rows, threads=1)
            every, _ = batched_moons_step(engine, rows, threads=None)
            self.first_loss[engine.name] = first
            self.notes.append(f"fastgrad batched: all threads are {self.threads()} here")
        else:
            self.notes.append("fastgrad batched: n/a (needs fastgrad.BatchedGraph)")
        if self.points <= self.COMPILED_MAX:
            first, compiled, _ = compiled_moons_steps(engine, X, y)
            self.first_loss.setdefault(engine.name, first)
        else:
            self.notes.append(f"fastgrad compiled graph: up to {self.COMPILED_MAX:,} points (it holds a copy of the "
                              "model per point)")
        counter = [1]

        def timed(step, k, inner, min_seconds=0.0):
            """(CPU seconds, wall seconds) of inner steps, after one untimed: the first pass of a compiled graph
            after another's catches the live graphs up (measured here: 7 ms after the compiled graph of 1,000
            points), which a training loop, running one graph, never pays. At the rate of at least inner steps
            and min_seconds of them."""
            step(k % 100)
            runs = 0
            start, wall = clock(), time.perf_counter()
            while runs < inner or time.perf_counter() - wall < min_seconds:
                step((k + runs) % 100)
                runs += 1
            return (clock() - start) * inner / runs, (time.perf_counter() - wall) * inner / runs

        def sampler(inner):
            k = counter[0]
            counter[0] = k + inner + 1
            times = {}
            if one:
                times["step"], times["1 thread, wall clock"] = timed(one, k, inner, self.min_seconds)
                times["all threads, CPU time"], times["all threads, wall clock"] = timed(every, k, inner,
                                                                                         self.min_seconds)
                times["GIL-free control, 1 thread"] = gil_free_control(1, inner)
                times["GIL-free control, all threads"] = gil_free_control(self.threads(), inner)
            if compiled:
                times["compiled graph"] = timed(lambda k: compiled(X, y, k), k, inner)[0]
            return times
        return sampler


CONTROL_BYTES = bytes(1 << 18)


def gil_free_control(threads, inner):
    """Wall seconds to hash CONTROL_BYTES 8 * inner times, the hashes split over `threads` threads (hashlib releases
    the GIL for a large buffer): against one thread, the share of its cores this process gets right now."""
    def work(count):
        for _ in range(count):
            hashlib.sha256(CONTROL_BYTES).digest()
    counts = [8 * inner // threads + (i < 8 * inner % threads) for i in range(threads)]
    helpers = [threading.Thread(target=work, args=(count,)) for count in counts[1:]]
    start = time.perf_counter()
    for helper in helpers:
        helper.start()
    work(counts[0])
    for helper in helpers:
        helper.join()
    return time.perf_counter() - start


def batched_moons_step(engine, rows, threads):
    """micrograd's demo step over rows (N x [x1, x2, label]) on a fastgrad BatchedGraph of one point's loss.

    Returns (step(k), the loss of step 0). The data loss is the mean of the points' losses (backward's weights
    1/N), the L2 term a compiled graph of its own, as in fastgrad.moons.svm_loss; the update fastgrad.optim.SGD.
    """
    import fastgrad
    import fastgrad.optim
    from baselines import ALPHA

    from fastgrad import moons

    random.seed(1)
    model = engine.mlp(2, MoonsStep.SIZES)
    loss, inputs = moons_point_loss(model, engine.leaf)
    graph = fastgrad.compile(loss, inputs=inputs, threads=threads)
    params = model.parameters()
    regulariser = fastgrad.compile(ALPHA * sum(p * p for p in params))
    sgd = fastgrad.optim.SGD(params, lr=moons.learning_rate(0))
    weight = 1.0 / len(rows)

    def step(k):
        sgd.zero_grad()
        losses = graph.forward_backward(rows, weight)
        penalty = regulariser.forward()
        regulariser.backward()
        sgd.lr = moons.learning_rate(k)
        sgd.step()
        return losses, penalty

    losses, penalty = step(0)
    return step, math.fsum(memoryview(losses).cast("B").cast("d")) / len(rows) + penalty


def moons_point_loss(model, leaf):
    """One point's loss in the demo, (1 + -y*score).relu() as fastgrad.moons writes it, and its inputs [x1, x2, y]."""
    inputs = [leaf(0.0) for _ in range(3)]
    x1, x2, label = inputs
    return (1 + -label * model([x1, x2])).relu(), inputs


class BatchedMemory(Workload):
    """What training batched costs in memory beyond the data: in a fresh interpreter, the growth of the resident
    set (its peak after, over its size before) from making ROWS moons rows, compiling one point's loss of the demo
    model and running forward and backward over them once, less the rows' own bytes."""

    name = "moons-batched-memory"
    unit = "MB"
    exact = True
    whole_models = True    # the engines that compute whole models get this row's reason, not the moons rows'
    phases = shown_phases = ("RSS growth beyond the rows",)
    ROWS = 10**6

    def __init__(self):
        self.title = f"batched moons, {self.ROWS:,} rows"

    def sampler(self, engine):
        import fastgrad

        if engine.name != "fastgrad":
            raise Unsupported("fastgrad's batched replay only")
        if not hasattr(fastgrad, "BatchedGraph"):
            raise Unsupported("n/a (needs fastgrad.BatchedGraph)")
        if not os.path.exists("/proc/self/status"):
            raise Unsupported("reads the resident set from /proc (Linux)")
        return lambda inner: {self.phases[0]: float(run_here(f"batched_rss_growth({self.ROWS})"))}


def run_here(call):
    """What a call of this module prints, run in a fresh interpreter (for figures of a whole process)."""
    here = os.path.dirname(os.path.abspath(__file__))
    return subprocess.run([sys.executable, "-c", f"import workloads; print(workloads.{call})"], cwd=here,
                          capture_output=True, text=True, check=True).stdout


def batched_rss_growth(count):
    """BatchedMemory's figure, in bytes, for count rows, measured in this process (see BatchedMemory)."""
    import numpy

    import fastgrad
    import fastgrad.micrograd.nn
    from fastgrad import moons

    random.seed(1)
    loss, inputs = moons_point_loss(fastgrad.micrograd.nn.MLP(2, MoonsStep.SIZES), fastgrad.Value)
    gc.collect()
    before = resident_bytes("VmRSS")
    rows = numpy.empty((count, 3))
    chunk = 10_000            # the moons made a chunk at a time, so that their Python lists stay small
    for start in range(0, count, chunk):
        X, y = moons.make_moons(min(chunk, count - start), noise=0.1, seed=start)
        rows[start:start + len(X), :2] = X
        rows[start:start + len(X), 2] = y
    graph = fastgrad.compile(loss, inputs=inputs)
    graph.forward(rows)
    graph.backward(weights=1.0 / count)
    return resident_bytes("VmHWM") - before - rows.nbytes


def resident_bytes(field):
    """VmRSS (the resident set now) or VmHWM (its peak), from /proc/self/status."""
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith(field + ":"))
    return int(kib) * 1024


# --- the compiled replay on its own ---------------------------------------------------------------------

class CompiledLayer(TanhLayer):
    """The 64x512 tanh layer above, built once and compiled: forward and backward replayed, fused (each
    neuron's sum one instruction) and unfused (one instruction a node, eager's own order)."""

    name = "layer-compiled"
    title = "layer 64x512 tanh, compiled"
    phases = ("forward", "backward", "forward, unfused", "backward, unfused")

    def sampler(self, engine):
        if engine.name != "fastgrad":
            raise Unsupported("no compiled replay")
        import fastgrad

        rng = random.Random(4)
        x = [rng.uniform(-1, 1) for _ in range(self.NIN)]
        neurons = [([engine.leaf(rng.uniform(-1, 1)) for _ in range(self.NIN)], engine.leaf(rng.uniform(-1, 1)))
                   for _ in range(self.NOUT)]
        outs = [sum([wi * xi for wi, xi in zip(w, x)], b).tanh() for w, b in neurons]
        loss = sum(outs[1:], outs[0])

        def sampler(inner, parameters=neurons):
            # The neurons' weights stay referenced, as a model's are: each pass reads their data, and backward
            # their grads and writes them (a leaf only the graph holds would stay in the graph's arrays).
            # One graph at a time, as a training loop has: two live graphs that share nodes pass them to
            # each other at every switch, which is not what this row measures. Compiling is not timed.
            times = {}
            for suffix, fuse in (("", True), (", unfused", False)):
                graph = fastgrad.compile(loss, fuse=fuse)
                graph.forward()
                graph.backward()
                start = clock()
                for _ in range(inner):
                    graph.forward()
                middle = clock()
                for _ in range(inner):
                    graph.backward()
                times["forward" + suffix], times["backward" + suffix] = middle - start, clock() - middle
            return times
        return sampler


class CompileCost(Workload):
    """fastgrad.compile on micrograd's moons loss graph (65,818 nodes), beside one eager backward() on it."""

    name = "compile"
    title = "compile the moons loss graph"
    phases = ("compile", "one eager backward")

    def __init__(self):
        self.nodes = None

    def units(self):
        return self.nodes or 1

    def sampler(self, engine):
        if engine.name != "fastgrad":
            raise Unsupported("no compiled replay")
        import fastgrad

        loss, graph = moons_loss_graph()
        self.nodes = len(graph)

        def sampler(inner):
            start = clock()
            for _ in range(inner):
                fastgrad.compile(loss)
            middle = clock()
            for _ in range(inner):
                loss.backward()
            return {"compile": middle - start, "one eager backward": clock() - middle}
        return sampler


class ProgramBytes(Workload):
    """What a compiled graph holds for micrograd's moons loss, per recorded node: sys.getsizeof of the
    CompiledGraph (its arrays: data, grads, node pointers, instructions) over len() of it."""

    name = "program"
    title = "compiled program, moons loss graph"
    unit = "byte"
    phases = ("bytes", "bytes, unfused")
    exact = True

    def sampler(self, engine):
        if engine.name != "fastgrad":
            raise Unsupported("no compiled replay")
        import fastgrad

        loss, graph = moons_loss_graph()
        unfused = fastgrad.compile(loss, fuse=False)
        return lambda inner: {"bytes": sys.getsizeof(graph) / len(graph),
                              "bytes, unfused": sys.getsizeof(unfused) / len(unfused)}


class GradCost(CompileCost):
    """fastgrad.grad(loss, params, create_graph=True) on micrograd's moons loss graph, beside grad's floats and
    one eager backward() on it; the title says how many nodes the gradient graph adds per node of the loss's."""

    name = "grad"
    title = "grad by the parameters, moons loss graph"
    phases = ("create_graph", "floats", "one eager backward")

    def sampler(self, engine):
        if engine.name != "fastgrad":
            raise Unsupported("no higher-order gradients")
        import fastgrad

        loss, params = moons_loss_and_parameters()
        old = {id(n) for n in fastgrad.trace(loss)[0]}
        built = fastgrad.grad(loss, params, create_graph=True)
        new = {id(n) for g in built for n in fastgrad.trace(g)[0]} - old
        self.nodes = len(old)
        self.title = f"grad by the parameters, moons loss graph ({len(new) / len(old):.2f} new nodes per node)"
        del built

        def sampler(inner):
            times = {phase: 0.0 for phase in self.phases}
            for _ in range(inner):       # the gradient graph is freed outside the timed part
                start = clock()
                built = fastgrad.grad(loss, params, create_graph=True)
                times["create_graph"] += clock() - start
                del built
            start = clock()
            for _ in range(inner):
                fastgrad.grad(loss, params)
            middle = clock()
            for _ in range(inner):
                loss.backward()
            times["floats"], times["one eager backward"] = middle - start, clock() - middle
            return times
        return sampler


class MoonsHessianVectorProduct(Workload):
    """H v for micrograd's moons loss by its 337 parameters, the same v on every engine. fastgrad: the gradient as
    Values (grad with create_graph=True) dotted with v and compiled once; each product is a forward and backward of
    that graph. PyTorch: double backward (autograd.grad with create_graph=True, then again) through the model as its
    users write it (nn.Linear in float64 over the whole batch, one thread). JAX: jax.jvp of jax.grad of the same
    loss, jitted (float64, one thread)."""

    name = "hvp"
    title = "Hessian-vector product, moons loss"
    unit = "step"
    whole_models = True

    def __init__(self):
        self.products = {}     # engine -> v . H v: every engine computes the same product

    @property
    def notes(self):
        if len(self.products) < 2:
            return []
        values = self.products.values()
        agree = max(values) - min(values) <= 1e-9 * max(1.0, max(abs(v) for v in values))
        return [f"v . H v on each engine {'agree' if agree else 'DISAGREE'} "
                f"({', '.join(f'{e} {v:.12g}' for e, v in self.products.items())}): the same product is timed"]

    def sampler(self, engine):
        if engine.name == "fastgrad":
            return self.fastgrad_sampler()
        if engine.name == "torch-tensor":
            return self.torch_sampler(engine)
        if engine.name == "jax":
            return self.jax_sampler(engine)
        raise Unsupported("no higher-order gradients")

    @staticmethod
    def vector():
        """v as [(rows, biases)] per layer, shaped as the model's weights (nn.Linear's: a row per neuron)."""
        rng = random.Random(2)
        sizes = [2] + MoonsStep.SIZES
        return [([[rng.uniform(-1, 1) for _ in range(sizes[i])] for _ in range(sizes[i + 1])],
                 [rng.uniform(-1, 1) for _ in range(sizes[i + 1])]) for i in range(len(MoonsStep.SIZES))]

    def fastgrad_sampler(self):
        import fastgrad
        import fastgrad.optim

        loss, params = moons_loss_and_parameters()
        # micrograd's parameters() order: each neuron's weights, then its bias, layer by layer
        v = [vi for rows, biases in self.vector() for row, b in zip(rows, biases) for vi in row + [b]]
        gradient = fastgrad.grad(loss, params, create_graph=True)
        graph = fastgrad.compile(sum(g * vi for g, vi in zip(gradient, v)))
        zero = fastgrad.optim.SGD(params, lr=0.0)

        def product():
            graph.forward()
            zero.zero_grad()
            graph.backward()          # H v is in the parameters' grads

        product()
        self.products["fastgrad"] = math.fsum(p.grad * vi for p, vi in zip(params, v))

        return total_time_of(product)

    def torch_sampler(self, engine):
        import torch

        from baselines import ALPHA

        X, y = moons_data(MoonsStep.points)
        random.seed(1)
        model = engine.moons_model(X, y, MoonsStep.SIZES)
        params = list(model.model.parameters())
        v = [torch.tensor(part, dtype=torch.float64) for layer in self.vector() for part in layer]

        def product():
            scores = model.model(model.X).squeeze(1)
            loss = torch.relu(1 - model.y * scores).mean() + ALPHA * sum((p * p).sum() for p in params)
            gradient = torch.autograd.grad(loss, params, create_graph=True)
            return torch.autograd.grad(sum((g * vi).sum() for g, vi in zip(gradient, v)), params)

        self.products["torch-tensor"] = math.fsum(float((hv * vi).sum()) for hv, vi in zip(product(), v))

        return total_time_of(product)

    def jax_sampler(self, engine):
        import jax
        import jax.numpy as jnp

        from baselines import jax_moons_loss

        X, y = moons_data(MoonsStep.points)
        random.seed(1)
        model = engine.moons_model(X, y, MoonsStep.SIZES)
        v = [tuple(jnp.asarray(part, dtype=jnp.float64) for part in layer) for layer in self.vector()]

        def loss(params, X, y):
            return jax_moons_loss(params, X, y)[0]

        @jax.jit
        def product(params, v, X, y):
            return jax.jvp(lambda p: jax.grad(loss)(p, X, y), (params,), (v,))[1]

        hv = jax.block_until_ready(product(model.params, v, model.X, model.y))
        self.products["jax"] = math.fsum(float(jnp.sum(h * vi)) for layer, vl in zip(hv, v) for h, vi in zip(layer, vl))

        return total_time_of(lambda: jax.block_until_ready(product(model.params, v, model.X, model.y)))


class PhysicsInformedStep(Workload):
    """A training step of the README's physics-informed fit (u'' + u = 0, u(0) = 0, u'(0) = 1) on 1,000
    collocation points, the notebook's tanh MLP(1, [16, 16, 1]) with the notebook's weights on every engine, Adam
    (lr 1e-3), one thread. fastgrad: (u'' + u)^2 as a gradient graph, batched over the points
    (compile(..., inputs=[x], threads=1), forward_backward, the points an array.array of float64 made once, as
    the others' tensors are), the initial conditions compiled. PyTorch: the same network as
    nn.Linear + Tanh in float64 over all points at once, u' and u'' by autograd.grad(create_graph=True). JAX: u of
    one point, u' and u'' by nested jax.jvp over x (forward over forward: the fastest of grad-of-grad, jvp-of-grad
    and jvp-of-jvp here), vmapped over the points, the whole step with Adam one jax.jit."""

    name = "pinn"
    title = "physics-informed step, 1,000 points"
    unit = "step"
    whole_models = True
    POINTS = 1000
    SIZES = [16, 16, 1]
    LR = 1e-3

    def __init__(self):
        self.first_loss = {}   # engine -> the loss before the first step: the same model on the same points

    def sampler(self, engine):
        points = [[math.pi * (i + 0.5) / self.POINTS] for i in range(self.POINTS)]
        if engine.name == "fastgrad":
            return self.fastgrad_sampler(points)
        if engine.name == "torch-tensor":
            return self.torch_sampler(points)
        if engine.name == "jax":
            return self.jax_sampler(points)
        raise Unsupported("no higher-order gradients")

    def fastgrad_sampler(self, points):
        import numpy

        import fastgrad
        from fastgrad import MLP, Value, grad, optim

        random.seed(0)
        model = MLP(1, self.SIZES)
        x = Value(0.0)
        u = model([x])
        (du,) = grad(u, [x], create_graph=True)
        (d2u,) = grad(du, [x], create_graph=True)
        equation = fastgrad.compile((d2u + u) ** 2, inputs=[x], threads=1)
        x0 = Value(0.0)
        u0 = model([x0])
        (du0,) = grad(u0, [x0], create_graph=True)
        initial = fastgrad.compile(u0 ** 2 + (du0 - 1.0) ** 2)
        adam = optim.Adam(model.parameters(), lr=self.LR)
        rows = array.array("d", (x for (x,) in points))     # read in place, as the others' tensors are made once

        def step():
            adam.zero_grad()
            residuals = equation.forward_backward(rows, 1.0 / len(points))
            at_zero = initial.forward()
            initial.backward()
            adam.step()
            # the mean as the others take it, one vectorized sum (math.fsum boxed each number: 17 us a step)
            return numpy.frombuffer(residuals).mean() + at_zero

        self.first_loss["fastgrad"] = step()

        return total_time_of(step)

    def torch_sampler(self, points):
        import torch

        from baselines import notebook_weights

        torch.set_num_threads(1)
        random.seed(0)
        layers = []
        for rows, biases in notebook_weights(1, self.SIZES):
            linear = torch.nn.Linear(len(rows[0]), len(rows), dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.tensor(rows, dtype=torch.float64))
                linear.bias.copy_(torch.tensor(biases, dtype=torch.float64))
            layers += [linear, torch.nn.Tanh()]
        model = torch.nn.Sequential(*layers)
        x = torch.tensor(points, dtype=torch.float64, requires_grad=True)
        x0 = torch.zeros((1, 1), dtype=torch.float64, requires_grad=True)
        adam = torch.optim.Adam(model.parameters(), lr=self.LR)

        def step():
            u = model(x)
            (du,) = torch.autograd.grad(u.sum(), x, create_graph=True)
            (d2u,) = torch.autograd.grad(du.sum(), x, create_graph=True)
            u0 = model(x0)
            (du0,) = torch.autograd.grad(u0.sum(), x0, create_graph=True)
            loss = ((d2u + u) ** 2).mean() + (u0 ** 2 + (du0 - 1.0) ** 2).sum()
            adam.zero_grad()
            loss.backward()
            adam.step()
            return loss

        self.first_loss["torch-tensor"] = float(step().detach())

        return total_time_of(step)

    def jax_sampler(self, points):
        import jax
        import jax.numpy as jnp

        from baselines import notebook_weights

        random.seed(0)
        params = [(jnp.asarray(rows, dtype=jnp.float64), jnp.asarray(biases, dtype=jnp.float64))
                  for rows, biases in notebook_weights(1, self.SIZES)]
        xs = jnp.asarray([x for (x,) in points], dtype=jnp.float64)

        def u(params, x):            # one point
            h = x[None]
            for w, b in params:
                h = jnp.tanh(w @ h + b)
            return h[0]

        def du(params, x):
            return jax.jvp(lambda x: u(params, x), (x,), (jnp.ones_like(x),))[1]

        def d2u(params, x):
            return jax.jvp(lambda x: du(params, x), (x,), (jnp.ones_like(x),))[1]

        def loss_of(params, xs):
            residuals = jax.vmap(d2u, (None, 0))(params, xs) + jax.vmap(u, (None, 0))(params, xs)
            x0 = jnp.zeros(())
            return jnp.mean(residuals ** 2) + u(params, x0) ** 2 + (du(params, x0) - 1.0) ** 2

        b1, b2, eps = 0.9, 0.999, 1e-8

        def step(params, m, v, t, xs):      # torch.optim.Adam's update
            loss, grads = jax.value_and_grad(loss_of)(params, xs)
            t = t + 1
            m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, m, grads)
            v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, v, grads)
            params = jax.tree.map(lambda p, m, v: p - self.LR / (1 - b1 ** t) * m / (jnp.sqrt(v / (1 - b2 ** t)) + eps),
                                  params, m, v)
            return params, m, v, t, loss

        step = jax.jit(step, donate_argnums=(0, 1, 2))
        state = [params, jax.tree.map(jnp.zeros_like, params), jax.tree.map(jnp.zeros_like, params),
                 jnp.zeros((), dtype=jnp.int64)]

        def run():
            out = jax.block_until_ready(step(*state, xs))
            state[:] = out[:4]
            return out[4]

        self.first_loss["jax"] = float(run())

        return total_time_of(run)


def moons_loss_graph():
    """micrograd's demo loss on fastgrad (65,818 nodes) and its compiled graph."""
    import fastgrad

    loss, _ = moons_loss_and_parameters()
    return loss, fastgrad.compile(loss)


def moons_loss_and_parameters():
    """micrograd's demo loss on fastgrad and its model's parameters."""
    import fastgrad
    import fastgrad.micrograd.nn
    from fastgrad import moons

    X, y = moons.make_moons(100, noise=0.1, seed=0)
    random.seed(1)
    model = fastgrad.micrograd.nn.MLP(2, MoonsStep.SIZES)
    loss, _ = moons.svm_graph(model, fastgrad.Value, X, y)
    return loss, model.parameters()


# --- the optimizer's loops -------------------------------------------------------------------------------

def sgd_loop(params, lr):
    for p in params:
        p.data -= lr * p.grad


def zero_grad_loop(params):
    for p in params:
        p.grad = 0.0


class AdamLoop:
    """Adam as a user writes it in Python over micrograd's Values: torch.optim.Adam's update, no weight decay."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        self.params, self.lr, self.betas, self.eps = params, lr, betas, eps
        self.m, self.v, self.t = [0.0] * len(params), [0.0] * len(params), 0

    def step(self):
        self.t += 1
        beta1, beta2 = self.betas
        step_size = self.lr / (1 - beta1 ** self.t)
        bias_correction2_sqrt = math.sqrt(1 - beta2 ** self.t)
        m, v, eps = self.m, self.v, self.eps
        for i, p in enumerate(self.params):
            g = p.grad
            m[i] = beta1 * m[i] + (1 - beta1) * g
            v[i] = beta2 * v[i] + (1 - beta2) * g * g
            p.data -= step_size * (m[i] / (math.sqrt(v[i]) / bias_correction2_sqrt + eps))


class OptimizerStep(Workload):
    """One optimizer call over the 337 parameters of micrograd's moons MLP, MLP(2, [16, 16, 1]).

    On fastgrad, each sample times fastgrad.optim ("optimizer": one call, a C loop) and then the Python
    loop a micrograd user writes for the same update ("loop"), on the same Values; micrograd and the seed
    run the loop on theirs, PyTorch runs torch.optim over one 0-d tensor per parameter. The grads are fixed
    random numbers (no backward is timed); each update moves the data a little further.
    """

    unit = "step"
    phases = ("optimizer", "loop")
    LR = 1e-3
    KINDS = {"sgd": "SGD step", "zero_grad": "zero_grad", "adam": "Adam step"}

    def __init__(self, kind):
        self.kind = kind
        self.name = f"optim-{kind}"
        self.title = f"{self.KINDS[kind]}, 337 parameters"

    def sampler(self, engine):
        if not engine.is_graph:
            raise Unsupported("no parameter nodes: these rows time updates of a model's Values")
        random.seed(1)
        mlp = engine.mlp or engine.seed_mlp
        params = mlp(2, [16, 16, 1]).parameters()
        rng = random.Random(6)
        if engine.name == "torch":
            import torch
            for p in params:
                p.grad = torch.tensor(rng.uniform(-1, 1), dtype=torch.float64)
            optimizer = self.optimizer(torch.optim, params)
            return lambda inner: {"optimizer": self.time(optimizer, inner)}
        for p in params:
            p.grad = rng.uniform(-1, 1)
        loop = self.loop(params)
        if engine.name != "fastgrad":
            return lambda inner: {"loop": self.time(loop, inner)}
        import fastgrad.optim
        optimizer = self.optimizer(fastgrad.optim, params)
        return lambda inner: {"optimizer": self.time(optimizer, inner), "loop": self.time(loop, inner)}

    def optimizer(self, module, params):
        """The call to time on an optim module's optimizer (fastgrad.optim's or torch.optim's)."""
        if self.kind == "adam":
            return module.Adam(params, lr=self.LR).step
        optimizer = module.SGD(params, lr=self.LR)
        return optimizer.step if self.kind == "sgd" else optimizer.zero_grad

    def loop(self, params):
        """The same update as a Python loop over params, as a call."""
        if self.kind == "adam":
            return AdamLoop(params, lr=self.LR).step
        if self.kind == "sgd":
            return lambda: sgd_loop(params, self.LR)
        return lambda: zero_grad_loop(params)

    @staticmethod
    def time(call, inner):
        start = clock()
        for _ in range(inner):
            call()
        return clock() - start
