from array import array
from typing import Iterable, Optional, final

from fastgrad.engine import Value

@final
class ParameterArray:
    values: tuple[Value, ...]
    def __init__(self, params: Iterable[Value]) -> None: ...
    def __len__(self) -> int: ...
    def __reduce__(self) -> tuple[type[ParameterArray], tuple[tuple[Value, ...]]]: ...
    def zero_grad(self) -> None: ...
    def sgd_step(
        self, lr: float, momentum: float, dampening: float, weight_decay: float, nesterov: bool,
        momentum_buffer: Optional[array[float]], buffer_started: bool,
    ) -> None: ...
    def adam_step(
        self, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
        decoupled_weight_decay: bool, step: int, exp_avg: array[float], exp_avg_sq: array[float],
    ) -> None: ...
