"""micrograd 0.1.0's neural-network classes over fastgrad's compiled Value.

They differ from the seed's classes in fastgrad.nn: a neuron is ReLU (or linear when nonlin=False),
its bias starts at 0 instead of a random draw, and an MLP's last layer is linear. The random draws are
micrograd's, in its order (each neuron's weights, neuron by neuron, layer by layer; none for biases), so
after the same random.seed() a model here starts from the same weights as the same model in micrograd.
"""
import random

from fastgrad import nn as seed_nn
from fastgrad.engine import Value, weighted_sum

__all__ = ["Module", "Neuron", "Layer", "MLP"]

# zero_grad() and parameters() mean the same in both families of classes.
Module = seed_nn.Module


class Neuron(Module):
    """relu(w . x + b), or w . x + b when nonlin is False; w from random.uniform(-1, 1), b = 0."""

    def __init__(self, nin, nonlin=True):
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(0)
        self.nonlin = nonlin

    def __call__(self, x):
        # sum((wi*xi for wi, xi in zip(self.w, x)), self.b): micrograd's nodes, made by the engine in one call
        act = weighted_sum(self.w, x, self.b)
        return act.relu() if self.nonlin else act

    def parameters(self):
        return self.w + [self.b]

    def __repr__(self):
        kind = "ReLU" if self.nonlin else "Linear"
        return f"{kind}Neuron({len(self.w)})"


# A layer and an MLP are called, list their parameters and print as the seed's do, which is micrograd's way
# too; only the neurons they are made of differ.
class Layer(seed_nn.Layer):
    """nout micrograd neurons over the same nin inputs; keyword arguments (nonlin) go to each neuron."""

    def __init__(self, nin, nout, **kwargs):
        self.neurons = [Neuron(nin, **kwargs) for _ in range(nout)]


class MLP(seed_nn.MLP):
    """ReLU layers then a linear output layer: MLP(2, [16, 16, 1]) is micrograd's moons classifier."""

    def __init__(self, nin, nouts):
        sizes = [nin] + list(nouts)
        last = len(nouts) - 1
        self.layers = [Layer(sizes[i], sizes[i + 1], nonlin=i != last) for i in range(len(nouts))]
