"""`python -m fastgrad demo`: micrograd's moons classifier trained on fastgrad (batched by default: one point's graph
run over all the points), timed against micrograd's algorithm in plain Python on this machine, with a picture of
what it learned and the graph of one of its neurons.

Everything past training is optional: without matplotlib there is no picture, without graphviz's `dot` no
graph, and the demo says what to install instead.
"""
import os
import random
import shutil
import statistics
import sys
import tempfile
import time

from fastgrad import moons, optim, reference
from fastgrad._version import __version__
from fastgrad.engine import Value
from fastgrad.micrograd.nn import MLP
from fastgrad.replay import compile
from fastgrad.viz import draw_dot

__all__ = ["DemoError", "run", "PATHS"]

SIZES = [16, 16, 1]
POINTS = 100
REFERENCE_STEPS = 3          # micrograd's algorithm takes a second or two a step: a few steps give a median
REFERENCE_POINTS = 100       # ... on 100 points: on more, it is timed on the first 100, and compared a point
PATHS = {
    "batched": "batched (one point's graph recorded by fastgrad.compile(loss, inputs=...) and run over all the "
               "points at once in C, SIMD lanes and threads; fastgrad.optim.SGD stepping in C)",
    "compiled": "compiled (the whole loss's graph, a copy of the model a point, recorded once by fastgrad.compile "
                "and replayed in C; fastgrad.optim.SGD stepping in C)",
    "eager": "eager, the exact graph (a node per op, built anew each step)",
}
PICTURE = "moons_decision_boundary.png"
NEURON = "neuron.svg"


class DemoError(Exception):
    """A problem the user has to fix (an output folder that cannot be written), reported without a traceback."""


def run(steps=100, out=".", seed=1337, path="batched", points=POINTS):
    """Train, report, time the reference, write the files; returns the final (loss, accuracy)."""
    out = prepare_output(out)
    X, y = moons.make_moons(points, noise=0.1, seed=seed)
    random.seed(seed)
    model = MLP(2, SIZES)
    print(f"fastgrad {__version__}: micrograd's moons demo, MLP(2, {SIZES}) ({len(model.parameters())} parameters) "
          f"on {points:,} points, {plural(steps, 'step')} of SGD on hinge loss + L2 (seed {seed})")
    print(f"path: {PATHS[path]}")
    history, step_seconds = train(make_step(model, X, y, steps, path), steps, progress_for(sys.stdout, steps))
    loss, accuracy = history[-1]
    here = statistics.median(step_seconds)
    print(f"done: loss {loss:.4f}, accuracy {accuracy:.0%}, {here * 1e3:.2f} ms a step "
          f"(median of {plural(steps, 'step')}, time.perf_counter)")

    compared = min(REFERENCE_STEPS, steps)
    sample = min(points, REFERENCE_POINTS)
    print(f"timing micrograd's algorithm in plain Python on {plural(compared, 'step')} ...", flush=True)
    _, reference_seconds = time_reference(X[:sample], y[:sample], seed, steps, compared)
    there = statistics.median(reference_seconds)
    # The reference's steps cost in proportion to the points: compared a point when it ran on fewer.
    ratio, low, high = speedup([s / points for s in step_seconds], [s / sample for s in reference_seconds])
    print(f"micrograd's algorithm in plain Python (fastgrad.reference: a node per op, a closure per node, a "
          f"recursive sort): {there:.2f} s a step, the median of {plural(compared, 'step')} of the same model, "
          f"{'data' if sample == points else f'first {sample} points'} and schedule"
          f"{'' if sample == points else ', compared a point'}; fastgrad is {ratio} faster on this machine, now "
          f"({low} to {high} step to step: "
          f"both timings move with what else the machine is doing)")

    write_picture(model, X, y, os.path.join(out, PICTURE), f"after {plural(steps, 'step')}: accuracy {accuracy:.0%}")
    write_neuron(model.layers[0].neurons[0], X, os.path.join(out, NEURON))
    return loss, accuracy


def speedup(fast_seconds, slow_seconds):
    """How many times faster the fast steps are, as text: the ratio of the medians, and its spread from the slow
    steps' fastest over the fast steps' upper quartile to the slow steps' slowest over their lower quartile. A
    few reference steps and a sub-millisecond step on a shared machine give ratios that differ twofold from run
    to run: the spread says so, and 2 significant digits claim no more."""
    if len(fast_seconds) > 1:
        lower, _, upper = statistics.quantiles(fast_seconds, n=4, method="inclusive")
    else:
        lower = upper = fast_seconds[0]
    median = statistics.median(slow_seconds) / statistics.median(fast_seconds)
    return tuple(f"{float(f'{ratio:.2g}'):,.0f}x" for ratio in
                 (median, min(slow_seconds) / upper, max(slow_seconds) / lower))


def plural(count, word):
    return f"{count:,} {word}{'' if count == 1 else 's'}"


def prepare_output(out):
    """Create the output folder if needed and check that a file can be written in it, before any training."""
    existing = out
    while existing and not os.path.exists(existing):      # the part of the path that exists already
        existing = os.path.dirname(existing)
    if existing == out and not os.path.isdir(out):
        raise DemoError(f"the output folder {out!r} is a file, not a folder")
    if existing and not os.path.isdir(existing):
        raise DemoError(f"cannot write to the output folder {out!r}: {existing!r} is a file, not a folder")
    try:
        os.makedirs(out, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise DemoError(f"cannot write to the output folder {out!r}: {error.strerror or error}") from error
    return out


def make_step(model, X, y, steps, path):
    """step(k) -> (loss, accuracy): training step k of `steps`, on the path PATHS names. Each takes micrograd's
    steps: the same loss and update, the grads within rounding (the batched path sums the points' grads in
    another order; the compiled and eager paths are the same bits)."""
    if path == "eager":
        return lambda k: moons.train_step(model, Value, X, y, k, steps)
    sgd = optim.SGD(model.parameters(), lr=moons.learning_rate(0, steps))
    if path == "compiled":
        loss, scores = moons.svm_graph(model, Value, X, y)
        graph = compile(loss)

        def step(k):
            graph.forward()
            sgd.zero_grad()
            graph.backward()
            sgd.lr = moons.learning_rate(k, steps)
            sgd.step()
            return loss.data, moons.accuracy(scores, y)
        return step
    x0, x1, label = Value(0.0), Value(0.0), Value(0.0)
    score = model([x0, x1])
    losses = compile((1 + -label * score).relu(), inputs=[x0, x1, label])
    scores = compile(score, inputs=[x0, x1])
    regulariser = compile(1e-4 * sum(p * p for p in model.parameters()))
    rows = [[a, b, t] for (a, b), t in zip(X, y)]
    points = [row[:2] for row in rows]

    def batched_step(k):
        sgd.zero_grad()
        point_losses = losses.forward_backward(rows, 1.0 / len(rows))
        loss = sum(point_losses) * (1.0 / len(rows)) + regulariser.forward()
        regulariser.backward()
        accuracy = sum((t > 0) == (s > 0) for t, s in zip(y, scores.forward(points))) / len(y)
        sgd.lr = moons.learning_rate(k, steps)
        sgd.step()
        return loss, accuracy
    return batched_step


def train(step, steps, progress):
    """Run step(0) ... step(steps - 1) with progress shown; returns [(loss, accuracy)] and each step's seconds."""
    history, seconds = timed_steps(step, steps, progress.update)
    progress.close()
    return history, seconds


def time_reference(X, y, seed, steps, count):
    """The first `count` training steps of the same model (same seed, data and schedule) on fastgrad.reference,
    micrograd's algorithm in plain Python; returns [(loss, accuracy)] and the seconds each step took."""
    random.seed(seed)
    model = moons.MicrogradMLP(2, SIZES, reference.Value)
    return timed_steps(lambda k: moons.train_step(model, reference.Value, X, y, k, steps), count)


def timed_steps(step, count, on_step=None):
    """step(0) ... step(count - 1), each timed with time.perf_counter; after each, on_step(done, loss, accuracy,
    steps per second so far). Returns [(loss, accuracy)] and the seconds each step took."""
    history, seconds = [], []
    start = time.perf_counter()
    for k in range(count):
        before = time.perf_counter()
        history.append(step(k))
        seconds.append(time.perf_counter() - before)
        if on_step:
            on_step(k + 1, *history[-1], (k + 1) / (time.perf_counter() - start))
    return history, seconds


def write_picture(model, X, y, path, title):
    """The decision regions of the model's score over a grid, and the points, as micrograd's demo draws them."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        print(f"matplotlib is not installed, so no {PICTURE}: pip install 'fastgrad[plot]' (or matplotlib)",
              file=sys.stderr)
        return
    xs, ys = [p[0] for p in X], [p[1] for p in X]
    # contourf interpolates the zero crossing between grid points: 80 x 60 scores draw a smooth boundary.
    grid_x = _span(min(xs) - 0.5, max(xs) + 0.5, 80)
    grid_y = _span(min(ys) - 0.5, max(ys) + 0.5, 60)
    scores = [[model([a, b]).data for a in grid_x] for b in grid_y]
    low = min(min(row) for row in scores)
    high = max(max(row) for row in scores)
    figure = Figure(figsize=(6, 4.5))
    axes = figure.add_subplot()
    axes.contourf(grid_x, grid_y, scores, levels=[min(low, -1e-9), 0.0, max(high, 1e-9)], cmap="Spectral",
                  alpha=0.8)
    axes.scatter(xs, ys, c=y, s=30, cmap="Spectral", edgecolors="k")
    axes.set_title(f"fastgrad demo: MLP(2, {SIZES}) {title}")
    figure.savefig(path, dpi=100)
    print(f"wrote {path}")


def _span(low, high, count):
    return [low + (high - low) * i / (count - 1) for i in range(count)]


def write_neuron(neuron, X, path):
    """One trained neuron drawn by draw_dot, with its grads, on the first point where its ReLU lets them pass."""
    if shutil.which("dot") is None:
        print(f"graphviz's `dot` is not on PATH, so no {NEURON}: install graphviz "
              "(apt-get install graphviz, brew install graphviz, or https://graphviz.org/download/)", file=sys.stderr)
        return
    for i, w in enumerate(neuron.w, 1):
        w.label = f"w{i}"
    neuron.b.label = "b"
    point = next((p for p in X if neuron(p).data > 0), X[0])
    out = neuron([Value(x, label=f"x{i}") for i, x in enumerate(point, 1)])
    out.label = "out"
    neuron.zero_grad()
    out.backward()
    with open(path, "wb") as file:
        file.write(draw_dot(out).pipe(format="svg"))
    print(f"wrote {path}")


# ---------------------------------------------------------------------------------------------------
# Progress: tqdm on a terminal when installed, a bar of our own on a terminal otherwise, lines in a log

def progress_for(stream, total):
    """The progress display that suits stream: an object with update(done, loss, accuracy, rate) and close()."""
    if not stream.isatty():
        return LineProgress(stream, total)
    try:
        from tqdm import tqdm
    except ImportError:
        return BarProgress(stream, total)
    return TqdmProgress(tqdm, stream, total)


def _status(loss, accuracy):
    return f"loss {loss:.4f}  accuracy {accuracy:.0%}"


class LineProgress:
    """A line about every tenth of the run and at its end: a log or a pipe gets no carriage returns."""

    def __init__(self, stream, total):
        self.stream, self.total = stream, total
        self.every = max(1, total // 10)

    def update(self, done, loss, accuracy, rate):
        if done % self.every == 0 or done == self.total:
            print(f"step {done}/{self.total}  {_status(loss, accuracy)}  {rate:.1f} steps/s", file=self.stream,
                  flush=True)

    def close(self):
        pass


class BarProgress:
    """One line redrawn in place with a carriage return, for a terminal without tqdm. It fits the terminal's
    width, read at each redraw (a terminal can be resized), less one column: a line that reaches the last column
    wraps on some terminals, and every redraw would then leave a line behind. Where the text does not fit, the
    rate goes first, then loss and accuracy, then the bar shrinks."""

    LONGEST_BAR = 40
    SHORTEST_BAR = 10

    def __init__(self, stream, total):
        self.stream, self.total = stream, total

    def update(self, done, loss, accuracy, rate):
        columns = shutil.get_terminal_size().columns - 1
        parts = [f" {done}/{self.total}", f"  {_status(loss, accuracy)}", f"  {rate:.1f} steps/s"]
        while len(parts) > 1 and len("".join(parts)) + 2 + self.SHORTEST_BAR > columns:
            parts.pop()
        text = "".join(parts)
        width = max(1, min(self.LONGEST_BAR, columns - 2 - len(text)))
        filled = width * done // self.total
        line = f"[{'#' * filled}{'-' * (width - filled)}]{text}"[:columns]
        self.stream.write("\r" + line.ljust(columns))     # the padding covers a longer line drawn before
        self.stream.flush()

    def close(self):
        self.stream.write("\n")


class TqdmProgress:
    """tqdm's bar; it shows its own steps per second."""

    def __init__(self, tqdm, stream, total):
        self.bar = tqdm(total=total, file=stream, unit="step", desc="training")

    def update(self, done, loss, accuracy, rate):
        self.bar.set_postfix_str(_status(loss, accuracy), refresh=False)
        self.bar.update(done - self.bar.n)

    def close(self):
        self.bar.close()
