"""micrograd's demo problem, shared by the demo, the tests and the benchmarks: two half-moons and an SVM
training step.

Plain Python only (no numpy, no sklearn), and generic over the Value class and the model, so the same code
drives micrograd, fastgrad.micrograd and anything else with micrograd's Value and MLP interface.
"""
import math
import random

__all__ = ["make_moons", "svm_loss", "learning_rate", "train_step"]


def _gauss(rng):
    """A standard normal draw from rng.random() alone (Box-Muller).

    random.gauss() is not promised to give the same numbers in every Python version; random() is.
    """
    u1 = 1.0 - rng.random()                     # in (0, 1]: log() needs a positive number
    u2 = rng.random()
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


def make_moons(n_samples=100, noise=0.1, seed=0):
    """Two interleaved half circles, like sklearn's make_moons, with Gaussian noise of std `noise`.

    Returns (X, y): X a list of [x0, x1] float pairs, y a list of labels -1 (upper moon) and +1 (lower
    moon), in shuffled order. The upper moon is the unit half circle over [-1, 1]; the lower one is it
    flipped and shifted to (1, 0.5). The same seed gives the same points on every Python version (to the
    last bit where the platform's math library rounds cos, sin and log the same way).
    """
    rng = random.Random(seed)
    n_upper = n_samples // 2
    n_lower = n_samples - n_upper
    points = []
    for i in range(n_upper):
        angle = math.pi * i / max(n_upper - 1, 1)
        points.append(([math.cos(angle), math.sin(angle)], -1))
    for i in range(n_lower):
        angle = math.pi * i / max(n_lower - 1, 1)
        points.append(([1.0 - math.cos(angle), 0.5 - math.sin(angle)], 1))
    rng.shuffle(points)
    for xy, _ in points:
        xy[0] += noise * _gauss(rng)
        xy[1] += noise * _gauss(rng)
    return [xy for xy, _ in points], [label for _, label in points]


def svm_loss(model, value_cls, X, y, alpha=1e-4):
    """micrograd demo's full-batch loss: mean max-margin loss plus alpha * sum(p*p) over the parameters.

    Returns (loss, accuracy): loss a Value whose graph reaches every parameter, accuracy the fraction of
    points whose score has the sign of their label.
    """
    inputs = [[value_cls(x) for x in row] for row in X]
    scores = [model(row) for row in inputs]
    losses = [(1 + -label * score).relu() for label, score in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = alpha * sum(p * p for p in model.parameters())
    right = [(label > 0) == (score.data > 0) for label, score in zip(y, scores)]
    return data_loss + reg_loss, sum(right) / len(right)


def learning_rate(k):
    """The demo's schedule over its 100 steps: 1.0 at step 0, falling linearly by 0.009 a step."""
    return 1.0 - 0.9 * k / 100


def train_step(model, value_cls, X, y, k):
    """Step k of the demo's training: loss, zero_grad, backward, SGD update. Returns (loss, accuracy)."""
    loss, accuracy = svm_loss(model, value_cls, X, y)
    model.zero_grad()
    loss.backward()
    rate = learning_rate(k)
    for p in model.parameters():
        p.data -= rate * p.grad
    return loss.data, accuracy
