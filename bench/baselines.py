"""micrograd's moons model for the two engines that have none: PyTorch scalars and plain floats.

Both draw their weights as micrograd's MLP does (random.uniform(-1, 1), each neuron's weights in turn,
layer by layer; biases start at 0), so after the same random.seed() every engine starts from the same model.
"""
import random

from fastgrad.moons import MicrogradMLP, learning_rate


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
        sizes = [nin] + list(nouts)
        self.weights = [[[random.uniform(-1, 1) for _ in range(sizes[i])] for _ in range(sizes[i + 1])]
                        for i in range(len(nouts))]
        self.biases = [[0.0] * sizes[i + 1] for i in range(len(nouts))]

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
