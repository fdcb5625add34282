"""The seed's neural-network classes, in plain Python over the compiled Value."""
import random

from fastgrad.engine import Value, weighted_sum

__all__ = ["Module", "Neuron", "Layer", "MLP"]


class Module:
    """Something with parameters: Neuron, Layer, MLP."""

    def parameters(self):
        return []

    def zero_grad(self):
        for p in self.parameters():
            p.grad = 0.0


class Neuron(Module):
    """tanh(w . x + b), with w and b drawn from random.uniform(-1, 1), weights first, as in the seed."""

    def __init__(self, nin):
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(random.uniform(-1, 1))

    def __call__(self, x):
        # sum([wi * xi for wi, xi in zip(self.w, x)], self.b): the seed's nodes, made by the engine in one call
        return weighted_sum(self.w, x, self.b).tanh()

    def parameters(self):
        return self.w + [self.b]

    def __repr__(self):
        return f"TanhNeuron({len(self.w)})"


class Layer(Module):
    """nout neurons over the same nin inputs; a single Value when nout == 1, as in the seed."""

    def __init__(self, nin, nout):
        self.neurons = [Neuron(nin) for _ in range(nout)]

    def __call__(self, x):
        outs = [n(x) for n in self.neurons]
        return outs[0] if len(outs) == 1 else outs

    def parameters(self):
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self):
        return f"Layer of [{', '.join(repr(n) for n in self.neurons)}]"


class MLP(Module):
    """Layers of tanh neurons: MLP(3, [4, 4, 1]) maps 3 inputs through 4, 4 to 1 output."""

    def __init__(self, nin, nouts):
        sizes = [nin] + list(nouts)
        self.layers = [Layer(sizes[i], sizes[i + 1]) for i in range(len(nouts))]

    def __call__(self, x):
        for layer in self.layers:
            x = layer(x)
        return x

    def parameters(self):
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self):
        return f"MLP of [{', '.join(repr(layer) for layer in self.layers)}]"
