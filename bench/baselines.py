"""micrograd's moons model for the engines that have none: PyTorch scalars, plain floats, and the three that a user
would pick instead of a scalar engine, PyTorch tensors, CasADi and JAX.

All draw their weights as micrograd's MLP does (random.uniform(-1, 1), each neuron's weights in turn, layer by
layer; biases start at 0), so after the same random.seed() every engine starts from the same model.
"""
import random
import time

from fastgrad.moons import MicrogradMLP, learning_rate

ALPHA = 1e-4     # the demo's L2 weight (fastgrad.moons.svm_loss)


def micrograd_weights(nin, nouts):
    """[(rows of weights, biases) per layer], drawn as micrograd's MLP(nin, nouts) draws them."""
    sizes = [nin] + list(nouts)
    return [([[random.uniform(-1, 1) for _ in range(sizes[i])] for _ in range(sizes[i + 1])], [0.0] * sizes[i + 1])
            for i in range(len(nouts))]


def notebook_weights(nin, nouts):
    """[(rows of weights, biases) per layer], drawn as the notebook's tanh MLP(nin, nouts) (fastgrad.nn.MLP)
    draws them: each neuron's weights, then its bias, all random.uniform(-1, 1)."""
    sizes = [nin] + list(nouts)
    layers = []
    for i in range(len(nouts)):
        neurons = [([random.uniform(-1, 1) for _ in range(sizes[i])], random.uniform(-1, 1))
                   for _ in range(sizes[i + 1])]
        layers.append(([w for w, _ in neurons], [b for _, b in neurons]))
    return layers


class TorchScalarMLP(MicrogradMLP):
    """micrograd's MLP(nin, nouts) over 0-d float64 tensors: ReLU layers, a linear output layer.

    It has micrograd's interface (call, parameters(), zero_grad()) so fastgrad.moons.train_step drives it.
    """

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None        # what torch's own zero_grad does: no zero tensor to add into


class FloatMLP:
    """The same model in plain floats with a hand-written backward: the floor for micrograd's demo step."""

    def __init__(self, nin, nouts):
        layers = micrograd_weights(nin, nouts)
        self.weights = [rows for rows, _ in layers]
        self.biases = [biases for _, biases in layers]

    def forward(self, x):
        """Every layer's input, and the output score, for one point."""
        inputs = []
        last = len(self.weights) - 1
        for i, (layer, biases) in enumerate(zip(self.weights, self.biases)):
            inputs.append(x)
            acts = [b + sum([wi * xi for wi, xi in zip(w, x)]) for w, b in zip(layer, biases)]
            x = acts if i == last else [a if a > 0 else 0.0 for a in acts]
        return inputs, x[0]

    def train_step(self, X, y, k, alpha=1e-4):
        """fastgrad.moons.train_step, by hand: SVM loss + L2, backward, SGD. Returns (loss, accuracy)."""
        n = len(X)
        grad_w = [[[0.0] * len(w) for w in layer] for layer in self.weights]
        grad_b = [[0.0] * len(layer) for layer in self.weights]
        data_loss, right = 0.0, 0
        for x, label in zip(X, y):
            inputs, score = self.forward(x)
            margin = 1.0 - label * score
            right += (label > 0) == (score > 0)
            if margin <= 0:
                continue
            data_loss += margin
            # d(loss)/d(output of each neuron of the current layer), walking back from the score.
            upstream = [-label / n]
            for i in range(len(self.weights) - 1, -1, -1):
                x_in, layer = inputs[i], self.weights[i]
                below = [0.0] * len(x_in)
                for j, (w, g) in enumerate(zip(layer, upstream)):
                    if g == 0.0:
                        continue
                    gw = grad_w[i][j]
                    for m, xm in enumerate(x_in):
                        gw[m] += g * xm
                        below[m] += g * w[m]
                    grad_b[i][j] += g
                if i:
                    upstream = [g if a > 0 else 0.0 for g, a in zip(below, x_in)]
        rate = learning_rate(k)
        reg = 0.0
        for layer, glayer, biases, gbiases in zip(self.weights, grad_w, self.biases, grad_b):
            for w, gw in zip(layer, glayer):
                for m, wm in enumerate(w):
                    reg += wm * wm
                    w[m] = wm - rate * (gw[m] + 2 * alpha * wm)
            for j, b in enumerate(biases):
                reg += b * b
                biases[j] = b - rate * (gbiases[j] + 2 * alpha * b)
        return data_loss / n + alpha * reg, right / n


class TorchTensorMoons:
    """The demo as a PyTorch user writes it: torch.nn.Linear layers in float64, the whole batch of points at once,
    the same hinge loss and L2 term, torch.optim.SGD with the demo's schedule; one thread."""

    def __init__(self, X, y, nouts):
        import torch

        torch.set_num_threads(1)
        layers = []
        for i, (rows, biases) in enumerate(micrograd_weights(len(X[0]), nouts)):
            linear = torch.nn.Linear(len(rows[0]), len(rows), dtype=torch.float64)
            with torch.no_grad():
                linear.weight.copy_(torch.tensor(rows, dtype=torch.float64))
                linear.bias.copy_(torch.tensor(biases, dtype=torch.float64))
            layers += [linear] if i == len(nouts) - 1 else [linear, torch.nn.ReLU()]
        self.torch = torch
        self.model = torch.nn.Sequential(*layers)
        self.X = torch.tensor(X, dtype=torch.float64)
        self.y = torch.tensor(y, dtype=torch.float64)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=learning_rate(0))

    def train_step(self, X, y, k):
        loss, scores = self.update(k)
        return loss, ((scores > 0) == (self.y > 0)).double().mean().item()

    def update(self, k):
        """Step k without the accuracy: (the loss, the scores)."""
        scores = self.model(self.X).squeeze(1)
        data_loss = self.torch.relu(1 - self.y * scores).mean()
        loss = data_loss + ALPHA * sum((p * p).sum() for p in self.model.parameters())
        self.optimizer.zero_grad()
        loss.backward()
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(k)
        self.optimizer.step()
        return loss.item(), scores


class CasadiMoons:
    """The demo's loss and its gradient as one CasADi SX Function (a virtual machine over the scalar graph,
    built and differentiated once: build_seconds), evaluated each step; the SGD update in numpy."""

    def __init__(self, X, y, nouts):
        import casadi
        import numpy

        started = time.perf_counter()
        layers = micrograd_weights(len(X[0]), nouts)
        symbols, values = [], []
        model = []
        for rows, biases in layers:
            neurons = []
            for row, bias in zip(rows, biases):
                w = [casadi.SX.sym(f"w{len(symbols) + j}") for j in range(len(row))]
                b = casadi.SX.sym(f"b{len(symbols)}")
                symbols += w + [b]            # micrograd's parameters() order: each neuron's w, then its b
                values += row + [bias]
                neurons.append((w, b))
            model.append(neurons)
        scores = []
        for point in X:
            x = point
            for i, neurons in enumerate(model):
                acts = [b + sum(wi * xi for wi, xi in zip(w, x)) for w, b in neurons]
                x = acts if i == len(model) - 1 else [casadi.fmax(a, 0) for a in acts]
            scores.append(x[0])
        data_loss = sum(casadi.fmax(0, 1 - label * s) for label, s in zip(y, scores)) * (1.0 / len(X))
        loss = data_loss + ALPHA * sum(p * p for p in symbols)
        params = casadi.vertcat(*symbols)
        self.function = casadi.Function("moons", [params], [loss, casadi.gradient(loss, params),
                                                           casadi.vertcat(*scores)])
        self.numpy = numpy
        self.params = numpy.array(values)
        self.labels = numpy.array(y)
        self.build_seconds = time.perf_counter() - started

    def train_step(self, X, y, k):
        loss, grad, scores = self.function(self.params)
        self.params -= learning_rate(k) * self.numpy.asarray(grad).ravel()
        right = (self.numpy.asarray(scores).ravel() > 0) == (self.labels > 0)
        return float(loss), float(right.mean())


class JaxMoons:
    """The demo as a JAX user writes it: the same hinge loss and L2 term over the whole batch, and the whole step
    (loss, gradient, the SGD update) one jax.jit, in float64, the parameters' buffers donated to the update.
    The engine that makes it (engines.jax_engine) sets float64 and one thread before JAX is imported."""

    def __init__(self, X, y, nouts):
        import jax
        import jax.numpy as jnp

        def step(params, X, y, lr):
            (loss, scores), grads = jax.value_and_grad(jax_moons_loss, has_aux=True)(params, X, y)
            # The accuracy, as the other engines' train_step gives it: fused into the step, a compare per point.
            accuracy = jnp.mean((scores > 0) == (y > 0))
            return [(w - lr * gw, b - lr * gb) for (w, b), (gw, gb) in zip(params, grads)], loss, accuracy

        self.jax = jax
        self.step = jax.jit(step, donate_argnums=0)
        self.params = [(jnp.asarray(rows, dtype=jnp.float64), jnp.asarray(biases, dtype=jnp.float64))
                       for rows, biases in micrograd_weights(len(X[0]), nouts)]
        self.X = jnp.asarray(X, dtype=jnp.float64)
        self.y = jnp.asarray(y, dtype=jnp.float64)

    def train_step(self, X, y, k):
        loss, accuracy = self.update(k)
        return loss, float(accuracy)

    def update(self, k):
        """Step k: (the loss, the accuracy as a JAX array: reading it is another transfer from the device)."""
        self.params, loss, accuracy = self.jax.block_until_ready(
            self.step(self.params, self.X, self.y, learning_rate(k)))
        return float(loss), accuracy


def jax_moons_loss(params, X, y):
    """The demo's loss in JAX over the whole batch, params [(w, b)] per layer: (the loss, the scores)."""
    import jax
    import jax.numpy as jnp

    x = X
    for i, (w, b) in enumerate(params):
        x = x @ w.T + b
        if i < len(params) - 1:
            x = jax.nn.relu(x)
    scores = x[:, 0]
    data_loss = jnp.mean(jax.nn.relu(1 - y * scores))
    return data_loss + ALPHA * sum(jnp.sum(w * w) + jnp.sum(b * b) for w, b in params), scores
