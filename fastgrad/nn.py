"""The seed's neural-network classes, in plain Python over the compiled Value."""
from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from fastgrad.engine import Value, type_name, weighted_sum

__all__ = ["Module", "Neuron", "Layer", "MLP", "IncompatibleKeys"]

# What load_state_dict(strict=False) did not load, as torch names it.
IncompatibleKeys = NamedTuple("IncompatibleKeys", [("missing_keys", list[str]), ("unexpected_keys", list[str])])


class Module:
    """Something with parameters: Neuron, Layer, MLP."""

    def parameters(self) -> list[Value]:
        return []

    def zero_grad(self) -> None:
        for p in self.parameters():
            p.grad = 0.0

    def named_parameters(self) -> list[tuple[str, Value]]:
        """[(name, Value)] for parameters(), in its order, each named by the attributes that lead to it:
        `layers.0.neurons.3.w.1` is `model.layers[0].neurons[3].w[1]`, `layers.0.neurons.3.b` its bias.

        Names are found by walking the module's attributes in the order they were set, into Modules,
        lists, tuples and dicts with str keys (so a Module subclass of your own is named the same way); a
        Value reached twice keeps its first name, and one listed twice by parameters() appears once.
        ValueError if parameters() gives a Value that no attribute leads to.
        """
        names = _attribute_names(self)
        named: list[tuple[str, Value]] = []
        seen: set[int] = set()
        for i, p in enumerate(self.parameters()):
            if id(p) in seen:
                continue
            if id(p) not in names:
                raise ValueError(f"{type(self).__name__}.parameters()[{i}] ({p!r}) is in no attribute of the module "
                                 "(nor in a Module, list, tuple or dict held by one), so it has no name")
            seen.add(id(p))
            named.append((names[id(p)], p))
        return named

    def state_dict(self) -> dict[str, float]:
        """{name: data} for every parameter, in parameters() order: plain floats, for fastgrad.save."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: Mapping[str, float], strict: bool = True) -> IncompatibleKeys:
        """Set each parameter's data from state[name] (a dict from state_dict(), maybe through fastgrad.load).

        strict: a name of the model missing from state, or a name in state the model does not have, is a
        KeyError listing them; with strict=False what matches is loaded and the rest is returned as
        IncompatibleKeys(missing_keys, unexpected_keys), as torch does. A value is taken as Value.data takes
        it (a float, int, Decimal, Fraction, numpy scalar); anything else, or a bool, is a TypeError naming its
        key. Everything is checked first: when this raises, nothing has changed.
        """
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict of name -> number, such as model.state_dict(), "
                            f"not {type_name(state)!r}")
        named = self.named_parameters()
        names = {name for name, _ in named}
        missing = [name for name, _ in named if name not in state]
        unexpected = [key for key in state if key not in names]
        if strict and (missing or unexpected):
            raise KeyError(f"state does not match the parameters of this {type(self).__name__}: "
                           + "; ".join(f"{what} {_listing(keys)}"
                                       for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
        updates = [(p, _state_number(state[name], name)) for name, p in named if name in state]
        for p, number in updates:
            p.data = number
        return IncompatibleKeys(missing, unexpected)


class Neuron(Module):
    """tanh(w . x + b), with w and b drawn from random.uniform(-1, 1), weights first, as in the seed."""

    w: list[Value]
    b: Value

    def __init__(self, nin: int) -> None:
        self.w = [Value(random.uniform(-1, 1)) for _ in range(nin)]
        self.b = Value(random.uniform(-1, 1))

    def __call__(self, x: Iterable[Value | float]) -> Value:
        # sum([wi * xi for wi, xi in zip(self.w, x)], self.b): the seed's nodes, made by the engine in one call
        return weighted_sum(self.w, x, self.b).tanh()

    def parameters(self) -> list[Value]:
        return self.w + [self.b]

    def __repr__(self) -> str:
        return f"TanhNeuron({len(self.w)})"


class Layer(Module):
    """nout neurons over the same nin inputs; a single Value when nout == 1, as in the seed."""

    neurons: list[Neuron]

    def __init__(self, nin: int, nout: int) -> None:
        self.neurons = [Neuron(nin) for _ in range(nout)]

    def __call__(self, x: Sequence[Value | float]) -> Value | list[Value]:
        outs = [n(x) for n in self.neurons]
        return outs[0] if len(outs) == 1 else outs

    def parameters(self) -> list[Value]:
        return [p for n in self.neurons for p in n.parameters()]

    def __repr__(self) -> str:
        return f"Layer of [{', '.join(repr(n) for n in self.neurons)}]"


class MLP(Module):
    """Layers of tanh neurons: MLP(3, [4, 4, 1]) maps 3 inputs through 4, 4 to 1 output."""

    layers: list[Layer]

    def __init__(self, nin: int, nouts: Sequence[int]) -> None:
        sizes = [nin] + list(nouts)
        self.layers = [Layer(sizes[i], sizes[i + 1]) for i in range(len(nouts))]

    def __call__(self, x: Sequence[Value | float]) -> Value | list[Value]:
        # after a hidden layer, a list of Values (a Value if it has one neuron): the next layer's input
        out: Any = x
        for layer in self.layers:
            out = layer(out)
        return out  # type: ignore[no-any-return]

    def parameters(self) -> list[Value]:
        return [p for layer in self.layers for p in layer.parameters()]

    def __repr__(self) -> str:
        return f"MLP of [{', '.join(repr(layer) for layer in self.layers)}]"


def _attribute_names(module: Module) -> dict[int, str]:
    """{id(Value): dotted name} for every Value reachable from module's attributes (see named_parameters)."""
    names: dict[int, str] = {}
    walked: set[int] = set()     # ids of the containers walked: a shared submodule, or a cycle, is walked once

    def walk(obj: object, name: str) -> None:
        if type(obj) is Value:
            names.setdefault(id(obj), name)
            return
        if id(obj) in walked:
            return
        items: Iterable[tuple[object, object]]
        if isinstance(obj, Module):
            items = vars(obj).items() if hasattr(obj, "__dict__") else ()
        elif isinstance(obj, (list, tuple)):
            items = enumerate(obj)
        elif isinstance(obj, dict):
            items = ((key, item) for key, item in obj.items() if isinstance(key, str))
        else:
            return
        walked.add(id(obj))
        for key, item in items:
            walk(item, f"{name}.{key}" if name else str(key))

    walk(module, "")
    return names


def _listing(keys: list[str], most: int = 10) -> str:
    shown = ", ".join(map(repr, keys[:most]))
    return shown + (f" and {len(keys) - most} more" if len(keys) > most else "")


def _state_number(x: object, name: str) -> float:
    """x as Value.data takes it (floats, ints, Decimal, Fraction, numpy scalars): the same conversion, so the
    same numbers. A bool, which Value.data would take as 0 or 1, is refused: in a state dict it is a mistake."""
    if isinstance(x, bool):
        raise TypeError(f"state[{name!r}] must be a real number, not 'bool'")
    try:
        return Value(x).data
    except TypeError:
        raise TypeError(f"state[{name!r}] must be a real number, not {type_name(x)!r}") from None
    except (OverflowError, ValueError) as error:     # an int beyond a float, a signaling NaN Decimal
        raise type(error)(f"state[{name!r}] = {x!r}: {error}") from None
