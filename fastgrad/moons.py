"""micrograd's demo problem, shared by the demo, the tests and the benchmarks: two half-moons, micrograd's
model over any Value class, and an SVM training step.

Plain Python only (no numpy, no sklearn), and generic over the Value class and the model, so the same code
drives micrograd, fastgrad.micrograd and anything else with micrograd's Value and MLP interface.
"""
import math
import random

__all__ = ["make_moons", "MicrogradMLP", "svm_loss", "learning_rate", "train_step"]


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


class MicrogradMLP:
    """micrograd's MLP(nin, nouts) over any scalar with micrograd's ops: ReLU layers, a linear output layer.

    leaf(x) makes a parameter from a float (a Value class will do). The weights are drawn as micrograd draws
    them (random.uniform(-1, 1), each neuron's weights in turn, layer by layer; biases start at 0), so after
    the same random.seed() it starts from the same model as micrograd.nn.MLP. For engines that have no
    micrograd-style model of their own: the notebook's Value in fastgrad.reference, PyTorch scalars.
    """

    def __init__(self, nin, nouts, leaf):
        sizes = [nin] + list(nouts)
        self.layers = [
            [([leaf(random.uniform(-1, 1)) for _ in range(sizes[i])], leaf(0.0)) for _ in range(sizes[i + 1])]
            for i in range(len(nouts))
        ]

    def __call__(self, x):
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            acts = [sum((wi * xi for wi, xi in zip(w, x)), b) for w, b in layer]
            x = acts if i == last else [a.relu() for a in acts]
        return x[0] if len(x) == 1 else x

    def parameters(self):
        return [p for layer in self.layers for w, b in layer for p in w + [b]]

    def zero_grad(self):
        for p in self.parameters():
            p.grad = 0.0


def svm_loss(model, value_cls, X, y, alpha=1e-4):
    """micrograd demo's full-batch loss: mean max-margin loss plus alpha * sum(p*p) over the parameters.

    Returns (loss, accuracy): loss a Value whose graph reaches every parameter, accuracy the fraction of
    points whose score has the sign of their label.
    """
    loss, scores = svm_graph(model, value_cls, X, y, alpha)
    return loss, accuracy(scores, y)


def svm_graph(model, value_cls, X, y, alpha=1e-4):
    """svm_loss's graph: (loss, the model's score for each point), the scores for accuracy() after a replay."""
    inputs = [[value_cls(x) for x in row] for row in X]
    scores = [model(row) for row in inputs]
    losses = [(1 + -label * score).relu() for label, score in zip(y, scores)]
    data_loss = sum(losses) * (1.0 / len(losses))
    reg_loss = alpha * sum(p * p for p in model.parameters())
    return data_loss + reg_loss, scores


def accuracy(scores, y):
    """The fraction of points whose score has the sign of their label."""
    right = [(label > 0) == (score.data > 0) for label, score in zip(y, scores)]
    return sum(right) / len(right)


def learning_rate(k, steps=100):
    """The demo's schedule: 1.0 at step 0, falling linearly to 0.1 at the end of its 100 steps.

    micrograd's is 1.0 - 0.9 * k / 100 over 100 steps; a run of another length stretches it over its own
    steps, so that the rate stays positive to the last one.
    """
    return 1.0 - 0.9 * k / steps


def train_step(model, value_cls, X, y, k, steps=100):
    """Step k of the demo's training: loss, zero_grad, backward, SGD update. Returns (loss, accuracy)."""
    loss, accuracy = svm_loss(model, value_cls, X, y)
    model.zero_grad()
    loss.backward()
    rate = learning_rate(k, steps)
    for p in model.parameters():
        p.data -= rate * p.grad
    return loss.data, accuracy
