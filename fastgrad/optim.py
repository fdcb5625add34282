"""fastgrad.optim: SGD, Adam and AdamW with torch.optim's names, defaults, argument checks and update formulas
(its default single-tensor code path), for a list of Values such as model.parameters().

    optimizer = fastgrad.optim.Adam(model.parameters(), lr=1e-3)
    for step in range(100):
        loss = ...
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

Hyper-parameters are plain attributes (`optimizer.lr = 0.01` for a schedule), one group per optimizer.
`state_dict()` holds the hyper-parameters, the step count and the per-parameter buffers: load it into an
optimizer over the same parameters and training goes on bit for bit as if it had never stopped.

The module is Python over a small compiled kernel, fastgrad._optim. What runs once per parameter (zero_grad
and the updates) is a C loop over a C array of the parameter nodes there, entered once per step; what runs
once per step or once per optimizer (checks, hyper-parameters, state dicts, error messages) stays here, in
Python, where it reads like the torch code users know and costs nothing measurable.
"""
from __future__ import annotations

import numbers
from array import array
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar, Union, overload

from fastgrad._optim import ParameterArray
from fastgrad.engine import Value, type_name

__all__ = ["Optimizer", "SGD", "Adam", "AdamW"]

_T = TypeVar("_T")
_StateValue = Union[str, float, list[float], None]


class Optimizer:
    """What SGD, Adam and AdamW share: their parameters, zero_grad(), step() and state dicts.

    A subclass lists its hyper-parameters and buffers, checks the hyper-parameters (`_checked`) and
    updates the parameters (`_update`).
    """

    hyperparameters: tuple[str, ...] = ()  # names of the attributes state_dict() saves and _checked validates
    counters: tuple[str, ...] = ()         # names of the int attributes it saves with them (Adam's step count)
    buffers: tuple[str, ...] = ()          # names of the per-parameter arrays('d'), saved as lists of floats
    buffers_start_empty = False            # True: a buffer is None until the first step makes it (SGD's momentum)
    buffers_at_least_zero: tuple[str, ...] = ()   # buffers no step can make negative (Adam's v, under a sqrt)

    def __init__(self, params: Iterable[Value], **hyperparameters: object) -> None:
        checked = self._checked(hyperparameters)
        self._params = ParameterArray(params)
        for name, value in checked.items():
            setattr(self, name, value)

    @property
    def params(self) -> tuple[Value, ...]:
        """The parameters, a tuple of Values in the order given; the optimizer keeps them alive."""
        return self._params.values

    def zero_grad(self) -> None:
        """Set the grad of every parameter to 0.0 (in C, without a Python call per parameter)."""
        self._params.zero_grad()

    @overload
    def step(self, closure: None = None) -> None: ...
    @overload
    def step(self, closure: Callable[[], _T]) -> _T: ...

    def step(self, closure: Callable[[], _T] | None = None) -> _T | None:
        """Update every parameter from its grad. closure, if given, is called first (it should zero the
        grads, compute the loss and call backward()); its result is returned."""
        loss = None if closure is None else closure()
        self._update()
        return loss

    def __repr__(self) -> str:
        settings = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.hyperparameters)
        return f"{type(self).__name__}({len(self._params)} parameters, {settings})"

    # -- state dicts

    def state_dict(self) -> dict[str, _StateValue]:
        """A dict of plain numbers, lists and None (fastgrad.save writes it): the optimizer's kind, its
        number of parameters, its hyper-parameters, step counts and per-parameter buffers (copies)."""
        state: dict[str, _StateValue] = {"optimizer": type(self).__name__, "parameters": len(self._params)}
        for name in self.hyperparameters:
            value = getattr(self, name)
            state[name] = list(value) if isinstance(value, tuple) else value
        for name in self.counters:
            state[name] = getattr(self, name)
        for name in self.buffers:
            buffer = getattr(self, name)
            state[name] = None if buffer is None else buffer.tolist()
        return state

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        """Take the hyper-parameters, step counts and buffers of state (from state_dict(), maybe through
        fastgrad.save and fastgrad.load). Everything is checked first: when this raises, nothing has changed.

        TypeError: state is not a dict, or a field has the wrong type; ValueError: it is another optimizer's
        state, for another number of parameters, or a value is out of range.
        """
        kind = type(self).__name__
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict, such as {kind}.state_dict(), not {type_name(state)!r}")
        expected = ["optimizer", "parameters", *self.hyperparameters, *self.counters, *self.buffers]
        missing = [key for key in expected if key not in state]
        unexpected = [key for key in state if key not in expected]
        if state.get("optimizer") != kind:
            raise ValueError(f"state is {_describe_kind(state)}, not {kind}'s")
        if missing or unexpected:
            raise ValueError(f"state does not match {kind}.state_dict(): "
                             + "; ".join(f"{what} {', '.join(map(repr, keys))}"
                                         for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys))
        count = len(self._params)
        if _integer(state["parameters"], "state['parameters']") != count:
            raise ValueError(f"state is for {state['parameters']} parameters, this {kind} has {count}")
        checked = self._checked({name: state[name] for name in self.hyperparameters}, prefix="state")
        for name in self.counters:
            checked[name] = _integer(state[name], f"state[{name!r}]")
            if checked[name] < 0:
                raise ValueError(f"state[{name!r}] must be 0 or more, not {checked[name]}")
            if checked[name] >= _MAX_COUNT:
                raise ValueError(f"state[{name!r}] is beyond what step() can count: it adds 1 to it in a 64-bit int, "
                                 f"so it must be below {_MAX_COUNT}")
        for name in self.buffers:
            empty = state[name] is None and self.buffers_start_empty
            checked[name] = None if empty else _float_array(state[name], f"state[{name!r}]", count)
            if name in self.buffers_at_least_zero:
                for i, x in enumerate(checked[name]):
                    if x < 0.0:
                        raise ValueError(f"state[{name!r}][{i}] must be 0 or more (no step makes it negative), "
                                         f"not {x}")
        for name, value in checked.items():
            setattr(self, name, value)

    # -- for the subclasses

    def _checked(self, hyperparameters: Mapping[str, object], prefix: str | None = None) -> dict[str, Any]:
        """{name: value} for the hyper-parameters, checked and converted (floats, bools, the betas as a tuple);
        TypeError or ValueError in torch's words otherwise. prefix: see _where."""
        raise NotImplementedError

    def _update(self) -> None:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's: with weight decay, d = grad + weight_decay * data;
    with momentum, b = d on the first step, then b = momentum * b + (1 - dampening) * d, and d = b (or,
    with nesterov, d = d + momentum * b); then data -= lr * d."""

    hyperparameters = ("lr", "momentum", "dampening", "weight_decay", "nesterov")
    buffers = ("momentum_buffer",)
    buffers_start_empty = True

    lr: float
    momentum: float
    dampening: float
    weight_decay: float
    nesterov: bool
    momentum_buffer: array[float] | None

    def __init__(self, params: Iterable[Value], lr: float, momentum: float = 0.0, dampening: float = 0.0,
                 weight_decay: float = 0.0, nesterov: bool = False) -> None:
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                         nesterov=nesterov)
        self.momentum_buffer = None      # made by the first step with momentum

    def _checked(self, hp: Mapping[str, object], prefix: str | None = None) -> dict[str, Any]:
        checked = {
            "lr": _at_least_zero(hp["lr"], "lr", "Invalid learning rate", prefix),
            "momentum": _at_least_zero(hp["momentum"], "momentum", "Invalid momentum value", prefix),
            "dampening": _real(hp["dampening"], "dampening", prefix),
            "weight_decay": _at_least_zero(hp["weight_decay"], "weight_decay", "Invalid weight_decay value", prefix),
            "nesterov": _flag(hp["nesterov"], "nesterov", prefix),
        }
        if checked["nesterov"] and (checked["momentum"] <= 0 or checked["dampening"] != 0):
            raise ValueError("Nesterov momentum requires a momentum and zero dampening" + _in_state(prefix))
        return checked

    def _update(self) -> None:
        buffer = self.momentum_buffer
        started = buffer is not None
        if self.momentum != 0 and not started:
            buffer = array("d", [0.0]) * len(self._params)
        self._params.sgd_step(self.lr, self.momentum, self.dampening, self.weight_decay, self.nesterov,
                              buffer, started)
        self.momentum_buffer = buffer    # kept only now: after a step that raised, the next one starts it again


class Adam(Optimizer):
    """Adam (Kingma and Ba), torch.optim.Adam's: with weight decay, g = grad + weight_decay * data; then at
    step t, m = beta1 * m + (1 - beta1) * g, v = beta2 * v + (1 - beta2) * g * g, and
    data -= lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)."""

    hyperparameters = ("lr", "betas", "eps", "weight_decay")
    counters = ("step_count",)
    buffers = ("exp_avg", "exp_avg_sq")
    buffers_at_least_zero = ("exp_avg_sq",)
    decoupled_weight_decay = False

    lr: float
    betas: tuple[float, float]
    eps: float
    weight_decay: float
    step_count: int
    exp_avg: array[float]
    exp_avg_sq: array[float]

    def __init__(self, params: Iterable[Value], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
        self.step_count = 0                                   # steps taken: t in the bias corrections
        self.exp_avg = array("d", [0.0]) * len(self._params)  # m, the moving average of the gradient
        self.exp_avg_sq = array("d", [0.0]) * len(self._params)   # v, that of its square

    def _checked(self, hp: Mapping[str, object], prefix: str | None = None) -> dict[str, Any]:
        checked: dict[str, Any] = {
            "lr": _at_least_zero(hp["lr"], "lr", "Invalid learning rate", prefix),
            "eps": _at_least_zero(hp["eps"], "eps", "Invalid epsilon value", prefix),
        }
        betas = hp["betas"]
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise TypeError(f"{_where('betas', prefix)} must be a pair of numbers (beta1, beta2), not {betas!r}")
        checked["betas"] = tuple(_real(beta, "betas", prefix) for beta in betas)
        for i, beta in enumerate(checked["betas"]):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}{_in_state(prefix)}")
        checked["weight_decay"] = _at_least_zero(hp["weight_decay"], "weight_decay", "Invalid weight_decay value",
                                                 prefix)
        return checked

    def _update(self) -> None:
        step = self.step_count + 1         # counted only once the step is taken: a step that raised changed nothing
        beta1, beta2 = self.betas
        self._params.adam_step(self.lr, beta1, beta2, self.eps, self.weight_decay, self.decoupled_weight_decay,
                               step, self.exp_avg, self.exp_avg_sq)
        self.step_count = step


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov and Hutter), torch.optim.AdamW's: each step first shrinks
    data by lr * weight_decay, then takes Adam's step on the bare gradient."""

    decoupled_weight_decay = True

    def __init__(self, params: Iterable[Value], lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


# ---------------------------------------------------------------------------------------------------
# Checks, shared by the constructors and load_state_dict

# prefix is None for a constructor's argument (`lr`) and "state" for a state dict's field (`state['lr']`).

_MAX_COUNT = 2**63 - 1      # a step count is a 64-bit int in the compiled update (_optim.pyx): step() needs count + 1


def _where(name: str, prefix: str | None) -> str:
    return name if prefix is None else f"{prefix}[{name!r}]"


def _in_state(prefix: str | None) -> str:
    return "" if prefix is None else f" in {prefix}"


def _real(x: object, name: str, prefix: str | None) -> float:
    return _number(x, _where(name, prefix))


def _number(x: object, where: str) -> float:
    """x as a float, or TypeError (not a real number) or ValueError (beyond a float: a 400-digit int, which
    fastgrad.load reads from JSON as Python does) naming where it is."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{where} must be a real number, not {type_name(x)!r}")
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{where} is beyond a float's range (about 1.8e308)") from None


def _at_least_zero(x: object, name: str, message: str, prefix: str | None) -> float:
    """x as a float that is 0 or more: ValueError in torch's words otherwise (nan included)."""
    value = _real(x, name, prefix)
    if not 0.0 <= value:
        raise ValueError(f"{message}: {value}{_in_state(prefix)}")
    return value


def _flag(x: object, name: str, prefix: str | None) -> bool:
    if not isinstance(x, bool):
        raise TypeError(f"{_where(name, prefix)} must be True or False, not {x!r}")
    return x


def _integer(x: object, where: str) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{where} must be an int, not {type_name(x)!r}")
    return int(x)


def _float_array(values: object, where: str, count: int) -> array[float]:
    """values (a list of real numbers, one per parameter) as an array('d')."""
    if not isinstance(values, (list, tuple)):
        raise TypeError(f"{where} must be a list of {count} numbers, not {type_name(values)!r}")
    if len(values) != count:
        raise ValueError(f"{where} has {len(values)} numbers, one per parameter is {count}")
    return array("d", [_number(x, f"{where}[{i}]") for i, x in enumerate(values)])


def _describe_kind(state: Mapping[str, object]) -> str:
    kind = state.get("optimizer")
    return f"{kind}'s" if isinstance(kind, str) else "no optimizer's state dict (it has no 'optimizer' name)"
